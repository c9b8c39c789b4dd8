"""Ledger contract: the audit can fail, and (PostgreSQL only) the schema defends itself."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from billing.ledger import Problem
from billing.ledger_memory import MemoryLedger
from billing.migrate import migrate, migration_files
from tests.contract.ledger.books import Books, PgBooks, earn, fresh_database, terms


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
