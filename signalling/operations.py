"""Part of the composition root: the operations parts (admin figures, bans, metrics,
readiness probes) wired to the hub, the wings and the stores ``app.py`` built."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from pymongo import AsyncMongoClient

from billing.ledger import Ledger
from billing.ledger_memory import MemoryLedger
from billing.loop import BillingLoop
from billing.reports import Reports
from billing.reports_pg import PgReports
from media.sfu import Sfu

from .admin.bans import BanStore, MemoryBans, PgBans
from .admin.board import NodeBoard, NodeFigures, RedisNodeBoard
from .admin.metrics import Metrics, Readings
from .admin.ops import Operations, Probe
from .admin.stats import AdminStats, Board
from .assembly import Wings
from .chat.store import ChatStore
from .clock import Clock
from .settings import Settings


def build_operations(
    settings: Settings,
    *,
    clock: Clock,
    wings: Wings,
    ledger: Ledger,
    chat_store: ChatStore,
    billing_loop: BillingLoop,
    metrics: Metrics,
    sfu: Sfu | None,
    pool: asyncpg.Pool[asyncpg.Record] | None,
    redis: aioredis.Redis | None,
    mongo: AsyncMongoClient[dict[str, Any]] | None,
) -> Operations:
    hub, calls = wings.hub, wings.calls
    reports: Reports
    bans: BanStore
    if pool is not None:
        reports, bans = PgReports(pool), PgBans(pool)
    else:
        assert isinstance(ledger, MemoryLedger)  # no database: the embedded ledger
        reports, bans = ledger.reports(), MemoryBans(clock.time)
    board: Board = NodeBoard()
    if redis is not None:
        prefix = settings.presence.key_prefix
        ttl = settings.presence.node_ttl_s
        board = RedisNodeBoard(redis, prefix=prefix, ttl_s=ttl, now=clock.time)

    def local() -> NodeFigures:
        return NodeFigures(
            node=settings.node_id,
            sessions=len(hub.sessions),
            by_role=dict(Counter(str(s.identity.role) for s in hub.sessions.values())),
            calls=len(calls.book.active_calls()),
            sfu_legs=0 if sfu is None else sfu.legs(),
            billing_lag_s=round(time.monotonic() - billing_loop.finished_at, 3),
            posted_at=clock.time(),
        )

    async def no_waiting() -> dict[str, int]:
        return {}

    match = wings.match
    stats = AdminStats(
        node_id=settings.node_id,
        reports=reports,
        board=board,
        local=local,
        messages_since=chat_store.count_since,
        waiting=no_waiting if match is None else match.store.waiting,
        now=clock.time,
    )
    metrics.read(
        Readings(
            sessions=lambda: len(hub.sessions),
            frames=lambda: hub.frames,
            calls_active=lambda: len(calls.book.active_calls()),
            calls_ended=lambda: calls.ended,
            ledger_errors=lambda: billing_loop.errors,
            sfu_legs=lambda: 0 if sfu is None else sfu.legs(),
            sfu_forwarded=lambda: (0, 0) if sfu is None else sfu.forwarded(),
        )
    )
    hub.on_relayed = metrics.relay_latency.observe
    if match is not None:
        match.on_waited = lambda mode, s: metrics.match_wait.labels(mode).observe(s)
    probes: dict[str, Probe] = {}
    if pool is not None:
        probes["postgres"] = _probe(pool.fetchval, "SELECT 1")
    if redis is not None:
        probes["redis"] = redis.ping
    if mongo is not None:
        probes["mongo"] = _probe(mongo.admin.command, "ping")
    return Operations(stats=stats, bans=bans, reports=reports, metrics=metrics, probes=probes)


def _probe(call: Callable[[str], Awaitable[object]], arg: str) -> Probe:
    async def probe() -> object:
        return await call(arg)

    return probe
