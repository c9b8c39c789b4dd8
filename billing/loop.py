"""The per-minute billing loop that runs in every process (DESIGN §3, §5).

Each round asks the ledger to charge due call-minutes; the ledger claims them with
FOR UPDATE SKIP LOCKED, so loops in many processes share the work and every minute is
charged once. What happened is reported through ``BillingEvents``, which the composition
root wires to the hub (billing never imports signalling).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from .ledger import BillingRound, CallBilling, Stop, Tick
from .settings import BillingSettings

log = logging.getLogger(__name__)


class BillingEvents(Protocol):
    async def minute_charged(self, tick: Tick, *, low_balance: bool) -> None:
        """A minute was charged; ``low_balance`` when fewer than N minutes remain."""

    async def out_of_money(self, stop: Stop) -> None:
        """The call was ended by the ledger: its next minute could not be paid."""

    async def ledger_unreachable(self) -> None:
        """Rounds have failed for ``unreachable_grace_s``: end this node's calls (docs:
        decisions, "When billing cannot reach the database"). Told once per outage."""


class BillingLoop:
    def __init__(
        self,
        ledger: CallBilling,
        settings: BillingSettings,
        events: BillingEvents,
        *,
        before_round: Callable[[], Awaitable[None]] | None = None,
        on_round: Callable[[int, float], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ledger = ledger
        self._settings = settings
        self._events = events
        # Run before each round: calls ended while the database was away are closed in the
        # ledger before any of their later minutes can be charged.
        self._before_round = before_round
        self._monotonic = monotonic
        # (calls billed or stopped, seconds the round took): the metrics' batch and lag.
        self._on_round = on_round
        self.finished_at = monotonic()
        """When a round last completed (monotonic): the admin stats' billing lag."""
        self.errors = 0
        """Rounds that failed (the ledger raised)."""
        self._failing_since: float | None = None
        self._told = False

    async def run_once(self) -> BillingRound:
        """One batch: charge, then report. Returns what the ledger did."""
        started = self._monotonic()
        if self._before_round is not None:
            await self._before_round()
        billed = await self._ledger.bill_due(self._settings.batch_size)
        self.finished_at = self._monotonic()
        if self._on_round is not None:
            self._on_round(len(billed.ticks) + len(billed.stopped), self.finished_at - started)
        warn_below = self._settings.low_balance_minutes
        for tick in billed.ticks:
            await self._report(
                self._events.minute_charged(tick, low_balance=tick.minutes_left < warn_below)
            )
        for stop in billed.stopped:
            await self._report(self._events.out_of_money(stop))
        return billed

    async def run(self) -> None:
        """Forever: drain everything due, then sleep one interval."""
        while True:
            try:
                while True:
                    billed = await self.run_once()
                    if len(billed.ticks) + len(billed.stopped) < self._settings.batch_size:
                        break
                self._failing_since, self._told = None, False
            except Exception:
                # The database going away must not stop billing for good; retry next round.
                log.exception("billing round failed")
                self.errors += 1
                await self._failed()
            await asyncio.sleep(self._settings.loop_interval_s)

    async def _failed(self) -> None:
        now = self._monotonic()
        if self._failing_since is None:
            self._failing_since = now
        if not self._told and now - self._failing_since >= self._settings.unreachable_grace_s:
            self._told = True
            log.error("ledger unreachable for %.0f s: ending calls", now - self._failing_since)
            await self._report(self._events.ledger_unreachable())

    async def _report(self, event: Awaitable[None]) -> None:
        try:
            await event
        except Exception:
            # Money has moved already; a failed notification must not undo or repeat it.
            log.exception("billing event delivery failed")
