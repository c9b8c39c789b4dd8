"""Contract suite for ``MatchStore``: the memory and the Redis adapters behave the same.

Each runs with the presence store and the call directory of its kind, since pairing reads
both (a ghost is a user whose presence record or node is gone). The Redis one runs on the
real Redis (JALWA_TEST_REDIS_URL) under a key prefix of its own, deleted afterwards; TTLs
are real there, so the memory one moves a ManualClock by the same amounts.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest
from redis.asyncio import Redis

from signalling.calls.directory import CallDirectory, CallEntry, MemoryCallDirectory, PartyRef
from signalling.calls.directory_redis import RedisCallDirectory
from signalling.clock import ManualClock
from signalling.match.memory import MemoryMatch
from signalling.match.redis_store import RedisMatch
from signalling.match.store import (
    Busy,
    Filters,
    Limits,
    MatchStore,
    Mode,
    Offer,
    Ticket,
    distance_km,
)
from signalling.presence.memory import MemoryPresence, MemoryWorld
from signalling.presence.redis_store import RedisPresence
from signalling.presence.store import PresenceRecord, PresenceStore

AVOID_S = 1.0
RESERVE_S = 0.5
LIMITS = Limits(scan_max=3, avoid_recent_s=AVOID_S, reserve_s=RESERVE_S, nearby_max_km=50.0)
# Delhi and points a known distance away.
DELHI = (28.6139, 77.2090)


@dataclass
class World:
    store: MatchStore
    nodes: dict[str, PresenceStore]
    directory: CallDirectory
    advance: Callable[[float], Awaitable[None]]
    kill: Callable[[str], Awaitable[None]]  # a node stops beating (kill -9)

    async def online(
        self, uid: str, role: str = "caller", *, node: str = "node-a", status: str = "available"
    ) -> str:
        session = f"s-{uid}"
        await self.nodes[node].set(PresenceRecord(uid, status, role, uid.title(), node, session))
        return session


@pytest.fixture(params=["memory", "redis"])
async def w(request: pytest.FixtureRequest) -> AsyncIterator[World]:
    if request.param == "memory":
        clock = ManualClock()
        world = MemoryWorld(clock)
        directory = MemoryCallDirectory(clock, ttl_s=60)
        nodes: dict[str, PresenceStore] = {
            n: MemoryPresence(world, n, ttl_s=60, node_ttl_s=60) for n in ("node-a", "node-b")
        }

        async def advance(seconds: float) -> None:
            clock.advance(seconds)

        async def kill(node: str) -> None:
            world.nodes.pop(node, None)

        store = MemoryMatch(clock, world.live, directory.busy, LIMITS)
        yield World(store, nodes, directory, advance, kill)
        return
    url = os.environ.get("JALWA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"jalwa-test-{uuid.uuid4().hex}"
    client = Redis.from_url(url, socket_connect_timeout=2)

    async def kill_node(node: str) -> None:
        await client.delete(f"{prefix}:p:node:{node}")

    try:
        nodes = {
            n: RedisPresence(client, n, prefix=prefix, ttl_s=60, node_ttl_s=60)
            for n in ("node-a", "node-b")
        }
        yield World(
            RedisMatch(client, prefix=prefix, limits=LIMITS, ticket_ttl_s=120),
            nodes,
            RedisCallDirectory(client, prefix=prefix, ttl_s=60),
            asyncio.sleep,
            kill_node,
        )
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=500)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def ticket(w: World, uid: str, mode: Mode = "random", **kw: Any) -> Ticket:
    node = kw.pop("node", "node-a")
    session = await w.online(uid, node=node)
    return Ticket(
        ticket_id=kw.pop("ticket_id", f"t-{uid}"),
        user_id=uid,
        name=uid.title(),
        node_id=node,
        session_id=session,
        mode=mode,
        **kw,
    )


async def host(w: World, uid: str, modes: tuple[Mode, ...] = ("random",), **kw: Any) -> Offer:
    node = kw.pop("node", "node-a")
    session = await w.online(uid, "host", node=node)
    return Offer(
        user_id=uid,
        name=uid.title(),
        node_id=node,
        session_id=session,
        rate=kw.pop("rate", 10),
        modes=frozenset(modes),
        **kw,
    )


async def test_a_waiting_caller_is_paired_by_the_host_who_comes(w: World) -> None:
    t = await ticket(w, "ann")
    assert await w.store.request(t) is None
    assert (await w.store.waiting())["random"] == 1
    h = await host(w, "hal")
    pair = await w.store.offer(h)
    assert pair is not None
    assert (pair.ticket, pair.host, pair.distance_km) == (t, h, None)
    assert (await w.store.waiting())["random"] == 0
    assert (await w.store.waiting())["hosts_random"] == 0  # the host did not join the pool


async def test_a_pooled_host_is_taken_once(w: World) -> None:
    h = await host(w, "hal")
    assert await w.store.offer(h) is None
    assert (await w.store.waiting())["hosts_random"] == 1
    pair = await w.store.request(await ticket(w, "ann"))
    assert pair is not None and pair.host == h
    assert await w.store.request(await ticket(w, "bob")) is None  # hal is not in the pool now


async def test_hosts_are_taken_oldest_first_and_keep_their_place(w: World) -> None:
    first, second = await host(w, "h1"), await host(w, "h2")
    await w.store.offer(first)
    await w.store.offer(second)
    await w.store.offer(first)  # publishing again does not send h1 to the back
    pair = await w.store.request(await ticket(w, "ann"))
    assert pair is not None and pair.host.user_id == "h1"


async def test_one_ticket_per_caller_the_newer_replaces(w: World) -> None:
    await w.store.request(await ticket(w, "ann", ticket_id="old"))
    await w.store.request(await ticket(w, "ann", ticket_id="new"))
    assert (await w.store.waiting())["random"] == 1
    pair = await w.store.offer(await host(w, "hal"))
    assert pair is not None and pair.ticket.ticket_id == "new"
    assert await w.store.offer(await host(w, "hue")) is None  # nobody else waits


async def test_never_a_self_match(w: World) -> None:
    h = await host(w, "sam")
    await w.store.offer(h)
    t = replace(await ticket(w, "x"), user_id="sam", session_id=h.session_id)
    assert await w.store.request(t) is None


async def test_ghosts_are_never_paired_and_are_removed(w: World) -> None:
    gone = await host(w, "gone")
    dead = await host(w, "dead", node="node-b")
    await w.store.offer(gone)
    await w.store.offer(dead)
    assert await w.nodes["node-a"].clear("gone", gone.session_id)
    await w.kill("node-b")
    assert await w.store.request(await ticket(w, "ann")) is None
    assert (await w.store.waiting())["hosts_random"] == 0

    # and the other way: a waiter whose node died is not paired with a host who comes
    assert await w.store.cancel("ann")
    await w.store.request(await ticket(w, "cid", node="node-b"))
    await w.kill("node-b")
    assert await w.store.offer(await host(w, "hal")) is None
    assert (await w.store.waiting()) == {
        "random": 0,
        "nearby": 0,
        "hosts_random": 1,
        "hosts_nearby": 0,
    }


async def test_a_stale_session_is_a_ghost(w: World) -> None:
    h = await host(w, "hal")
    await w.store.offer(replace(h, session_id="older"))  # refused: not the live session
    assert (await w.store.waiting())["hosts_random"] == 0
    await w.store.offer(h)
    await w.online("hal", "host")  # the same session id: still live
    t = await ticket(w, "ann")
    # the caller reconnected (a new session) after queueing: the ticket is a ghost
    await w.store.request(replace(t, session_id="before-reconnect"))
    assert await w.store.reoffer("hal") is None
    assert (await w.store.waiting())["random"] == 0


async def test_busy_unavailable_and_in_call_hosts_are_skipped(w: World) -> None:
    h = await host(w, "hal")
    await w.store.offer(h)
    await w.online("hal", "host", status="busy")
    assert await w.store.request(await ticket(w, "ann")) is None
    await w.online("hal", "host")
    assert await w.store.offer(h) is not None  # ann still waits: now she gets hal

    h2 = await host(w, "hue")
    await w.store.offer(h2)
    entry = CallEntry(
        call_id="c1",
        owner="node-a",
        caller=PartyRef("zed", "caller", "Zed"),
        callee=PartyRef("hue", "host", "Hue"),
    )
    assert await w.directory.claim(entry) is None
    assert await w.store.request(await ticket(w, "bob")) is None
    await w.directory.release(entry)
    pair = await w.store.offer(h2)
    assert pair is not None and pair.ticket.user_id == "bob"


async def test_filters_and_blocks(w: World) -> None:
    await w.store.offer(await host(w, "h-hi", languages=("hi", "en"), gender="f", tags=("tarot",)))
    await w.store.offer(await host(w, "h-ta", languages=("ta",), gender="m", rate=50))
    wants = {
        "lang-ta": Filters(language="ta"),
        "cheap": Filters(max_rate=20),
        "tags": Filters(tags=("tarot",), gender="f"),
    }
    got = {}
    for uid, filters in wants.items():
        pair = await w.store.request(await ticket(w, uid, filters=filters))
        got[uid] = pair.host.user_id if pair else None
        if pair:
            await w.store.release([uid, pair.host.user_id])
            await w.store.reoffer(pair.host.user_id)
    assert got == {"lang-ta": "h-ta", "cheap": "h-hi", "tags": "h-hi"}
    assert await w.store.request(await ticket(w, "nobody", filters=Filters(gender="x"))) is None
    # a block either way keeps them apart
    blocker = await ticket(w, "blocker", exclude=frozenset({"h-hi", "h-ta"}))
    assert await w.store.request(blocker) is None
    await w.store.cancel("blocker")
    h = await host(w, "h-new", exclude=frozenset({"picky"}))
    await w.store.request(await ticket(w, "picky"))
    assert await w.store.offer(h) is None


async def test_recent_partners_are_kept_apart_for_a_while(w: World) -> None:
    h = await host(w, "hal")
    await w.store.offer(h)
    t = await ticket(w, "ann")
    assert await w.store.request(t) is not None
    await w.store.release(["ann", "hal"])
    assert await w.store.reoffer("hal") is None  # pooled again; ann is not waiting
    assert await w.store.request(t) is None  # not hal again so soon
    await w.advance(AVOID_S + 0.2)
    assert await w.store.reoffer("hal") is not None  # now they may meet again


async def test_a_pairing_reserves_both_until_released_or_lapsed(w: World) -> None:
    h = await host(w, "hal")
    await w.store.offer(h)
    t = await ticket(w, "ann")
    assert await w.store.request(t) is not None
    with pytest.raises(Busy):
        await w.store.request(replace(t, ticket_id="again"))
    assert await w.store.reoffer("hal") is None  # reserved: not pooled
    assert (await w.store.waiting())["hosts_random"] == 0
    await w.advance(RESERVE_S + 0.2)
    assert await w.store.offer(h, only_if_absent=True) is None
    assert (await w.store.waiting())["hosts_random"] == 1  # lapsed: the resync pooled hal
    assert await w.store.offer(h, only_if_absent=True) is None  # already there: no-op


async def test_renew_only_touches_the_current_ticket(w: World) -> None:
    t = await ticket(w, "ann")
    await w.store.request(t)
    assert not await w.store.cancel("ann", "another")
    assert await w.store.cancel("ann", t.ticket_id)
    assert await w.store.request(t, renew=True) is None
    assert (await w.store.waiting())["random"] == 0  # a cancelled ticket does not come back


async def test_rescans_reach_deep_into_a_large_pool(w: World) -> None:
    for i in range(5):
        await w.store.offer(await host(w, f"h{i}", languages=("en",) if i < 4 else ("fr",)))
    t = await ticket(w, "ann", filters=Filters(language="fr"))
    assert await w.store.request(t) is None  # scan_max 3: h4 is beyond the first window
    pair = await w.store.request(t, renew=True, offset=3)
    assert pair is not None and pair.host.user_id == "h4"


async def test_withdraw_only_removes_the_same_session(w: World) -> None:
    h = await host(w, "hal")
    await w.store.offer(h)
    await w.store.withdraw("hal", "another-session")
    assert (await w.store.waiting())["hosts_random"] == 1
    await w.store.withdraw("hal", h.session_id)
    assert (await w.store.waiting())["hosts_random"] == 0
    assert await w.store.reoffer("hal") is None


def near(km_north: float) -> tuple[float, float]:
    return DELHI[0] + km_north / 111.2, DELHI[1]


async def test_nearby_pairs_the_nearest_within_the_radius(w: World) -> None:
    for uid, km in (("far", 30.0), ("mid", 8.0), ("close", 3.0)):
        lat, lon = near(km)
        await w.store.offer(await host(w, uid, ("nearby",), lat=lat, lon=lon))
    assert (await w.store.waiting())["hosts_nearby"] == 3
    t = await ticket(w, "ann", "nearby", lat=DELHI[0], lon=DELHI[1], radius_km=10.0)
    pair = await w.store.request(t)
    assert pair is not None and pair.host.user_id == "close"
    assert pair.distance_km == pytest.approx(distance_km(*DELHI, *near(3.0)), abs=0.01)
    t2 = await ticket(w, "bob", "nearby", lat=DELHI[0], lon=DELHI[1], radius_km=2.0)
    assert await w.store.request(t2) is None  # nobody within 2 km: bob waits
    pair = await w.store.request(replace(t2, radius_km=20.0), renew=True)
    assert pair is not None and pair.host.user_id == "mid"


async def test_a_nearby_host_pairs_a_waiter_within_the_waiters_radius(w: World) -> None:
    await w.store.request(await ticket(w, "ann", "nearby", lat=DELHI[0], lon=DELHI[1], radius_km=5))
    lat, lon = near(9.0)
    h = await host(w, "hal", ("nearby", "random"), lat=lat, lon=lon)
    assert await w.store.offer(h) is None  # 9 km away: outside ann's 5 km
    assert (await w.store.waiting())["hosts_nearby"] == 1
    lat, lon = near(4.0)
    pair = await w.store.offer(await host(w, "hue", ("nearby",), lat=lat, lon=lon))
    assert pair is not None and pair.ticket.user_id == "ann"
    assert pair.distance_km is not None and 3.9 < pair.distance_km < 4.1
    # random callers do not see the nearby-only pool, and the reverse
    assert (await w.store.request(await ticket(w, "rob"))) is not None  # hal is in random too
