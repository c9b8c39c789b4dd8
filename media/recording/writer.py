"""The muxing side of a recording: queued encoded frames into one Matroska file per party.

Runs on the recorder's thread (media/recording/recorder.py) but knows nothing of it: frames
go in by ``handle``, time by its ``now_s`` argument, so tests drive it directly.

Where frames go
    PyAV muxes them into Matroska: WebM (``.webm``) for VP8 + Opus, ``.mkv`` for H264 +
    Opus. Output streams are made from codec parameters only (media/recording/bitstream.py)
    and no codec is ever opened; packets go to ``OutputContainer.mux`` as received. A
    party's header waits up to ``media.record_start_wait_s`` for its first video keyframe;
    if none came by then, VP8 is declared at a placeholder size (decoders use the
    bitstream's) and recorded once it starts, while H264, which Matroska needs SPS/PPS for
    up front, is left out (logged).

One file per party, not one four-stream file per call
    A single file with both parties' four streams was tried and rejected: libavformat's
    interleaver never flushes while a VP8 stream has nothing queued (VP8/VP9 are left out
    of its ``max_interleave_delta`` check), so one party turning their camera off made it
    hold the *other* party's audio and video in memory until the camera came back or the
    call ended (measured: nothing written for minutes). Per party, a camera-off only holds
    back that party's own audio, a few KB/s. The files line up on the call's shared
    timeline (media/recording/timeline.py).
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any, Final

import av
from av.container import OutputContainer
from av.stream import Disposition, Stream

from media.codecs import AUDIO_MIME
from media.recording.bitstream import (
    OPUS_RATE,
    h264_nal_units,
    h264_parameter_sets,
    h264_size,
    opus_head,
    opus_samples,
    vp8_size,
)
from media.recording.files import Recording, claim_paths, safe_name
from media.recording.timeline import ReleaseDelay, TimestampMapper
from media.rtp_hooks import EncodedFrame
from media.settings import VideoCodec

log = logging.getLogger(__name__)

PENDING_MAX: Final = 2000
"""Frames a party's file holds back, at most, while it waits for its header."""
DEFAULT_SIZE: Final = (640, 480)
"""Frame size declared when no keyframe told the real one (decoders use the bitstream's)."""

KINDS = ("audio", "video")
_FORMATS: Final[dict[str, tuple[str, str]]] = {
    "VP8": ("webm", ".webm"),
    "H264": ("matroska", ".mkv"),
}


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
    held: dict[str, ReleaseDelay[QueuedFrame]] = field(default_factory=dict)
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
        kinds = [k for k in KINDS if k in party.kinds or any(f.kind == k for f in pending)]
        directory = self.directory / safe_name(self.call_id)
        directory.mkdir(parents=True, exist_ok=True)
        paths = claim_paths(directory, party.party, self._suffix)
        party.part, party.final, party.failed_path = paths.part, paths.final, paths.failed
        container = av.open(str(paths.part), mode="w", format=self._format)
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
            "media: recording %s/%s to %s (%s)",
            self.call_id,
            party.party,
            paths.final,
            "+".join(kinds),
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
        delay = party.held.get(item.kind)
        if delay is None:
            delay = party.held[item.kind] = ReleaseDelay(item.kind)
        for released, hold_s in delay.push(item):
            self._write(party, released, hold_s)

    def _flush_held(self, party: _PartyFile, kind: str) -> None:
        delay = party.held.get(kind)
        for released, hold_s in delay.flush() if delay is not None else ():
            self._write(party, released, hold_s)

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
