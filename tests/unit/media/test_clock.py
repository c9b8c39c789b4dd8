"""media/clock.py: the manual clock's sleepers and ``wait`` timed on a clock."""

from __future__ import annotations

import asyncio

from media.clock import ManualClock, SystemClock, wait


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_sleepers_wake_in_order_when_the_clock_reaches_them() -> None:
    clock = ManualClock(start=0.0)
    woke: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(name)

    tasks = [asyncio.ensure_future(sleeper(n, s)) for n, s in (("b", 2.0), ("a", 1.0))]
    cancelled = asyncio.ensure_future(sleeper("never", 1.5))
    await settle()
    cancelled.cancel()
    clock.advance(0.5)
    await settle()
    assert woke == []
    clock.advance(2.0)
    await settle()
    assert woke == ["a", "b"] and all(t.done() for t in tasks) and cancelled.cancelled()
    assert clock.monotonic() == clock.time() == 2.5


async def test_wait_returns_done_and_pending_and_cancels_nothing() -> None:
    clock = ManualClock()
    quick = asyncio.ensure_future(asyncio.sleep(0))
    slow = asyncio.ensure_future(clock.sleep(10))
    waiting = asyncio.ensure_future(wait(clock, [quick, slow], 1.0))
    await settle()
    assert not waiting.done()
    clock.advance(1.5)
    done, pending = await waiting
    assert done == {quick} and pending == {slow} and not slow.cancelled()
    clock.advance(10)
    await settle()
    assert slow.done()
    assert await wait(clock, [], 1.0) == (set(), set())
    done, pending = await wait(SystemClock(), [asyncio.ensure_future(asyncio.sleep(0))], 5.0)
    assert len(done) == 1 and pending == set()
