"""What admins read off the ledger (the admin stats, issue 12): activity in a window and
the calls running now. Both adapters compute windows on the ledger's own clock (the
database's for PgLedger), so every node reports the same figures."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from billing.ledger import CallRecord

HOUR_S = 3600.0
DAY_S = 86_400.0


@dataclass(frozen=True, slots=True)
class Figures:
    """Money and calls in one window. ``coins_spent`` is what payers paid (call-minutes and
    gifts); ``platform_revenue`` the platform's share of it, the rest went to hosts."""

    calls_started: int = 0
    call_minutes: int = 0
    call_coins: int = 0
    gifts: int = 0
    gift_coins: int = 0
    coins_spent: int = 0
    platform_revenue: int = 0


@dataclass(frozen=True, slots=True)
class Activity:
    today: Figures  # since 00:00 UTC on the ledger's clock
    last_hour: Figures
    active_calls: int


class Reports(Protocol):
    async def activity(self) -> Activity: ...

    async def active_calls(self, limit: int) -> list[CallRecord]:
        """Calls still charging, oldest first."""


def day_start(now: float) -> float:
    """00:00 UTC of the day ``now`` (unix seconds) falls in."""
    return now - now % DAY_S
