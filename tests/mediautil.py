"""Synthetic media, encoded media and a loopback WebRTC client, for tests, benchmarks and
smoke checks.

Nothing here is used on the call path. The client is a plain aiortc peer that sends a
moving test pattern and a sine tone, decodes whatever it receives, and gathers ICE
candidates on 127.0.0.1 only with no ICE servers (unless given a configuration, e.g. a local
TURN), so it never sends a packet off the host.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from array import array
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from aiortc import (
    AudioStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame

from media.ice import IcePolicy, rtc_configuration

log = logging.getLogger(__name__)

_PATTERN_FRAMES = 32


class MovingPatternTrack(VideoStreamTrack):
    """A 30 fps test pattern that scrolls every frame, so the encoder has real work."""

    def __init__(self, width: int = 640, height: int = 480) -> None:
        super().__init__()
        self.width = width
        self.height = height
        luma = bytes((x * 7 + (x // width) * 3) & 0xFF for x in range(width * height))
        stride = max(1, (width * height) // _PATTERN_FRAMES)
        self._lumas = [luma[k * stride :] + luma[: k * stride] for k in range(_PATTERN_FRAMES)]
        self._chroma = bytes([128]) * ((width // 2) * (height // 2))
        self.frames_sent = 0

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = VideoFrame(self.width, self.height, "yuv420p")
        frame.planes[0].update(self._lumas[self.frames_sent % _PATTERN_FRAMES])
        frame.planes[1].update(self._chroma)
        frame.planes[2].update(self._chroma)
        frame.pts = pts
        frame.time_base = time_base
        self.frames_sent += 1
        return frame


class SineAudioTrack(AudioStreamTrack):
    """A 440 Hz tone, 48 kHz mono, 20 ms frames, paced in real time."""

    SAMPLE_RATE = 48_000
    SAMPLES = 960

    def __init__(self, hz: float = 440.0) -> None:
        super().__init__()
        # One second of samples loops seamlessly for a whole-number frequency.
        step = 2 * math.pi * hz / self.SAMPLE_RATE
        tone = array("h", (int(8000 * math.sin(step * n)) for n in range(self.SAMPLE_RATE)))
        self._tone_bytes = tone.tobytes()
        self._pts = 0
        self._t0: float | None = None
        self.frames_sent = 0

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._t0 is None:
            self._t0 = time.monotonic()
        else:
            self._pts += self.SAMPLES
            await asyncio.sleep(self._t0 + self._pts / self.SAMPLE_RATE - time.monotonic())
        start = (self._pts % self.SAMPLE_RATE) * 2
        frame = AudioFrame(format="s16", layout="mono", samples=self.SAMPLES)
        frame.planes[0].update(self._tone_bytes[start : start + self.SAMPLES * 2])
        frame.pts = self._pts
        frame.sample_rate = self.SAMPLE_RATE
        frame.time_base = Fraction(1, self.SAMPLE_RATE)
        self.frames_sent += 1
        return frame


@dataclass
class Reception:
    """What a loopback client decoded of one incoming track."""

    kind: str
    frames: int = 0
    first_frame_at: float | None = None
    ended_at: float | None = None
    sizes: set[tuple[int, int]] = field(default_factory=set)


class LoopbackClient:
    """An aiortc peer on 127.0.0.1 that publishes synthetic media and decodes what it gets."""

    def __init__(
        self,
        name: str,
        *,
        audio: bool = True,
        video: bool = True,
        width: int = 640,
        height: int = 480,
        video_codec: str = "VP8",
        configuration: RTCConfiguration | None = None,
    ) -> None:
        self.name = name
        # No ICE servers unless a test passes some (e.g. TURN with iceTransportPolicy relay).
        config = RTCConfiguration(iceServers=[]) if configuration is None else configuration
        self.pc = RTCPeerConnection(rtc_configuration(config))
        self.received: dict[str, Reception] = {}
        self.video_source = MovingPatternTrack(width, height) if video else None
        self.audio_source = SineAudioTrack() if audio else None
        self._tasks: set[asyncio.Task[None]] = set()
        self.offered_at: float | None = None
        self.answered_at: float | None = None
        if self.audio_source is not None:
            self.pc.addTrack(self.audio_source)
        if self.video_source is not None:
            transceiver = self.pc.addTransceiver(self.video_source, direction="sendrecv")
            caps = RTCRtpSender.getCapabilities("video").codecs
            transceiver.setCodecPreferences(
                [
                    c
                    for c in caps
                    if c.mimeType.lower() in (f"video/{video_codec}".lower(), "video/rtx")
                ]
            )
        self.pc.on("track", self._on_track)

    async def offer(self) -> str:
        IcePolicy.loopback_only().apply(self.pc)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        self.offered_at = time.monotonic()
        local = self.pc.localDescription
        assert local is not None
        return local.sdp

    async def accept(self, answer_sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))
        self.answered_at = time.monotonic()

    def frames(self, kind: str) -> int:
        reception = self.received.get(kind)
        return reception.frames if reception is not None else 0

    def ended(self) -> bool:
        return bool(self.received) and all(r.ended_at is not None for r in self.received.values())

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _on_track(self, track: MediaStreamTrack) -> None:
        reception = self.received.setdefault(track.kind, Reception(track.kind))
        task = asyncio.ensure_future(self._consume(track, reception))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _consume(self, track: MediaStreamTrack, reception: Reception) -> None:
        try:
            while True:
                frame = await track.recv()
                if reception.first_frame_at is None:
                    reception.first_frame_at = time.monotonic()
                reception.frames += 1
                if isinstance(frame, VideoFrame):
                    reception.sizes.add((frame.width, frame.height))
        except MediaStreamError:
            reception.ended_at = time.monotonic()


# --- encoded media, as a publisher sends it, and files read back (recording tests) ----------


def encode_video(codec: str, width: int, height: int, frames: int, **options: str) -> list[Any]:
    encoder: Any = av.CodecContext.create(codec, "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.time_base = Fraction(1, 30)
    encoder.options = options
    packets: list[Any] = []
    for i in range(frames):
        frame = VideoFrame(width, height, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes([(i * 8) & 0xFF]) * plane.buffer_size)
        frame.pts = i
        packets += encoder.encode(frame)
    packets += encoder.encode(None)
    return packets


def encode_opus(frames: int) -> list[bytes]:
    encoder: Any = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format = 48_000, "stereo", "s16"
    encoder.time_base = Fraction(1, 48_000)
    packets: list[bytes] = []
    for i in range(frames):
        frame = AudioFrame(format="s16", layout="stereo", samples=960)
        frame.planes[0].update(bytes(960 * 4))
        frame.sample_rate, frame.pts = 48_000, i * 960
        packets += [bytes(p) for p in encoder.encode(frame)]
    return packets


def packets_of(path: Path) -> dict[str, list[tuple[int, bool]]]:
    found: dict[str, list[tuple[int, bool]]] = {}
    with av.open(str(path)) as container:
        for packet in container.demux():
            if packet.size and packet.pts is not None:
                found.setdefault(packet.stream.type, []).append((packet.pts, packet.is_keyframe))
    return found
