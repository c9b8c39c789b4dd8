"""The node bus shuts down even when a library under it swallows a cancellation.

A cross-node test hung about 1 run in 20 in its teardown: the task dump showed
``RedisRouter._flush`` "cancelling" yet back at ``await self._wake.wait()``, with
``close()`` waiting for it forever. Something under ``pipe.execute()`` had caught the
CancelledError. Here a stand-in Redis does exactly that, on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import TracebackType
from typing import Any

from signalling.cluster.bus import Evict, RedisRouter


class SwallowingPipeline:
    """``execute`` waits for a reply that never comes and eats the cancellation."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    async def __aenter__(self) -> SwallowingPipeline:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def publish(self, channel: str, data: bytes) -> None:
        self.calls.append(channel)

    async def execute(self) -> list[int]:
        with contextlib.suppress(asyncio.CancelledError):  # the bug: the cancellation is gone
            await asyncio.sleep(3600)
        return [1]


class SwallowingRedis:
    def __init__(self) -> None:
        self.published: list[str] = []

    def pipeline(self, transaction: bool = True) -> SwallowingPipeline:
        return SwallowingPipeline(self.published)


async def test_close_returns_although_the_publish_swallowed_its_cancellation() -> None:
    redis: Any = SwallowingRedis()
    router = RedisRouter(redis, "n1", prefix="t")
    await router.broadcast(Evict(user_id="u", reason="banned"))
    await asyncio.sleep(0.05)  # the flusher is inside execute()
    assert redis.published == ["t:bus:all"]
    started = time.monotonic()
    async with asyncio.timeout(10):  # without the fix: forever
        await router.close()
    assert time.monotonic() - started < 5
    flusher = router._flusher  # the task under test
    assert flusher is not None and flusher.done()
