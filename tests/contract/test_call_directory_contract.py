"""Contract suite for ``CallDirectory``: the memory and the Redis adapters behave the same.

The Redis one runs on the real Redis (JALWA_TEST_REDIS_URL, default 127.0.0.1:6379) under a
key prefix of its own that is deleted afterwards; TTLs are real there (1 s), so the memory
one moves a ManualClock by the same amounts.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from redis.asyncio import Redis

from signalling.calls.directory import CallDirectory, CallEntry, MemoryCallDirectory, PartyRef
from signalling.calls.directory_redis import RedisCallDirectory
from signalling.clock import ManualClock

TTL_S = 1


@dataclass
class Dir:
    store: CallDirectory
    advance: Any  # async (seconds) -> None
    lose_everything: Any  # async () -> None


@pytest.fixture(params=["memory", "redis"])
async def d(request: pytest.FixtureRequest) -> AsyncIterator[Dir]:
    if request.param == "memory":
        clock = ManualClock()
        store = MemoryCallDirectory(clock, ttl_s=TTL_S)

        async def advance(seconds: float) -> None:
            clock.advance(seconds)

        async def lose() -> None:
            store.__init__(clock, ttl_s=TTL_S)  # type: ignore[misc]

        yield Dir(store, advance, lose)
        return
    url = os.environ.get("JALWA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"jalwa-test-{uuid.uuid4().hex}"
    client = Redis.from_url(url, socket_connect_timeout=2)

    async def delete_all() -> None:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=500)]
        if keys:
            await client.delete(*keys)

    try:
        yield Dir(RedisCallDirectory(client, prefix=prefix, ttl_s=TTL_S), asyncio.sleep, delete_all)
    finally:
        await delete_all()
        await client.aclose()


def entry(call_id: str, caller: str = "alice", callee: str = "bob", **kw: Any) -> CallEntry:
    return CallEntry(
        call_id=call_id,
        owner=kw.pop("owner", "node-a"),
        caller=PartyRef(caller, "caller", caller.title()),
        callee=PartyRef(callee, "host", callee.title()),
        **kw,
    )


async def test_claim_enters_both_parties_and_refuses_a_second_call(d: Dir) -> None:
    first = entry("c1")
    assert await d.store.claim(first) is None
    assert await d.store.of_users(["alice", "bob", "carol"]) == {"alice": first, "bob": first}
    assert await d.store.by_id("c1") == first

    assert await d.store.claim(entry("c2", "carol", "bob")) == "bob"
    assert await d.store.claim(entry("c3", "alice", "dave")) == "alice"
    assert await d.store.of_users(["carol", "dave"]) == {}
    assert await d.store.by_id("c2") is None
    assert await d.store.claim(first) is None  # claiming the same call again is harmless


async def test_update_and_release_touch_only_their_own_call(d: Dir) -> None:
    call = entry("c1")
    await d.store.claim(call)
    answered = entry("c1", state="active", record=True)
    await d.store.update(answered)
    assert (await d.store.of_users(["bob"]))["bob"] == answered

    await d.store.release(call)
    assert await d.store.of_users(["alice", "bob"]) == {}
    await d.store.update(answered)  # an ended call is not brought back
    assert await d.store.by_id("c1") is None

    # Releasing an old call after the user joined a new one leaves the new one alone.
    newer = entry("c2", "alice", "erin")
    await d.store.claim(newer)
    await d.store.release(call)
    assert await d.store.of_users(["alice"]) == {"alice": newer}


async def test_entries_lapse_without_refresh_and_refresh_keeps_and_restores_them(d: Dir) -> None:
    kept, dropped = entry("c1"), entry("c2", "carol", "dave")
    await d.store.claim(kept)
    await d.store.claim(dropped)
    for _ in range(3):
        await d.advance(0.5)
        await d.store.refresh([kept])
    assert set(await d.store.of_users(["alice", "bob", "carol", "dave"])) == {"alice", "bob"}
    # The lapsed call's parties are free: a new call may claim them.
    assert await d.store.claim(entry("c3", "carol", "dave")) is None

    await d.lose_everything()  # a Redis restart without persistence
    await d.store.refresh([kept])
    assert await d.store.of_users(["alice"]) == {"alice": kept}

    # A refresh never overwrites a party's newer live call.
    await d.store.release(kept)
    newer = entry("c4", "alice", "erin")
    await d.store.claim(newer)
    await d.store.refresh([kept])
    assert await d.store.of_users(["alice", "bob"]) == {"alice": newer}


async def test_first_to_tell_is_true_once_per_call_and_user(d: Dir) -> None:
    results = await asyncio.gather(*(d.store.first_to_tell("c1", "alice") for _ in range(5)))
    assert sorted(results) == [False] * 4 + [True]
    assert await d.store.first_to_tell("c1", "bob")
    assert await d.store.first_to_tell("c2", "alice")


async def test_notices_are_kept_in_order_bounded_and_taken_once(d: Dir) -> None:
    assert await d.store.take_notices("alice") == []
    for i in range(25):
        await d.store.leave_notice("alice", f"frame-{i}".encode())
    taken = await d.store.take_notices("alice")
    assert taken == [f"frame-{i}".encode() for i in range(5, 25)]
    assert await d.store.take_notices("alice") == []
