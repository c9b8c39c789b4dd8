"""The steps every ``PgLedger`` operation is built from, inside its transaction: find the
first use of an idempotency key, lock user accounts in the global order, claim a key and
post its moves in one statement; and the rows it reads turned into values.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from billing.errors import IdempotencyConflict
from billing.ledger import BillingRound, CallRecord, GiftSent, Stop, Tick, Withdrawal, minutes_left
from billing.pg_statements import (
    CLAIM_AND_MOVE,
    CREATE_ACCOUNTS,
    ENTRY_ID,
    FIRST_USE,
    LOCK_USER_ACCOUNTS,
    WITHDRAWAL_BY_KEY,
)
from billing.rules import INSUFFICIENT_BALANCE, PEER_LOST, USER_KINDS

# Quoted: asyncpg's classes are generic only in its stubs.
Conn: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"
AccountName = tuple[str, str]  # (owner, kind)
NO_LIMIT_ID = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Account:
    """A locked account as the operation found it."""

    id: int
    balance: int


async def gift_replayed(conn: Conn, key: str, first: dict[str, Any]) -> GiftSent:
    entry_id: int = await conn.fetchval(ENTRY_ID, key)
    return GiftSent(
        first["gift_id"],
        first["price"],
        first["host_credit"],
        first["sender_balance"],
        entry_id=entry_id,
        replayed=True,
    )


def stop_reason(row: asyncpg.Record) -> str:
    return PEER_LOST if row["orphaned"] else INSUFFICIENT_BALANCE


def unix_seconds(value: datetime) -> float:
    return value.timestamp()


def opt_unix_seconds(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def call_record(row: asyncpg.Record) -> CallRecord:
    return CallRecord(
        call_id=row["call_id"],
        payer=row["payer"],
        host=row["host"],
        rate=row["rate"],
        share_bps=row["share_bps"],
        started_at=unix_seconds(row["started_at"]),
        ended_at=opt_unix_seconds(row["ended_at"]),
        state=row["state"],
        end_reason=row["end_reason"],
        minutes=row["minutes"],
        coins=row["coins"],
    )


def withdrawal_record(row: asyncpg.Record) -> Withdrawal:
    return Withdrawal(
        id=row["id"],
        host=row["host"],
        amount=row["amount"],
        state=row["state"],
        created_at=unix_seconds(row["created_at"]),
        decided_at=opt_unix_seconds(row["decided_at"]),
    )


async def first_use(conn: Conn, key: str, rhash: str) -> dict[str, Any] | None:
    """The first result recorded under ``key``, None if the key is new."""
    row = await conn.fetchrow(FIRST_USE, key)
    if row is None:
        return None
    if row["request_hash"] != rhash:
        raise IdempotencyConflict(f"key {key!r} was already used for a different request")
    meta: dict[str, Any] = json.loads(row["meta"]) if row["meta"] else {}
    return meta


async def claim_and_move(
    conn: Conn,
    key: str,
    rhash: str,
    kind: str,
    meta: dict[str, Any],
    moves: Sequence[tuple[int, int]],
) -> int | None:
    """Record the entry and its ``(account id, amount)`` postings; returns its id, or None
    (and nothing moved) if another transaction claimed the key first."""
    moves = [(account, amount) for account, amount in moves if amount != 0]
    entry: int | None = await conn.fetchval(
        CLAIM_AND_MOVE,
        key,
        rhash,
        kind,
        json.dumps(meta),
        [account for account, _ in moves],
        [amount for _, amount in moves],
    )
    return entry


async def lock_user_accounts(
    conn: Conn, wanted: Sequence[AccountName], *, optional: Sequence[AccountName] = ()
) -> dict[AccountName, Account]:
    """Lock user accounts in the global lock order, creating the ``wanted`` ones that are
    new; ``optional`` ones are locked if they exist and read as zero if not."""
    names = sorted(
        set(wanted) | set(optional), key=lambda name: (USER_KINDS.index(name[1]), name[0])
    )
    owners = [owner for owner, _ in names]
    kinds = [kind for _, kind in names]
    rows = await conn.fetch(LOCK_USER_ACCOUNTS, owners, kinds, list(USER_KINDS))
    found = {(row["owner"], row["kind"]): Account(row["id"], row["balance"]) for row in rows}
    missing = [name for name in names if name not in found and name in wanted]
    if missing:
        await conn.execute(
            CREATE_ACCOUNTS, [owner for owner, _ in missing], [kind for _, kind in missing], True
        )
        rows = await conn.fetch(LOCK_USER_ACCOUNTS, owners, kinds, list(USER_KINDS))
        found = {(row["owner"], row["kind"]): Account(row["id"], row["balance"]) for row in rows}
    return found


async def withdrawal_by_key(conn: Conn, host: str, key: str, amount: int) -> Withdrawal | None:
    """The withdrawal the host's ``key`` made, as a replay; None if the key is new."""
    row = await conn.fetchrow(WITHDRAWAL_BY_KEY, host, key)
    if row is None:
        return None
    if row["amount"] != amount:
        raise IdempotencyConflict(f"withdrawal key {key!r} was used for another amount")
    return dataclasses.replace(withdrawal_record(row), replayed=True)


def billed_round(
    paying: Sequence[asyncpg.Record],
    stopping: Sequence[asyncpg.Record],
    keys: Sequence[str],
    claimed_rows: Sequence[asyncpg.Record],
    start: dict[int, int],
) -> BillingRound:
    """What one APPLY_ROUND did: a tick per minute it claimed (``keys`` in ``paying``
    order), balances counted down from the locked ``start`` ones, and the calls it ended."""
    claimed = {row["key"] for row in claimed_rows}
    # A key already in the journal means that minute was billed before: the call is
    # still advanced (its counters catch up with the journal) but nothing is charged.
    balance = dict(start)
    ticks: list[Tick] = []
    for row, key in zip(paying, keys, strict=True):
        if key not in claimed:
            continue
        wallet = row["payer_wallet"]
        balance[wallet] -= row["rate"]
        ticks.append(
            Tick(
                call_id=row["call_id"],
                payer=row["payer"],
                host=row["host"],
                minute=row["minutes"] + 1,
                charged=row["rate"],
                balance=balance[wallet],
                minutes_left=minutes_left(balance[wallet], row["rate"]),
            )
        )
    stops = [
        Stop(
            row["call_id"],
            row["payer"],
            row["host"],
            row["minutes"],
            row["coins"],
            stop_reason(row),
        )
        for row in stopping
    ]
    return BillingRound(ticks, stops)
