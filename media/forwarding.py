"""Encoded-frame forwarding: a publisher's frames fanned out to subscriber tracks.

A ``Publication`` is what one party sends on one m-line (its ``RTCRtpReceiver`` on the SFU,
tapped by media/rtp_hooks.py). A ``ForwardingTrack`` is what the SFU sends the other party on
the matching m-line: a ``MediaStreamTrack`` whose ``recv()`` returns ``av.Packet``, which
aiortc's ``RTCRtpSender`` only packetizes (the codec's ``pack()``), never re-encodes.

Both are sans-I/O apart from the PLI callback: frames go in by method call, so the gating,
queue bounds and keyframe rate limit are unit-tested without sockets (injected clock).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media.clock import Clock
from media.rtp_forwarding import RtpForwarder
from media.rtp_hooks import EncodedFrame, EncodedFrameSink
from media.subscription import Subscription, SubscriptionStats, frame_step

log = logging.getLogger(__name__)


@functools.cache
def _time_base(clock_rate: int) -> Fraction:
    return Fraction(1, clock_rate)


@dataclass(frozen=True, slots=True)
class PublicationStats:
    frames_received: int
    keyframes_received: int
    frames_unsubscribed: int
    """Frames that arrived while nobody was subscribed (dropped)."""
    keyframe_requests_received: int
    keyframe_requests_sent: int
    """PLIs actually sent to the publisher, after rate limiting."""


class Publication:
    """One incoming encoded stream, the forwarding tracks subscribed to it and its taps.

    A tap (the call recorder) is one more consumer of every frame, called on the event loop
    after the subscribers; it must never block (media/recording/recorder.py only queues the frame)
    and its exceptions are logged, never raised into the receive path.
    """

    def __init__(
        self,
        kind: str,
        send_pli: Callable[[], bool],
        *,
        keyframe_interval_s: float,
        clock: Clock,
        send_nack: Callable[[list[int]], None] | None = None,
    ) -> None:
        self.kind = kind
        self.ssrc: int | None = None
        """The publisher's media SSRC, once an RTP packet has been forwarded."""
        self._send_pli = send_pli
        self._send_nack = send_nack
        self._interval = keyframe_interval_s
        self._clock = clock
        self._subscribers: list[ForwardingTrack] = []
        self._rtp_subscribers: list[RtpForwarder] = []
        self._frame_ts: int | None = None
        self._taps: list[EncodedFrameSink] = []
        self._keyframe_wanted = False
        self._last_pli: float | None = None
        self._closed = False
        self._frames = 0
        self._keyframes = 0
        self._unsubscribed = 0
        self._requests_in = 0
        self._requests_out = 0

    @property
    def subscribers(self) -> tuple[ForwardingTrack | RtpForwarder, ...]:
        return (*self._subscribers, *self._rtp_subscribers)

    @property
    def tapped(self) -> bool:
        """Whether something (the recorder) also wants this publication's encoded frames."""
        return bool(self._taps)

    def on_frame(self, frame: EncodedFrame) -> None:
        """An encoded frame from the publisher (the receiver tap's sink)."""
        if self._closed:
            return
        if self._frame_ts is None:
            # Frame forwarding. Under RTP forwarding frames only reach here for the taps
            # (a recorded call), and on_rtp has counted them.
            self._frames += 1
            self._saw(keyframe=frame.keyframe)
            if not self._subscribers:
                self._unsubscribed += 1
        for track in self._subscribers:
            track.push(frame)
        for tap in self._taps:
            try:
                tap(frame)
            except Exception:
                log.exception("media: a %s frame tap failed", self.kind)

    def on_rtp(
        self,
        ssrc: int,
        sequence: int,
        timestamp: int,
        marker: bool,
        payload: bytes,
        *,
        keyframe_start: bool,
        clock_rate: int,
    ) -> None:
        """A media packet from the publisher (media/packet_path.py, RTP forwarding)."""
        if self._closed:
            return
        self.ssrc = ssrc
        if timestamp != self._frame_ts:
            self._frame_ts = timestamp
            self._frames += 1
            if not self._rtp_subscribers:
                self._unsubscribed += 1
        self._saw(keyframe=keyframe_start and self.kind == "video")
        for forwarder in self._rtp_subscribers:
            forwarder.forward(
                ssrc,
                sequence,
                timestamp,
                marker,
                payload,
                keyframe_start=keyframe_start,
                clock_rate=clock_rate,
            )

    def request_retransmission(self, sequences: list[int]) -> None:
        """A subscriber lost packets we no longer have: NACK them to the publisher."""
        if self._send_nack is not None and sequences and not self._closed:
            self._send_nack(sequences)

    def subscribe(self, track: ForwardingTrack | RtpForwarder) -> None:
        if track in self.subscribers or self._closed:
            return
        previous = track.source
        if previous is not None:
            previous.unsubscribe(track)
        if isinstance(track, ForwardingTrack):
            self._subscribers.append(track)
        else:
            self._rtp_subscribers.append(track)
        track._attached(self)

    def unsubscribe(self, track: Subscription) -> None:
        if isinstance(track, ForwardingTrack):
            if track in self._subscribers:
                self._subscribers.remove(track)
                track._detached(self)
        elif isinstance(track, RtpForwarder) and track in self._rtp_subscribers:
            self._rtp_subscribers.remove(track)
            track._detached(self)

    def add_tap(self, sink: EncodedFrameSink) -> None:
        """Also hand every frame from now on to ``sink`` (until ``remove_tap`` or close)."""
        if not self._closed and sink not in self._taps:
            self._taps.append(sink)

    def remove_tap(self, sink: EncodedFrameSink) -> None:
        if sink in self._taps:
            self._taps.remove(sink)

    def request_keyframe(self) -> None:
        """A subscriber needs a keyframe: PLI the publisher, at most once per interval.

        A request inside the interval is remembered and sent with the first frame after it;
        it stays wanted (retried once per interval, in case a PLI was lost) until a keyframe
        arrives.
        """
        if self._closed or self.kind != "video":
            return
        self._requests_in += 1
        self._keyframe_wanted = True
        self._maybe_send_pli()

    def close(self) -> None:
        self._closed = True
        self._taps.clear()
        for track in self.subscribers:
            self.unsubscribe(track)

    def stats(self) -> PublicationStats:
        return PublicationStats(
            frames_received=self._frames,
            keyframes_received=self._keyframes,
            frames_unsubscribed=self._unsubscribed,
            keyframe_requests_received=self._requests_in,
            keyframe_requests_sent=self._requests_out,
        )

    def _saw(self, *, keyframe: bool) -> None:
        """A frame (or its first packet): a keyframe settles a pending request, anything
        else retries it when its interval allows."""
        if keyframe:
            self._keyframes += 1
            self._keyframe_wanted = False
        elif self._keyframe_wanted:
            self._maybe_send_pli()

    def _maybe_send_pli(self) -> None:
        now = self._clock.monotonic()
        if self._last_pli is not None and now - self._last_pli < self._interval:
            return
        if self._send_pli():
            self._last_pli = now
            self._requests_out += 1


class ForwardingTrack(Subscription, MediaStreamTrack):
    """What the SFU sends one subscriber on one m-line: encoded frames as ``av.Packet``.

    - bounded: never more than ``capacity`` frames queued. A full audio queue drops its
      oldest frame; a full video queue is flushed (frames after a lost one cannot be
      decoded) and waits for the next keyframe, requesting one;
    - gated: video starts at a keyframe, requested when the sender first pulls (a new
      subscriber) and whenever the source changes (the publisher reconnected);
    - timestamps are rebased on a source change so they keep moving forward.
    """

    def __init__(self, kind: str, *, capacity: int) -> None:
        super().__init__()
        self.kind = kind
        self._capacity = capacity
        self._queue: deque[tuple[EncodedFrame, int]] = deque()
        self._wakeup = asyncio.Event()
        self._source = None
        self._pulling = False
        self._waiting_keyframe = kind == "video"
        self._rebase = True
        self._offset = 0
        self._last_pts: int | None = None
        self._forwarded = 0
        self._dropped = 0
        self._skipped = 0

    def stats(self) -> SubscriptionStats:
        return SubscriptionStats(
            frames_forwarded=self._forwarded,
            frames_dropped=self._dropped,
            frames_skipped=self._skipped,
        )

    def push(self, frame: EncodedFrame) -> None:
        """Queue one encoded frame from the source (called on the event loop)."""
        if self.readyState != "live":
            return
        if not self._pulling:
            # Nobody sends yet (the subscriber leg is still connecting): queuing would
            # only deliver stale frames in a burst later.
            self._skipped += 1
            return
        if len(self._queue) >= self._capacity:
            if self.kind == "video":
                self._dropped += len(self._queue)
                self._queue.clear()
                self._wait_for_keyframe()
            else:
                self._queue.popleft()
                self._dropped += 1
        if self._waiting_keyframe:
            if not frame.keyframe:
                self._skipped += 1
                self.request_keyframe()  # rate-limited by the publication
                return
            self._waiting_keyframe = False
        if self._rebase:
            self._rebase_on(frame)
        pts = frame.timestamp + self._offset
        self._last_pts = pts
        self._queue.append((frame, pts))
        self._wakeup.set()

    async def recv(self) -> av.Packet[Any]:
        """The next encoded frame, for ``RTCRtpSender`` to packetize."""
        if not self._pulling:
            self._pulling = True
            if self._waiting_keyframe:
                self.request_keyframe()
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._wakeup.clear()
            await self._wakeup.wait()
        if self.readyState != "live":
            raise MediaStreamError
        frame, pts = self._queue.popleft()
        packet = av.Packet(frame.data)
        packet.pts = pts
        packet.time_base = _time_base(frame.clock_rate)
        self._forwarded += 1
        return packet

    def stop(self) -> None:
        super().stop()
        if self._source is not None:
            self._source.unsubscribe(self)
        self._queue.clear()
        self._wakeup.set()

    # Called by Publication.subscribe / unsubscribe only.
    def _attached(self, source: Publication) -> None:
        self._source = source
        self._rebase = True
        if self._queue:
            # Frames of the previous source would be followed by an unrelated stream.
            self._dropped += len(self._queue)
            self._queue.clear()
        if self.kind == "video":
            self._waiting_keyframe = True
            if self._pulling:
                self.request_keyframe()

    def _wait_for_keyframe(self) -> None:
        self._waiting_keyframe = True
        self.request_keyframe()

    def _rebase_on(self, frame: EncodedFrame) -> None:
        self._rebase = False
        if self._last_pts is None:
            self._offset = -frame.timestamp
        else:
            step = frame_step(self.kind, frame.clock_rate)
            self._offset = self._last_pts + step - frame.timestamp
