"""Call recording: the encoded frames each party publishes, muxed without re-encoding (DESIGN §6).

Where the frames come from
    ``Publication.add_tap`` (media/forwarding.py): every frame the receiver hook hands the
    forwarding code is also handed to ``CallRecorder``'s sink, on the event loop. The sink
    only timestamps the frame (arrival on the SFU's monotonic clock) and puts it on a queue
    bounded by ``media.record_queue_frames``; it never blocks. A full queue drops the frame
    (video then waits for, and asks the publisher for, a keyframe). Nothing is decoded.

Where they go
    One thread per recorded call (``RecordingWriter``) muxes them with PyAV into Matroska:
    WebM (``.webm``) for VP8 + Opus, ``.mkv`` for H264 + Opus. Output streams are made from
    codec parameters only (Opus: an ``OpusHead`` as CodecPrivate; VP8: the frame size from
    the first keyframe; H264: SPS/PPS and size from the first keyframe) and no codec is ever
    opened; packets go to ``OutputContainer.mux`` as received. A party's header waits up to
    ``media.record_start_wait_s`` for its first video keyframe; if none came by then, VP8 is
    declared at a placeholder size (decoders use the bitstream's) and recorded once it
    starts, while H264, which Matroska needs SPS/PPS for up front, is left out (logged).

Layout: one file per party, not one four-stream file per call
    ``<record_dir>/<call_id>/<party>.webm`` holds that party's audio and video. Both files of
    a call share one timeline: a packet's time is its arrival since the first frame of the
    call, so the second party's file starts at its join time and the two files (and audio
    and video within each) line up by timestamp. A single file with both parties' four
    streams was tried and rejected: libavformat's interleaver never flushes while a VP8
    stream has nothing queued (VP8/VP9 are left out of its ``max_interleave_delta`` check),
    so one party turning their camera off made it hold the *other* party's audio and video
    in memory until the camera came back or the call ended (measured: nothing written for
    minutes). Per party, a camera-off only holds back that party's own audio, a few KB/s.

Timestamps
    ``TimestampMapper``: arrival time on the SFU clock, smoothed with the RTP timestamps
    (which carry the sender's exact frame spacing): a frame's time is its RTP time plus an
    offset that follows the earliest arrivals (the least delayed path) and is re-anchored to
    the arrival if the two disagree by more than ``RESYNC_S`` (sender pause, clock jump,
    reconnect). Every stream's pts strictly increase.

    The tap sees a frame when aiortc's jitter buffer releases it, which is when a *later*
    frame arrives (``RELEASED_BY``): audio frame k with frame k+4 (``prefetch=4``), video
    frame k with frame k+1's first packet. Left alone that delays audio ~80 ms and video one
    frame interval, putting audio ~45 ms behind video. The writer holds back that many
    frames and dates each one at its release minus the RTP distance to the frame that
    released it, which stays exact under DTX and pauses.

Files
    Written as ``<party>.webm.part``, renamed to ``<party>.webm`` once closed cleanly. A
    file whose muxing failed is closed as far as possible and renamed ``<party>.failed.webm``
    (logged); one that got no media is removed. A ``.part`` left by a crashed process is
    listed as incomplete by ``scan_recordings``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import io
import logging
import os
import queue
import re
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any, Final

import av
from av.container import OutputContainer
from av.stream import Disposition, Stream

from media.clock import Clock
from media.codecs import AUDIO_MIME
from media.forwarding import Publication
from media.rtp_hooks import EncodedFrame
from media.settings import VideoCodec

log = logging.getLogger(__name__)

Slot = tuple[str, int]

RESYNC_S: Final = 2.0
"""RTP time and arrival time may disagree this much before the mapper re-anchors."""
PENDING_MAX: Final = 2000
"""Frames a party's file holds back, at most, while it waits for its header."""
OPUS_RATE: Final = 48_000
RELEASED_BY: Final[dict[str, int]] = {"audio": 4, "video": 1}
"""aiortc 1.16 RTCRtpReceiver: audio ``JitterBuffer(capacity=16, prefetch=4)`` releases a
frame once the 4th frame after it is in; video (``prefetch=0``) once the next frame's first
packet is. (tests/integration/test_recording.py measures A/V sync, so a change shows.)"""
MAX_HOLD_S: Final = 30.0
"""An RTP distance beyond this (or negative) is a jump, not a release delay."""
_NOMINAL_FRAME_S: Final[dict[str, float]] = {"audio": 0.02, "video": 1 / 30}
DEFAULT_SIZE: Final = (640, 480)
"""Frame size declared when no keyframe told the real one (decoders use the bitstream's)."""

_KINDS = ("audio", "video")
_FORMATS: Final[dict[str, tuple[str, str]]] = {
    "VP8": ("webm", ".webm"),
    "H264": ("matroska", ".mkv"),
}
_SAFE = re.compile(r"[^A-Za-z0-9_-]")


# --- codec parameters from encoded frames (no decoding) ------------------------------------


def opus_head(channels: int = 2) -> bytes:
    """The Opus identification header (RFC 7845 §5.1) Matroska wants as CodecPrivate.

    WebRTC negotiates ``opus/48000/2``; pre-skip 0 because the sender's encoder delay is not
    known here (at most a few ms of priming samples are played).
    """
    return (
        b"OpusHead"
        + bytes([1, channels])
        + (0).to_bytes(2, "little")
        + OPUS_RATE.to_bytes(4, "little")
        + (0).to_bytes(2, "little")
        + b"\x00"
    )


def opus_samples(packet: bytes) -> int:
    """How many 48 kHz samples an Opus packet holds, from its TOC byte (RFC 6716 §3.1)."""
    if not packet:
        return 0
    toc = packet[0]
    config = toc >> 3
    if config < 12:  # SILK: 10, 20, 40, 60 ms
        frame = (480, 960, 1920, 2880)[config & 3]
    elif config < 16:  # hybrid: 10, 20 ms
        frame = (480, 960)[config & 1]
    else:  # CELT: 2.5, 5, 10, 20 ms
        frame = (120, 240, 480, 960)[config & 3]
    code = toc & 3
    if code == 0:
        count = 1
    elif code in (1, 2):
        count = 2
    else:
        count = packet[1] & 0x3F if len(packet) > 1 else 0
    return frame * count


def vp8_size(frame: bytes) -> tuple[int, int] | None:
    """A VP8 keyframe's (width, height) (RFC 6386 §9.1); None for other frames."""
    if len(frame) < 10 or frame[0] & 0x01 or frame[3:6] != b"\x9d\x01\x2a":
        return None
    width = int.from_bytes(frame[6:8], "little") & 0x3FFF
    height = int.from_bytes(frame[8:10], "little") & 0x3FFF
    return (width, height) if width and height else None


def h264_nal_units(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B access unit (without their start codes)."""
    units: list[bytes] = []
    starts = [m.end() for m in re.finditer(b"\x00\x00\x01", data)]
    for i, start in enumerate(starts):
        end = starts[i + 1] - 3 if i + 1 < len(starts) else len(data)
        unit = data[start:end].rstrip(b"\x00") if i + 1 < len(starts) else data[start:end]
        if unit:
            units.append(unit)
    return units


def h264_parameter_sets(data: bytes) -> bytes | None:
    """The SPS and PPS of an H264 keyframe, as Annex B (the muxer writes them as avcC)."""
    units = h264_nal_units(data)
    sps = [u for u in units if u[0] & 0x1F == 7]
    pps = [u for u in units if u[0] & 0x1F == 8]
    if not sps or not pps:
        return None
    return b"".join(b"\x00\x00\x00\x01" + u for u in (sps[0], *pps))


class _Bits:
    """An H264 RBSP bit reader with Exp-Golomb codes (ITU-T H.264 §7.2, §9.1)."""

    def __init__(self, nal: bytes) -> None:
        self._data = re.sub(b"\x00\x00\x03", b"\x00\x00", nal[1:])  # emulation prevention
        self._pos = 0

    def bits(self, n: int) -> int:
        value = 0
        for _ in range(n):
            byte = self._data[self._pos >> 3]  # IndexError past the end: a truncated SPS
            value = (value << 1) | ((byte >> (7 - (self._pos & 7))) & 1)
            self._pos += 1
        return value

    def ue(self) -> int:
        zeros = 0
        while self.bits(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad Exp-Golomb code")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        code = self.ue()
        return (code + 1) // 2 if code & 1 else -(code // 2)


_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


def h264_size(sps: bytes) -> tuple[int, int] | None:
    """(width, height) from an H264 SPS NAL unit (cropping applied); None if unreadable."""
    try:
        return _h264_size(_Bits(sps))
    except (IndexError, ValueError):
        return None


def _h264_size(r: _Bits) -> tuple[int, int] | None:
    profile = r.bits(8)
    r.bits(16)  # constraint flags, level
    r.ue()  # seq_parameter_set_id
    chroma_format = 1
    separate_planes = 0
    if profile in _HIGH_PROFILES:
        chroma_format = r.ue()
        if chroma_format == 3:
            separate_planes = r.bits(1)
        r.ue()  # bit_depth_luma_minus8
        r.ue()  # bit_depth_chroma_minus8
        r.bits(1)  # qpprime_y_zero_transform_bypass_flag
        if r.bits(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format != 3 else 12):
                if r.bits(1):
                    _skip_scaling_list(r, 16 if i < 6 else 64)
    r.ue()  # log2_max_frame_num_minus4
    poc_type = r.ue()
    if poc_type == 0:
        r.ue()
    elif poc_type == 1:
        r.bits(1)
        r.se()
        r.se()
        for _ in range(r.ue()):
            r.se()
    r.ue()  # max_num_ref_frames
    r.bits(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs = r.ue() + 1
    height_units = r.ue() + 1
    frame_mbs_only = r.bits(1)
    if not frame_mbs_only:
        r.bits(1)  # mb_adaptive_frame_field_flag
    r.bits(1)  # direct_8x8_inference_flag
    crop = (r.ue(), r.ue(), r.ue(), r.ue()) if r.bits(1) else (0, 0, 0, 0)
    if chroma_format == 0 or separate_planes:
        unit_x, unit_y = 1, 2 - frame_mbs_only
    else:
        unit_x = 2 if chroma_format in (1, 2) else 1
        unit_y = (2 if chroma_format == 1 else 1) * (2 - frame_mbs_only)
    width = width_mbs * 16 - unit_x * (crop[0] + crop[1])
    height = (2 - frame_mbs_only) * height_units * 16 - unit_y * (crop[2] + crop[3])
    return (width, height) if width > 0 and height > 0 else None


def _skip_scaling_list(r: _Bits, size: int) -> None:
    last = scale = 8
    for _ in range(size):
        if scale != 0:
            scale = (last + r.se() + 256) % 256
        last = scale if scale != 0 else last


# --- timestamps ------------------------------------------------------------------------


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


# --- results ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Recording:
    """One finished recording file: one party of one call."""

    call_id: str
    """The call id (for a file only found on disk: its directory's name, the id made safe)."""
    party: str
    path: Path
    size_bytes: int
    duration_s: float | None
    """From the party's first to its last packet; None if not known (an earlier process)."""
    start_s: float | None
    """Where the file starts on the call's timeline (its first pts); None if not known."""
    complete: bool
    """False for a file whose muxing failed or that a crashed process never finished."""


@dataclass(frozen=True, slots=True)
class RecordingStats:
    directory: Path
    frames_queued: int
    frames_dropped: int
    """Frames not recorded: the queue was full, or video waited for a keyframe."""
    frames_written: int
    failed: tuple[str, ...]
    """Parties whose file failed."""


def safe_name(text: str) -> str:
    """``text`` as one path component: [A-Za-z0-9_-] kept, anything else replaced, plus a
    digest of the original when something had to be replaced (so names stay distinct)."""
    safe = _SAFE.sub("_", text)[:80]
    if safe != text or not safe:
        safe = f"{safe}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    return safe


def scan_recordings(
    record_dir: Path, known: Mapping[Path, Recording], active: Iterable[Path] = ()
) -> list[Recording]:
    """Every recording file under ``record_dir`` (blocking I/O: run it in a thread).

    ``known`` supplies what this process measured (party, duration); ``active`` are call
    directories still being written, whose ``.part`` files are skipped.
    """
    busy = {p.resolve() for p in active}
    found: list[Recording] = []
    try:
        call_dirs = sorted(p for p in record_dir.iterdir() if p.is_dir())
    except FileNotFoundError:
        return []
    for call_dir in call_dirs:
        for path in sorted(call_dir.iterdir()):
            name = path.name
            if name.endswith(".part"):
                if call_dir.resolve() in busy:
                    continue
                stem, complete = name.removesuffix(".part"), False
            elif name.endswith((".webm", ".mkv")):
                stem = name.rsplit(".", 1)[0]
                complete = not stem.endswith(".failed")
            else:
                continue
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            seen = known.get(path)
            party = seen.party if seen is not None else stem.split(".", 1)[0]
            found.append(
                Recording(
                    call_id=seen.call_id if seen is not None else call_dir.name,
                    party=party,
                    path=path,
                    size_bytes=size,
                    duration_s=seen.duration_s if seen is not None else None,
                    start_s=seen.start_s if seen is not None else None,
                    complete=complete and (seen.complete if seen is not None else True),
                )
            )
    return found


# --- the muxing side (runs on the recorder's thread; sans-thread, so tests drive it) -----


@dataclass(frozen=True, slots=True)
class QueuedFrame:
    party: str
    kind: str
    source: int
    """Which attachment of (party, kind) it came from: a new one means a reconnect."""
    arrival_s: float
    frame: EncodedFrame


@dataclass(frozen=True, slots=True)
class Expect:
    """A party's leg was attached: the kinds it publishes (ordinal 0 of each)."""

    party: str
    kinds: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Start:
    """The call's time origin: wall clock at the first frame (for the files' metadata)."""

    wall_time: float


@dataclass
class _PartyFile:
    party: str
    kinds: tuple[str, ...] = ()
    pending: list[QueuedFrame] = field(default_factory=list)
    container: OutputContainer | None = None
    streams: dict[str, Stream] = field(default_factory=dict)
    mappers: dict[str, TimestampMapper] = field(default_factory=dict)
    sources: dict[str, int] = field(default_factory=dict)
    held: dict[str, deque[QueuedFrame]] = field(default_factory=dict)
    holds: dict[str, float] = field(default_factory=dict)
    part: Path | None = None
    final: Path | None = None
    failed_path: Path | None = None
    failed: str | None = None
    written: int = 0
    first_pts_s: float | None = None
    last_s: float | None = None
    undeclared: set[str] = field(default_factory=set)

    @property
    def header_ready(self) -> bool:
        seen = {f.kind for f in self.pending}
        return bool(self.kinds) and all(k in seen for k in self.kinds)


class RecordingWriter:
    """Muxes one call's queued frames into one Matroska file per party (no codec opened)."""

    def __init__(
        self,
        call_id: str,
        directory: Path,
        *,
        video_codec: VideoCodec,
        start_wait_s: float,
    ) -> None:
        self.call_id = call_id
        self.directory = directory
        self.video_codec = video_codec
        self._format, self._suffix = _FORMATS[video_codec]
        self._video_mime = f"video/{video_codec}".lower()
        self._start_wait_s = start_wait_s
        self._wall_time: float | None = None
        self._parties: dict[str, _PartyFile] = {}
        self._templates: dict[str, Stream] = {}
        self._scratch: OutputContainer | None = None
        self.frames_written = 0

    @property
    def failed(self) -> tuple[str, ...]:
        return tuple(p.party for p in self._parties.values() if p.failed is not None)

    def handle(self, item: QueuedFrame | Expect | Start, now_s: float) -> None:
        """One queue item; ``now_s`` is the current time on the arrival timeline."""
        if isinstance(item, Start):
            self._wall_time = item.wall_time
        elif isinstance(item, Expect):
            party = self._party(item.party)
            if party.container is None:
                party.kinds = item.kinds
            elif set(item.kinds) - set(party.streams):
                log.warning(
                    "media: recording %s/%s: re-offered with %s after its file started: "
                    "not recorded",
                    self.call_id,
                    item.party,
                    sorted(set(item.kinds) - set(party.streams)),
                )
        else:
            self._frame(item)
        self.tick(now_s)

    def tick(self, now_s: float) -> None:
        """Write the header of any party that has waited long enough for its keyframe."""
        for party in self._parties.values():
            if party.container is None and party.failed is None and party.pending:
                waited = now_s - party.pending[0].arrival_s
                if (
                    party.header_ready
                    or waited >= self._start_wait_s
                    or len(party.pending) >= PENDING_MAX
                ):
                    self._open(party)

    def next_deadline(self) -> float | None:
        """When (on the arrival timeline) ``tick`` next has something to do, if ever."""
        times = [
            p.pending[0].arrival_s + self._start_wait_s
            for p in self._parties.values()
            if p.container is None and p.failed is None and p.pending
        ]
        return min(times, default=None)

    def finish(self) -> list[Recording]:
        """Close every file; returns what was recorded (failed files included)."""
        results: list[Recording] = []
        for party in self._parties.values():
            if party.container is None and party.failed is None and party.pending:
                self._open(party)
            result = self._close(party)
            if result is not None:
                results.append(result)
        if self._scratch is not None:
            with contextlib.suppress(Exception):
                self._scratch.close()
            self._scratch = None
        return results

    # -- internals

    def _party(self, name: str) -> _PartyFile:
        party = self._parties.get(name)
        if party is None:
            party = self._parties[name] = _PartyFile(name)
        return party

    def _frame(self, item: QueuedFrame) -> None:
        party = self._party(item.party)
        if party.failed is not None:
            return
        expected = AUDIO_MIME if item.kind == "audio" else self._video_mime
        if item.frame.mime_type.lower() != expected:
            if item.kind not in party.undeclared:
                party.undeclared.add(item.kind)
                log.warning(
                    "media: recording %s/%s: %s is %s, not %s: not recorded",
                    self.call_id,
                    item.party,
                    item.kind,
                    item.frame.mime_type,
                    expected,
                )
            return
        if party.container is None:
            party.pending.append(item)
            return
        try:
            self._mux(party, item)
        except Exception as exc:
            self._fail(party, exc)

    def _open(self, party: _PartyFile) -> None:
        pending, party.pending = party.pending, []
        try:
            self._create(party, pending)
            for item in pending:
                self._mux(party, item)
        except Exception as exc:
            self._fail(party, exc)

    def _create(self, party: _PartyFile, pending: list[QueuedFrame]) -> None:
        kinds = [k for k in _KINDS if k in party.kinds or any(f.kind == k for f in pending)]
        directory = self.directory / safe_name(self.call_id)
        directory.mkdir(parents=True, exist_ok=True)
        base = safe_name(party.party)
        for n in range(1, 1000):
            stem = base if n == 1 else f"{base}-{n}"
            final = directory / f"{stem}{self._suffix}"
            part = directory / f"{stem}{self._suffix}.part"
            if final.exists() or (directory / f"{stem}.failed{self._suffix}").exists():
                continue
            try:
                os.close(os.open(part, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640))
            except FileExistsError:
                continue
            break
        else:  # pragma: no cover - a thousand recordings of one party in one call
            raise FileExistsError(f"no free file name for {party.party!r} in {directory}")
        party.part, party.final = part, final
        party.failed_path = directory / f"{stem}.failed{self._suffix}"
        container = av.open(str(part), mode="w", format=self._format)
        party.container = container
        container.metadata["title"] = f"call {self.call_id}: {party.party}"
        container.metadata["JALWA_CALL_ID"] = self.call_id
        container.metadata["JALWA_PARTY"] = party.party
        if self._wall_time is not None:
            started = datetime.fromtimestamp(self._wall_time, tz=UTC)
            container.metadata["creation_time"] = started.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        for kind in kinds:
            first = next((f.frame for f in pending if f.kind == kind), None)
            stream = self._add_stream(container, kind, first, party.party)
            if stream is None:
                continue
            stream.metadata["title"] = f"{party.party} {kind}"
            stream.disposition = Disposition.default  # players pick it without being asked
            party.streams[kind] = stream
        container.start_encoding()
        for kind, stream in party.streams.items():
            time_base = stream.time_base
            if time_base is None:  # pragma: no cover - Matroska always sets 1/1000
                raise RuntimeError(f"the muxer gave the {kind} stream no time base")
            party.mappers[kind] = TimestampMapper(time_base)
        log.info(
            "media: recording %s/%s to %s (%s)", self.call_id, party.party, final, "+".join(kinds)
        )

    def _add_stream(
        self, container: OutputContainer, kind: str, first: EncodedFrame | None, party: str
    ) -> Stream | None:
        """The output stream for ``kind``, from codec parameters; None if there are none.

        VP8 needs none but the frame size, so a stream whose first keyframe has not come
        yet is declared with ``DEFAULT_SIZE`` (decoders take the size from the bitstream)
        and its video is recorded once it starts. H264 in Matroska needs the SPS/PPS in the
        header: without a keyframe that has them, the file has no video.
        """
        if kind == "audio":
            stream = container.add_stream_from_template(self._template("libopus"), opaque=True)
            stream.codec_context.extradata = opus_head()
            return stream
        size: tuple[int, int] | None = None
        extradata: bytes | None = None
        if self.video_codec == "VP8":
            size = vp8_size(first.data) if first is not None else None
        else:
            extradata = h264_parameter_sets(first.data) if first is not None else None
            if extradata is None:
                log.warning(
                    "media: recording %s/%s: no H264 keyframe with SPS/PPS before the file "
                    "started: its video is not recorded",
                    self.call_id,
                    party,
                )
                return None
            assert first is not None
            sps = next((u for u in h264_nal_units(first.data) if u[0] & 0x1F == 7), None)
            size = h264_size(sps) if sps is not None else None
        codec = "vp8" if self.video_codec == "VP8" else "h264"
        stream = container.add_stream_from_template(self._template(codec), opaque=True)
        if size is None:
            log.info(
                "media: recording %s/%s: video size not known yet; declaring %dx%d",
                self.call_id,
                party,
                *DEFAULT_SIZE,
            )
        ctx: Any = stream.codec_context
        ctx.width, ctx.height = size or DEFAULT_SIZE
        # WebRTC video has no constant frame rate: claim none (PyAV's template says 24 fps,
        # which Matroska would write as the track's DefaultDuration).
        ctx.framerate = Fraction(0, 1)
        if extradata is not None:
            ctx.extradata = extradata
        return stream

    def _template(self, codec: str) -> Stream:
        """A stream that only carries codec parameters: its context is never opened.

        ``add_stream_from_template`` copies them into a context PyAV marks as initialised,
        so writing the header opens no encoder (``add_stream`` would open one: libx264
        would even replace the SPS/PPS with its own).
        """
        template = self._templates.get(codec)
        if template is None:
            if self._scratch is None:
                self._scratch = av.open(io.BytesIO(), mode="w", format=self._format)
            template = self._scratch.add_stream(
                codec, rate=OPUS_RATE if codec == "libopus" else None
            )
            self._templates[codec] = template
        return template

    def _mux(self, party: _PartyFile, item: QueuedFrame) -> None:
        """Hold ``RELEASED_BY[kind]`` frames back to learn when each one really arrived."""
        held = party.held.setdefault(item.kind, deque())
        if held and held[-1].source != item.source:
            self._flush_held(party, item.kind)
        depth = RELEASED_BY.get(item.kind, 0)
        if len(held) >= depth > 0:
            oldest = held.popleft()
            hold = (item.frame.timestamp - oldest.frame.timestamp) / oldest.frame.clock_rate
            if 0 <= hold <= MAX_HOLD_S:
                party.holds[item.kind] = hold
            else:
                hold = self._hold_estimate(party, item.kind)
            self._write(party, oldest, hold)
        if depth > 0:
            held.append(item)
        else:
            self._write(party, item, 0.0)

    def _flush_held(self, party: _PartyFile, kind: str) -> None:
        held = party.held.get(kind)
        while held:
            self._write(party, held.popleft(), self._hold_estimate(party, kind))

    @staticmethod
    def _hold_estimate(party: _PartyFile, kind: str) -> float:
        known = party.holds.get(kind)
        if known is not None:
            return known
        return RELEASED_BY.get(kind, 0) * _NOMINAL_FRAME_S.get(kind, 0.0)

    def _write(self, party: _PartyFile, item: QueuedFrame, hold_s: float) -> None:
        container = party.container
        stream = party.streams.get(item.kind)
        if container is None or stream is None:
            if item.kind not in party.undeclared:
                party.undeclared.add(item.kind)
                log.warning(
                    "media: recording %s/%s: %s started after the file did: not recorded",
                    self.call_id,
                    item.party,
                    item.kind,
                )
            return
        mapper = party.mappers[item.kind]
        if party.sources.get(item.kind) != item.source:
            if item.kind in party.sources:
                mapper.restart()
            party.sources[item.kind] = item.source
        frame = item.frame
        pts = mapper.map(item.arrival_s - hold_s, frame.timestamp, frame.clock_rate)
        packet = av.Packet(frame.data)
        packet.stream = stream
        packet.time_base = mapper.time_base
        packet.pts = packet.dts = pts
        packet.is_keyframe = frame.keyframe
        end_s = float(pts * mapper.time_base)
        if item.kind == "audio":
            samples = opus_samples(frame.data)
            packet.duration = max(1, round(Fraction(samples, OPUS_RATE) / mapper.time_base))
            end_s += samples / OPUS_RATE
        container.mux(packet)
        party.written += 1
        self.frames_written += 1
        start_s = float(pts * mapper.time_base)
        if party.first_pts_s is None or start_s < party.first_pts_s:
            party.first_pts_s = start_s
        party.last_s = max(end_s, party.last_s or end_s)

    def _fail(self, party: _PartyFile, exc: BaseException) -> None:
        party.failed = f"{type(exc).__name__}: {exc}"
        party.pending = []
        party.held.clear()
        log.error(
            "media: recording %s/%s failed: %s",
            self.call_id,
            party.party,
            party.failed,
            exc_info=exc,
        )
        container, party.container = party.container, None
        if container is not None:
            with contextlib.suppress(Exception):
                container.close()
        if party.part is None:
            return
        if party.written == 0:
            party.part.unlink(missing_ok=True)
            return
        source = party.part if party.part.exists() else party.final
        try:
            if source is not None and party.failed_path is not None:
                source.rename(party.failed_path)
                party.final = party.failed_path
        except OSError:
            log.exception("media: cannot mark %s as failed", source)

    def abort(self, exc: BaseException) -> None:
        """Mark every file still open as failed (the recorder's thread crashed)."""
        for party in self._parties.values():
            if party.failed is None and (party.container is not None or party.pending):
                self._fail(party, exc)

    def _close(self, party: _PartyFile) -> Recording | None:
        if party.failed is None and party.container is not None:
            try:
                for kind in list(party.held):
                    self._flush_held(party, kind)
            except Exception as exc:
                self._fail(party, exc)
        if party.failed is None and party.container is not None:
            container, party.container = party.container, None
            try:
                container.close()
                if party.part is None or party.final is None:  # pragma: no cover
                    raise RuntimeError("a recording file without a path")
                if party.written == 0:
                    party.part.unlink(missing_ok=True)
                    log.info("media: recording %s/%s: no media", self.call_id, party.party)
                    return None
                party.part.rename(party.final)
            except Exception as exc:
                party.written = max(party.written, 1)  # keep what is there, marked failed
                self._fail(party, exc)
        if party.final is None or party.written == 0 or not party.final.exists():
            return None
        duration = None
        if party.first_pts_s is not None and party.last_s is not None:
            duration = party.last_s - party.first_pts_s
        result = Recording(
            call_id=self.call_id,
            party=party.party,
            path=party.final,
            size_bytes=party.final.stat().st_size,
            duration_s=duration,
            start_s=party.first_pts_s,
            complete=party.failed is None,
        )
        log.info(
            "media: recording %s/%s %s: %s, %d bytes, %.1f s",
            self.call_id,
            party.party,
            "finished" if result.complete else "FAILED",
            result.path,
            result.size_bytes,
            duration or 0.0,
        )
        return result


# --- the event-loop side ----------------------------------------------------------------


_STOP: Final = object()


class CallRecorder:
    """Records one call: taps each party's publications, muxes on its own thread."""

    def __init__(
        self,
        call_id: str,
        directory: Path,
        *,
        video_codec: VideoCodec,
        clock: Clock,
        capacity: int,
        start_wait_s: float,
    ) -> None:
        self.call_id = call_id
        self.directory = directory
        self.call_directory = directory / safe_name(call_id)
        self._clock = clock
        self._capacity = capacity
        self._queue: queue.Queue[object] = queue.Queue()
        self._writer = RecordingWriter(
            call_id, directory, video_codec=video_codec, start_wait_s=start_wait_s
        )
        self._sources: dict[tuple[str, str], int] = {}
        self._waiting_keyframe: dict[tuple[str, str], bool] = {}
        self._taps: list[tuple[Publication, Any]] = []
        self._t0: float | None = None
        self._closed = False
        self._queued = 0
        self._dropped = 0
        self._done: concurrent.futures.Future[list[Recording]] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, name=f"recorder-{safe_name(call_id)}", daemon=True
        )
        self._thread.start()

    def attach(self, party: str, publications: Mapping[Slot, Publication]) -> None:
        """Record what ``party`` publishes (its first audio and video m-line), from now on.

        Called again for a party that reconnected: its new leg's frames replace the old
        leg's (the mapper re-anchors, video restarts at a keyframe).
        """
        if self._closed:
            return
        chosen = {kind: pub for (kind, ordinal), pub in publications.items() if ordinal == 0}
        kinds = tuple(k for k in _KINDS if k in chosen)
        self._queue.put(Expect(party, kinds))
        for kind in kinds:
            publication = chosen[kind]
            key = (party, kind)
            source = self._sources[key] = self._sources.get(key, 0) + 1

            def sink(
                frame: EncodedFrame,
                key: tuple[str, str] = key,
                source: int = source,
                publication: Publication = publication,
            ) -> None:
                self._on_frame(key, source, publication, frame)

            publication.add_tap(sink)
            self._taps.append((publication, sink))
            self._waiting_keyframe[key] = kind == "video"
            if kind == "video":
                publication.request_keyframe()
        extra = sorted({f"{k}#{o}" for (k, o) in publications if o != 0})
        if extra:
            log.info("media: recording %s/%s: not recording %s", self.call_id, party, extra)

    def stats(self) -> RecordingStats:
        return RecordingStats(
            directory=self.call_directory,
            frames_queued=self._queued,
            frames_dropped=self._dropped,
            frames_written=self._writer.frames_written,
            failed=self._writer.failed,
        )

    async def close(self) -> list[Recording]:
        """Stop taking frames, mux what is queued, close the files (idempotent)."""
        if not self._closed:
            self._closed = True
            for publication, sink in self._taps:
                publication.remove_tap(sink)
            self._taps.clear()
            self._queue.put(_STOP)
        return await asyncio.shield(asyncio.wrap_future(self._done))

    def _on_frame(
        self, key: tuple[str, str], source: int, publication: Publication, frame: EncodedFrame
    ) -> None:
        # On the event loop, for every frame: cheap, never blocks.
        if self._closed or self._sources.get(key) != source:
            return  # closing, or a replaced leg's publication
        party, kind = key
        if self._waiting_keyframe.get(key):
            if not frame.keyframe:
                self._dropped += 1  # the publication keeps asking for one until it comes
                return
            self._waiting_keyframe[key] = False
        if self._queue.qsize() >= self._capacity:
            self._dropped += 1
            if kind == "video":
                self._waiting_keyframe[key] = True
                publication.request_keyframe()
            return
        now = self._clock.monotonic()
        if self._t0 is None:
            self._t0 = now
            self._queue.put(Start(self._clock.time()))
        self._queue.put(QueuedFrame(party, kind, source, now - self._t0, frame))
        self._queued += 1

    def _now(self) -> float:
        return self._clock.monotonic() - self._t0 if self._t0 is not None else 0.0

    def _run(self) -> None:
        # The recorder's thread: all PyAV and file work happens here.
        self._done.set_running_or_notify_cancel()
        writer = self._writer
        try:
            while True:
                deadline = writer.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - self._now())
                try:
                    item = self._queue.get(timeout=timeout)
                except queue.Empty:
                    writer.tick(self._now())
                    continue
                if item is _STOP:
                    break
                if isinstance(item, QueuedFrame | Expect | Start):
                    writer.handle(item, self._now())
            self._done.set_result(writer.finish())
        except BaseException as exc:  # a bug: mark what was written, never leave it silent
            log.exception("media: recorder of call %s crashed", self.call_id)
            with contextlib.suppress(BaseException):
                writer.abort(exc)
            self._done.set_exception(exc)
