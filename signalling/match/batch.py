"""Pairing requests made at about the same time go to Redis as one script call.

Each request costs the client more than Redis: a round trip, and redis-py packing and
parsing one command. Requests that arrive while one call is in flight wait for it and then
go together (one ``EVALSHA`` carrying up to ``limit`` of them), so under load the batch
grows by itself and a lone request still goes at once. ``depth`` calls may be in flight,
so that Redis runs one batch while the client packs the next. The script runs them in arrival
order, each as atomic as if alone (the batch is one script: more atomic, never less).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

Run = Callable[[list[str | bytes]], Awaitable[Sequence[Any]]]


class Batcher:
    def __init__(self, run: Run, *, limit: int = 128, depth: int = 2) -> None:
        self._run = run  # argv of n requests -> n replies
        self._limit = limit
        self._depth = depth
        self._queue: list[tuple[list[str | bytes], asyncio.Future[Any]]] = []
        # Flushers running or about to: counted down by the flusher itself the moment it
        # finds the queue empty (a done callback runs later, and a request queued in
        # between would wait for a flusher that is gone).
        self._flushing = 0
        self._tasks: set[asyncio.Task[None]] = set()  # (kept referenced while they run)

    async def submit(self, args: list[str | bytes]) -> Any:
        """One request's arguments; resolves to its reply."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((args, future))
        if self._flushing < self._depth:
            self._flushing += 1
            task = asyncio.create_task(self._flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self._limit]
                del self._queue[: self._limit]
                argv: list[str | bytes] = [str(len(batch))]
                for args, _ in batch:
                    argv += args
                try:
                    replies = list(await self._run(argv))
                    if len(replies) != len(batch):
                        raise RuntimeError(f"{len(replies)} replies to {len(batch)} requests")
                except asyncio.CancelledError:  # shutting down: nobody waits forever
                    for _, future in batch:
                        future.cancel()
                    raise
                except Exception as exc:  # every waiter hears of it (a store error)
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), reply in zip(batch, replies, strict=True):
                    if not future.done():
                        future.set_result(reply)
        finally:
            self._flushing -= 1
