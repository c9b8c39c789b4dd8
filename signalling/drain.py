"""Graceful drain on SIGTERM (docs/operations.md, "Drain"), part of the composition root.

At once: the node is draining (``/readyz`` 503, new sessions closed 1012 with a hint) and
every session not in a call is closed 1012 to reconnect elsewhere. Running calls are kept
(billed per started minute as ever) until they end or until the deadline less a settling
margin; then they end with reason ``shutdown`` (the ledger closes each exactly once) and
their parties are closed 1012 too. The process exits before ``hub.drain_deadline_s``."""

from __future__ import annotations

import asyncio
import io
import logging
import time

from aiohttp import web

from .keys import CALLS, HUB
from .protocol import CloseCode

HINT = "server draining: reconnect to another node"
POLL_S = 0.2
log = logging.getLogger("jalwa")


def settle_margin(deadline_s: float) -> float:
    """What is left at the end of the deadline to end calls and close sockets."""
    return min(5.0, deadline_s / 3)


async def drain(app: web.Application, deadline_s: float) -> None:
    hub, calls = app[HUB], app[CALLS]
    hub.draining = True
    keep_until = time.monotonic() + deadline_s - settle_margin(deadline_s)
    log.info("draining: %d sessions, %d calls", len(hub.sessions), len(calls.book.active_calls()))
    while True:
        for uid, session in list(hub.sessions.items()):
            if calls.current_call(uid) is None:
                session.close(CloseCode.SERVICE_RESTART, HINT)
        if not hub.sessions and not calls.book.active_calls():
            break
        if time.monotonic() >= keep_until:
            log.info("drain deadline: ending %d calls", len(calls.book.active_calls()))
            break
        await asyncio.sleep(POLL_S)
    await calls.shutdown()  # call.ended (shutdown) to both parties, then their sockets
    for session in list(hub.sessions.values()):
        session.close(CloseCode.SERVICE_RESTART, HINT)


def log_task_stacks(why: str) -> int:
    """Every pending task's stack, in one log line: what a shutdown that does not end is
    waiting for (a bench's `jalwa serve` once sat idle after SIGTERM, with nothing to say
    where). Returns how many tasks were pending."""
    buffer = io.StringIO()
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.print_stack(file=buffer)
    log.error("%s: %d tasks pending\n%s", why, len(tasks), buffer.getvalue())
    return len(tasks)
