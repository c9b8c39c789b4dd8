"""``Reports`` over MemoryLedger's books (the twin of reports_pg)."""

from __future__ import annotations

from collections.abc import Callable

from billing.ledger import CallRecord
from billing.memory_books import Books
from billing.reports import HOUR_S, Activity, Figures, day_start
from billing.rules import PLATFORM, WALLET


class MemoryReports:
    def __init__(self, books: Books, now: Callable[[], float]) -> None:
        self._books = books
        self._now = now

    async def activity(self) -> Activity:
        now = self._now()
        return Activity(
            today=self._figures(day_start(now)),
            last_hour=self._figures(now - HOUR_S),
            active_calls=len(self._books.active),
        )

    def _figures(self, since: float) -> Figures:
        books = self._books
        platform = books.account(PLATFORM).id
        counts = {"call_minute": 0, "gift": 0}
        paid = {"call_minute": 0, "gift": 0}
        revenue = 0
        # Newest first: stop at the window's start (entries are appended in time order).
        for entry_id in range(len(books.journal), 0, -1):
            entry = books.journal[entry_id]
            if entry.created_at < since:
                break
            if entry.kind not in counts:
                continue
            counts[entry.kind] += 1
            for posting in books.postings[entry_id]:
                account = books.accounts_by_id[posting.account_id]
                if account.kind == WALLET and posting.amount < 0:
                    paid[entry.kind] -= posting.amount
                elif account.id == platform:
                    revenue += posting.amount
        started = sum(1 for call in books.calls.values() if call.started_at >= since)
        return Figures(
            calls_started=started,
            call_minutes=counts["call_minute"],
            call_coins=paid["call_minute"],
            gifts=counts["gift"],
            gift_coins=paid["gift"],
            coins_spent=paid["call_minute"] + paid["gift"],
            platform_revenue=revenue,
        )

    async def active_calls(self, limit: int) -> list[CallRecord]:
        running = sorted(self._books.active.values(), key=lambda c: (c.started_at, c.call_id))
        return [call.record() for call in running[:limit]]
