"""A recording's timeline: when each frame really arrived, and the pts that follow from it.

Both files of a call share one timeline: a packet's time is its arrival on the SFU's
monotonic clock since the first frame of the call, so the second party's file starts at its
join time and the two files (and audio and video within each) line up by timestamp.

``TimestampMapper``: arrival time smoothed with the RTP timestamps (which carry the sender's
exact frame spacing): a frame's time is its RTP time plus an offset that follows the earliest
arrivals (the least delayed path) and is re-anchored to the arrival if the two disagree by
more than ``RESYNC_S`` (sender pause, clock jump, reconnect). Every stream's pts strictly
increase.

``ReleaseDelay``: the recorder's tap sees a frame when aiortc's jitter buffer releases it,
which is when a *later* frame arrives (``RELEASED_BY``): audio frame k with frame k+4
(``prefetch=4``), video frame k with frame k+1's first packet. Left alone that delays audio
~80 ms and video one frame interval, putting audio ~45 ms behind video. The writer holds back
that many frames and dates each one at its release minus the RTP distance to the frame that
released it, which stays exact under DTX and pauses.
"""

from __future__ import annotations

from collections import deque
from fractions import Fraction
from typing import Final, Generic, Protocol, TypeVar

from media.rtp_hooks import EncodedFrame

RESYNC_S: Final = 2.0
"""RTP time and arrival time may disagree this much before the mapper re-anchors."""
RELEASED_BY: Final[dict[str, int]] = {"audio": 4, "video": 1}
"""aiortc 1.16 RTCRtpReceiver: audio ``JitterBuffer(capacity=16, prefetch=4)`` releases a
frame once the 4th frame after it is in; video (``prefetch=0``) once the next frame's first
packet is. (tests/integration/test_recording.py measures A/V sync, so a change shows.)"""
MAX_HOLD_S: Final = 30.0
"""An RTP distance beyond this (or negative) is a jump, not a release delay."""
_NOMINAL_FRAME_S: Final[dict[str, float]] = {"audio": 0.02, "video": 1 / 30}


class TimestampMapper:
    """One output stream's pts: arrival-anchored, RTP-smoothed, strictly increasing.

    ``map(arrival_s, rtp_timestamp, clock_rate)`` takes the frame's arrival in seconds since
    the recording's time origin (shared by every stream of the call, which is what lines
    them up) and its RTP timestamp (aiortc's, relative to the stream's first frame), and
    returns a pts in ``time_base`` units.
    """

    def __init__(self, time_base: Fraction, *, resync_s: float = RESYNC_S) -> None:
        self.time_base = time_base
        self._resync_s = resync_s
        self._offset: float | None = None
        self.last_pts: int | None = None
        self.resyncs = 0

    def restart(self) -> None:
        """A new source (the party reconnected): anchor again on its next frame."""
        self._offset = None

    def map(self, arrival_s: float, rtp_timestamp: int, clock_rate: int) -> int:
        rtp_s = rtp_timestamp / clock_rate
        if self._offset is None:
            self._offset = arrival_s - rtp_s
        media_s = rtp_s + self._offset
        lag = arrival_s - media_s
        if lag < 0:
            # Earlier than predicted: this path is less delayed than the anchor's was.
            self._offset += lag
            media_s = arrival_s
        elif lag > self._resync_s:
            self._offset += lag
            media_s = arrival_s
            self.resyncs += 1
        pts = round(Fraction(media_s) / self.time_base)
        if self.last_pts is not None and pts <= self.last_pts:
            pts = self.last_pts + 1
        self.last_pts = pts
        return pts


class Released(Protocol):
    """A queued frame, as far as its release delay is concerned."""

    @property
    def source(self) -> int:
        """Which attachment of its stream it came from (a new one: a reconnect)."""
        ...

    @property
    def frame(self) -> EncodedFrame: ...


F = TypeVar("F", bound=Released)


class ReleaseDelay(Generic[F]):
    """One stream's frames, held back ``RELEASED_BY[kind]`` frames to learn when each one
    really arrived: ``push`` and ``flush`` return (frame, seconds to take off its arrival)
    in the order they are to be written."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._depth = RELEASED_BY.get(kind, 0)
        self._held: deque[F] = deque()
        self._hold_s: float | None = None
        """The last release delay measured (kept across a reconnect)."""

    def push(self, item: F) -> list[tuple[F, float]]:
        out = self.flush() if self._held and self._held[-1].source != item.source else []
        if self._depth <= 0:
            return [*out, (item, 0.0)]
        if len(self._held) >= self._depth:
            oldest = self._held.popleft()
            hold = (item.frame.timestamp - oldest.frame.timestamp) / oldest.frame.clock_rate
            if 0 <= hold <= MAX_HOLD_S:
                self._hold_s = hold
            else:
                hold = self.estimate()
            out.append((oldest, hold))
        self._held.append(item)
        return out

    def flush(self) -> list[tuple[F, float]]:
        """Every frame still held (the source changed, or the file closes)."""
        out = [(item, self.estimate()) for item in self._held]
        self._held.clear()
        return out

    def estimate(self) -> float:
        if self._hold_s is not None:
            return self._hold_s
        return self._depth * _NOMINAL_FRAME_S.get(self.kind, 0.0)
