"""Contract suite for ``Ledger``: MemoryLedger and PgLedger keep the same books.

Every contract test takes the ``books`` fixture, which runs it once per adapter and, after
the test, asserts ``check() == []``: every test also proves the invariants of the money
model hold after what it did.

Time: ``books.advance(seconds)``. The memory books move the ledger's fake clock. PgLedger
uses the database clock, which a test cannot move, so the PostgreSQL books travel in time
the other way: they shift every active call's ``started_at`` and ``next_due`` back by
``seconds`` (test-only time travel, done with SQL on the test database; nothing in the
package does this). Ended calls keep their times.

PostgreSQL: each test gets a database of its own (``jalwa_test_<hex>``, created from a
connection to JALWA_TEST_DATABASE_URL, default postgresql://postgres@127.0.0.1:5432/test,
migrated, and dropped WITH (FORCE) afterwards). If PostgreSQL is unreachable the tests
fail, they never skip.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlparse, urlunparse

import asyncpg
import pytest

from billing.errors import (
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
    InvalidState,
    NotFound,
)
from billing.ledger import (
    UNLIMITED_MINUTES,
    Balances,
    BillingRound,
    CallTerms,
    Gift,
    Ledger,
    Problem,
)
from billing.ledger_memory import MemoryLedger
from billing.ledger_pg import PgLedger
from billing.migrate import migrate, migration_files
from billing.settings import BillingSettings

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
START_POSTGRES = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
MINUTE = 60
ORPHAN_AFTER = 30 * MINUTE  # longer than any other test moves the clock
SETTINGS = BillingSettings(minute_seconds=MINUTE, max_amount=1_000_000, orphan_after_s=ORPHAN_AFTER)


class Books:
    """One ledger under test plus a way to move its clock."""

    kind: str
    ledger: Ledger
    # A test that corrupts the books on purpose clears this to skip the final check.
    expect_clean = True

    async def advance(self, seconds: float) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        await self.ledger.close()


class MemoryBooks(Books):
    kind = "memory"

    def __init__(self) -> None:
        self.now = 1_700_000_000.0
        self.ledger = MemoryLedger(SETTINGS, lambda: self.now)

    async def advance(self, seconds: float) -> None:
        self.now += seconds


class PgBooks(Books):
    kind = "postgres"

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        self.pool = pool
        self.ledger = PgLedger(pool, SETTINGS)

    async def advance(self, seconds: float) -> None:
        # Test-only time travel: the database clock cannot be moved, so the calls move.
        await self.pool.execute(
            "UPDATE calls SET started_at = started_at - $1 * interval '1 second',"
            " next_due = next_due - $1 * interval '1 second',"
            " seen_at = seen_at - $1 * interval '1 second' WHERE state = 'active'",
            float(seconds),
        )


def base_dsn() -> str:
    return os.environ.get("JALWA_TEST_DATABASE_URL", DEFAULT_DSN)


async def connect_admin() -> asyncpg.Connection[asyncpg.Record]:
    dsn = base_dsn()
    try:
        return await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        pytest.fail(
            f"PostgreSQL is needed at {dsn} (override with JALWA_TEST_DATABASE_URL) and is "
            f"not reachable ({type(exc).__name__}: {exc}). Start it with: {START_POSTGRES}",
            pytrace=False,
        )


@asynccontextmanager
async def fresh_database(*, migrated: bool = True) -> AsyncIterator[str]:
    """A new empty database (migrated unless told otherwise); yields its DSN."""
    admin = await connect_admin()
    name = f"jalwa_test_{uuid.uuid4().hex}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        dsn = urlunparse(urlparse(base_dsn())._replace(path=f"/{name}"))
        if migrated:
            conn = await asyncpg.connect(dsn)
            try:
                await migrate(conn)
            finally:
                await conn.close()
        yield dsn
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@asynccontextmanager
async def open_books(kind: str) -> AsyncIterator[Books]:
    if kind == "memory":
        books: Books = MemoryBooks()
        yield books
        await books.aclose()
        return
    async with fresh_database() as dsn:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=8)
        try:
            books = PgBooks(pool)
            yield books
            await books.aclose()
        finally:
            await pool.close()


@pytest.fixture(params=["memory", "postgres"])
async def books(request: pytest.FixtureRequest) -> AsyncIterator[Books]:
    async with open_books(request.param) as opened:
        yield opened
        if opened.expect_clean:
            assert await opened.ledger.check() == []


@pytest.fixture
async def pg_books() -> AsyncIterator[PgBooks]:
    async with open_books("postgres") as opened:
        assert isinstance(opened, PgBooks)
        yield opened
        if opened.expect_clean:
            assert await opened.ledger.check() == []


def terms(
    call_id: str = "c1", payer: str = "payer", host: str = "host", rate: int = 7, share: int = 5000
) -> CallTerms:
    return CallTerms(call_id, payer, host, rate, share)


async def funded(books: Books, user: str, amount: int) -> None:
    await books.ledger.recharge("play", f"txn-{user}-{uuid.uuid4().hex[:8]}", user, amount)


async def snapshot(books: Books, *users: str) -> dict[str, Any]:
    """Everything a user can see of the books, to prove an operation changed nothing."""
    ledger = books.ledger
    return {
        user: (
            await ledger.balances(user),
            await ledger.entries(user, limit=1000, before=None),
            await ledger.calls(user, limit=1000, before=None),
            await ledger.withdrawals(host=user, state=None, limit=1000),
        )
        for user in users
    }


# --- calls --------------------------------------------------------------------------------


@pytest.mark.parametrize(("share", "host_gets"), [(5000, 3), (9000, 6), (0, 0), (10000, 7)])
async def test_open_call_charges_minute_one_with_floored_host_share(
    books: Books, share: int, host_gets: int
) -> None:
    await funded(books, "payer", 100)

    opened = await books.ledger.open_call(terms(rate=7, share=share))

    assert (opened.call_id, opened.rate, opened.balance) == ("c1", 7, 93)
    assert await books.ledger.balances("payer") == Balances(93, 0, 0)
    assert await books.ledger.balances("host") == Balances(0, host_gets, 0)
    [minute] = await books.ledger.entries("payer", limit=1, before=None)
    assert (minute.key, minute.kind, minute.wallet_delta) == ("cm:c1:1", "call_minute", -7)
    [call] = await books.ledger.calls("payer", limit=10, before=None)
    assert (call.state, call.minutes, call.coins, call.share_bps) == ("active", 1, 7, share)
    assert call.ended_at is None and call.end_reason is None


async def test_open_call_without_a_minute_of_balance_records_nothing(books: Books) -> None:
    await funded(books, "payer", 6)
    before = await snapshot(books, "payer", "host")

    with pytest.raises(InsufficientFunds):
        await books.ledger.open_call(terms(rate=7))

    assert await snapshot(books, "payer", "host") == before
    # The key was not burnt: once funded, the same call opens.
    await funded(books, "payer", 1)
    assert (await books.ledger.open_call(terms(rate=7))).balance == 0


async def test_open_call_rejects_bad_terms(books: Books) -> None:
    await funded(books, "payer", 100)
    for bad in (
        terms(rate=-1),
        terms(rate=SETTINGS.max_amount + 1),
        terms(share=-1),
        terms(share=10001),
        terms(host="payer"),
    ):
        with pytest.raises(InvalidAmount):
            await books.ledger.open_call(bad)
    assert await books.ledger.calls("payer", limit=10, before=None) == []
    assert await books.ledger.balances("payer") == Balances(100, 0, 0)


async def test_bill_due_charges_the_next_minute_only_once_it_is_due(books: Books) -> None:
    await funded(books, "payer", 100)
    await books.ledger.open_call(terms(rate=7))
    for _ in range(3):
        assert (await books.ledger.bill_due(100)).ticks == []
    await books.advance(MINUTE - 5)  # leaves PostgreSQL's real clock 5 s of slack
    assert (await books.ledger.bill_due(100)).ticks == []
    await books.advance(6)

    billed = await books.ledger.bill_due(100)

    assert billed.stopped == []
    [tick] = billed.ticks
    assert (tick.call_id, tick.payer, tick.host, tick.minute, tick.charged) == (
        "c1",
        "payer",
        "host",
        2,
        7,
    )
    assert (tick.balance, tick.minutes_left) == (86, 86 // 7)
    for _ in range(5):
        assert (await books.ledger.bill_due(100)).ticks == []
    [call] = await books.ledger.calls("payer", limit=10, before=None)
    assert (call.minutes, call.coins) == (2, 14)
    assert await books.ledger.balances("payer") == Balances(86, 0, 0)
    assert await books.ledger.balances("host") == Balances(0, 6, 0)  # 7 * 50% floored, twice


async def test_a_call_behind_by_several_minutes_gets_one_minute_per_round(books: Books) -> None:
    await funded(books, "payer", 100)
    await books.ledger.open_call(terms(rate=5))
    await books.advance(3 * MINUTE + 1)  # minutes 2, 3 and 4 are all due

    minutes = []
    for _ in range(5):
        minutes += [tick.minute for tick in (await books.ledger.bill_due(100)).ticks]

    assert minutes == [2, 3, 4]
    [call] = await books.ledger.calls("payer", limit=1, before=None)
    assert (call.minutes, call.coins) == (4, 20)


async def test_bill_due_respects_the_limit_in_due_order(books: Books) -> None:
    for n in range(5):
        await funded(books, f"p{n}", 50)
        await books.ledger.open_call(terms(f"c{n}", f"p{n}", f"h{n}", rate=5))
        await books.advance(1)
    await books.advance(MINUTE)

    first = await books.ledger.bill_due(2)
    rest = await books.ledger.bill_due(100)

    assert [tick.call_id for tick in first.ticks] == ["c0", "c1"]
    assert [tick.call_id for tick in rest.ticks] == ["c2", "c3", "c4"]
    assert (await books.ledger.bill_due(0)).ticks == []


async def test_concurrent_rounds_bill_each_minute_exactly_once(books: Books) -> None:
    calls = 40
    for n in range(calls):
        await funded(books, f"p{n}", 100)
        await books.ledger.open_call(terms(f"c{n}", f"p{n}", f"h{n % 7}", rate=3, share=9000))

    for expected_minute in (2, 3):
        await books.advance(MINUTE + 1)
        billed: list[str] = []
        while True:
            rounds = await asyncio.gather(*(books.ledger.bill_due(7) for _ in range(6)))
            found = [tick for one in rounds for tick in one.ticks]
            if not found:
                break
            assert {tick.minute for tick in found} == {expected_minute}
            billed += [tick.call_id for tick in found]
        assert sorted(billed) == sorted(f"c{n}" for n in range(calls))

    for n in range(calls):
        assert (await books.ledger.balances(f"p{n}")).wallet == 100 - 3 * 3
    assert (await books.ledger.balances("h0")).earnings == 6 * 2 * 3  # c0, c7, ..., c35


async def test_payer_who_runs_out_is_stopped_with_totals(books: Books) -> None:
    await funded(books, "payer", 20)
    await books.ledger.open_call(terms(rate=7))
    await books.advance(MINUTE + 1)
    [tick] = (await books.ledger.bill_due(10)).ticks
    assert (tick.balance, tick.minutes_left) == (6, 0)  # a low-balance warning is due
    await books.advance(MINUTE)

    billed = await books.ledger.bill_due(10)

    assert billed.ticks == []
    [stop] = billed.stopped
    assert (stop.call_id, stop.payer, stop.host, stop.minutes, stop.coins) == (
        "c1",
        "payer",
        "host",
        2,
        14,
    )
    [call] = await books.ledger.calls("payer", limit=1, before=None)
    assert (call.state, call.end_reason, call.minutes, call.coins) == (
        "ended",
        "insufficient_balance",
        2,
        14,
    )
    assert call.ended_at is not None
    assert await books.ledger.balances("payer") == Balances(6, 0, 0)
    await books.advance(10 * MINUTE)
    assert await books.ledger.bill_due(10) == BillingRound([], [])
    totals = await books.ledger.close_call("c1", "hangup")
    assert (totals.minutes, totals.coins) == (2, 14)
    [call] = await books.ledger.calls("payer", limit=1, before=None)
    assert call.end_reason == "insufficient_balance"


async def test_a_payer_with_several_due_calls_pays_them_in_due_order(books: Books) -> None:
    await funded(books, "payer", 7 * 3)
    await books.ledger.open_call(terms("a", host="h1", rate=7))
    await books.advance(1)
    await books.ledger.open_call(terms("b", host="h2", rate=7))
    await books.advance(MINUTE + 1)

    billed = await books.ledger.bill_due(10)

    assert [(tick.call_id, tick.balance) for tick in billed.ticks] == [("a", 0)]
    assert [stop.call_id for stop in billed.stopped] == ["b"]
    assert await books.ledger.balances("payer") == Balances(0, 0, 0)


async def test_a_free_call_is_billed_zero_and_never_runs_out(books: Books) -> None:
    await books.ledger.open_call(terms(rate=0))
    await books.advance(MINUTE + 1)

    [tick] = (await books.ledger.bill_due(10)).ticks

    assert (tick.minute, tick.charged, tick.balance) == (2, 0, 0)
    assert tick.minutes_left == UNLIMITED_MINUTES
    totals = await books.ledger.close_call("c1", "hangup")
    assert (totals.minutes, totals.coins) == (2, 0)


async def test_close_call_returns_totals_is_idempotent_and_stops_billing(books: Books) -> None:
    await funded(books, "payer", 100)
    await books.ledger.open_call(terms(rate=7))
    await books.advance(MINUTE + 1)
    await books.ledger.bill_due(10)

    first = await books.ledger.close_call("c1", "hangup")
    again = await books.ledger.close_call("c1", "admin")

    assert first == again
    assert (first.call_id, first.minutes, first.coins) == ("c1", 2, 14)
    await books.advance(10 * MINUTE)
    assert (await books.ledger.bill_due(10)).ticks == []
    [call] = await books.ledger.calls("host", limit=1, before=None)
    assert (call.state, call.end_reason, call.minutes) == ("ended", "hangup", 2)
    assert call.ended_at is not None and call.ended_at >= call.started_at
    with pytest.raises(NotFound):
        await books.ledger.close_call("nope", "hangup")


async def test_a_minute_due_at_the_instant_of_closing_is_not_charged(books: Books) -> None:
    await funded(books, "payer", 100)
    await books.ledger.open_call(terms(rate=7))
    await books.advance(MINUTE)  # minute 2 falls due now; closing now must not charge it

    await books.ledger.close_call("c1", "hangup")

    assert (await books.ledger.bill_due(10)).ticks == []
    assert await books.ledger.balances("payer") == Balances(93, 0, 0)


async def test_calls_history_newest_first_with_minutes_and_coins(books: Books) -> None:
    await funded(books, "payer", 1000)
    await books.ledger.open_call(terms("old", host="h1", rate=10))
    await books.advance(MINUTE + 1)
    await books.ledger.bill_due(10)
    await books.ledger.close_call("old", "hangup")
    await books.advance(5)
    await books.ledger.open_call(terms("new", host="h2", rate=4))

    history = await books.ledger.calls("payer", limit=10, before=None)

    assert [(c.call_id, c.minutes, c.coins, c.state) for c in history] == [
        ("new", 1, 4, "active"),
        ("old", 2, 20, "ended"),
    ]
    assert history[0].started_at > history[1].started_at
    older = await books.ledger.calls("payer", limit=10, before=history[0].started_at)
    assert [c.call_id for c in older] == ["old"]
    assert [c.call_id for c in await books.ledger.calls("h1", limit=10, before=None)] == ["old"]
    assert [c.call_id for c in await books.ledger.calls("payer", limit=1, before=None)] == ["new"]
    assert await books.ledger.calls("stranger", limit=10, before=None) == []


# --- idempotency --------------------------------------------------------------------------


async def test_replays_return_the_first_result_and_change_nothing(books: Books) -> None:
    ledger = books.ledger
    await ledger.put_gift(Gift("rose", "Rose", 5, True))
    recharged = await ledger.recharge("play", "t1", "payer", 100)
    credited = await ledger.credit("k1", "payer", 10, admin="root")
    opened = await ledger.open_call(terms(rate=7))
    sent = await ledger.send_gift(
        "g1", sender="payer", receiver="host", gift_id="rose", share_bps=5000
    )
    asked = await ledger.request_withdrawal("w1", "host", 3)
    seen = await snapshot(books, "payer", "host")

    # Replays, after the balances moved on: the first results come back unchanged.
    assert await ledger.recharge("play", "t1", "payer", 100) == recharged == Balances(100, 0, 0)
    assert await ledger.credit("k1", "payer", 10, admin="root") == credited
    assert await ledger.open_call(terms(rate=7)) == opened
    assert opened.balance == 103
    again = await ledger.send_gift(
        "g1", sender="payer", receiver="host", gift_id="rose", share_bps=5000
    )
    # The replay is recognisable (same entry, flagged) so nobody is notified twice.
    assert not sent.replayed and again.replayed
    assert again == dataclasses.replace(sent, replayed=True)
    assert sent.sender_balance == 98
    assert await ledger.request_withdrawal("w1", "host", 3) == dataclasses.replace(
        asked, replayed=True
    )
    assert not asked.replayed

    assert await snapshot(books, "payer", "host") == seen


async def test_concurrent_replays_apply_once(books: Books) -> None:
    ledger = books.ledger
    results = await asyncio.gather(*(ledger.recharge("play", "t1", "u", 50) for _ in range(5)))
    assert results == [Balances(50, 0, 0)] * 5
    opened = await asyncio.gather(*(ledger.open_call(terms(payer="u", rate=7)) for _ in range(4)))
    assert {o.balance for o in opened} == {43}
    assert await ledger.balances("u") == Balances(43, 0, 0)


async def test_same_key_for_a_different_request_conflicts(books: Books) -> None:
    ledger = books.ledger
    await ledger.put_gift(Gift("rose", "Rose", 5, True))
    await ledger.put_gift(Gift("lily", "Lily", 6, True))
    await ledger.recharge("play", "t1", "payer", 100)
    await ledger.credit("k1", "payer", 10, admin="root")
    await ledger.open_call(terms(rate=7))
    await ledger.send_gift("g1", sender="payer", receiver="host", gift_id="rose", share_bps=5000)
    await ledger.request_withdrawal("w1", "host", 3)
    seen = await snapshot(books, "payer", "host", "other")

    conflicting = [
        ledger.recharge("play", "t1", "payer", 101),  # replayed receipt, another amount
        ledger.recharge("play", "t1", "other", 100),
        ledger.credit("k1", "payer", 11, admin="root"),
        ledger.open_call(terms(rate=8)),
        ledger.open_call(terms(host="other")),
        ledger.send_gift("g1", sender="payer", receiver="host", gift_id="lily", share_bps=5000),
        ledger.request_withdrawal("w1", "host", 4),
    ]
    for attempt in conflicting:
        with pytest.raises(IdempotencyConflict):
            await attempt

    assert await snapshot(books, "payer", "host", "other") == seen


async def test_invalid_amounts_are_refused_and_change_nothing(books: Books) -> None:
    ledger = books.ledger
    await ledger.recharge("play", "t0", "u", 100)
    seen = await snapshot(books, "u")
    too_much = SETTINGS.max_amount + 1

    for amount in (0, -5, too_much):
        with pytest.raises(InvalidAmount):
            await ledger.recharge("play", f"t{amount}", "u", amount)
        with pytest.raises(InvalidAmount):
            await ledger.credit(f"k{amount}", "u", amount, admin="root")
        with pytest.raises(InvalidAmount):
            await ledger.request_withdrawal(f"w{amount}", "u", amount)
        with pytest.raises(InvalidAmount):
            await ledger.put_gift(Gift("bad", "Bad", amount, True))
    with pytest.raises(InvalidAmount):
        await ledger.set_host_rate("u", -1)

    assert await snapshot(books, "u") == seen
    assert await ledger.gifts(active_only=False) == []
    assert await ledger.host_rate("u") is None
    # The limit itself is allowed.
    assert (await ledger.credit("max", "u", SETTINGS.max_amount, admin="root")).wallet == (
        100 + SETTINGS.max_amount
    )


# --- balances, history, rates -------------------------------------------------------------


async def test_balances_are_zero_for_unknown_users(books: Books) -> None:
    assert await books.ledger.balances("nobody") == Balances(0, 0, 0)
    assert await books.ledger.entries("nobody", limit=10, before=None) == []
    assert await books.ledger.withdrawals(host="nobody", state=None, limit=10) == []


async def test_entries_page_newest_first(books: Books) -> None:
    ledger = books.ledger
    await ledger.recharge("play", "t1", "u", 100)
    await ledger.credit("k1", "u", 5, admin="root")
    await ledger.open_call(terms(payer="u", rate=7))
    await ledger.recharge("play", "t2", "u", 1)

    everything = await ledger.entries("u", limit=10, before=None)
    assert [(e.key, e.kind, e.wallet_delta) for e in everything] == [
        ("rc:play:t2", "recharge", 1),
        ("cm:c1:1", "call_minute", -7),
        ("credit:k1", "credit", 5),
        ("rc:play:t1", "recharge", 100),
    ]
    assert [e.id for e in everything] == sorted((e.id for e in everything), reverse=True)
    assert all(e.earnings_delta == e.pending_delta == 0 for e in everything)
    assert everything[0].created_at >= everything[-1].created_at

    first = await ledger.entries("u", limit=2, before=None)
    second = await ledger.entries("u", limit=2, before=first[-1].id)
    third = await ledger.entries("u", limit=2, before=second[-1].id)
    assert first + second == everything
    assert third == []
    [host_entry] = await ledger.entries("host", limit=10, before=None)
    assert (host_entry.key, host_entry.earnings_delta, host_entry.wallet_delta) == (
        "cm:c1:1",
        3,
        0,
    )


async def test_host_rates(books: Books) -> None:
    assert await books.ledger.host_rate("h") is None
    await books.ledger.set_host_rate("h", 25)
    await books.ledger.set_host_rate("h", 30)
    await books.ledger.set_host_rate("free", 0)
    assert await books.ledger.host_rate("h") == 30
    assert await books.ledger.host_rate("free") == 0


# --- gifts --------------------------------------------------------------------------------


async def test_gifts_catalog_and_sending(books: Books) -> None:
    ledger = books.ledger
    await ledger.put_gift(Gift("rose", "Rose", 9, True))
    await ledger.put_gift(Gift("cake", "Cake", 50, True))
    await ledger.put_gift(Gift("old", "Old", 3, False))
    await ledger.put_gift(Gift("cake", "Big cake", 40, True))  # replaced
    assert [g.gift_id for g in await ledger.gifts(active_only=True)] == ["rose", "cake"]
    assert [g.gift_id for g in await ledger.gifts(active_only=False)] == ["old", "rose", "cake"]
    assert (await ledger.gifts(active_only=True))[1] == Gift("cake", "Big cake", 40, True)
    await ledger.recharge("play", "t1", "fan", 45)

    sent = await ledger.send_gift(
        "g1", sender="fan", receiver="star", gift_id="rose", share_bps=9000
    )

    assert (sent.gift_id, sent.price, sent.host_credit, sent.sender_balance) == (
        "rose",
        9,
        8,
        36,
    )
    assert await ledger.balances("star") == Balances(0, 8, 0)
    [entry] = await ledger.entries("star", limit=5, before=None)
    assert (entry.key, entry.kind, entry.earnings_delta) == ("gift:fan:g1", "gift", 8)

    seen = await snapshot(books, "fan", "star")
    with pytest.raises(NotFound):
        await ledger.send_gift("g2", sender="fan", receiver="star", gift_id="nope", share_bps=0)
    with pytest.raises(NotFound):
        await ledger.send_gift("g3", sender="fan", receiver="star", gift_id="old", share_bps=0)
    with pytest.raises(InvalidAmount):
        await ledger.send_gift("g4", sender="fan", receiver="fan", gift_id="rose", share_bps=0)
    with pytest.raises(InvalidAmount):
        await ledger.send_gift("g5", sender="fan", receiver="star", gift_id="rose", share_bps=-1)
    with pytest.raises(InsufficientFunds):
        await ledger.send_gift("g6", sender="fan", receiver="star", gift_id="cake", share_bps=0)
    assert await snapshot(books, "fan", "star") == seen


# --- withdrawals --------------------------------------------------------------------------


async def earn(books: Books, host: str, coins: int) -> None:
    """Give ``host`` exactly ``coins`` of earnings through a call at a 100% share."""
    await books.ledger.recharge("play", f"earn-{host}", f"fan-of-{host}", coins)
    await books.ledger.open_call(terms(f"earn-{host}", f"fan-of-{host}", host, coins, 10000))
    await books.ledger.close_call(f"earn-{host}", "hangup")


async def test_only_earnings_can_be_withdrawn(books: Books) -> None:
    ledger = books.ledger
    await ledger.recharge("play", "t1", "host", 500)  # bought coins are not withdrawable
    await earn(books, "host", 30)
    seen = await snapshot(books, "host")

    with pytest.raises(InsufficientFunds):
        await ledger.request_withdrawal("w1", "host", 31)
    assert await snapshot(books, "host") == seen

    asked = await ledger.request_withdrawal("w1", "host", 30)
    assert (asked.host, asked.amount, asked.state, asked.decided_at) == (
        "host",
        30,
        "pending",
        None,
    )
    assert await ledger.balances("host") == Balances(500, 0, 30)
    [entry] = await ledger.entries("host", limit=1, before=None)
    assert (entry.key, entry.earnings_delta, entry.pending_delta) == (
        f"wd:{asked.id}:request",
        -30,
        30,
    )


async def test_withdrawals_are_decided_exactly_once(books: Books) -> None:
    ledger = books.ledger
    await earn(books, "host", 100)
    paid = await ledger.request_withdrawal("a", "host", 40)
    rejected = await ledger.request_withdrawal("b", "host", 25)
    assert await ledger.balances("host") == Balances(0, 35, 65)

    done = await ledger.decide_withdrawal(paid.id, approve=True, admin="root")
    assert (done.state, done.amount) == ("paid", 40)
    assert done.decided_at is not None
    assert await ledger.balances("host") == Balances(0, 35, 25)
    with pytest.raises(InvalidState):
        await ledger.decide_withdrawal(paid.id, approve=True, admin="root")
    with pytest.raises(InvalidState):
        await ledger.decide_withdrawal(paid.id, approve=False, admin="root")

    back = await ledger.decide_withdrawal(rejected.id, approve=False, admin="root")
    assert back.state == "rejected"
    assert await ledger.balances("host") == Balances(0, 60, 0)
    with pytest.raises(InvalidState):
        await ledger.decide_withdrawal(rejected.id, approve=True, admin="root")
    with pytest.raises(NotFound):
        await ledger.decide_withdrawal(rejected.id + 1000, approve=True, admin="root")

    # A replayed request returns the same withdrawal, as it is now, marked as a replay.
    again = await ledger.request_withdrawal("a", "host", 40)
    assert (again.id, again.state, again.replayed) == (paid.id, "paid", True)
    listed = await ledger.withdrawals(host="host", state=None, limit=10)
    assert [(w.id, w.state) for w in listed] == [(rejected.id, "rejected"), (paid.id, "paid")]
    assert [w.id for w in await ledger.withdrawals(host=None, state="paid", limit=10)] == [paid.id]
    assert await ledger.withdrawals(host=None, state="pending", limit=10) == []
    assert len(await ledger.withdrawals(host=None, state=None, limit=1)) == 1


async def test_concurrent_decisions_pay_once(books: Books) -> None:
    await earn(books, "host", 10)
    asked = await books.ledger.request_withdrawal("a", "host", 10)

    outcomes = await asyncio.gather(
        *(
            books.ledger.decide_withdrawal(asked.id, approve=n % 2 == 0, admin="root")
            for n in range(6)
        ),
        return_exceptions=True,
    )

    decided = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(decided) == 1
    assert all(isinstance(o, InvalidState) for o in outcomes if isinstance(o, BaseException))


# --- the audit can fail ------------------------------------------------------------------


async def test_check_names_a_balance_that_disagrees_with_its_postings(books: Books) -> None:
    books.expect_clean = False
    await books.ledger.recharge("play", "t1", "payer", 100)
    if isinstance(books, PgBooks):
        await books.pool.execute(
            "UPDATE accounts SET balance = balance + 5 WHERE owner = 'payer' AND kind = 'wallet'"
        )
    else:
        assert isinstance(books.ledger, MemoryLedger)
        books.ledger._books.accounts[("payer", "wallet")].balance += 5  # reaching in on purpose

    problems = await books.ledger.check()

    assert [p.check for p in problems] == ["balance_mismatch", "conservation"]
    assert problems[0].detail.startswith("1 accounts whose balance is not the sum")
    assert "(payer/wallet) balance 105, postings 100" in problems[0].detail
    assert problems[1].detail == (
        "1 totals that disagree: users and platform hold 105;"
        " recharges and credits 100 - paid withdrawals 0 = 100"
    )


# --- PostgreSQL only: the audit can fail, the schema defends itself -----------------------


async def test_check_detects_corrupted_books(pg_books: PgBooks) -> None:
    pg_books.expect_clean = False
    ledger = pg_books.ledger
    await ledger.recharge("play", "t1", "payer", 100)
    await ledger.open_call(terms(rate=7))
    assert await ledger.check() == []

    await pg_books.pool.execute(
        "UPDATE accounts SET balance = balance + 5 WHERE owner = 'payer' AND kind = 'wallet'"
    )
    async with pg_books.pool.acquire() as conn:
        # Only by switching the guard off can an unbalanced entry get in.
        await conn.execute("ALTER TABLE postings DISABLE TRIGGER postings_balanced")
        entry = await conn.fetchval(
            "INSERT INTO journal (key, request_hash, kind) VALUES ('cm:c1:2', 'x', 'call_minute')"
            " RETURNING id"
        )
        await conn.execute(
            "INSERT INTO postings (entry_id, account_id, amount)"
            " SELECT $1, id, -7 FROM accounts WHERE owner = 'payer' AND kind = 'wallet'",
            entry,
        )
        await conn.execute("ALTER TABLE postings ENABLE TRIGGER postings_balanced")

    problems = {p.check: p for p in await ledger.check()}

    assert set(problems) == {
        "balance_mismatch",
        "unbalanced_entry",
        "call_minutes",
        "minute_out_of_time",
        "conservation",
    }
    assert "(payer/wallet) balance 98, postings 86" in problems["balance_mismatch"].detail
    assert f"entry {entry} cm:c1:2 sums to -7" in problems["unbalanced_entry"].detail
    assert "call c1 has 1 minutes" in problems["call_minutes"].detail
    assert "cm:c1:2 (charged before it fell due)" in problems["minute_out_of_time"].detail
    assert isinstance(problems["conservation"], Problem)


async def test_check_detects_a_bad_withdrawal_and_a_negative_balance(pg_books: PgBooks) -> None:
    pg_books.expect_clean = False
    await earn(pg_books, "host", 10)
    asked = await pg_books.ledger.request_withdrawal("a", "host", 10)
    await pg_books.pool.execute("UPDATE withdrawals SET state = 'paid', decided_at = now()")
    await pg_books.pool.execute(
        "ALTER TABLE accounts DROP CONSTRAINT accounts_user_not_negative;"
        " UPDATE accounts SET balance = -1 WHERE owner = 'fan-of-host' AND kind = 'wallet'"
    )

    checks = {p.check: p.detail for p in await pg_books.ledger.check()}

    assert f"withdrawal {asked.id} is paid, journal steps [request]" in checks["withdrawal_steps"]
    assert "(fan-of-host/wallet) balance -1" in checks["negative_balance"]


async def test_journal_and_postings_are_append_only_and_balanced(pg_books: PgBooks) -> None:
    await pg_books.ledger.recharge("play", "t1", "u", 100)
    for statement in (
        "UPDATE journal SET key = 'x'",
        "DELETE FROM journal",
        "UPDATE postings SET amount = 0",
        "DELETE FROM postings",
        "TRUNCATE postings",
    ):
        with pytest.raises(asyncpg.RestrictViolationError):
            await pg_books.pool.execute(statement)
    async with pg_books.pool.acquire() as conn:
        with pytest.raises(asyncpg.CheckViolationError, match="do not sum to zero"):
            async with conn.transaction():
                entry = await conn.fetchval(
                    "INSERT INTO journal (key, request_hash, kind) VALUES ('x', 'x', 'x')"
                    " RETURNING id"
                )
                await conn.execute(
                    "INSERT INTO postings (entry_id, account_id, amount) VALUES ($1, 1, 5)",
                    entry,
                )
    with pytest.raises(asyncpg.CheckViolationError):
        await pg_books.pool.execute(
            "UPDATE accounts SET balance = -1 WHERE owner = 'u' AND kind = 'wallet'"
        )


async def test_migrate_is_idempotent_and_safe_when_two_processes_start_at_once() -> None:
    names = [name for name, _ in migration_files()]
    assert names and names == sorted(names)
    async with fresh_database(migrated=False) as dsn:
        first, second = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
        try:
            applied = await asyncio.gather(migrate(first), migrate(second))
            assert sorted(applied, key=len) == [[], names]
            assert await migrate(first) == []
            recorded = await first.fetch("SELECT name FROM schema_migrations ORDER BY name")
            assert [row["name"] for row in recorded] == names
        finally:
            await first.close()
            await second.close()


async def test_a_call_its_node_stopped_touching_ends_unbilled(books: Books) -> None:
    await funded(books, "p1", 10_000)
    await funded(books, "p2", 10_000)
    await books.ledger.open_call(terms("kept", "p1", "h1", rate=5))
    await books.ledger.open_call(terms("lost", "p2", "h2", rate=5))
    ticks: dict[str, int] = {"kept": 0, "lost": 0}
    stops = []
    for _ in range(40):  # 40 minutes; "kept" is touched every minute, "lost" never
        await books.ledger.touch_calls(["kept", "no-such-call"])
        await books.advance(MINUTE)
        billed = await books.ledger.bill_due(100)
        for tick in billed.ticks:
            ticks[tick.call_id] += 1
        stops += billed.stopped
    assert [(s.call_id, s.reason) for s in stops] == [("lost", "peer_lost")]
    assert ticks["kept"] in (39, 40)  # minute n is due strictly after its start
    # billed until it was found orphaned, never after
    assert ORPHAN_AFTER // MINUTE - 1 <= ticks["lost"] <= ORPHAN_AFTER // MINUTE
    [lost] = await books.ledger.calls("p2", limit=1, before=None)
    assert (lost.state, lost.end_reason, lost.minutes) == ("ended", "peer_lost", ticks["lost"] + 1)


async def test_a_retry_racing_its_original_gets_the_original_result(books: Books) -> None:
    """The retry waits for the original's locks, then must see its result, not the spent
    balance (found by the chaos test: it got InsufficientFunds for what had happened)."""
    await books.ledger.put_gift(Gift("rose", "Rose", 10, True))
    await funded(books, "fan", 10 + 7)
    results = await asyncio.gather(
        *(
            books.ledger.send_gift(
                "k1", sender="fan", receiver="host", gift_id="rose", share_bps=5000
            )
            for _ in range(2)
        )
    )
    # Exactly one of them moved the money; the other is told it was a replay.
    assert sorted(r.replayed for r in results) == [False, True]
    assert len({dataclasses.replace(r, replayed=False) for r in results}) == 1
    assert results[0].sender_balance == 7
    opened = await asyncio.gather(
        *(books.ledger.open_call(terms("c1", "fan", "host", 7)) for _ in range(2))
    )
    assert opened[0] == opened[1] and opened[0].balance == 0


async def test_touch_reports_calls_the_ledger_already_ended(books: Books) -> None:
    await funded(books, "p1", 7)
    await books.ledger.open_call(terms("c1", "p1", "h1", rate=7))
    assert await books.ledger.touch_calls(["c1", "unknown"]) == {}
    await books.advance(MINUTE + 1)
    [stop] = (await books.ledger.bill_due(10)).stopped  # out of money
    assert stop.call_id == "c1"
    assert await books.ledger.touch_calls(["c1"]) == {"c1": "insufficient_balance"}
