"""The node board: each node posts its own figures (sessions by role, calls it owns, SFU
legs, billing loop lag) every presence beat, so any node can answer for all of them. In
Redis (``<prefix>:admin:node:<id>``, expiring with the node's liveness) when nodes share
one; in memory for the single embedded node."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
from redis.asyncio import Redis

from ..cluster.replies import as_str


class NodeFigures(msgspec.Struct, frozen=True, kw_only=True):
    node: str
    sessions: int
    by_role: dict[str, int]
    calls: int  # calls this node owns (runs the state machine of)
    sfu_legs: int
    billing_lag_s: float  # how long ago the billing loop last finished a round
    posted_at: float  # unix seconds, the posting node's clock


class NodeBoard:
    """Memory: this process is the only node."""

    def __init__(self) -> None:
        self._figures: dict[str, NodeFigures] = {}

    async def post(self, figures: NodeFigures) -> None:
        self._figures[figures.node] = figures

    async def all(self) -> list[NodeFigures]:
        return sorted(self._figures.values(), key=lambda f: f.node)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(NodeFigures)


class RedisNodeBoard:
    def __init__(self, redis: Redis, *, prefix: str, ttl_s: float, now: Callable[[], float]):
        self._r = redis
        self._prefix = f"{prefix}:admin:"
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._now = now

    async def post(self, figures: NodeFigures) -> None:
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.set(
                f"{self._prefix}node:{figures.node}", _encoder.encode(figures), px=self._ttl_ms
            )
            pipe.zadd(f"{self._prefix}nodes", {figures.node: self._now()})
            await pipe.execute()

    async def all(self) -> list[NodeFigures]:
        nodes_key = f"{self._prefix}nodes"
        names = sorted(as_str(n) for n in await self._r.zrange(nodes_key, 0, -1))
        if not names:
            return []
        raw = await self._r.mget([f"{self._prefix}node:{n}" for n in names])
        gone = [n for n, value in zip(names, raw, strict=True) if value is None]
        if gone:
            # Their figures expired with them; keep the index small.
            await self._r.zrem(nodes_key, *gone)
        return [_decoder.decode(value) for value in raw if value is not None]
