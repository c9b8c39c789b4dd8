"""Pairing requests batched into one script call: grouped under load, each answered."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from signalling.match.batch import Batcher


async def test_requests_made_together_share_calls_and_each_gets_its_reply() -> None:
    calls: list[list[str | bytes]] = []

    async def run(argv: list[str | bytes]) -> Sequence[Any]:
        calls.append(argv)
        await asyncio.sleep(0.01)
        return [f"re:{a!s}" for a in argv[1:]]

    batcher = Batcher(run, limit=4, depth=1)
    replies = await asyncio.gather(*(batcher.submit([str(i)]) for i in range(10)))
    assert replies == [f"re:{i}" for i in range(10)]
    assert [c[0] for c in calls] == ["4", "4", "2"]  # the count of requests leads


async def test_a_store_error_reaches_every_waiter_and_a_short_reply_is_one() -> None:
    async def down(argv: list[str | bytes]) -> Sequence[Any]:
        raise ConnectionError("redis went away")

    batcher = Batcher(down)
    results = await asyncio.gather(
        batcher.submit(["a"]), batcher.submit(["b"]), return_exceptions=True
    )
    assert all(isinstance(r, ConnectionError) for r in results)

    async def short(argv: list[str | bytes]) -> Sequence[Any]:
        return ["only one"]

    one = Batcher(short, depth=1)
    with pytest.raises(RuntimeError, match="1 replies to 2 requests"):
        await asyncio.gather(one.submit(["a"]), one.submit(["b"]))


async def test_a_request_right_after_the_last_one_is_answered_is_not_orphaned() -> None:
    async def run(argv: list[str | bytes]) -> Sequence[Any]:
        return list(argv[1:])

    batcher = Batcher(run, depth=1)
    assert await batcher.submit(["a"]) == "a"
    # The flusher has just found its queue empty; its task's done callback has not run yet.
    async with asyncio.timeout(1):  # (in this task: wait_for's own task would come too late)
        assert await batcher.submit(["b"]) == "b"
