"""Sfu construction rules, error paths and the wiring between two legs (no sockets)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import cast

import pytest
from aiortc import RTCConfiguration

from media.clock import ManualClock, SystemClock
from media.errors import NegotiationError, NotSupported, SfuClosed, UnknownLeg
from media.forwarding import ForwardingTrack, Publication
from media.leg import Leg, Slot
from media.settings import MediaSettings
from media.sfu import CallMedia, Sfu
from media.subscription import Source

NO_ICE = RTCConfiguration(iceServers=[])


def test_ice_servers_must_be_explicit() -> None:
    with pytest.raises(ValueError, match="iceServers"):
        Sfu(MediaSettings(), RTCConfiguration())


async def test_error_paths_leave_no_call_behind() -> None:
    sfu = Sfu(MediaSettings(), NO_ICE)
    with pytest.raises(NegotiationError):
        await sfu.answer("c", "caller", "v=0\r\n")
    with pytest.raises(UnknownLeg):
        await sfu.add_candidate("c", "caller", "", None, 0)
    assert sfu.call_ids == frozenset()
    await sfu.close_call("never-opened")  # idempotent, no error
    await sfu.close()
    with pytest.raises(SfuClosed):
        await sfu.answer("c", "caller", "v=0\r\n")


class FakeLeg:
    """What CallMedia.wire reads of a Leg: its publications and subscriptions."""

    def __init__(self, *kinds: str) -> None:
        self.publications: dict[Slot, Publication] = {}
        self.subscriptions: dict[Slot, ForwardingTrack] = {}
        for kind in kinds:
            slot = (kind, 0)
            self.publications[slot] = Publication(
                kind, lambda: True, keyframe_interval_s=1, clock=SystemClock()
            )
            self.subscriptions[slot] = ForwardingTrack(kind, capacity=4)


def sources(leg: FakeLeg) -> dict[Slot, Source | None]:
    return {slot: track.source for slot, track in leg.subscriptions.items()}


async def test_wire_pairs_matching_slots_and_follows_a_reconnect() -> None:
    call = CallMedia("c")
    alice, bob = FakeLeg("audio", "video"), FakeLeg("video")
    call.legs["caller"] = cast(Leg, alice)
    call.wire()
    assert sources(alice) == {("audio", 0): None, ("video", 0): None}

    call.legs["host"] = cast(Leg, bob)
    call.wire()
    assert sources(alice) == {("audio", 0): None, ("video", 0): bob.publications[("video", 0)]}
    assert sources(bob) == {("video", 0): alice.publications[("video", 0)]}

    alice2 = FakeLeg("audio", "video")  # Alice re-offered: her new leg replaces the old one
    call.legs["caller"] = cast(Leg, alice2)
    call.wire()
    assert sources(bob) == {("video", 0): alice2.publications[("video", 0)]}
    assert alice.publications[("video", 0)].subscribers == ()
    assert sources(alice2)[("video", 0)] is bob.publications[("video", 0)]


async def settle() -> None:
    """Let the tasks a clock step woke run to their next wait."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_the_watchdog_reports_a_party_that_never_offers_once_on_the_clock() -> None:
    clock = ManualClock()
    sfu = Sfu(MediaSettings(connect_timeout_s=2.0), NO_ICE, clock=clock)
    failed: list[tuple[str, str]] = []

    async def report(call_id: str, party: str) -> None:
        failed.append((call_id, party))

    sfu.on_media_failed = report
    sfu.expect("c", ["caller", "host"])
    await settle()
    clock.advance(1.9)
    await settle()
    assert failed == []
    clock.advance(0.2)
    await settle()
    assert sorted(failed) == [("c", "caller"), ("c", "host")]
    call = sfu.call("c")
    assert call is not None and call.watchdogs == {}
    clock.advance(10)
    await settle()
    assert len(failed) == 2  # reported once, not again
    await sfu.close()


async def test_closing_the_call_stops_its_watchdogs() -> None:
    clock = ManualClock()
    sfu = Sfu(MediaSettings(connect_timeout_s=2.0), NO_ICE, clock=clock)
    failed: list[str] = []

    async def report(call_id: str, party: str) -> None:
        failed.append(party)

    sfu.on_media_failed = report
    sfu.expect("c", ["caller", "host"])
    await settle()
    await sfu.close_call("c")
    clock.advance(5)
    await settle()
    assert failed == [] and sfu.call_ids == frozenset()
    await sfu.close()


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
