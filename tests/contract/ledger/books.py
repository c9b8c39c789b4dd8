"""The books the ``Ledger`` contract suite (this package) runs on: MemoryLedger and PgLedger
keep the same books.

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

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlparse, urlunparse

import asyncpg
import pytest

from billing.ledger import CallTerms, Ledger
from billing.ledger_memory import MemoryLedger
from billing.ledger_pg import PgLedger
from billing.migrate import migrate
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

    async def advance(self, seconds: float, *, alive: bool = True) -> None:
        """Move time on. ``alive``: the nodes running the active calls touched them at
        the end of it (as a live node does every ``keepalive_s``), so their due minutes may
        be charged; with ``alive=False`` nobody touched them."""
        raise NotImplementedError

    async def aclose(self) -> None:
        await self.ledger.close()


class MemoryBooks(Books):
    kind = "memory"

    def __init__(self) -> None:
        self.now = 1_700_000_000.0
        self.memory = MemoryLedger(SETTINGS, lambda: self.now)
        self.ledger = self.memory

    async def advance(self, seconds: float, *, alive: bool = True) -> None:
        self.now += seconds
        if alive:  # test-only: every active call, as their nodes would touch them
            await self.memory.touch_calls(list(self.memory._books.active))


class PgBooks(Books):
    kind = "postgres"

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        self.pool = pool
        self.ledger = PgLedger(pool, SETTINGS)

    async def advance(self, seconds: float, *, alive: bool = True) -> None:
        # Test-only time travel: the database clock cannot be moved, so the calls move.
        await self.pool.execute(
            "UPDATE calls SET started_at = started_at - $1 * interval '1 second',"
            " next_due = next_due - $1 * interval '1 second',"
            " seen_at = seen_at - $1 * interval '1 second' WHERE state = 'active'",
            float(seconds),
        )
        if alive:
            await self.pool.execute("UPDATE calls SET seen_at = now() WHERE state = 'active'")


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


async def earn(books: Books, host: str, coins: int) -> None:
    """Give ``host`` exactly ``coins`` of earnings through a call at a 100% share."""
    await books.ledger.recharge("play", f"earn-{host}", f"fan-of-{host}", coins)
    await books.ledger.open_call(terms(f"earn-{host}", f"fan-of-{host}", host, coins, 10000))
    await books.ledger.close_call(f"earn-{host}", "hangup")
