"""Publication / ForwardingTrack driven by method calls: gating, bounds, keyframe rate limit."""

from __future__ import annotations

import asyncio
from fractions import Fraction
from typing import Any

import av
import pytest
from aiortc.mediastreams import MediaStreamError

from media.clock import ManualClock
from media.forwarding import ForwardingTrack, Publication
from media.rtp_hooks import EncodedFrame


class Pli:
    def __init__(self, ssrc_known: bool = True) -> None:
        self.sent = 0
        self.ssrc_known = ssrc_known

    def __call__(self) -> bool:
        if self.ssrc_known:
            self.sent += 1
        return self.ssrc_known


def video(ts: int, key: bool = False) -> EncodedFrame:
    return EncodedFrame("video", "video/VP8", 90000, ts, b"K%d" % ts if key else b"d%d" % ts, key)


def audio(ts: int) -> EncodedFrame:
    return EncodedFrame("audio", "audio/opus", 48000, ts, b"a%d" % ts, True)


def publication(
    kind: str = "video", pli: Pli | None = None, clock: ManualClock | None = None
) -> Publication:
    return Publication(kind, pli or Pli(), keyframe_interval_s=1.0, clock=clock or ManualClock())


async def pulling(track: ForwardingTrack) -> asyncio.Task[av.Packet[Any]]:
    """Start the sender's first recv() (a subscriber that started pulling)."""
    task = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0)
    return task


async def drain(track: ForwardingTrack) -> list[av.Packet[Any]]:
    out = []
    while track._queue:
        out.append(await track.recv())
    return out


async def test_video_subscriber_is_gated_until_a_keyframe() -> None:
    pli = Pli()
    pub = publication(pli=pli)
    track = ForwardingTrack("video", capacity=10)
    pub.subscribe(track)
    first = await pulling(track)
    assert pli.sent == 1  # a new subscriber asks for a keyframe

    pub.on_frame(video(0))
    pub.on_frame(video(3000))
    assert not first.done()
    pub.on_frame(video(6000, key=True))
    pub.on_frame(video(9000))
    packet = await asyncio.wait_for(first, 1)
    assert isinstance(packet, av.Packet)
    assert bytes(packet) == b"K6000"
    assert packet.pts == 0 and packet.time_base == Fraction(1, 90000)
    rest = await drain(track)
    assert [(bytes(p), p.pts) for p in rest] == [(b"d9000", 3000)]
    assert track.stats().frames_skipped == 2
    assert track.stats().frames_forwarded == 2


async def test_frames_before_the_sender_pulls_are_not_queued() -> None:
    pub = publication()
    track = ForwardingTrack("video", capacity=10)
    pub.subscribe(track)
    for ts in range(0, 30000, 3000):
        pub.on_frame(video(ts, key=ts == 0))
    assert not track._queue
    assert track.stats().frames_skipped == 10


async def test_keyframe_requests_are_rate_limited_and_deferred() -> None:
    clock, pli = ManualClock(), Pli()
    pub = publication(pli=pli, clock=clock)
    for _ in range(5):
        pub.request_keyframe()
    assert pli.sent == 1
    clock.advance(0.5)
    pub.on_frame(video(0))
    assert pli.sent == 1  # still inside the interval: remembered, not sent
    clock.advance(0.6)
    pub.on_frame(video(3000))
    assert pli.sent == 2  # sent with the first frame after the interval
    clock.advance(2)
    pub.on_frame(video(6000))
    assert pli.sent == 3  # no keyframe came (a lost PLI?): retried, once per interval
    pub.on_frame(video(9000, key=True))
    clock.advance(2)
    pub.on_frame(video(12000))
    assert pli.sent == 3  # the keyframe satisfied it
    assert pub.stats().keyframe_requests_received == 5
    assert pub.stats().keyframe_requests_sent == 3


async def test_a_keyframe_satisfies_a_pending_request() -> None:
    clock, pli = ManualClock(), Pli()
    pub = publication(pli=pli, clock=clock)
    pub.request_keyframe()
    pub.request_keyframe()
    pub.on_frame(video(0, key=True))
    clock.advance(5)
    pub.on_frame(video(3000))
    assert pli.sent == 1


async def test_unknown_ssrc_keeps_the_request_pending() -> None:
    pli = Pli(ssrc_known=False)
    pub = publication(pli=pli)
    pub.request_keyframe()
    assert pub.stats().keyframe_requests_sent == 0
    pli.ssrc_known = True
    pub.on_frame(video(0))
    assert pub.stats().keyframe_requests_sent == 1


async def test_audio_never_requests_keyframes() -> None:
    pli = Pli()
    pub = publication("audio", pli=pli)
    pub.request_keyframe()
    assert pli.sent == 0


async def test_full_video_queue_is_flushed_and_regated() -> None:
    pli, clock = Pli(), ManualClock()
    pub = publication(pli=pli, clock=clock)
    track = ForwardingTrack("video", capacity=3)
    pub.subscribe(track)
    first = await pulling(track)
    pub.on_frame(video(0, key=True))
    assert bytes(await first) == b"K0"
    clock.advance(10)
    for ts in (3000, 6000, 9000, 12000):  # the 4th overflows a queue of 3
        pub.on_frame(video(ts))
    assert len(track._queue) == 0
    assert track.stats().frames_dropped == 3
    assert pli.sent == 2  # the overflow asked for a keyframe
    pub.on_frame(video(15000, key=True))
    assert [bytes(p) for p in await drain(track)] == [b"K15000"]


async def test_full_audio_queue_drops_oldest_and_never_grows() -> None:
    pub = publication("audio")
    track = ForwardingTrack("audio", capacity=4)
    pub.subscribe(track)
    first = await pulling(track)
    pub.on_frame(audio(0))
    await first
    for n in range(1, 11):
        pub.on_frame(audio(n * 960))
        assert len(track._queue) <= 4
    assert [bytes(p) for p in await drain(track)] == [b"a%d" % (n * 960) for n in range(7, 11)]
    assert track.stats().frames_dropped == 6


async def test_source_switch_regates_and_keeps_timestamps_moving() -> None:
    old, new = publication(), publication()
    track = ForwardingTrack("video", capacity=10)
    old.subscribe(track)
    first = await pulling(track)
    old.on_frame(video(50_000, key=True))
    old.on_frame(video(53_000))
    assert (await first).pts == 0
    assert (await track.recv()).pts == 3000

    new.subscribe(track)  # the publisher reconnected: a new stream, timestamps from 0
    assert track.source is new and old.subscribers == ()
    new.on_frame(video(0))
    new.on_frame(video(3000, key=True))
    new.on_frame(video(6000))
    assert [(bytes(p), p.pts) for p in await drain(track)] == [(b"K3000", 6000), (b"d6000", 9000)]


async def test_stop_ends_recv_and_unsubscribes() -> None:
    pub = publication("audio")
    track = ForwardingTrack("audio", capacity=4)
    pub.subscribe(track)
    waiting = await pulling(track)
    track.stop()
    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(waiting, 1)
    assert pub.subscribers == ()
    pub.on_frame(audio(0))  # no error after stop


async def test_closed_publication_detaches_subscribers() -> None:
    pub = publication()
    track = ForwardingTrack("video", capacity=4)
    pub.subscribe(track)
    pub.close()
    assert track.source is None
    pub.on_frame(video(0, key=True))
    assert pub.stats().frames_received == 0


def test_a_tap_gets_every_frame_and_cannot_break_forwarding(
    caplog: pytest.LogCaptureFixture,
) -> None:
    publication = Publication("video", lambda: True, keyframe_interval_s=1.0, clock=ManualClock())
    seen: list[int] = []

    def broken(frame: EncodedFrame) -> None:
        raise RuntimeError("boom")

    publication.add_tap(broken)
    publication.add_tap(lambda f: seen.append(f.timestamp))
    publication.on_frame(video(0, key=True))  # nobody subscribed: the taps still get it
    publication.remove_tap(broken)
    publication.on_frame(video(3000, key=False))
    assert seen == [0, 3000]
    assert any("tap failed" in r.getMessage() for r in caplog.records)
    publication.close()
    publication.on_frame(video(6000, key=False))
    assert seen == [0, 3000]
