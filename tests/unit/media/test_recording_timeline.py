"""media/recording/timeline.py: timestamp mapping and the jitter buffer's release delay."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from media.recording.timeline import RELEASED_BY, ReleaseDelay, TimestampMapper
from media.rtp_hooks import EncodedFrame

MS = Fraction(1, 1000)


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


@dataclass(frozen=True)
class Held:
    source: int
    frame: EncodedFrame


def opus(i: int, source: int = 1) -> Held:
    return Held(source, EncodedFrame("audio", "audio/opus", 48_000, i * 960, b"o", True))


def test_a_frame_is_dated_back_by_the_rtp_distance_to_the_frame_that_released_it() -> None:
    delay: ReleaseDelay[Held] = ReleaseDelay("audio")
    frames = [opus(i) for i in range(RELEASED_BY["audio"])]
    assert [delay.push(f) for f in frames] == [[]] * RELEASED_BY["audio"]
    assert delay.estimate() == RELEASED_BY["audio"] * 0.02  # nominal, nothing measured yet
    # Frame 0 comes out with frame 6 (DTX skipped 4 and 5): 120 ms after its own arrival.
    assert delay.push(opus(6)) == [(frames[0], 0.12)]
    # A new source: what is held goes out at the last measured delay, then starts over.
    fresh = opus(0, source=2)
    assert delay.push(fresh) == [(f, 0.12) for f in (*frames[1:], opus(6))]
    assert delay.flush() == [(fresh, 0.12)] and delay.flush() == []
