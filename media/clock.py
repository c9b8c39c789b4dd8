"""The one place media reads time or waits, so tests can drive timers without sleeping.

The SFU's watchdogs and close timeouts sleep on it, forwarding rate-limits keyframe
requests with it, the recorder dates frames with it. signalling has its own ``Clock``
(media never imports signalling); the composition root may pass any object that has all
three methods.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Collection
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch (file metadata only, never for intervals)."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ManualClock:
    """A clock tests move by hand: ``advance`` wakes the sleepers whose time has come."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        wakeup = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), wakeup))
        await wakeup

    def advance(self, seconds: float) -> None:
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, wakeup = heapq.heappop(self._sleepers)
            if not wakeup.done():  # a cancelled sleep
                wakeup.set_result(None)


async def wait(
    clock: Clock, tasks: Collection[asyncio.Future[T]], seconds: float
) -> tuple[set[asyncio.Future[T]], set[asyncio.Future[T]]]:
    """``asyncio.wait(tasks, timeout=seconds)`` timed on ``clock``: (done, pending), nothing
    cancelled."""
    if not tasks:
        return set(), set()
    everything: asyncio.Future[Any] = asyncio.gather(*tasks, return_exceptions=True)
    timer: asyncio.Future[Any] = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait({everything, timer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        timer.cancel()
    done = {task for task in tasks if task.done()}
    return done, {task for task in tasks if not task.done()}
