"""What both kinds of subscriber share: their source, their stats, timestamp rebasing.

A subscriber is what the SFU sends one party on one m-line: a ``ForwardingTrack``
(media/forwarding.py, encoded frames) or an ``RtpForwarder`` (media/rtp_forwarding.py, RTP
packets). Its source is a ``Publication`` (media/forwarding.py), seen here only through the
``Source`` protocol, so neither subscriber module imports the publication's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

_FRAMES_PER_SECOND = {"audio": 50, "video": 30}


def frame_step(kind: str, clock_rate: int) -> int:
    """One nominal frame in RTP clock units: how far timestamps move on across a source
    switch, so they keep counting up."""
    return clock_rate // _FRAMES_PER_SECOND.get(kind, 30)


@dataclass(frozen=True, slots=True)
class SubscriptionStats:
    frames_forwarded: int
    frames_dropped: int
    """Frames thrown away because the queue was full (or its source changed)."""
    frames_skipped: int
    """Frames not sent while waiting for a keyframe (new subscriber, source change, overflow).

    RTP forwarding counts these three in packets."""
    packets_forwarded: int = 0
    """RTP forwarding only: packets sent to the subscriber."""


class Source(Protocol):
    """What a subscriber asks of the publication it is subscribed to."""

    def request_keyframe(self) -> None: ...

    def request_retransmission(self, sequences: list[int]) -> None: ...

    def unsubscribe(self, track: Subscription) -> None: ...


class Subscription:
    """What every kind of subscriber does with the publication it is subscribed to;
    ``Publication.subscribe`` sets ``_source``."""

    _source: Source | None = None

    @property
    def source(self) -> Source | None:
        return self._source

    def request_keyframe(self) -> None:
        """Ask the current source for a keyframe (the subscriber sent PLI/FIR, or we gate)."""
        if self._source is not None:
            self._source.request_keyframe()

    # Called by Publication.unsubscribe only.
    def _detached(self, source: Source) -> None:
        if self._source is source:
            self._source = None
