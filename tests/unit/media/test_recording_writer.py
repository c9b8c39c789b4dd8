"""media/recording/writer.py driven without its thread: muxing, headers, failures.

Encoded frames are made with PyAV's encoders (libopus, libvpx, libx264), so the writer is
fed what a real publisher sends; the files it writes are read back (and decoded) here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import av
import pytest

from media.recording.bitstream import opus_head
from media.recording.timeline import RELEASED_BY
from media.recording.writer import DEFAULT_SIZE, Expect, QueuedFrame, RecordingWriter, Start
from media.rtp_hooks import EncodedFrame
from tests.mediautil import encode_opus, encode_video, packets_of


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
