"""Messages from other nodes, handled in order per lane and concurrently across lanes.

The bus hands a node its messages one after another. Handling them one after another too
made every message wait behind the slowest before it: under load a ring relayed to a host
waited 0.3-0.9 s behind other users' call operations (each a PostgreSQL or Redis round
trip), and a forwarded ``call.end`` held its party's connection that long. A lane is what
must stay in order, in practice one user (their frames, the answers to their forwarded
call messages, their presence): a lane's messages run in arrival order, a message whose
lane is idle runs at once, and a handler that returns without waiting (a frame for a
session) costs no task.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

Handler = Callable[[Any], Awaitable[None] | None]

log = logging.getLogger(__name__)


class Lanes:
    def __init__(self) -> None:
        self._busy: dict[str, deque[tuple[Handler, Any]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def run(self, lane: str, handler: Handler, message: Any) -> None:
        queued = self._busy.get(lane)
        if queued is not None:
            queued.append((handler, message))
            return
        try:
            pending = handler(message)
        except Exception:
            log.exception("node bus message %s failed", type(message).__name__)
            return
        if pending is None:
            return
        self._busy[lane] = deque()
        task = asyncio.create_task(self._drain(lane, message, pending))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, lane: str, message: Any, pending: Awaitable[None] | None) -> None:
        queued = self._busy[lane]
        try:
            while True:
                try:
                    if pending is not None:
                        await pending
                except Exception:
                    log.exception("node bus message %s failed", type(message).__name__)
                if not queued:
                    return
                handler, message = queued.popleft()
                try:
                    pending = handler(message)
                except Exception:
                    log.exception("node bus message %s failed", type(message).__name__)
                    pending = None
        finally:
            del self._busy[lane]

    def busy(self) -> int:
        """Lanes with a message in progress (for tests and stats)."""
        return len(self._busy)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
