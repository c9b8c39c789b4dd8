"""PostgreSQL adapter of ``Ledger`` (asyncpg); the schema is billing/migrations/*.sql.

Every operation is one transaction on one pooled connection: it looks for a first use of
its idempotency key (replay or conflict), locks the user accounts it needs, checks the
money, then claims the key (INSERT ... ON CONFLICT DO NOTHING RETURNING) and, in the same
statement and only for a key it claimed, writes the postings and moves the balances.
Times come from the database clock. The ledger never changes session state, so the pool
may be created with a no-op ``reset`` (saves a round trip per operation).

Lock order, everywhere, so concurrent operations cannot deadlock: call rows, then user
accounts by (wallet, earnings, withdrawal_pending) and id, then at most one non-user
account (platform revenue or an external clearing account), locked last by the balance
UPDATE itself, which keeps the hot rows locked for the shortest time.
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

from billing.errors import (
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
    InvalidState,
    NotFound,
)
from billing.ledger import (
    Balances,
    BillingRound,
    CallRecord,
    CallTerms,
    CallTotals,
    Entry,
    Gift,
    GiftSent,
    OpenedCall,
    Problem,
    Stop,
    Tick,
    Withdrawal,
    WithdrawalState,
    minutes_left,
)
from billing.rules import (
    ADMIN_CLEARING,
    EARNINGS,
    INSUFFICIENT_BALANCE,
    PAYOUTS,
    PEER_LOST,
    PENDING,
    PLATFORM,
    USER_KINDS,
    WALLET,
    call_minute_key,
    check_amount,
    check_share,
    check_terms,
    clearing_account,
    host_part,
    problem,
    request_hash,
)
from billing.settings import BillingSettings

# Quoted: asyncpg's classes are generic only in its stubs.
Conn: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"
AccountName = tuple[str, str]  # (owner, kind)
NO_LIMIT_ID = 2**63 - 1

# --- statements ---------------------------------------------------------------------------

FIRST_USE = "SELECT request_hash, meta::text AS meta FROM journal WHERE key = $1"

# Claim the key, and only if this statement claimed it, post the entry (all its postings
# in ONE statement: the postings_balanced trigger checks each statement) and move each
# touched balance once. A key someone else holds moves nothing.
CLAIM_AND_MOVE = """
WITH claimed AS (
    INSERT INTO journal (key, request_hash, kind, meta) VALUES ($1, $2, $3, $4::jsonb)
    ON CONFLICT (key) DO NOTHING
    RETURNING id
), posted AS (
    INSERT INTO postings (entry_id, account_id, amount)
    SELECT c.id, m.account_id, m.amount
    FROM claimed c, unnest($5::bigint[], $6::bigint[]) AS m (account_id, amount)
    RETURNING account_id, amount
), moved AS (
    UPDATE accounts a SET balance = a.balance + d.amount
    FROM (SELECT account_id, sum(amount)::bigint AS amount FROM posted GROUP BY account_id) d
    WHERE a.id = d.account_id
)
SELECT id FROM claimed
"""

# Locks rows in (kind rank, id) order: LockRows runs above the Sort.
LOCK_USER_ACCOUNTS = """
SELECT a.id, a.owner, a.kind, a.balance
FROM accounts a
JOIN unnest($1::text[], $2::text[]) AS w (owner, kind) ON a.owner = w.owner AND a.kind = w.kind
ORDER BY array_position($3::text[], a.kind), a.id
FOR UPDATE OF a
"""

CREATE_ACCOUNTS = """
INSERT INTO accounts (owner, kind, is_user)
SELECT owner, kind, $3 FROM unnest($1::text[], $2::text[]) AS w (owner, kind)
ON CONFLICT (owner, kind) DO NOTHING
"""

FIND_ACCOUNT = "SELECT id FROM accounts WHERE owner = $1 AND kind = $2"

OPEN_CALL = """
INSERT INTO calls (call_id, payer, host, rate, share_bps, minute_s, payer_wallet,
                   host_earnings, started_at, next_due, minutes, coins, state)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now(), now() + $6::integer * interval '1 second',
        1, $4, 'active')
"""

DUE_CALLS = """
SELECT call_id, payer, host, rate, share_bps, minutes, coins, payer_wallet, host_earnings,
       $2::integer > 0 AND seen_at < now() - $2::integer * interval '1 second' AS orphaned
FROM calls
WHERE state = 'active' AND next_due < now()
ORDER BY next_due, call_id
LIMIT $1
FOR UPDATE SKIP LOCKED
"""

LOCK_BATCH_ACCOUNTS = """
SELECT id, balance FROM accounts
WHERE id = ANY($1::bigint[])
ORDER BY array_position($2::text[], kind), id
FOR UPDATE
"""

# One statement writes a whole billing round: claim the keys, post the claimed minutes,
# move every touched balance once (so the platform revenue row is updated once per
# batch, whatever the batch size), advance the paid calls and end the unpayable ones.
APPLY_ROUND = """
WITH batch AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[],
                         $5::bigint[], $6::bigint[])
        AS b (key, request_hash, wallet, earnings, rate, host_part)
), claimed AS (
    INSERT INTO journal (key, request_hash, kind)
    SELECT key, request_hash, 'call_minute' FROM batch
    ON CONFLICT (key) DO NOTHING
    RETURNING id, key
), moves AS (
    SELECT c.id AS entry_id, m.account_id, m.amount
    FROM claimed c
    JOIN batch b ON b.key = c.key
    CROSS JOIN LATERAL (VALUES (b.wallet, -b.rate),
                               (b.earnings, b.host_part),
                               ($7::bigint, b.rate - b.host_part)) AS m (account_id, amount)
    WHERE m.amount <> 0
), posted AS (
    INSERT INTO postings (entry_id, account_id, amount)
    SELECT entry_id, account_id, amount FROM moves
), moved AS (
    UPDATE accounts a SET balance = a.balance + d.amount
    FROM (SELECT account_id, sum(amount)::bigint AS amount FROM moves GROUP BY account_id) d
    WHERE a.id = d.account_id
), advanced AS (
    UPDATE calls c
    SET minutes = c.minutes + 1,
        coins = c.coins + c.rate,
        next_due = c.next_due + c.minute_s * interval '1 second'
    WHERE c.call_id = ANY($8::text[])
), ended AS (
    UPDATE calls c
    SET state = 'ended', end_reason = e.reason, ended_at = now()
    FROM unnest($9::text[], $10::text[]) AS e (call_id, reason)
    WHERE c.call_id = e.call_id
)
SELECT key FROM claimed
"""

# Two index-ordered scans (as payer, as host; never both: a call's payer and host differ),
# each cut at the limit before merging, so a busy host's history is not sorted whole.
USER_CALLS = """
SELECT * FROM (
    (SELECT call_id, payer, host, rate, share_bps, started_at, ended_at, state, end_reason,
            minutes, coins
     FROM calls
     WHERE payer = $1 AND ($3::float8 IS NULL OR started_at < to_timestamp($3::float8))
     ORDER BY started_at DESC, call_id DESC
     LIMIT $2)
    UNION ALL
    (SELECT call_id, payer, host, rate, share_bps, started_at, ended_at, state, end_reason,
            minutes, coins
     FROM calls
     WHERE host = $1 AND ($3::float8 IS NULL OR started_at < to_timestamp($3::float8))
     ORDER BY started_at DESC, call_id DESC
     LIMIT $2)
) mine
ORDER BY started_at DESC, call_id DESC
LIMIT $2
"""

WITHDRAWAL_BY_KEY = """
SELECT id, host, amount, state, created_at, decided_at
FROM withdrawals WHERE host = $1 AND client_key = $2
"""

# The withdrawal row is the claim of the host's key (UNIQUE (host, client_key)).
NEW_WITHDRAWAL = """
INSERT INTO withdrawals (host, client_key, amount, state) VALUES ($1, $2, $3, 'pending')
ON CONFLICT (host, client_key) DO NOTHING
RETURNING id, host, amount, state, created_at, decided_at
"""

DECIDE_WITHDRAWAL = """
UPDATE withdrawals SET state = $2, decided_at = now(), decided_by = $3
WHERE id = $1
RETURNING id, host, amount, state, created_at, decided_at
"""

LIST_WITHDRAWALS = """
SELECT id, host, amount, state, created_at, decided_at
FROM withdrawals
WHERE ($1::text IS NULL OR host = $1) AND ($2::text IS NULL OR state = $2)
ORDER BY id DESC
LIMIT $3
"""

USER_ENTRIES = """
WITH mine AS (
    SELECT id, kind FROM accounts WHERE owner = $1 AND kind = ANY($2::text[])
), recent AS (
    SELECT DISTINCT r.entry_id
    FROM mine m
    CROSS JOIN LATERAL (
        SELECT p.entry_id FROM postings p
        WHERE p.account_id = m.id AND p.entry_id < $3
        ORDER BY p.entry_id DESC LIMIT $4
    ) r
    ORDER BY r.entry_id DESC LIMIT $4
)
SELECT j.id, j.key, j.kind, j.created_at, d.wallet, d.earnings, d.pending
FROM recent r
JOIN journal j ON j.id = r.entry_id
CROSS JOIN LATERAL (
    -- per (account, entry): an index lookup each, however long the user's history
    SELECT coalesce(sum(p.amount) FILTER (WHERE m.kind = 'wallet'), 0)::bigint AS wallet,
           coalesce(sum(p.amount) FILTER (WHERE m.kind = 'earnings'), 0)::bigint AS earnings,
           coalesce(sum(p.amount) FILTER (WHERE m.kind = 'withdrawal_pending'), 0)::bigint
               AS pending
    FROM mine m
    JOIN postings p ON p.account_id = m.id AND p.entry_id = r.entry_id
) d
ORDER BY j.id DESC
"""


@dataclass(frozen=True, slots=True)
class _Account:
    id: int
    balance: int


async def _gift_replayed(conn: Conn, key: str, first: dict[str, Any]) -> GiftSent:
    entry_id: int = await conn.fetchval("SELECT id FROM journal WHERE key = $1", key)
    return GiftSent(
        first["gift_id"],
        first["price"],
        first["host_credit"],
        first["sender_balance"],
        entry_id=entry_id,
        replayed=True,
    )


def _stop_reason(row: asyncpg.Record) -> str:
    return PEER_LOST if row["orphaned"] else INSUFFICIENT_BALANCE


def _ts(value: datetime) -> float:
    return value.timestamp()


def _opt_ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _call_record(row: asyncpg.Record) -> CallRecord:
    return CallRecord(
        call_id=row["call_id"],
        payer=row["payer"],
        host=row["host"],
        rate=row["rate"],
        share_bps=row["share_bps"],
        started_at=_ts(row["started_at"]),
        ended_at=_opt_ts(row["ended_at"]),
        state=row["state"],
        end_reason=row["end_reason"],
        minutes=row["minutes"],
        coins=row["coins"],
    )


def _withdrawal(row: asyncpg.Record) -> Withdrawal:
    return Withdrawal(
        id=row["id"],
        host=row["host"],
        amount=row["amount"],
        state=row["state"],
        created_at=_ts(row["created_at"]),
        decided_at=_opt_ts(row["decided_at"]),
    )


async def _first_use(conn: Conn, key: str, rhash: str) -> dict[str, Any] | None:
    """The first result recorded under ``key``, None if the key is new."""
    row = await conn.fetchrow(FIRST_USE, key)
    if row is None:
        return None
    if row["request_hash"] != rhash:
        raise IdempotencyConflict(f"key {key!r} was already used for a different request")
    meta: dict[str, Any] = json.loads(row["meta"]) if row["meta"] else {}
    return meta


async def _claim_and_move(
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


async def _lock_user_accounts(
    conn: Conn, wanted: Sequence[AccountName], *, optional: Sequence[AccountName] = ()
) -> dict[AccountName, _Account]:
    """Lock user accounts in the global lock order, creating the ``wanted`` ones that are
    new; ``optional`` ones are locked if they exist and read as zero if not."""
    names = sorted(
        set(wanted) | set(optional), key=lambda name: (USER_KINDS.index(name[1]), name[0])
    )
    owners = [owner for owner, _ in names]
    kinds = [kind for _, kind in names]
    rows = await conn.fetch(LOCK_USER_ACCOUNTS, owners, kinds, list(USER_KINDS))
    found = {(row["owner"], row["kind"]): _Account(row["id"], row["balance"]) for row in rows}
    missing = [name for name in names if name not in found and name in wanted]
    if missing:
        await conn.execute(
            CREATE_ACCOUNTS, [owner for owner, _ in missing], [kind for _, kind in missing], True
        )
        rows = await conn.fetch(LOCK_USER_ACCOUNTS, owners, kinds, list(USER_KINDS))
        found = {(row["owner"], row["kind"]): _Account(row["id"], row["balance"]) for row in rows}
    return found


class PgLedger:
    """``Ledger`` on an asyncpg pool the caller owns (``close`` leaves it open)."""

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record], settings: BillingSettings) -> None:
        self._pool = pool
        self._settings = settings
        self._system_ids: dict[AccountName, int] = {}

    async def _system_account(self, conn: Conn, name: AccountName) -> int:
        """Id of the platform / an external account, created on first use. Not locked
        here: the balance UPDATE locks it, last, so the hot row is held the least."""
        known = self._system_ids.get(name)
        if known is not None:
            return known
        found: int | None = await conn.fetchval(FIND_ACCOUNT, *name)
        if found is not None:
            # Committed before this transaction and never deleted: safe to remember. One
            # this transaction creates is not remembered, in case it rolls back.
            self._system_ids[name] = found
            return found
        await conn.execute(CREATE_ACCOUNTS, [name[0]], [name[1]], False)
        created: int | None = await conn.fetchval(FIND_ACCOUNT, *name)
        assert created is not None
        return created

    # --- calls ----------------------------------------------------------------------------

    async def open_call(self, terms: CallTerms) -> OpenedCall:
        check_terms(terms, self._settings.max_amount)
        key = call_minute_key(terms.call_id, 1)
        rhash = request_hash(
            "open_call", terms.call_id, terms.payer, terms.host, terms.rate, terms.share_bps
        )
        async with self._pool.acquire() as conn, conn.transaction():
            first = await _first_use(conn, key, rhash)
            if first is None:
                accounts = await _lock_user_accounts(
                    conn, [(terms.payer, WALLET), (terms.host, EARNINGS)]
                )
                # A concurrent retry may have committed while we waited for the locks: its
                # result stands (checking the money first would refuse what already happened).
                if (again := await _first_use(conn, key, rhash)) is not None:
                    return OpenedCall(terms.call_id, terms.rate, int(again["balance"]))
                wallet = accounts[(terms.payer, WALLET)]
                earnings = accounts[(terms.host, EARNINGS)]
                if wallet.balance < terms.rate:
                    raise InsufficientFunds(
                        f"{terms.payer} has {wallet.balance} coins, one minute costs {terms.rate}"
                    )
                balance = wallet.balance - terms.rate
                meta = {"call_id": terms.call_id, "balance": balance}
                to_host = host_part(terms.rate, terms.share_bps)
                entry = await _claim_and_move(
                    conn,
                    key,
                    rhash,
                    "call_minute",
                    meta,
                    [
                        (wallet.id, -terms.rate),
                        (earnings.id, to_host),
                        (await self._system_account(conn, PLATFORM), terms.rate - to_host),
                    ],
                )
                if entry is not None:
                    await conn.execute(
                        OPEN_CALL,
                        terms.call_id,
                        terms.payer,
                        terms.host,
                        terms.rate,
                        terms.share_bps,
                        self._settings.minute_seconds,
                        wallet.id,
                        earnings.id,
                    )
                    return OpenedCall(terms.call_id, terms.rate, balance)
                # A concurrent open of the same call won the key while we waited.
                first = await _first_use(conn, key, rhash)
                assert first is not None
        return OpenedCall(terms.call_id, terms.rate, int(first["balance"]))

    async def bill_due(self, limit: int) -> BillingRound:
        if limit <= 0:
            return BillingRound([], [])
        async with self._pool.acquire() as conn, conn.transaction():
            due = await conn.fetch(DUE_CALLS, limit, self._settings.orphan_after_s)
            if not due:
                return BillingRound([], [])
            accounts = {row["payer_wallet"] for row in due} | {row["host_earnings"] for row in due}
            locked = await conn.fetch(LOCK_BATCH_ACCOUNTS, list(accounts), list(USER_KINDS))
            start = {row["id"]: row["balance"] for row in locked}
            # Who can pay, in due order: a payer with several due calls pays them one by
            # one from what is left; a call whose minute is not covered ends.
            left = dict(start)
            paying: list[asyncpg.Record] = []
            stopping: list[asyncpg.Record] = []
            for row in due:
                if row["orphaned"]:
                    stopping.append(row)  # its node is gone: end it, charge nothing
                elif left[row["payer_wallet"]] >= row["rate"]:
                    left[row["payer_wallet"]] -= row["rate"]
                    paying.append(row)
                else:
                    stopping.append(row)
            keys = [call_minute_key(row["call_id"], row["minutes"] + 1) for row in paying]
            claimed_rows = await conn.fetch(
                APPLY_ROUND,
                keys,
                [
                    request_hash("call_minute", row["call_id"], row["minutes"] + 1, row["rate"])
                    for row in paying
                ],
                [row["payer_wallet"] for row in paying],
                [row["host_earnings"] for row in paying],
                [row["rate"] for row in paying],
                [host_part(row["rate"], row["share_bps"]) for row in paying],
                await self._system_account(conn, PLATFORM),
                [row["call_id"] for row in paying],
                [row["call_id"] for row in stopping],
                [_stop_reason(row) for row in stopping],
            )
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
                _stop_reason(row),
            )
            for row in stopping
        ]
        return BillingRound(ticks, stops)

    async def touch_calls(self, call_ids: Sequence[str]) -> dict[str, str]:
        if not call_ids:
            return {}
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE calls SET seen_at = now() WHERE call_id = ANY($1::text[])"
                " AND state = 'active'",
                list(call_ids),
            )
            ended = await conn.fetch(
                "SELECT call_id, end_reason FROM calls WHERE call_id = ANY($1::text[])"
                " AND state = 'ended'",
                list(call_ids),
            )
        return {row["call_id"]: row["end_reason"] or "" for row in ended}

    async def close_call(self, call_id: str, reason: str) -> CallTotals:
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT state, minutes, coins FROM calls WHERE call_id = $1 FOR UPDATE", call_id
            )
            if row is None:
                raise NotFound(f"no call {call_id!r}")
            if row["state"] == "active":
                # clock_timestamp(), not now(): now() is when this transaction began, which
                # can precede the commit of a billing round we waited for above, and that
                # round's minute would then look charged after the end.
                await conn.execute(
                    "UPDATE calls SET state = 'ended', ended_at = clock_timestamp(),"
                    " end_reason = $2 WHERE call_id = $1",
                    call_id,
                    reason,
                )
        return CallTotals(call_id, row["minutes"], row["coins"])

    async def calls(self, user_id: str, *, limit: int, before: float | None) -> list[CallRecord]:
        if limit <= 0:
            return []
        rows = await self._pool.fetch(USER_CALLS, user_id, limit, before)
        return [_call_record(row) for row in rows]

    # --- balances and history -------------------------------------------------------------

    async def balances(self, user_id: str) -> Balances:
        rows = await self._pool.fetch(
            "SELECT kind, balance FROM accounts WHERE owner = $1 AND kind = ANY($2::text[])",
            user_id,
            list(USER_KINDS),
        )
        found = {row["kind"]: row["balance"] for row in rows}
        return Balances(found.get(WALLET, 0), found.get(EARNINGS, 0), found.get(PENDING, 0))

    async def entries(self, user_id: str, *, limit: int, before: int | None) -> list[Entry]:
        if limit <= 0:
            return []
        rows = await self._pool.fetch(
            USER_ENTRIES,
            user_id,
            list(USER_KINDS),
            NO_LIMIT_ID if before is None else before,
            limit,
        )
        return [
            Entry(
                id=row["id"],
                key=row["key"],
                kind=row["kind"],
                created_at=_ts(row["created_at"]),
                wallet_delta=row["wallet"],
                earnings_delta=row["earnings"],
                pending_delta=row["pending"],
            )
            for row in rows
        ]

    # --- rates and gifts ------------------------------------------------------------------

    async def host_rate(self, host: str) -> int | None:
        rate: int | None = await self._pool.fetchval(
            "SELECT rate FROM host_rates WHERE host = $1", host
        )
        return rate

    async def set_host_rate(self, host: str, rate: int) -> None:
        if rate != 0:
            check_amount(rate, self._settings.max_amount)
        await self._pool.execute(
            "INSERT INTO host_rates (host, rate) VALUES ($1, $2) ON CONFLICT (host)"
            " DO UPDATE SET rate = excluded.rate, updated_at = now()",
            host,
            rate,
        )

    async def put_gift(self, gift: Gift) -> None:
        check_amount(gift.price, self._settings.max_amount)
        await self._pool.execute(
            "INSERT INTO gifts (gift_id, name, price, active) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (gift_id) DO UPDATE"
            " SET name = excluded.name, price = excluded.price, active = excluded.active",
            gift.gift_id,
            gift.name,
            gift.price,
            gift.active,
        )

    async def gifts(self, *, active_only: bool) -> list[Gift]:
        rows = await self._pool.fetch(
            "SELECT gift_id, name, price, active FROM gifts"
            " WHERE active OR NOT $1 ORDER BY price, gift_id",
            active_only,
        )
        return [Gift(row["gift_id"], row["name"], row["price"], row["active"]) for row in rows]

    async def send_gift(
        self,
        key: str,
        *,
        sender: str,
        receiver: str,
        gift_id: str,
        share_bps: int,
    ) -> GiftSent:
        if sender == receiver:
            raise InvalidAmount("a gift to oneself")
        check_share(share_bps)
        full_key = f"gift:{sender}:{key}"
        rhash = request_hash("gift", sender, receiver, gift_id, share_bps)
        async with self._pool.acquire() as conn, conn.transaction():
            first = await _first_use(conn, full_key, rhash)
            if first is None:
                gift = await conn.fetchrow(
                    "SELECT price, active FROM gifts WHERE gift_id = $1", gift_id
                )
                if gift is None or not gift["active"]:
                    raise NotFound(f"no active gift {gift_id!r}")
                price: int = gift["price"]
                accounts = await _lock_user_accounts(conn, [(sender, WALLET), (receiver, EARNINGS)])
                if (again := await _first_use(conn, full_key, rhash)) is not None:
                    # A concurrent retry committed while we waited.
                    return await _gift_replayed(conn, full_key, again)
                wallet = accounts[(sender, WALLET)]
                if wallet.balance < price:
                    raise InsufficientFunds(
                        f"{sender} has {wallet.balance} coins, the gift costs {price}"
                    )
                to_host = host_part(price, share_bps)
                meta = {
                    "receiver": receiver,
                    "gift_id": gift_id,
                    "price": price,
                    "host_credit": to_host,
                    "sender_balance": wallet.balance - price,
                }
                moves = [
                    (wallet.id, -price),
                    (accounts[(receiver, EARNINGS)].id, to_host),
                    (await self._system_account(conn, PLATFORM), price - to_host),
                ]
                entry = await _claim_and_move(conn, full_key, rhash, "gift", meta, moves)
                if entry is not None:
                    return GiftSent(gift_id, price, to_host, wallet.balance - price, entry_id=entry)
                first = await _first_use(conn, full_key, rhash)
                assert first is not None
            return await _gift_replayed(conn, full_key, first)

    # --- money in and out -----------------------------------------------------------------

    async def recharge(self, provider: str, txn_id: str, user_id: str, amount: int) -> Balances:
        check_amount(amount, self._settings.max_amount)
        return await self._fund_wallet(
            key=f"rc:{provider}:{txn_id}",
            rhash=request_hash("recharge", provider, txn_id, user_id, amount),
            kind="recharge",
            user_id=user_id,
            source=clearing_account(provider),
            amount=amount,
            meta={"provider": provider, "txn_id": txn_id},
        )

    async def credit(self, key: str, user_id: str, amount: int, *, admin: str) -> Balances:
        check_amount(amount, self._settings.max_amount)
        return await self._fund_wallet(
            key=f"credit:{key}",
            rhash=request_hash("credit", key, user_id, amount, admin),
            kind="credit",
            user_id=user_id,
            source=ADMIN_CLEARING,
            amount=amount,
            meta={"admin": admin},
        )

    async def _fund_wallet(
        self,
        *,
        key: str,
        rhash: str,
        kind: str,
        user_id: str,
        source: AccountName,
        amount: int,
        meta: dict[str, Any],
    ) -> Balances:
        async with self._pool.acquire() as conn, conn.transaction():
            first = await _first_use(conn, key, rhash)
            if first is None:
                # The other two are read (under lock, for a consistent result) not created.
                accounts = await _lock_user_accounts(
                    conn, [(user_id, WALLET)], optional=[(user_id, EARNINGS), (user_id, PENDING)]
                )
                wallet = accounts[(user_id, WALLET)]
                nothing = _Account(0, 0)
                after = Balances(
                    wallet.balance + amount,
                    accounts.get((user_id, EARNINGS), nothing).balance,
                    accounts.get((user_id, PENDING), nothing).balance,
                )
                result = {
                    "wallet": after.wallet,
                    "earnings": after.earnings,
                    "withdrawal_pending": after.withdrawal_pending,
                }
                moves = [
                    (await self._system_account(conn, source), -amount),
                    (wallet.id, amount),
                ]
                if await _claim_and_move(conn, key, rhash, kind, {**meta, **result}, moves):
                    return after
                first = await _first_use(conn, key, rhash)
                assert first is not None
        return Balances(first["wallet"], first["earnings"], first["withdrawal_pending"])

    async def request_withdrawal(self, key: str, host: str, amount: int) -> Withdrawal:
        check_amount(amount, self._settings.max_amount)
        async with self._pool.acquire() as conn, conn.transaction():
            existing = await self._withdrawal_by_key(conn, host, key, amount)
            if existing is not None:
                return existing
            accounts = await _lock_user_accounts(conn, [(host, EARNINGS), (host, PENDING)])
            existing = await self._withdrawal_by_key(conn, host, key, amount)
            if existing is not None:
                return existing  # a concurrent retry committed while we waited for the locks
            earnings = accounts[(host, EARNINGS)]
            if earnings.balance < amount:
                raise InsufficientFunds(f"{host} has {earnings.balance} withdrawable coins")
            row = await conn.fetchrow(NEW_WITHDRAWAL, host, key, amount)
            if row is None:
                existing = await self._withdrawal_by_key(conn, host, key, amount)
                assert existing is not None
                return existing
            withdrawal = _withdrawal(row)
            step_key = f"wd:{withdrawal.id}:request"
            rhash = request_hash("withdrawal_request", withdrawal.id, host, amount)
            moves = [(earnings.id, -amount), (accounts[(host, PENDING)].id, amount)]
            meta = {"withdrawal": withdrawal.id}
            if not await _claim_and_move(conn, step_key, rhash, "withdrawal_request", meta, moves):
                raise InvalidState(f"journal already holds {step_key}")
            return withdrawal

    @staticmethod
    async def _withdrawal_by_key(conn: Conn, host: str, key: str, amount: int) -> Withdrawal | None:
        row = await conn.fetchrow(WITHDRAWAL_BY_KEY, host, key)
        if row is None:
            return None
        if row["amount"] != amount:
            raise IdempotencyConflict(f"withdrawal key {key!r} was used for another amount")
        return dataclasses.replace(_withdrawal(row), replayed=True)

    async def decide_withdrawal(
        self, withdrawal_id: int, *, approve: bool, admin: str
    ) -> Withdrawal:
        step = "paid" if approve else "rejected"
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT host, amount, state FROM withdrawals WHERE id = $1 FOR UPDATE",
                withdrawal_id,
            )
            if row is None:
                raise NotFound(f"no withdrawal {withdrawal_id}")
            if row["state"] != "pending":
                raise InvalidState(f"withdrawal {withdrawal_id} is already {row['state']}")
            host: str = row["host"]
            amount: int = row["amount"]
            wanted = [(host, PENDING)] if approve else [(host, EARNINGS), (host, PENDING)]
            accounts = await _lock_user_accounts(conn, wanted)
            step_key = f"wd:{withdrawal_id}:{step}"
            rhash = request_hash(f"withdrawal_{step}", withdrawal_id, admin)
            target = (
                await self._system_account(conn, PAYOUTS)
                if approve
                else accounts[(host, EARNINGS)].id
            )
            moves = [(accounts[(host, PENDING)].id, -amount), (target, amount)]
            meta = {"withdrawal": withdrawal_id, "admin": admin}
            if not await _claim_and_move(conn, step_key, rhash, f"withdrawal_{step}", meta, moves):
                raise InvalidState(f"journal already holds {step_key}")
            decided = await conn.fetchrow(DECIDE_WITHDRAWAL, withdrawal_id, step, admin)
            assert decided is not None
            return _withdrawal(decided)

    async def withdrawals(
        self, *, host: str | None, state: WithdrawalState | None, limit: int
    ) -> list[Withdrawal]:
        if limit <= 0:
            return []
        rows = await self._pool.fetch(
            LIST_WITHDRAWALS,
            host,
            state,
            limit,
        )
        return [_withdrawal(row) for row in rows]

    # --- audit ----------------------------------------------------------------------------

    async def check(self) -> list[Problem]:
        # One snapshot for every query, so a running billing loop cannot make the books
        # look inconsistent between two of them.
        async with (
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            return await _audit(conn)

    async def close(self) -> None:
        """The pool belongs to the caller."""


# --- audit queries ------------------------------------------------------------------------
# Each returns one text ``item`` per offending row, worded like MemoryLedger's.

CALL_MINUTES = """
WITH cm AS (
    SELECT j.id, j.key, r.parts[1] AS call_id, r.parts[2]::integer AS minute
    FROM journal j
    CROSS JOIN LATERAL regexp_match(j.key, '^cm:(.*):([0-9]{1,9})$') AS r (parts)
    WHERE j.key LIKE 'cm:%'
)
"""

WITHDRAWAL_STEPS = """
WITH steps AS (
    SELECT j.key, r.parts[1]::bigint AS wid, r.parts[2] AS step
    FROM journal j
    CROSS JOIN LATERAL regexp_match(j.key, '^wd:([0-9]{1,18}):(request|paid|rejected)$')
        AS r (parts)
    WHERE j.key LIKE 'wd:%'
)
"""

AUDITS: tuple[tuple[str, str, str], ...] = (
    (
        "balance_mismatch",
        "accounts whose balance is not the sum of their postings",
        """
        SELECT format('account %s (%s/%s) balance %s, postings %s',
                      a.id, a.owner, a.kind, a.balance, coalesce(s.total, 0)) AS item
        FROM accounts a
        LEFT JOIN (SELECT account_id, sum(amount) AS total FROM postings GROUP BY account_id) s
            ON s.account_id = a.id
        WHERE a.balance <> coalesce(s.total, 0)
        ORDER BY a.id
        """,
    ),
    (
        "orphan_posting",
        "postings without their journal entry or account",
        """
        SELECT format('posting of %s to account %s in entry %s',
                      p.amount, p.account_id, p.entry_id) AS item
        FROM postings p
        WHERE NOT EXISTS (SELECT 1 FROM journal j WHERE j.id = p.entry_id)
           OR NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = p.account_id)
        ORDER BY p.entry_id, p.account_id
        """,
    ),
    (
        "unbalanced_entry",
        "journal entries whose postings do not sum to zero",
        """
        SELECT format('entry %s %s sums to %s', p.entry_id, j.key, sum(p.amount)) AS item
        FROM postings p LEFT JOIN journal j ON j.id = p.entry_id
        GROUP BY p.entry_id, j.key
        HAVING sum(p.amount) <> 0
        ORDER BY p.entry_id
        """,
    ),
    (
        "negative_balance",
        "user accounts below zero",
        """
        SELECT format('account %s (%s/%s) balance %s', id, owner, kind, balance) AS item
        FROM accounts WHERE is_user AND balance < 0 ORDER BY id
        """,
    ),
    (
        "minute_billed_twice",
        "call-minutes billed more than once",
        CALL_MINUTES  # noqa: S608 (constant SQL, no input)
        + """
        SELECT format('call %s minute %s: %s', call_id, minute,
                      string_agg(key, ', ' ORDER BY key)) AS item
        FROM cm WHERE call_id IS NOT NULL
        GROUP BY call_id, minute HAVING count(*) > 1
        ORDER BY call_id, minute
        """,
    ),
    (
        "call_minutes",
        "calls whose minutes or coins disagree with their cm entries",
        CALL_MINUTES  # noqa: S608 (constant SQL, no input)
        + """
        , per_call AS (
            SELECT call_id, count(*) AS n, max(minute) AS last FROM cm GROUP BY call_id
        ), debits AS (
            SELECT cm.call_id, -sum(p.amount) AS coins
            FROM cm
            JOIN calls c ON c.call_id = cm.call_id
            JOIN postings p ON p.entry_id = cm.id AND p.account_id = c.payer_wallet
            GROUP BY cm.call_id
        )
        SELECT item FROM (
            SELECT c.call_id AS sort_key,
                   format('call %s has %s minutes / %s coins; journal: %s entries,'
                          ' last minute %s, %s coins', c.call_id, c.minutes, c.coins,
                          coalesce(pc.n, 0), coalesce(pc.last, 0), coalesce(d.coins, 0)) AS item
            FROM calls c
            LEFT JOIN per_call pc ON pc.call_id = c.call_id
            LEFT JOIN debits d ON d.call_id = c.call_id
            WHERE coalesce(pc.n, 0) <> c.minutes OR coalesce(pc.last, 0) <> c.minutes
               OR coalesce(d.coins, 0) <> c.coins OR c.coins <> c.minutes * c.rate
            UNION ALL
            SELECT cm.key, format('entry %s %s bills no known call', cm.id, cm.key)
            FROM cm LEFT JOIN calls c ON c.call_id = cm.call_id
            WHERE c.call_id IS NULL
        ) problems
        ORDER BY sort_key
        """,
    ),
    (
        "minute_out_of_time",
        "call-minutes charged at or after their call ended, or before they fell due",
        CALL_MINUTES  # noqa: S608 (constant SQL, no input)
        + """
        SELECT format('%s (%s)', cm.key, CASE WHEN c.ended_at IS NULL
                      THEN 'charged before it fell due'
                      ELSE 'due at or after the call ended' END) AS item
        FROM cm JOIN calls c ON c.call_id = cm.call_id
        WHERE cm.minute >= 2
          AND c.started_at + (cm.minute - 1) * c.minute_s * interval '1 second'
              >= coalesce(c.ended_at, now())
        ORDER BY cm.call_id, cm.minute
        """,
    ),
    (
        "withdrawal_steps",
        "withdrawals whose state disagrees with their journal steps",
        WITHDRAWAL_STEPS  # noqa: S608 (constant SQL, no input)
        + """
        , per AS (
            SELECT w.id, w.state,
                   coalesce(string_agg(s.step, ',' ORDER BY s.step), '') AS got
            FROM withdrawals w LEFT JOIN steps s ON s.wid = w.id
            GROUP BY w.id, w.state
        )
        SELECT item FROM (
            SELECT id AS sort_id, format('withdrawal %s is %s, journal steps [%s]',
                                         id, state, got) AS item
            FROM per
            WHERE got <> CASE state WHEN 'pending' THEN 'request'
                                    WHEN 'paid' THEN 'paid,request'
                                    ELSE 'rejected,request' END
            UNION ALL
            SELECT coalesce(s.wid, 0), format('entry %s belongs to no withdrawal', s.key)
            FROM steps s LEFT JOIN withdrawals w ON w.id = s.wid
            WHERE w.id IS NULL
        ) problems
        ORDER BY sort_id
        """,
    ),
)

# Money held by users and the platform must be what came in (recharges, credits) minus
# what went out (paid withdrawals), the right side counted from the journal alone.
CONSERVATION = """
SELECT
    (SELECT coalesce(sum(balance), 0) FROM accounts
     WHERE is_user OR (owner = $1 AND kind = $2))::bigint AS held,
    (SELECT coalesce(-sum(p.amount), 0) FROM postings p
     JOIN journal j ON j.id = p.entry_id
     JOIN accounts a ON a.id = p.account_id
     WHERE j.kind IN ('recharge', 'credit') AND a.owner LIKE 'ext:%')::bigint AS paid_in,
    (SELECT coalesce(sum(p.amount), 0) FROM postings p
     JOIN journal j ON j.id = p.entry_id
     JOIN accounts a ON a.id = p.account_id
     WHERE j.kind = 'withdrawal_paid' AND a.owner = $3 AND a.kind = $4)::bigint AS paid_out
"""


async def _audit(conn: Conn) -> list[Problem]:
    problems: list[Problem] = []
    for check, what, sql in AUDITS:
        items = [row["item"] for row in await conn.fetch(sql)]
        if items:
            problems.append(problem(check, what, items))
    row = await conn.fetchrow(CONSERVATION, *PLATFORM, *PAYOUTS)
    assert row is not None
    held, paid_in, paid_out = row["held"], row["paid_in"], row["paid_out"]
    if held != paid_in - paid_out:
        problems.append(
            problem(
                "conservation",
                "totals that disagree",
                [
                    f"users and platform hold {held}; recharges and credits {paid_in}"
                    f" - paid withdrawals {paid_out} = {paid_in - paid_out}"
                ],
            )
        )
    return problems
