"""RtpForwarder driven through Publication.on_rtp: gating, renumbering, refusals, stats."""

from __future__ import annotations

import pytest

from media.clock import ManualClock
from media.forwarding import Publication
from media.rtp_forwarding import RtpForwarder, seq_newer
from media.subscription import SubscriptionStats

VIDEO_HZ = 90000
AUDIO_HZ = 48000
VIDEO_STEP = VIDEO_HZ // 30  # one nominal frame
AUDIO_STEP = AUDIO_HZ // 50

Sent = tuple[int, int, bool, bytes]


class Pli:
    def __init__(self) -> None:
        self.sent = 0

    def __call__(self) -> bool:
        self.sent += 1
        return True


class Sink:
    """Records what the subscriber was sent; refuses while ``refuse`` is set."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.refuse = False

    def send(self, sequence: int, timestamp: int, marker: bool, payload: bytes) -> bool:
        if self.refuse:
            return False
        self.sent.append((sequence, timestamp, marker, payload))
        return True

    @property
    def numbering(self) -> list[tuple[int, int]]:
        return [(seq, ts) for seq, ts, _, _ in self.sent]


def publication(
    kind: str = "video",
    pli: Pli | None = None,
    clock: ManualClock | None = None,
    nacks: list[list[int]] | None = None,
) -> Publication:
    return Publication(
        kind,
        pli or Pli(),
        keyframe_interval_s=1.0,
        clock=clock or ManualClock(),
        send_nack=None if nacks is None else nacks.append,
    )


def forwarder(pub: Publication, sink: Sink | None = None) -> RtpForwarder:
    fwd = RtpForwarder(pub.kind)
    fwd.sink = sink
    pub.subscribe(fwd)
    return fwd


def rtp(
    pub: Publication,
    seq: int,
    ts: int,
    *,
    key: bool = False,
    ssrc: int = 0x1111,
    marker: bool = False,
) -> None:
    audio = pub.kind == "audio"
    pub.on_rtp(
        ssrc,
        seq,
        ts,
        marker,
        b"p%d" % seq,
        keyframe_start=key or audio,
        clock_rate=AUDIO_HZ if audio else VIDEO_HZ,
    )


def test_video_waits_for_a_keyframe_and_asks_for_one_rate_limited() -> None:
    pli, clock, sink = Pli(), ManualClock(), Sink()
    pub = publication(pli=pli, clock=clock)
    fwd = forwarder(pub, sink)
    assert pli.sent == 1  # a subscriber with a sink asks for a keyframe at once
    rtp(pub, 10, 0)
    rtp(pub, 11, 3000)
    assert sink.sent == [] and pli.sent == 1  # inside the interval
    clock.advance(1.0)
    rtp(pub, 12, 6000)
    assert pli.sent == 2
    rtp(pub, 13, 9000, key=True)
    rtp(pub, 14, 9000, marker=True)
    rtp(pub, 15, 12000)
    assert sink.sent == [
        (13, 9000, False, b"p13"),
        (14, 9000, True, b"p14"),
        (15, 12000, False, b"p15"),
    ]
    clock.advance(5)
    rtp(pub, 16, 15000)
    assert pli.sent == 2  # the keyframe satisfied the request
    assert fwd.stats() == SubscriptionStats(
        frames_forwarded=3, frames_dropped=0, frames_skipped=3, packets_forwarded=4
    )
    assert pub.stats().keyframe_requests_received == 4
    assert pub.stats().keyframes_received == 1


def test_subscribing_without_a_sink_requests_nothing() -> None:
    pli = Pli()
    pub = publication(pli=pli)
    fwd = forwarder(pub)
    assert pli.sent == 0
    rtp(pub, 1, 0, key=True)
    rtp(pub, 2, 0)
    assert pli.sent == 0
    assert fwd.stats().frames_skipped == 2

    sink = Sink()
    fwd.sink = sink
    rtp(pub, 3, 3000)  # still gated: a keyframe it never saw
    assert sink.sent == [] and pli.sent == 1
    rtp(pub, 4, 6000, key=True)
    assert sink.numbering == [(4, 6000)]


def test_audio_passes_at_once() -> None:
    pli, sink = Pli(), Sink()
    pub = publication("audio", pli=pli)
    fwd = forwarder(pub, sink)
    rtp(pub, 500, 48000, marker=True)
    rtp(pub, 501, 48960)
    assert sink.sent == [(500, 48000, True, b"p500"), (501, 48960, False, b"p501")]
    assert pli.sent == 0
    assert fwd.stats().frames_skipped == 0


def test_publisher_reconnect_continues_numbering() -> None:
    old, new_pli, sink = publication(), Pli(), Sink()
    new = publication(pli=new_pli)
    fwd = forwarder(old, sink)
    rtp(old, 1000, 90000, key=True)
    rtp(old, 1001, 90000, marker=True)
    rtp(old, 1002, 93000)

    new.subscribe(fwd)
    assert fwd.source is new and old.subscribers == () and new.subscribers == (fwd,)
    assert new_pli.sent == 1
    rtp(new, 5, 500, key=True, ssrc=0x2222)
    rtp(new, 6, 500, ssrc=0x2222)
    rtp(new, 7, 3500, ssrc=0x2222)
    assert sink.numbering[3:] == [
        (1003, 93000 + VIDEO_STEP),
        (1004, 93000 + VIDEO_STEP),
        (1005, 93000 + VIDEO_STEP + 3000),
    ]
    assert fwd.stats().frames_forwarded == 4
    rtp(old, 1003, 96000)  # the old publication no longer reaches it
    assert len(sink.sent) == 6


def test_new_ssrc_on_the_same_audio_publication() -> None:
    pub, sink = publication("audio"), Sink()
    forwarder(pub, sink)
    rtp(pub, 100, 9600)
    rtp(pub, 101, 10560)
    rtp(pub, 40000, 7, ssrc=0x3333)
    rtp(pub, 40001, 967, ssrc=0x3333)
    assert sink.numbering == [
        (100, 9600),
        (101, 10560),
        (102, 10560 + AUDIO_STEP),
        (103, 10560 + 2 * AUDIO_STEP),
    ]


def test_new_ssrc_on_the_same_video_publication_waits_for_its_keyframe() -> None:
    pli, clock, sink = Pli(), ManualClock(), Sink()
    pub = publication(pli=pli, clock=clock)
    fwd = forwarder(pub, sink)
    rtp(pub, 1, 0, key=True)
    clock.advance(10)
    rtp(pub, 9, 777000, key=True, ssrc=0x4444)
    rtp(pub, 10, 780000, ssrc=0x4444)
    assert sink.numbering == [(1, 0), (2, VIDEO_STEP), (3, VIDEO_STEP + 3000)]
    assert fwd.stats().frames_skipped == 0


# The new source's first packets are skipped (no keyframe yet): the timestamp still moves on
# by one frame from the last packet sent, not by the skipped span too.
def test_reconnect_timestamps_move_one_frame_even_if_the_first_packets_are_skipped() -> None:
    old, new, sink = publication(), publication(), Sink()
    fwd = forwarder(old, sink)
    rtp(old, 1000, 93000, key=True)
    new.subscribe(fwd)
    rtp(new, 5, 0, ssrc=0x2222)  # skipped: not a keyframe start
    rtp(new, 6, 3000, ssrc=0x2222)  # skipped
    rtp(new, 7, 6000, key=True, ssrc=0x2222)
    assert fwd.stats().frames_skipped == 2
    assert sink.numbering == [(1000, 93000), (1001, 93000 + VIDEO_STEP)]  # got 93000 + 9000


def test_sequence_wraps_around() -> None:
    pub, sink = publication("audio"), Sink()
    fwd = forwarder(pub, sink)
    top = 0xFFFF_FFFF - 500
    rtp(pub, 65534, top)
    rtp(pub, 65535, top + 1)
    rtp(pub, 0, top + 2)  # the first source passes through, wrap included
    rtp(pub, 7, 1, ssrc=0x5555)
    rtp(pub, 8, 961, ssrc=0x5555)
    assert sink.numbering == [
        (65534, top),
        (65535, top + 1),
        (0, top + 2),
        (1, (top + 2 + AUDIO_STEP) & 0xFFFF_FFFF),
        (2, (top + 2 + 2 * AUDIO_STEP) & 0xFFFF_FFFF),
    ]
    assert fwd.source_sequence(2) == 8

    sink2 = Sink()
    fwd2 = forwarder(publication("audio"), sink2)
    source = fwd2.source
    assert isinstance(source, Publication)
    rtp(source, 65535, 0)
    rtp(source, 300, 960, ssrc=0x6666)
    assert sink2.numbering == [(65535, 0), (0, AUDIO_STEP)]  # continues at last + 1 = 0


def test_refused_video_waits_for_a_keyframe_and_closes_the_gap() -> None:
    pli, clock, sink = Pli(), ManualClock(), Sink()
    pub = publication(pli=pli, clock=clock)
    fwd = forwarder(pub, sink)
    rtp(pub, 1, 0, key=True)
    rtp(pub, 2, 3000)
    assert fwd.source_sequence(2) == 2
    clock.advance(10)
    sink.refuse = True
    rtp(pub, 3, 6000)
    assert pli.sent == 2  # the refusal asks for a keyframe
    sink.refuse = False
    rtp(pub, 4, 9000)  # a keyframe is awaited: skipped
    rtp(pub, 5, 9000)
    assert fwd.source_sequence(2) is None  # renumbering pending: no mapping
    rtp(pub, 6, 12000, key=True)
    rtp(pub, 7, 12000)
    assert sink.numbering == [(1, 0), (2, 3000), (3, 12000), (4, 12000)]
    assert fwd.source_sequence(3) == 6 and fwd.source_sequence(4) == 7
    assert fwd.stats() == SubscriptionStats(
        frames_forwarded=3, frames_dropped=1, frames_skipped=2, packets_forwarded=4
    )


def test_refused_audio_is_dropped_alone() -> None:
    pub, sink = publication("audio"), Sink()
    fwd = forwarder(pub, sink)
    rtp(pub, 1, 0)
    sink.refuse = True
    rtp(pub, 2, 960)
    sink.refuse = False
    rtp(pub, 3, 1920)
    # Not renumbered: the subscriber may NACK 2, which maps back to the publisher's 2.
    assert sink.numbering == [(1, 0), (3, 1920)]
    assert fwd.source_sequence(2) == 2
    assert fwd.stats().frames_dropped == 1


def test_source_sequence_maps_back_to_the_publisher() -> None:
    old, new, sink = publication("audio"), publication("audio"), Sink()
    fwd = forwarder(old, sink)
    assert fwd.source_sequence(0) is None  # nothing sent yet
    rtp(old, 20, 0)
    new.subscribe(fwd)
    assert fwd.source_sequence(20) is None  # between sources
    rtp(new, 60000, 0, ssrc=0x7777)
    rtp(new, 60001, 960, ssrc=0x7777)
    assert sink.numbering[1:] == [(21, AUDIO_STEP), (22, 2 * AUDIO_STEP)]
    assert fwd.source_sequence(21) == 60000
    assert fwd.source_sequence(22) == 60001


def test_stop_unsubscribes() -> None:
    pub, sink = publication("audio"), Sink()
    fwd = forwarder(pub, sink)
    rtp(pub, 1, 0)
    fwd.stop()
    assert pub.subscribers == () and fwd.source is None and fwd.sink is None
    rtp(pub, 2, 960)
    assert len(sink.sent) == 1
    assert pub.stats().frames_unsubscribed == 1


def test_on_rtp_fans_out_and_counts() -> None:
    pub, first_sink, late_sink = publication(), Sink(), Sink()
    first, second = forwarder(pub, first_sink), forwarder(pub)
    assert pub.subscribers == (first, second)
    pub.subscribe(first)  # twice: still once
    assert pub.subscribers == (first, second)
    rtp(pub, 1, 0, key=True)
    second.sink = late_sink
    rtp(pub, 2, 0)
    rtp(pub, 3, 3000, key=True)
    rtp(pub, 4, 3000)
    assert first_sink.numbering == [(1, 0), (2, 0), (3, 3000), (4, 3000)]
    assert late_sink.numbering == [(3, 3000), (4, 3000)]
    assert first.stats().frames_forwarded == 2 and second.stats().frames_forwarded == 1
    assert pub.stats().frames_received == 2
    assert pub.stats().keyframes_received == 2
    assert pub.ssrc == 0x1111


def test_request_retransmission_nacks_the_publisher() -> None:
    nacks: list[list[int]] = []
    pub = publication(nacks=nacks)
    pub.request_retransmission([7, 9])
    pub.request_retransmission([])
    assert nacks == [[7, 9]]
    pub.close()
    pub.request_retransmission([10])
    assert nacks == [[7, 9]]
    publication().request_retransmission([1])  # no send_nack: nothing to do


@pytest.mark.parametrize(
    ("a", "b", "newer"),
    [(2, 1, True), (1, 2, False), (5, 5, False), (0, 65535, True), (65535, 0, False)],
)
def test_seq_newer(a: int, b: int, newer: bool) -> None:
    assert seq_newer(a, b) is newer


def test_padding_only_packets_are_dropped_without_a_gap() -> None:
    pub, sink = publication(), Sink()
    forwarder(pub, sink)
    rtp(pub, 10, 0, key=True)
    pub.on_rtp(0x1111, 11, 0, False, b"", keyframe_start=False, clock_rate=90_000)
    rtp(pub, 12, 3000)
    assert [seq for seq, _ in sink.numbering] == [10, 11]
