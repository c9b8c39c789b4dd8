"""The forwarding SFU with real aiortc peers on 127.0.0.1 (no hub, no ICE servers).

Two loopback clients each send a moving 640x480 30 fps test pattern and a sine tone; the SFU
answers their offers and forwards encoded frames. The clients decode; the SFU never does.
Every socket is bound to 127.0.0.1 on both sides, so no packet leaves the host.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiortc.rtcrtpreceiver
import pytest
from aiortc import RTCConfiguration
from aiortc.codecs import get_decoder

from media.clock import Clock, ManualClock
from media.errors import CallFull, NegotiationError, UnknownLeg
from media.settings import Forwarding, MediaSettings, VideoCodec
from media.sfu import Sfu
from tests.mediautil import LoopbackClient
from tests.wsutil import until

CALL = "call-1"
MIN_VIDEO = 45  # decoded frames each way: 1.5 s of 30 fps, met well within the timeout
MIN_AUDIO = 50


MakeSfu = Callable[..., Sfu]


@pytest.fixture
async def make_sfu() -> AsyncIterator[MakeSfu]:
    """An SFU gathering on 127.0.0.1 only, with no ICE servers; closed after the test."""
    made: list[Sfu] = []

    def make(clock: Clock | None = None, **overrides: Any) -> Sfu:
        settings = MediaSettings(host_addresses=("127.0.0.1",), include_loopback=True, **overrides)
        made.append(Sfu(settings, RTCConfiguration(iceServers=[]), clock=clock))
        return made[-1]

    yield make
    await asyncio.gather(*(sfu.close() for sfu in made))


@pytest.fixture
def decoder_calls(monkeypatch: pytest.MonkeyPatch) -> set[threading.Thread]:
    """Threads that created an aiortc decoder (clients' ones do; the SFU's never may)."""
    calls: set[threading.Thread] = set()
    real: Callable[..., Any] = get_decoder

    def spy(codec: Any) -> Any:
        calls.add(threading.current_thread())
        return real(codec)

    monkeypatch.setattr(aiortc.rtcrtpreceiver, "get_decoder", spy)
    return calls


@pytest.fixture
def decode_errors(caplog: pytest.LogCaptureFixture) -> Iterator[list[str]]:
    caplog.set_level(logging.WARNING, logger="aiortc.rtcrtpreceiver")
    errors: list[str] = []
    yield errors
    errors += [r.getMessage() for r in caplog.records if "failed to decode" in r.getMessage()]


@pytest.fixture
async def clients() -> AsyncIterator[list[LoopbackClient]]:
    made: list[LoopbackClient] = []
    yield made
    await asyncio.gather(*(c.close() for c in made))


def published(sfu: Sfu, party: str) -> int:
    stats = sfu.stats(CALL)
    return stats.legs[party].published["video"].frames_received if stats else 0


def candidate_hosts(sdp: str) -> set[str]:
    return {line.split()[4] for line in sdp.splitlines() if line.startswith("a=candidate:")}


async def join(sfu: Sfu, client: LoopbackClient, party: str) -> None:
    offer = await client.offer()
    answer = await sfu.answer(CALL, party, offer)
    # Sockets bound to 127.0.0.1 on both ends: no packet can leave the host.
    assert candidate_hosts(offer) == candidate_hosts(answer) == {"127.0.0.1"}
    await client.accept(answer)


@pytest.mark.parametrize(
    ("codec", "forwarding"), [("VP8", "rtp"), ("H264", "rtp"), ("VP8", "frame")]
)
async def test_two_parties_get_each_others_media_without_transcoding(
    codec: VideoCodec,
    forwarding: Forwarding,
    make_sfu: MakeSfu,
    clients: list[LoopbackClient],
    decoder_calls: set[threading.Thread],
    decode_errors: list[str],
) -> None:
    sfu = make_sfu(video_codec=codec, forwarding=forwarding)
    alice = LoopbackClient("alice", video_codec=codec)
    bob = LoopbackClient("bob", video_codec=codec)
    clients += [alice, bob]
    await join(sfu, alice, "caller")
    # Bob joins once Alice's stream is flowing, so his leg must be gated to a fresh keyframe.
    await until(lambda: published(sfu, "caller") > 5, 10, "the caller's video at the SFU")
    await join(sfu, bob, "host")

    def enough() -> bool:
        return all(
            c.frames("video") >= MIN_VIDEO and c.frames("audio") >= MIN_AUDIO for c in clients
        )

    await until(enough, 15, "each client to decode the other's audio and video")
    assert alice.received["video"].sizes == bob.received["video"].sizes == {(640, 480)}

    call = sfu.call(CALL)
    assert call is not None
    stats = call.stats()
    for party in ("caller", "host"):
        leg = stats.legs[party]
        assert leg.connection_state == "connected"
        assert leg.decoded_frames == 0
        assert leg.subscribed["video"].frames_forwarded >= MIN_VIDEO
        assert leg.subscribed["audio"].frames_forwarded >= MIN_AUDIO
        assert leg.published["video"].keyframes_received >= 1
        # RTP forwarding sent the packets itself; frame forwarding left that to aiortc.
        packets = leg.subscribed["video"].packets_forwarded
        assert packets >= MIN_VIDEO if forwarding == "rtp" else packets == 0
    # The second party to join was gated until a keyframe the SFU asked the first one for.
    assert stats.legs["caller"].published["video"].keyframe_requests_sent >= 1

    # The SFU's decoder threads exist (aiortc starts them) but are parked on our taps and
    # never made a decoder; the clients' decoder threads did, so the spy works.
    sfu_threads = call.legs["caller"].decoder_threads | call.legs["host"].decoder_threads
    assert len(sfu_threads) == 4
    assert decoder_calls and not (decoder_calls & sfu_threads)

    started = time.monotonic()
    await sfu.close_call(CALL)
    assert time.monotonic() - started < 1.0
    await until(
        lambda: all(c.ended() or c.pc.connectionState in ("closed", "failed") for c in clients),
        1.0,
        "both clients to see the SFU hang up",
    )
    assert sfu.call(CALL) is None
    assert all(not t.is_alive() for t in sfu_threads)
    await sfu.close()
    assert decode_errors == []


async def test_a_party_that_reconnects_gets_media_again(
    make_sfu: MakeSfu, clients: list[LoopbackClient], decode_errors: list[str]
) -> None:
    sfu = make_sfu()
    alice, bob = LoopbackClient("alice"), LoopbackClient("bob")
    clients += [alice, bob]
    await join(sfu, alice, "caller")
    await join(sfu, bob, "host")
    await until(lambda: alice.frames("video") >= 15 and bob.frames("video") >= 15, 10, "media")

    # Alice's network changed: a new peer connection, a new offer, same party.
    alice2 = LoopbackClient("alice-again")
    clients.append(alice2)
    bob_before = bob.frames("video")
    await join(sfu, alice2, "caller")
    await until(lambda: alice.ended(), 2, "the replaced peer connection to be closed")
    await until(
        lambda: alice2.frames("video") >= 30 and bob.frames("video") >= bob_before + 30,
        10,
        "media to flow both ways through the new peer connection",
    )
    # Bob's peer connection was not renegotiated: same one, still connected.
    call = sfu.call(CALL)
    assert call is not None
    assert call.legs["host"].pc.connectionState == "connected"
    assert call.stats().legs["host"].published["video"].keyframe_requests_received >= 1
    await sfu.close()
    assert decode_errors == []


async def test_port_range_third_party_and_unknown_leg(
    make_sfu: MakeSfu, clients: list[LoopbackClient]
) -> None:
    sfu = make_sfu(port_min=47100, port_max=47140)
    alice, bob, eve = LoopbackClient("alice"), LoopbackClient("bob"), LoopbackClient("eve")
    clients += [alice, bob, eve]
    answer = await sfu.answer(CALL, "caller", await alice.offer())
    ports = [
        int(line.split()[5]) for line in answer.splitlines() if line.startswith("a=candidate:")
    ]
    assert ports and all(47100 <= p <= 47140 for p in ports)
    assert candidate_hosts(answer) == {"127.0.0.1"}
    await alice.accept(answer)
    await until(lambda: alice.pc.connectionState == "connected", 5, "ICE on the port range")

    await join(sfu, bob, "host")
    with pytest.raises(CallFull):
        await sfu.answer(CALL, "intruder", await eve.offer())
    with pytest.raises(UnknownLeg):
        await sfu.add_candidate(CALL, "intruder", "", None, 0)
    with pytest.raises(NegotiationError):
        await sfu.answer("call-2", "caller", "v=0\r\n")
    assert sfu.call_ids == {CALL}
    await sfu.add_candidate(CALL, "caller", "", None, 0)  # end of candidates is accepted
    await sfu.close()
    assert sfu.call_ids == frozenset()


def test_forwarding_on_uvloop() -> None:
    """The service runs on uvloop (signalling.cli); forward a call on it too."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        settings = MediaSettings(host_addresses=("127.0.0.1",), include_loopback=True)
        sfu = Sfu(settings, RTCConfiguration(iceServers=[]))
        alice, bob = LoopbackClient("alice"), LoopbackClient("bob")
        try:
            await join(sfu, alice, "caller")
            await join(sfu, bob, "host")
            await until(
                lambda: alice.frames("video") >= 30 and bob.frames("video") >= 30,
                10,
                "video both ways on uvloop",
            )
        finally:
            await sfu.close()
            await alice.close()
            await bob.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


async def test_a_leg_that_never_connects_is_reported_once_and_a_reoffer_resets_it(
    make_sfu: MakeSfu, clients: list[LoopbackClient]
) -> None:
    failed: list[tuple[str, str]] = []

    async def report(call_id: str, party: str) -> None:
        failed.append((call_id, party))

    def connected(party: str) -> bool:
        stats = sfu.stats(CALL)
        leg = stats.legs.get(party) if stats is not None else None
        return leg is not None and leg.connection_state == "connected"

    clock = ManualClock()  # the watchdogs' time; the peers connect in real time
    sfu = make_sfu(clock=clock, connect_timeout_s=1.0)
    sfu.on_media_failed = report
    alice, bob, bob_again = (LoopbackClient(n) for n in ("alice", "bob", "bob"))
    clients += [alice, bob, bob_again]
    await join(sfu, alice, "caller")
    await sfu.answer(CALL, "host", await bob.offer())  # never applied: bob never connects
    await until(lambda: connected("caller"), 10, "the caller to connect")
    clock.advance(0.6)  # bob's watchdog started with his answer
    await join(sfu, bob_again, "host")  # his re-offer replaces the stuck leg in time
    await until(lambda: connected("host"), 10, "the host's re-offer to connect")
    clock.advance(1.2)
    await asyncio.sleep(0.1)
    assert failed == []

    stuck = LoopbackClient("bob")
    clients.append(stuck)
    await sfu.answer(CALL, "host", await stuck.offer())
    await asyncio.sleep(0.1)  # its watchdog starts
    clock.advance(0.9)
    await asyncio.sleep(0.1)
    assert failed == []
    clock.advance(0.2)
    await until(lambda: bool(failed), 5, "the stuck leg to be reported")
    clock.advance(1.2)
    await asyncio.sleep(0.1)
    assert failed == [(CALL, "host")]
