"""media/recording.py without sockets: timestamp mapping, codec parameters, the writer, the tap.

Encoded frames are made here with PyAV's encoders (libopus, libvpx, libx264), so the writer
is fed what a real publisher sends; the files it writes are read back (and decoded) here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import pytest
from aiortc import RTCConfiguration
from av import AudioFrame, VideoFrame

from media.clock import ManualClock
from media.errors import NotSupported
from media.forwarding import Publication
from media.recording import (
    DEFAULT_SIZE,
    RELEASED_BY,
    CallRecorder,
    Expect,
    QueuedFrame,
    Recording,
    RecordingWriter,
    Start,
    TimestampMapper,
    h264_nal_units,
    h264_parameter_sets,
    h264_size,
    opus_head,
    opus_samples,
    safe_name,
    scan_recordings,
    vp8_size,
)
from media.rtp_hooks import EncodedFrame
from media.settings import MediaSettings
from media.sfu import Sfu

MS = Fraction(1, 1000)


# --- timestamps -------------------------------------------------------------------------


def test_pts_follow_rtp_spacing_anchored_at_the_least_delayed_arrival() -> None:
    mapper = TimestampMapper(MS)
    # 20 ms audio frames; network delay varies 0-15 ms; the first frame was 10 ms late.
    delays = [0.010, 0.004, 0.015, 0.000, 0.007, 0.012, 0.001]
    pts = [mapper.map(1.0 + i * 0.02 + d, i * 960, 48_000) for i, d in enumerate(delays)]
    # Until the least delayed frame (i=3) the offset comes down; from then on the spacing
    # is exactly the RTP spacing, whatever the arrival jitter.
    assert pts[3:] == [1060, 1080, 1100, 1120]
    assert pts == sorted(pts) and len(set(pts)) == len(pts)


def test_pts_strictly_increase_even_when_the_clock_says_otherwise() -> None:
    mapper = TimestampMapper(MS)
    # The same RTP time twice, then a step back (aiortc rebased, or a reordered frame).
    pts = [
        mapper.map(0.5, 0, 90_000),
        mapper.map(0.5, 0, 90_000),
        mapper.map(0.5004, 10, 90_000),
        mapper.map(0.49, 0, 90_000),
    ]
    assert pts == [500, 501, 502, 503]


def test_a_sender_pause_or_jump_re_anchors_on_the_arrival_clock() -> None:
    mapper = TimestampMapper(MS)
    assert mapper.map(1.0, 0, 90_000) == 1000
    # The RTP clock barely moved but the frame arrives 5 s later (sender restarted its
    # timestamps): trust the arrival clock.
    assert mapper.map(6.0, 3000, 90_000) == 6000
    assert mapper.resyncs == 1
    # aiortc's TimestampMapper took a backward RTP step for a wrap: +2^32 ticks (13 h).
    assert mapper.map(6.5, 3000 + 2**32, 90_000) == 6500
    # ...and the spacing after it is the RTP spacing again.
    assert mapper.map(6.54, 3000 + 2**32 + 3000, 90_000) == 6533


def test_restart_anchors_a_new_source_without_going_back() -> None:
    mapper = TimestampMapper(MS)
    for i in range(10):
        mapper.map(2.0 + i / 30, i * 3000, 90_000)
    last = mapper.last_pts
    assert last == 2300
    mapper.restart()  # the party reconnected: new RTP origin
    assert mapper.map(2.35, 0, 90_000) == 2350
    assert mapper.map(2.36, 0, 90_000) == 2351


# --- codec parameters -------------------------------------------------------------------


def test_opus_head_is_rfc7845() -> None:
    head = opus_head()
    assert len(head) == 19 and head[:8] == b"OpusHead"
    assert head[8] == 1 and head[9] == 2  # version, channels
    assert int.from_bytes(head[12:16], "little") == 48_000
    assert head[18] == 0  # mapping family 0


@pytest.mark.parametrize(
    ("packet", "samples"),
    [
        (bytes([0xFC, 0]), 960),  # CELT FB 20 ms, one frame
        (bytes([0x78]), 960),  # hybrid FB 20 ms
        (bytes([0x08]), 960),  # SILK NB 20 ms
        (bytes([0x18]), 2880),  # SILK NB 60 ms
        (bytes([0xF9]), 1920),  # CELT 20 ms, two frames (code 1)
        (bytes([0xF3, 0x04]), 4 * 480),  # CELT FB 10 ms, code 3 with 4 frames
        (bytes([0xE0]), 120),  # CELT NB 2.5 ms
        (b"", 0),
    ],
)
def test_opus_samples_from_the_toc(packet: bytes, samples: int) -> None:
    assert opus_samples(packet) == samples


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


def test_vp8_size_from_a_keyframe_only() -> None:
    packets = encode_video("libvpx", 320, 180, 3)
    assert packets[0].is_keyframe
    assert vp8_size(bytes(packets[0])) == (320, 180)
    assert not packets[1].is_keyframe and vp8_size(bytes(packets[1])) is None
    assert vp8_size(b"\x00" * 4) is None


@pytest.mark.parametrize(
    ("width", "height", "profile"),
    [(320, 180, "baseline"), (640, 480, "high"), (1280, 720, "main"), (176, 144, "baseline")],
)
def test_h264_size_and_parameter_sets_from_a_keyframe(
    width: int, height: int, profile: str
) -> None:
    packets = encode_video(
        "libx264", width, height, 1, profile=profile, tune="zerolatency", preset="ultrafast"
    )
    keyframe = bytes(packets[0])
    units = h264_nal_units(keyframe)
    types = [u[0] & 0x1F for u in units]
    assert 7 in types and 8 in types and 5 in types
    sps = next(u for u in units if u[0] & 0x1F == 7)
    assert h264_size(sps) == (width, height)
    sets = h264_parameter_sets(keyframe)
    assert (
        sets is not None
        and sets.startswith(b"\x00\x00\x00\x01")
        and sets.count(b"\x00\x00\x00\x01") == 2
    )
    assert h264_size(sps[:4]) is None  # truncated: not a crash
    assert h264_parameter_sets(b"\x00\x00\x00\x01\x65abc") is None  # IDR without SPS/PPS


def test_safe_name_keeps_ids_in_one_directory() -> None:
    assert safe_name("call-1_a") == "call-1_a"
    for bad in ("../../etc", "a/b", "", ".", "ü"):
        name = safe_name(bad)
        assert "/" not in name and name not in ("", ".", "..") and not name.startswith(".")
    assert safe_name("a/b") != safe_name("a_b")


# --- the writer (sans thread) -------------------------------------------------------------


class Feed:
    """Frames for a RecordingWriter as the tap would queue them (arrival = release time)."""

    def __init__(self, writer: RecordingWriter) -> None:
        self.writer = writer
        self.now = 0.0

    def put(self, item: QueuedFrame | Expect | Start) -> None:
        self.writer.handle(item, self.now)

    def audio(
        self, party: str, i: int, data: bytes, source: int = 1, at: float | None = None
    ) -> None:
        # Released by aiortc when frame i+4 arrives: 80 ms after its own arrival.
        arrival = (i + RELEASED_BY["audio"]) * 0.02 if at is None else at
        frame = EncodedFrame("audio", "audio/opus", 48_000, i * 960, data, True)
        self.put(QueuedFrame(party, "audio", source, arrival, frame))

    def video(
        self, party: str, i: int, data: bytes, key: bool, source: int = 1, codec: str = "VP8"
    ) -> None:
        arrival = (i + RELEASED_BY["video"]) / 30
        frame = EncodedFrame("video", f"video/{codec}", 90_000, i * 3000, data, key)
        self.put(QueuedFrame(party, "video", source, arrival, frame))


def writer_for(tmp_path: Path, codec: str = "VP8", start_wait_s: float = 5.0) -> RecordingWriter:
    assert codec in ("VP8", "H264")
    return RecordingWriter(
        "call-9",
        tmp_path,
        video_codec="VP8" if codec == "VP8" else "H264",
        start_wait_s=start_wait_s,
    )


def packets_of(path: Path) -> dict[str, list[tuple[int, bool]]]:
    found: dict[str, list[tuple[int, bool]]] = {}
    with av.open(str(path)) as container:
        for packet in container.demux():
            if packet.size and packet.pts is not None:
                found.setdefault(packet.stream.type, []).append((packet.pts, packet.is_keyframe))
    return found


def test_writer_muxes_a_party_without_decoding_and_dates_frames_at_their_arrival(
    tmp_path: Path,
) -> None:
    writer = writer_for(tmp_path)
    feed = Feed(writer)
    opus = encode_opus(60)
    vp8 = encode_video("libvpx", 320, 180, 36)
    feed.put(Start(1_700_000_000.0))
    feed.put(Expect("alice", ("audio", "video")))
    for i in range(36):
        feed.video("alice", i, bytes(vp8[i]), vp8[i].is_keyframe)
        feed.audio("alice", i, opus[i])
    for i in range(36, 60):
        feed.audio("alice", i, opus[i])
    [result] = writer.finish()

    path = tmp_path / "call-9" / "alice.webm"
    assert (result.call_id, result.party, result.path) == ("call-9", "alice", path)
    assert result.size_bytes == path.stat().st_size and result.complete
    assert result.start_s == 0.0
    assert result.duration_s == pytest.approx(1.2, abs=0.002)
    assert not list(tmp_path.rglob("*.part"))
    found = packets_of(path)
    # Every frame is there, dated at its own arrival (the release delay taken off): the
    # RTP spacing exactly, audio and video of the same instant at the same time.
    assert [pts for pts, _ in found["audio"]] == [round(i * 20) for i in range(60)]
    assert [pts for pts, _ in found["video"]] == [round(i * 1000 / 30) for i in range(36)]
    assert found["video"][0] == (0, True)
    with av.open(str(path)) as container:
        assert container.metadata["JALWA_PARTY"] == "alice"
        assert container.metadata["creation_time"].startswith("2023-11-14T22:13:20")
        video = container.streams.video[0]
        assert (video.codec_context.width, video.codec_context.height) == (320, 180)
        assert video.average_rate is None or video.average_rate > 20  # no claimed 24 fps
        assert container.streams.audio[0].codec_context.extradata == opus_head()
        assert sum(1 for _ in container.decode(video=0)) == 36


def test_h264_party_gets_avcc_parameters_in_mkv(tmp_path: Path) -> None:
    writer = writer_for(tmp_path, "H264")
    feed = Feed(writer)
    packets = encode_video(
        "libx264", 320, 180, 20, profile="baseline", tune="zerolatency", preset="ultrafast"
    )
    feed.put(Expect("bob", ("video",)))
    for i, packet in enumerate(packets):
        feed.video("bob", i, bytes(packet), packet.is_keyframe, codec="H264")
    [result] = writer.finish()
    assert result.path.name == "bob.mkv" and result.complete
    with av.open(str(result.path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        extradata = stream.codec_context.extradata
        assert extradata is not None and extradata[0] == 1  # avcC, made from our SPS/PPS
        assert (stream.codec_context.width, stream.codec_context.height) == (320, 180)
        assert sum(1 for _ in container.decode(video=0)) == len(packets)


@pytest.mark.parametrize("codec", ["VP8", "H264"])
def test_the_header_waits_for_the_first_keyframe_then_gives_up(
    codec: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = writer_for(tmp_path, codec, start_wait_s=2.0)
    feed = Feed(writer)
    opus = encode_opus(200)
    feed.put(Expect("carol", ("audio", "video")))
    for i in range(50):  # 1 s of audio, no video yet: held back
        feed.now = i * 0.02
        feed.audio("carol", i, opus[i])
    assert not (tmp_path / "call-9").exists()
    assert writer.next_deadline() == pytest.approx(4 * 0.02 + 2.0)
    feed.now = 2.5
    writer.tick(feed.now)  # the wait is over: the header goes out without the video's
    suffix = ".webm" if codec == "VP8" else ".mkv"
    assert (tmp_path / "call-9" / f"carol{suffix}.part").exists()
    # The video starts late (at 3 s).
    if codec == "VP8":
        video = encode_video("libvpx", 320, 180, 30)
    else:
        video = encode_video(
            "libx264", 320, 180, 30, profile="baseline", tune="zerolatency", preset="ultrafast"
        )
    for i in range(50, 200):
        feed.audio("carol", i, opus[i])
        if 150 <= i < 180:
            feed.video(
                "carol", i - 60, bytes(video[i - 150]), video[i - 150].is_keyframe, codec=codec
            )
    [result] = writer.finish()
    assert result.complete
    assert len(packets_of(result.path)["audio"]) == 200
    with av.open(str(result.path)) as container:
        if codec == "VP8":
            # Declared at a guessed size, recorded from its first keyframe, decodes at its own.
            declared = container.streams.video[0].codec_context
            assert (declared.width, declared.height) == DEFAULT_SIZE
            frames = list(container.decode(video=0))
            assert len(frames) == 30 and {(f.width, f.height) for f in frames} == {(320, 180)}
        else:
            # Matroska needs H264's SPS/PPS up front: no video rather than a broken file.
            assert len(container.streams.video) == 0
            assert any("video is not recorded" in r.getMessage() for r in caplog.records)


def test_a_reconnect_continues_the_same_file_forward_in_time(tmp_path: Path) -> None:
    writer = writer_for(tmp_path)
    feed = Feed(writer)
    opus = encode_opus(100)
    feed.put(Expect("dan", ("audio",)))
    for i in range(50):
        feed.audio("dan", i, opus[i], source=1)
    # New leg: RTP restarts at 0, frames arrive from 1.5 s on.
    feed.put(Expect("dan", ("audio",)))
    for i in range(50):
        feed.audio("dan", i, opus[50 + i], source=2, at=1.5 + (i + 4) * 0.02)
    [result] = writer.finish()
    pts = [p for p, _ in packets_of(result.path)["audio"]]
    assert len(pts) == 100 and pts == sorted(pts) and len(set(pts)) == 100
    assert pts[49] == 980 and pts[50] == 1500


def test_a_failing_file_is_logged_and_marked_not_left_silently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    writer = writer_for(tmp_path)
    feed = Feed(writer)
    opus = encode_opus(30)
    feed.put(Expect("erin", ("audio",)))
    feed.put(Expect("fay", ("audio",)))
    for i in range(10):
        feed.audio("erin", i, opus[i])
        feed.audio("fay", i, opus[i])
    writer.tick(10.0)  # both headers out
    assert (tmp_path / "call-9" / "erin.webm.part").exists()
    real_write = writer._write

    def disk_full_for_erin(party: Any, item: QueuedFrame, hold_s: float) -> None:
        if item.party == "erin":
            raise OSError(28, "No space left on device")
        real_write(party, item, hold_s)

    monkeypatch.setattr(writer, "_write", disk_full_for_erin)
    caplog.set_level(logging.ERROR, logger="media.recording")
    for i in range(10, 30):
        feed.audio("erin", i, opus[i])
        feed.audio("fay", i, opus[i])
    results = {r.party: r for r in writer.finish()}
    assert writer.failed == ("erin",)
    assert any("erin failed" in r.getMessage() for r in caplog.records)
    assert not results["erin"].complete
    assert results["erin"].path == tmp_path / "call-9" / "erin.failed.webm"
    assert results["fay"].complete and results["fay"].path.name == "fay.webm"
    assert sorted(p.name for p in (tmp_path / "call-9").iterdir()) == [
        "erin.failed.webm",
        "fay.webm",
    ]


def test_no_media_no_file_and_names_never_overwrite(tmp_path: Path) -> None:
    writer = writer_for(tmp_path)
    writer.handle(Expect("gus", ("audio", "video")), 0.0)
    assert writer.finish() == []
    assert not (tmp_path / "call-9").exists()

    for _ in range(2):  # the same call and party recorded twice (e.g. after a restart)
        writer = writer_for(tmp_path)
        feed = Feed(writer)
        feed.put(Expect("gus", ("audio",)))
        for i, packet in enumerate(encode_opus(10)):
            feed.audio("gus", i, packet)
        writer.finish()
    assert sorted(p.name for p in (tmp_path / "call-9").iterdir()) == ["gus-2.webm", "gus.webm"]


def test_scan_lists_finished_failed_and_orphaned_files(tmp_path: Path) -> None:
    done = tmp_path / "c1"
    done.mkdir()
    (done / "alice.webm").write_bytes(b"x" * 10)
    (done / "bob.failed.webm").write_bytes(b"x" * 5)
    crashed = tmp_path / "c2"
    crashed.mkdir()
    (crashed / "carol.webm.part").write_bytes(b"x")
    busy = tmp_path / "c3"
    busy.mkdir()
    (busy / "dan.webm.part").write_bytes(b"x")
    (busy / "notes.txt").write_bytes(b"x")
    known = {
        done / "alice.webm": Recording("c/1", "Alice!", done / "alice.webm", 10, 3.5, 0.2, True)
    }
    found = {r.path.name: r for r in scan_recordings(tmp_path, known, active={busy})}
    assert set(found) == {"alice.webm", "bob.failed.webm", "carol.webm.part"}
    assert found["alice.webm"] == Recording(
        "c/1", "Alice!", done / "alice.webm", 10, 3.5, 0.2, True
    )
    assert (found["bob.failed.webm"].party, found["bob.failed.webm"].complete) == ("bob", False)
    assert found["carol.webm.part"].complete is False
    assert found["carol.webm.part"].duration_s is None
    assert scan_recordings(tmp_path / "missing", {}) == []


# --- the tap and the recorder's queue -------------------------------------------------------


def vp8(i: int, key: bool) -> EncodedFrame:
    return EncodedFrame("video", "video/VP8", 90_000, i * 3000, b"k" if key else b"d", key)


def test_a_tap_gets_every_frame_and_cannot_break_forwarding(
    caplog: pytest.LogCaptureFixture,
) -> None:
    publication = Publication("video", lambda: True, keyframe_interval_s=1.0, clock=ManualClock())
    seen: list[int] = []

    def broken(frame: EncodedFrame) -> None:
        raise RuntimeError("boom")

    publication.add_tap(broken)
    publication.add_tap(lambda f: seen.append(f.timestamp))
    publication.on_frame(vp8(0, True))  # nobody subscribed: the taps still get it
    publication.remove_tap(broken)
    publication.on_frame(vp8(1, False))
    assert seen == [0, 3000]
    assert any("tap failed" in r.getMessage() for r in caplog.records)
    publication.close()
    publication.on_frame(vp8(2, False))
    assert seen == [0, 3000]


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[tuple[CallRecorder, ManualClock, threading.Event]]:
    """A recorder whose muxing thread is stalled until the event is set (a slow disk)."""
    clock = ManualClock()
    rec = CallRecorder(
        "call-q", tmp_path, video_codec="VP8", clock=clock, capacity=10, start_wait_s=5.0
    )
    release = threading.Event()
    real = rec._writer.handle

    def slow(item: Any, now_s: float) -> None:
        release.wait(10)
        real(item, now_s)

    rec._writer.handle = slow  # type: ignore[method-assign]
    yield rec, clock, release
    release.set()


async def test_the_recorder_queue_is_bounded_and_never_blocks_the_loop(
    recorder: tuple[CallRecorder, ManualClock, threading.Event],
) -> None:
    rec, clock, release = recorder
    pli: list[int] = []

    def send_pli() -> bool:
        pli.append(1)
        return True

    publication = Publication("video", send_pli, keyframe_interval_s=0.001, clock=clock)
    rec.attach("alice", {("video", 0): publication, ("video", 1): publication})
    assert len(pli) == 1  # attaching asks for a keyframe to start on

    publication.on_frame(vp8(0, False))  # not a keyframe: skipped, not queued
    started = time.monotonic()
    for i in range(1, 40):
        clock.advance(1 / 30)
        publication.on_frame(vp8(i, i == 1))
    assert time.monotonic() - started < 0.5  # the stalled thread never held the loop up
    stats = rec.stats()
    assert stats.frames_queued <= 10
    assert stats.frames_dropped == 40 - stats.frames_queued
    assert len(pli) >= 2  # after the overflow, video waits for (and asks for) a keyframe

    release.set()
    results = await rec.close()
    assert [r.party for r in results] == ["alice"]
    rec._thread.join(1)
    assert not rec._thread.is_alive()  # the muxing thread ends with the recording
    publication.on_frame(vp8(99, True))  # after close: ignored
    assert rec.stats().frames_queued == stats.frames_queued


async def test_a_replaced_legs_frames_are_not_recorded(tmp_path: Path) -> None:
    clock = ManualClock()
    rec = CallRecorder(
        "call-r", tmp_path, video_codec="VP8", clock=clock, capacity=100, start_wait_s=0.01
    )
    old = Publication("audio", lambda: True, keyframe_interval_s=1.0, clock=clock)
    new = Publication("audio", lambda: True, keyframe_interval_s=1.0, clock=clock)
    opus = encode_opus(20)
    rec.attach("alice", {("audio", 0): old})
    old.on_frame(EncodedFrame("audio", "audio/opus", 48_000, 0, opus[0], True))
    rec.attach("alice", {("audio", 0): new})  # reconnect; the old leg is not closed yet
    for i in range(1, 20):
        clock.advance(0.02)
        old.on_frame(EncodedFrame("audio", "audio/opus", 48_000, i * 960, opus[i], True))
        new.on_frame(EncodedFrame("audio", "audio/opus", 48_000, i * 960, opus[i], True))
    assert rec.stats().frames_queued == 20
    [result] = await rec.close()
    assert len(packets_of(result.path)["audio"]) == 20


# --- the Sfu's recording switch (no sockets) ------------------------------------------------


async def test_sfu_records_only_when_the_policy_allows(tmp_path: Path) -> None:
    no_ice = RTCConfiguration(iceServers=[])
    off = Sfu(MediaSettings(), no_ice)
    with pytest.raises(NotSupported):  # refused before the offer is even parsed
        await off.answer("c", "caller", "v=0\r\n", record=True)
    with pytest.raises(NotSupported):
        await off.start_recording("c")
    assert off.call_ids == frozenset() and await off.recordings() == []
    await off.close()

    on = Sfu(MediaSettings(recording="always", record_dir=tmp_path), no_ice)
    assert await on.start_recording("not-started") is False
    assert await on.recordings() == []
    await on.close()
