"""What the admin HTTP edge is given (built by the composition root)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from billing.reports import Reports

from .bans import BanStore
from .metrics import Metrics
from .stats import AdminStats

READY_TIMEOUT_S = 1.0
Probe = Callable[[], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Operations:
    stats: AdminStats
    bans: BanStore
    reports: Reports
    metrics: Metrics
    probes: Mapping[str, Probe]  # store name -> a cheap round trip (ping, SELECT 1)


async def readiness(probes: Mapping[str, Probe]) -> dict[str, str]:
    """Each store: "ok", or why not (at most ``READY_TIMEOUT_S``, all at once)."""

    async def one(probe: Probe) -> str:
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                await probe()
        except TimeoutError:
            return "timeout"
        except Exception as exc:
            return type(exc).__name__
        return "ok"

    names = list(probes)
    results = await asyncio.gather(*(one(probes[name]) for name in names))
    return dict(zip(names, results, strict=True))
