"""Contract suite for ``ResumeStore``: the memory and the Redis adapters behave the same (the
Redis one on the real Redis under a key prefix of its own, deleted afterwards)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis

from signalling.clock import ManualClock
from signalling.cluster.resume import MemoryResume, ResumeStore
from signalling.cluster.resume_redis import RedisResume

WINDOW_S = 1.0
MAX_FRAMES = 5


@dataclass
class Store:
    store: ResumeStore
    advance: Callable[[float], Awaitable[None]]


@pytest.fixture(params=["memory", "redis"])
async def s(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        clock = ManualClock()

        async def advance(seconds: float) -> None:
            clock.advance(seconds)

        yield Store(MemoryResume(clock, window_s=WINDOW_S, max_frames=MAX_FRAMES), advance)
        return
    url = os.environ.get("JALWA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"jalwa-test-{uuid.uuid4().hex}"
    client = Redis.from_url(url, socket_connect_timeout=2)
    try:
        store = RedisResume(client, prefix=prefix, window_s=WINDOW_S, max_frames=MAX_FRAMES)
        yield Store(store, asyncio.sleep)
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=500)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_a_parked_session_collects_frames_until_taken_once(s: Store) -> None:
    await s.store.park("t1", "alice", 7, [b"f7", b"f8"])
    assert await s.store.append("t1", b"f9")
    parked = await s.store.take("t1", "alice")
    assert parked is not None
    assert (parked.first_seq, parked.frames, parked.overflowed) == (7, [b"f7", b"f8", b"f9"], False)
    assert parked.last_seq == 9
    # Taken: the holder's next frame is refused, and nobody takes it twice.
    assert not await s.store.append("t1", b"f10")
    assert await s.store.take("t1", "alice") is None


async def test_a_session_parked_with_no_frames_numbers_from_the_next_seq(s: Store) -> None:
    await s.store.park("t1", "alice", 4, [])
    assert await s.store.append("t1", b"f4")
    parked = await s.store.take("t1", "alice")
    assert parked is not None and (parked.first_seq, parked.frames) == (4, [b"f4"])


async def test_forged_foreign_and_expired_tokens_take_nothing(s: Store) -> None:
    await s.store.park("t1", "alice", 1, [b"f1"])
    assert await s.store.take("nope", "alice") is None
    assert await s.store.take("t1", "mallory") is None  # not hers; alice's stays parked
    assert not await s.store.append("nope", b"x")
    await s.advance(WINDOW_S + 0.3)
    assert not await s.store.append("t1", b"f2")
    assert await s.store.take("t1", "alice") is None


async def test_past_the_bound_a_parked_session_is_marked_overflowed(s: Store) -> None:
    await s.store.park("t1", "alice", 1, [b"f1", b"f2", b"f3"])
    for i in range(4, 9):
        assert await s.store.append("t1", f"f{i}".encode())
    parked = await s.store.take("t1", "alice")
    assert parked is not None and parked.overflowed
    assert parked.frames == [b"f1", b"f2", b"f3", b"f4", b"f5"]  # the bound, no more

    await s.store.park("t2", "alice", 1, [f"f{i}".encode() for i in range(1, 8)])
    parked = await s.store.take("t2", "alice")
    assert parked is not None and parked.overflowed and len(parked.frames) == MAX_FRAMES
