"""Contract suite for ``PresenceStore``: MemoryPresence and RedisPresence behave the same.

Every contract test takes the ``world`` fixture, which runs it once per adapter. A world
is one shared store (a ``MemoryWorld`` or a Redis key prefix) plus a factory of nodes in
it and ``advance(seconds)``: the memory world moves a ManualClock, the Redis world sleeps
(TTLs are real there, so they are kept short: records 2 s, node liveness 1 s).

The Redis world needs a running Redis (JALWA_TEST_REDIS_URL, default 127.0.0.1:6379); if
it is unreachable the tests fail, they never skip. Each Redis world uses its own key
prefix and deletes every key under it afterwards.

"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from signalling.clock import ManualClock
from signalling.presence.memory import MemoryPresence, MemoryWorld
from signalling.presence.redis_store import RedisPresence
from signalling.presence.store import PresenceRecord, PresenceStore

TTL_S = 2
NODE_TTL_S = 1
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
START_REDIS = (
    'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" '
    "--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log"
)


class World:
    """One shared presence store and the nodes created in it."""

    kind: str

    def node(self, node_id: str) -> PresenceStore:
        raise NotImplementedError

    async def lose_everything(self) -> None:
        """What a restart of the store without persistence does."""
        raise NotImplementedError

    async def advance(self, seconds: float) -> None:
        raise NotImplementedError


class MemoryTestWorld(World):
    kind = "memory"

    def __init__(self) -> None:
        self.clock = ManualClock()
        self.world = MemoryWorld(self.clock)

    def node(self, node_id: str) -> PresenceStore:
        return MemoryPresence(self.world, node_id, ttl_s=TTL_S, node_ttl_s=NODE_TTL_S)

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    async def lose_everything(self) -> None:
        self.world.records.clear()
        self.world.nodes.clear()


class RedisTestWorld(World):
    kind = "redis"

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"jalwa-test-{uuid.uuid4().hex}"
        self.admin = Redis.from_url(url, socket_connect_timeout=2)
        self._clients: list[Redis] = []

    def client(self, *, decode_responses: bool = False) -> Redis:
        """A client of its own, as a separate node process would have."""
        client = Redis.from_url(
            self.url, socket_connect_timeout=2, decode_responses=decode_responses
        )
        self._clients.append(client)
        return client

    def node(self, node_id: str, *, decode_responses: bool = False) -> RedisPresence:
        return RedisPresence(
            self.client(decode_responses=decode_responses),
            node_id,
            prefix=self.prefix,
            ttl_s=TTL_S,
            node_ttl_s=NODE_TTL_S,
        )

    async def advance(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def lose_everything(self) -> None:
        keys = await self.keys()
        if keys:
            await self.admin.delete(*keys)

    async def keys(self) -> list[str]:
        found = [k async for k in self.admin.scan_iter(match=f"{self.prefix}:*", count=500)]
        return sorted(k.decode() for k in found)

    async def aclose(self) -> None:
        try:
            keys = await self.keys()
            if keys:
                await self.admin.delete(*keys)
        finally:
            for client in self._clients:
                await client.aclose()
            await self.admin.aclose()


@asynccontextmanager
async def open_world(kind: str) -> AsyncIterator[World]:
    if kind == "memory":
        yield MemoryTestWorld()
        return
    url = os.environ.get("JALWA_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    world = RedisTestWorld(url)
    problem = None
    try:
        await world.admin.ping()
    except (RedisError, OSError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if problem is not None:
        await world.admin.aclose()
        pytest.fail(
            f"Redis is needed at {url} (default 127.0.0.1:6379, override with "
            f"JALWA_TEST_REDIS_URL) and is not reachable ({problem}). Start it with: "
            f"{START_REDIS}",
            pytrace=False,
        )
    try:
        yield world
    finally:
        await world.aclose()


@pytest.fixture(params=["memory", "redis"])
async def world(request: pytest.FixtureRequest) -> AsyncIterator[World]:
    async with open_world(request.param) as w:
        yield w


@pytest.fixture
async def redis_world() -> AsyncIterator[RedisTestWorld]:
    async with open_world("redis") as w:
        assert isinstance(w, RedisTestWorld)
        yield w


def rec(
    uid: str,
    *,
    status: str = "available",
    role: str = "host",
    session: str | None = None,
    name: str | None = None,
    lat: float | None = None,
    lon: float | None = None,
) -> PresenceRecord:
    return PresenceRecord(
        user_id=uid,
        status=status,
        role=role,
        name=name if name is not None else f"name-{uid}",
        node_id="not-this-node",
        session_id=session if session is not None else f"s-{uid}",
        lat=lat,
        lon=lon,
    )


# --- contract: both adapters ----------------------------------------------------------


async def test_set_get_many_round_trip(world: World) -> None:
    a = world.node("A")
    located = rec("u1", name="Asha ✨", lat=19.076, lon=-72.87770000000001)
    plain = rec("u2", status="busy", role="caller")
    await a.set(located)
    await a.set(plain)

    got = await a.get_many(["u1", "u2", "nobody", "u1"])

    assert got == {"u1": replace(located, node_id="A"), "u2": replace(plain, node_id="A")}
    assert await a.get_many([]) == {}

    # A set replaces the whole record: the location does not linger.
    await a.set(replace(located, lat=None, lon=None, status="away"))
    assert (await a.get_many(["u1"]))["u1"] == replace(
        located, node_id="A", lat=None, lon=None, status="away"
    )


async def test_status_change_moves_user_in_and_out_of_available(world: World) -> None:
    a = world.node("A")
    await a.set(rec("u"))
    assert await a.available("host", 10) == ["u"]
    await a.set(rec("u", status="busy"))
    assert await a.available("host", 10) == []
    await a.set(rec("u", status="available"))
    assert await a.available("host", 10) == ["u"]
    await a.set(rec("u", status="away"))
    assert await a.available("host", 10) == []
    await a.set(rec("u", role="caller"))
    assert await a.available("host", 10) == []
    assert await a.available("caller", 10) == ["u"]


async def test_available_filters_by_role_and_limit(world: World) -> None:
    a = world.node("A")
    for uid in ("h1", "h2", "h3"):
        await a.set(rec(uid))
    await a.set(rec("h4", status="busy"))
    await a.set(rec("h5", status="away"))
    await a.set(rec("c1", role="caller"))

    assert sorted(await a.available("host", 10)) == ["h1", "h2", "h3"]
    two = await a.available("host", 2)
    assert len(two) == 2
    assert len(set(two)) == 2
    assert set(two) <= {"h1", "h2", "h3"}
    assert await a.available("caller", 10) == ["c1"]
    assert await a.available("astrologer", 10) == []


async def test_available_with_limit_zero_is_empty(world: World) -> None:
    a = world.node("A")
    await a.set(rec("u"))
    assert await a.available("host", 0) == []


async def test_clear_only_with_matching_session(world: World) -> None:
    a = world.node("A")
    await a.set(rec("u", session="s1"))

    assert await a.clear("u", "other") is False
    assert set(await a.get_many(["u"])) == {"u"}
    assert await a.available("host", 10) == ["u"]

    assert await a.clear("u", "s1") is True
    assert await a.get_many(["u"]) == {}
    assert await a.available("host", 10) == []
    assert await a.clear("u", "s1") is False
    assert await a.clear("nobody", "s1") is False


async def test_newer_session_survives_old_session_clear(world: World) -> None:
    a = world.node("A")
    await a.set(rec("u", session="old"))
    await a.set(rec("u", session="new"))

    assert await a.clear("u", "old") is False

    got = await a.get_many(["u"])
    assert got["u"].session_id == "new"
    assert await a.available("host", 10) == ["u"]


async def test_nodes_sharing_a_world_see_each_other(world: World) -> None:
    a, b = world.node("A"), world.node("B")
    await a.set(rec("u"))
    await b.set(rec("w"))
    await b.set(rec("c", role="caller"))

    for reader in (a, b):
        got = await reader.get_many(["u", "w", "c"])
        assert {uid: r.node_id for uid, r in got.items()} == {"u": "A", "w": "B", "c": "B"}
        assert sorted(await reader.available("host", 10)) == ["u", "w"]
        assert await reader.available("caller", 10) == ["c"]


async def test_beat_keeps_records_alive_and_unbeaten_records_expire(world: World) -> None:
    a = world.node("A")
    await a.set(rec("u"))
    await a.set(rec("v"))

    for _ in range(4):  # 2.4 s in all: past the 2 s record TTL and the 1 s node TTL
        await world.advance(0.6)
        await a.beat(["u"])

    assert set(await a.get_many(["u", "v"])) == {"u"}
    assert await a.available("host", 10) == ["u"]


async def test_beat_reports_records_the_store_lost(world: World) -> None:
    """After a restart without persistence, a beat names the live users to publish again;
    a user whose record another live node holds is named apart (a newer connect there)."""
    a, b = world.node("A"), world.node("B")
    await a.set(rec("u"))
    await b.set(rec("v"))
    assert await a.beat(["u", "v"]) == ([], ["v"])

    await world.lose_everything()

    assert await a.beat(["u", "never-set"]) == (["u", "never-set"], [])
    await b.set(rec("v"))
    assert await a.beat(["v"]) == ([], ["v"])
    assert (await b.get_many(["v"]))["v"].node_id == "B"  # not refreshed nor taken by A
    await a.set(rec("u"))
    assert set(await b.get_many(["u", "v"])) == {"u", "v"}


async def test_beat_names_a_user_a_dead_node_left_for_publishing_again(world: World) -> None:
    a, b = world.node("A"), world.node("B")
    await b.set(rec("v", session="s-b"))
    await world.advance(0.6)
    await a.beat([])
    await world.advance(0.7)  # B silent 1.3 s: dead; its record (2 s) has not run out
    assert await a.beat(["v"]) == (["v"], [])
    assert await a.set(rec("v", session="s-a")) is True
    assert (await b.get_many(["v"]))["v"].session_id == "s-a"


async def test_silent_node_users_vanish_when_node_key_expires(world: World) -> None:
    a, b = world.node("A"), world.node("B")
    await a.set(rec("u"))

    await world.advance(1.3)  # A's liveness (1 s) is gone, u's record (2 s) is not

    assert await b.get_many(["u"]) == {}
    assert await b.available("host", 10) == []

    # The record itself was still there: A beating again before any sweep shows it again.
    await a.beat([])
    assert set(await b.get_many(["u"])) == {"u"}
    assert await b.available("host", 10) == ["u"]


async def test_nodes_alive_names_only_nodes_that_beat_within_their_ttl(world: World) -> None:
    a, b = world.node("A"), world.node("B")
    await a.beat([])
    await b.beat([])
    assert await a.nodes_alive(["A", "B", "never", "A"]) == {"A", "B"}
    assert await a.nodes_alive([]) == set()

    await world.advance(0.6)
    await b.beat([])
    await world.advance(0.6)  # A's liveness (1 s) ran out; B beat 0.6 s ago

    assert await a.nodes_alive(["A", "B"]) == {"B"}


async def test_sweep_removes_dead_nodes_users_only(world: World) -> None:
    a, b = world.node("A"), world.node("B")
    await a.set(rec("u1"))
    await a.set(rec("u2", status="busy"))
    await a.set(rec("m", session="m-on-a"))
    await b.set(rec("w"))
    await b.claim("m", "m-on-b", "host", "name-m")  # m reconnected to B
    await b.set(rec("m", session="m-on-b"))
    await world.advance(0.6)
    await b.beat(["w", "m"])
    await world.advance(0.7)  # A silent for 1.3 s: dead; B beat 0.7 s ago: alive

    assert sorted(await b.sweep()) == ["u1", "u2"]
    assert await b.sweep() == []

    got = await b.get_many(["u1", "u2", "w", "m"])
    assert {uid: r.node_id for uid, r in got.items()} == {"w": "B", "m": "B"}
    assert got["m"].session_id == "m-on-b"
    assert sorted(await b.available("host", 10)) == ["m", "w"]

    # What sweep removed stays removed when the dead node comes back.
    await a.beat(["u1", "u2"])
    assert await b.get_many(["u1", "u2"]) == {}


async def test_retire_removes_own_users_only(world: World) -> None:
    a, b = world.node("A"), world.node("B")
    await a.set(rec("u1"))
    await a.set(rec("u2", status="busy"))
    await b.set(rec("w"))

    await a.retire()

    assert set(await b.get_many(["u1", "u2", "w"])) == {"w"}
    assert await b.available("host", 10) == ["w"]
    assert await b.sweep() == []
    assert await a.clear("u1", "s-u1") is False


async def test_reconnect_to_another_node(world: World) -> None:
    a, b = world.node("A"), world.node("B")
    await a.set(rec("u", session="s1"))
    took = await b.claim("u", "s2", "host", "name-u")
    assert took is not None and (took.node_id, took.session_id) == ("A", "s1")
    assert await b.set(rec("u", session="s2", status="busy")) is True

    got = (await a.get_many(["u"]))["u"]
    assert (got.node_id, got.session_id, got.status) == ("B", "s2", "busy")
    assert await a.available("host", 10) == []

    assert await a.clear("u", "s1") is False  # the old session's late cleanup
    await a.retire()  # the old node leaving
    assert set(await b.get_many(["u"])) == {"u"}

    await b.set(rec("u", session="s2"))
    assert await b.available("host", 10) == ["u"]
    assert await b.clear("u", "s2") is True
    assert await b.get_many(["u"]) == {}


async def test_claim_takes_the_user_and_the_overtaken_nodes_set_is_refused(
    world: World,
) -> None:
    a, b = world.node("A"), world.node("B")
    assert await a.claim("u", "s1", "host", "Asha") is None  # nobody held it
    claimed = (await b.get_many(["u"]))["u"]
    assert (claimed.node_id, claimed.session_id, claimed.status) == ("A", "s1", "offline")
    assert await a.available("host", 10) == []  # claimed, not yet joined: never matched

    took = await b.claim("u", "s2", "host", "Asha")  # the same user connects on B
    assert took is not None
    assert (took.node_id, took.session_id, took.status) == ("A", "s1", "offline")
    # A's session, overtaken while it was joining, publishes late: B keeps the user.
    assert await a.set(rec("u", session="s1")) is False
    got = (await a.get_many(["u"]))["u"]
    assert (got.node_id, got.session_id, got.status) == ("B", "s2", "offline")
    assert await a.available("host", 10) == []
    assert await a.clear("u", "s1") is False

    assert await b.set(rec("u", session="s2")) is True
    assert await b.available("host", 10) == ["u"]
    # A connect back on A takes it again; a set on the node that holds it is never refused.
    took = await a.claim("u", "s3", "host", "Asha")
    assert took is not None and (took.node_id, took.session_id) == ("B", "s2")
    assert await a.available("host", 10) == []
    assert await a.set(rec("u", session="s3")) is True
    assert await a.set(rec("u", session="s4")) is True  # (the hub orders its own sessions)


async def test_a_dead_nodes_record_is_neither_returned_by_claim_nor_blocks_set(
    world: World,
) -> None:
    a, b = world.node("A"), world.node("B")
    await a.set(rec("u", session="s1"))
    await a.set(rec("v", session="s1"))
    await world.advance(0.6)
    await b.beat([])
    await world.advance(0.7)  # A silent 1.3 s: dead; its records have not run out
    assert await b.claim("u", "s2", "host", "name-u") is None
    assert await b.set(rec("v", session="s9")) is True
    got = await b.get_many(["u", "v"])
    assert {uid: (r.node_id, r.session_id) for uid, r in got.items()} == {
        "u": ("B", "s2"),
        "v": ("B", "s9"),
    }


async def test_set_on_a_silent_node_marks_it_alive(world: World) -> None:
    a, b = world.node("A"), world.node("B")
    await a.set(rec("u"))
    await world.advance(1.3)  # A's liveness gone, u's record not
    assert await b.get_many(["u"]) == {}

    await a.set(rec("v"))

    assert set(await b.get_many(["u", "v"])) == {"u", "v"}


async def test_expired_records_are_gone_for_good(world: World) -> None:
    a = world.node("A")
    await a.set(rec("u"))
    await a.set(rec("x", session="s-x"))
    await world.advance(TTL_S + 0.2)  # both records (and A's liveness) ran out

    # A alive again; u's record is not brought back, but reported missing (A publishes it
    # again if u's session is still live).
    assert await a.beat(["u"]) == (["u"], [])

    assert await a.get_many(["u", "x"]) == {}
    assert await a.available("host", 10) == []
    assert await a.clear("x", "s-x") is False
    assert await a.sweep() == []  # sweep reports users of dead nodes only


# --- Redis adapter only: key layout and housekeeping ----------------------------------


async def test_redis_key_layout_and_housekeeping(redis_world: RedisTestWorld) -> None:
    rw = redis_world
    r, p = rw.admin, f"{rw.prefix}:p:"
    a, b = rw.node("A"), rw.node("B")

    await a.set(rec("u", lat=1.5, lon=-2.25))
    assert await r.hgetall(p + "u:u") == {
        b"status": b"available",
        b"role": b"host",
        b"name": b"name-u",
        b"node": b"A",
        b"session": b"s-u",
        b"lat": b"1.5",
        b"lon": b"-2.25",
    }
    assert 0 < await r.ttl(p + "u:u") <= TTL_S
    assert 0 < await r.ttl(p + "node:A") <= NODE_TTL_S
    assert await r.smembers(p + "nodes") == {b"A"}
    assert await r.smembers(p + "nu:A") == {b"u"}
    assert await r.smembers(p + "avail:host") == {b"u"}

    # Moving to another node, status and role updates every index.
    await b.claim("u", "s2", "caller", "name-u")
    await b.set(rec("u", status="busy", role="caller", session="s2"))
    assert await r.smembers(p + "nodes") == {b"A", b"B"}
    assert await r.smembers(p + "nu:A") == set()
    assert await r.smembers(p + "nu:B") == {b"u"}
    assert await r.smembers(p + "avail:host") == set()
    assert await r.smembers(p + "avail:caller") == set()

    # A dead node's available users are skipped but kept: the node may beat again.
    await b.set(rec("w"))
    await r.delete(p + "node:B")
    assert await a.available("host", 10) == []
    assert await r.smembers(p + "avail:host") == {b"w"}
    await b.beat([])
    assert await a.available("host", 10) == ["w"]

    # A member whose record ran out is dropped from the available set lazily.
    await r.delete(p + "u:w")
    assert await a.available("host", 10) == []
    assert await r.smembers(p + "avail:host") == set()

    # sweep: a dead node's records, available entries, user set and nodes entry go.
    await b.set(rec("w2"))
    await r.delete(p + "node:B")
    await a.beat([])
    assert sorted(await a.sweep()) == ["u", "w2"]
    assert not await r.exists(p + "nu:B", p + "u:u", p + "u:w2")
    assert await r.smembers(p + "nodes") == {b"A"}
    assert await r.smembers(p + "avail:host") == set()

    # sweep also prunes stale members of the sweeping node's own user set.
    await a.set(rec("z"))
    await r.delete(p + "u:z")
    assert await a.sweep() == []
    assert await r.smembers(p + "nu:A") == set()
    assert await r.smembers(p + "avail:host") == {b"z"}  # until available() looks at it
    assert await a.available("host", 10) == []
    assert await r.smembers(p + "avail:host") == set()

    # retire leaves nothing behind.
    await a.set(rec("y"))
    await a.retire()
    assert await rw.keys() == []


async def test_redis_client_with_decoded_responses(redis_world: RedisTestWorld) -> None:
    a = redis_world.node("A", decode_responses=True)
    located = rec("u", name="Ravi ✨", lat=12.9716, lon=77.5946)
    await a.set(located)
    assert await a.get_many(["u"]) == {"u": replace(located, node_id="A")}
    assert await a.available("host", 5) == ["u"]
    assert await a.sweep() == []
    await a.retire()
    assert await redis_world.keys() == []


def test_redis_rejects_sub_second_ttls() -> None:
    with pytest.raises(ValueError, match="at least 1 second"):
        RedisPresence(Redis(), "A", prefix="x", ttl_s=0, node_ttl_s=1)
