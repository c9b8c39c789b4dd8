"""Ledger contract: the admin figures (``Reports``) are exactly what happened."""

from __future__ import annotations

import time

from billing.ledger import Gift
from billing.ledger_memory import MemoryLedger
from billing.reports import DAY_S, Figures, Reports
from billing.reports_pg import PgReports
from tests.contract.ledger.books import MINUTE, Books, MemoryBooks, PgBooks, funded, terms


def reports_of(books: Books) -> Reports:
    if isinstance(books, MemoryBooks):
        assert isinstance(books.ledger, MemoryLedger)
        return books.ledger.reports()
    assert isinstance(books, PgBooks)
    return PgReports(books.pool)


async def test_empty_books_report_nothing(books: Books) -> None:
    activity = await reports_of(books).activity()
    assert activity.today == activity.last_hour == Figures()
    assert activity.active_calls == 0
    assert await reports_of(books).active_calls(10) == []


async def test_calls_minutes_gifts_and_revenue_are_counted_to_the_coin(books: Books) -> None:
    ledger, reports = books.ledger, reports_of(books)
    await funded(books, "ann", 1000)
    await funded(books, "bob", 1000)
    await ledger.put_gift(Gift("rose", "Rose", 9, True))
    # ann: a call at 7/min, 50% share, three minutes, then ended.
    await ledger.open_call(terms("c1", "ann", "host1", rate=7, share=5000))
    await books.advance(2 * MINUTE + 1)
    for _ in range(2):  # one minute per call per round
        assert len((await ledger.bill_due(100)).ticks) == 1
    await ledger.close_call("c1", "hangup")
    # bob: a call at 10/min, 90% share, still running after one minute.
    await ledger.open_call(terms("c2", "bob", "host2", rate=10, share=9000))
    # Two gifts at 9 coins, 50% share (4 to the host, 5 to the platform each).
    for key in ("g1", "g2"):
        await ledger.send_gift(key, sender="ann", receiver="host1", gift_id="rose", share_bps=5000)

    activity = await reports.activity()

    # c1: 3 minutes x 7 = 21, host 3 each (floored), platform 4 each = 12.
    # c2: 1 minute x 10, host 9, platform 1. Gifts: 18, platform 10.
    expected = Figures(
        calls_started=2,
        call_minutes=4,
        call_coins=31,
        gifts=2,
        gift_coins=18,
        coins_spent=49,
        platform_revenue=12 + 1 + 10,
    )
    assert activity.last_hour == expected
    if time.time() % DAY_S > 2 * 3600 or isinstance(books, MemoryBooks):
        assert activity.today == expected  # (a test just after 00:00 UTC spans two days)
    assert activity.active_calls == 1
    [running] = await reports.active_calls(10)
    assert (running.call_id, running.payer, running.host) == ("c2", "bob", "host2")
    assert (running.minutes, running.coins, running.state) == (1, 10, "active")


async def test_the_hour_window_leaves_older_entries_out(books: Books) -> None:
    if not isinstance(books, MemoryBooks):
        return  # the database clock cannot be moved; the memory twin shows the window
    await funded(books, "ann", 100)
    await books.ledger.open_call(terms("c1", "ann", "host", rate=5))
    await books.ledger.close_call("c1", "hangup")
    books.now += 3601
    activity = await reports_of(books).activity()
    assert activity.last_hour == Figures()
    if books.now % DAY_S > 3601:
        assert activity.today.call_minutes == 1
