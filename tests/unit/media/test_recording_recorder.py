"""media/recording/recorder.py: the tap's bounded queue and the muxing thread (no sockets)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from media.clock import ManualClock
from media.forwarding import Publication
from media.recording.recorder import CallRecorder
from media.rtp_hooks import EncodedFrame
from tests.mediautil import encode_opus, packets_of


def vp8(i: int, key: bool) -> EncodedFrame:
    return EncodedFrame("video", "video/VP8", 90_000, i * 3000, b"k" if key else b"d", key)


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
