"""RTP-level forwarding: a publisher's packets rewritten onto a subscriber's stream.

The default path (``media.forwarding = "rtp"``). Each packet the publisher sends is
forwarded when it arrives: no jitter buffer, no frame reassembly, no re-packetization. What
changes on the way is the header: the subscriber leg's payload type and SSRC, and sequence
numbers and timestamps shifted so they keep counting up across a source change (the
publisher reconnected) or a gap (packets held back until a keyframe).

``RtpForwarder`` is sans-I/O: packets come in by method call, go out through an ``RtpSink``
(media/packet_path.py's ``LegSink`` protects and sends them), so gating and renumbering are
unit-tested without sockets.
"""

from __future__ import annotations

from typing import Protocol

from media.subscription import Source, Subscription, SubscriptionStats, frame_step


class RtpSink(Protocol):
    """The subscriber's side: sends one packet, or says it cannot (not connected, congested)."""

    def send(self, sequence: int, timestamp: int, marker: bool, payload: bytes) -> bool: ...


def seq_newer(a: int, b: int) -> bool:
    """RFC 3550 A.1 serial comparison: is 16-bit sequence number ``a`` after ``b``?"""
    return a != b and (a - b) & 0xFFFF < 0x8000


class RtpForwarder(Subscription):
    """What the SFU sends one subscriber on one m-line, packet by packet.

    - gated: video starts at the first packet of a keyframe (a new subscriber, a source
      change, a packet the sink refused), requesting one from the source meanwhile;
    - renumbered: the first source passes through unchanged; every later start continues
      right after the last packet sent (sequence) and one frame later (timestamp), so the
      subscriber's jitter buffer never sees a jump or a gap it would NACK.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.sink: RtpSink | None = None
        self._source = None
        self._ssrc: int | None = None
        self._seq_offset = 0
        self._ts_offset = 0
        self._last_seq: int | None = None
        self._last_ts = 0
        self._resync = True
        self._new_timeline = False
        self._waiting_keyframe = kind == "video"
        self._frame_ts: int | None = None
        self._frames = 0
        self._packets = 0
        self._dropped = 0
        self._skipped = 0

    def stats(self) -> SubscriptionStats:
        return SubscriptionStats(
            frames_forwarded=self._frames,
            frames_dropped=self._dropped,
            frames_skipped=self._skipped,
            packets_forwarded=self._packets,
        )

    def forward(
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
        """One packet from the source (called on the event loop as it arrives)."""
        sink = self.sink
        if sink is None:
            self._skipped += 1
            self._waiting_keyframe = self.kind == "video"
            self._resync = True
            return
        if ssrc != self._ssrc:
            self._ssrc = ssrc
            self._new_source()
        if not payload:
            # Padding only (bandwidth probing): nothing to forward. Later packets move
            # down one number so the subscriber sees no gap to NACK.
            if not self._resync:
                self._seq_offset -= 1
            return
        if self._waiting_keyframe:
            if not keyframe_start:
                self._skipped += 1
                self.request_keyframe()  # rate-limited by the publication
                return
            self._waiting_keyframe = False
        if self._resync:
            self._resync = False
            if self._last_seq is not None:
                self._seq_offset = self._last_seq + 1 - sequence
                if self._new_timeline:
                    step = frame_step(self.kind, clock_rate)
                    self._ts_offset = self._last_ts + step - timestamp
            self._new_timeline = False
        out_seq = (sequence + self._seq_offset) & 0xFFFF
        out_ts = (timestamp + self._ts_offset) & 0xFFFFFFFF
        if not sink.send(out_seq, out_ts, marker, payload):
            self._dropped += 1
            if self.kind == "video":
                # Frames after a lost packet cannot be decoded: restart at a keyframe.
                self._waiting_keyframe = True
                self._resync = True
                self.request_keyframe()
            return
        self._packets += 1
        if out_ts != self._frame_ts:
            self._frame_ts = out_ts
            self._frames += 1
        if self._last_seq is None or seq_newer(out_seq, self._last_seq):
            self._last_seq = out_seq
            self._last_ts = out_ts

    def source_sequence(self, sequence: int) -> int | None:
        """The source's sequence number of packet ``sequence`` we sent, if it came from the
        current source (for a NACK we cannot answer from the sink's history)."""
        if self._ssrc is None or self._last_seq is None or self._resync:
            return None
        return (sequence - self._seq_offset) & 0xFFFF

    def stop(self) -> None:
        self.sink = None
        if self._source is not None:
            self._source.unsubscribe(self)

    # Called by Publication.subscribe / unsubscribe only.
    def _attached(self, source: Source) -> None:
        self._source = source
        self._ssrc = None  # the next packet re-bases, whatever its SSRC
        if self.kind == "video":
            self._waiting_keyframe = True
            if self.sink is not None:
                self.request_keyframe()

    def _new_source(self) -> None:
        # Offsets are set on the first packet actually sent (after the keyframe gate), so
        # the subscriber sees the next frame, not the frames skipped meanwhile.
        self._resync = True
        self._new_timeline = True
        if self.kind == "video":
            self._waiting_keyframe = True
