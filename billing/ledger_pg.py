"""PostgreSQL adapter of ``Ledger`` (asyncpg); the schema is billing/migrations/*.sql, the
statements are in ``pg_statements``, the transaction steps in ``pg_books`` and the audit's
queries in ``audit_pg``.

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

from collections.abc import Sequence
from typing import Any

import asyncpg

from billing import audit_pg
from billing.errors import (
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
    Withdrawal,
    WithdrawalState,
)
from billing.pg_books import (
    NO_LIMIT_ID,
    Account,
    AccountName,
    Conn,
    billed_round,
    call_record,
    claim_and_move,
    first_use,
    gift_replayed,
    lock_user_accounts,
    stop_reason,
    unix_seconds,
    withdrawal_by_key,
    withdrawal_record,
)
from billing.pg_statements import (
    APPLY_ROUND,
    CREATE_ACCOUNTS,
    DECIDE_WITHDRAWAL,
    DUE_CALLS,
    END_CALL,
    ENDED_CALLS,
    FIND_ACCOUNT,
    GIFT_PRICE,
    HOST_RATE,
    LIST_GIFTS,
    LIST_WITHDRAWALS,
    LOCK_BATCH_ACCOUNTS,
    LOCK_CALL,
    LOCK_WITHDRAWAL,
    NEW_WITHDRAWAL,
    OPEN_CALL,
    PUT_GIFT,
    SET_HOST_RATE,
    TOUCH_CALLS,
    USER_BALANCES,
    USER_CALLS,
    USER_ENTRIES,
)
from billing.rules import (
    ADMIN_CLEARING,
    EARNINGS,
    PAYOUTS,
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
    request_hash,
)
from billing.settings import BillingSettings


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
            first = await first_use(conn, key, rhash)
            if first is None:
                accounts = await lock_user_accounts(
                    conn, [(terms.payer, WALLET), (terms.host, EARNINGS)]
                )
                # A concurrent retry may have committed while we waited for the locks: its
                # result stands (checking the money first would refuse what already happened).
                if (again := await first_use(conn, key, rhash)) is not None:
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
                entry = await claim_and_move(
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
                first = await first_use(conn, key, rhash)
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
                [stop_reason(row) for row in stopping],
            )
        return billed_round(paying, stopping, keys, claimed_rows, start)

    async def touch_calls(self, call_ids: Sequence[str]) -> dict[str, str]:
        if not call_ids:
            return {}
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(TOUCH_CALLS, list(call_ids))
            ended = await conn.fetch(ENDED_CALLS, list(call_ids))
        return {row["call_id"]: row["end_reason"] or "" for row in ended}

    async def close_call(self, call_id: str, reason: str) -> CallTotals:
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(LOCK_CALL, call_id)
            if row is None:
                raise NotFound(f"no call {call_id!r}")
            if row["state"] == "active":
                await conn.execute(END_CALL, call_id, reason)
        return CallTotals(call_id, row["minutes"], row["coins"])

    async def calls(self, user_id: str, *, limit: int, before: float | None) -> list[CallRecord]:
        if limit <= 0:
            return []
        rows = await self._pool.fetch(USER_CALLS, user_id, limit, before)
        return [call_record(row) for row in rows]

    # --- balances and history -------------------------------------------------------------

    async def balances(self, user_id: str) -> Balances:
        rows = await self._pool.fetch(USER_BALANCES, user_id, list(USER_KINDS))
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
                created_at=unix_seconds(row["created_at"]),
                wallet_delta=row["wallet"],
                earnings_delta=row["earnings"],
                pending_delta=row["pending"],
            )
            for row in rows
        ]

    # --- rates and gifts ------------------------------------------------------------------

    async def host_rate(self, host: str) -> int | None:
        rate: int | None = await self._pool.fetchval(HOST_RATE, host)
        return rate

    async def set_host_rate(self, host: str, rate: int) -> None:
        if rate != 0:
            check_amount(rate, self._settings.max_amount)
        await self._pool.execute(SET_HOST_RATE, host, rate)

    async def put_gift(self, gift: Gift) -> None:
        check_amount(gift.price, self._settings.max_amount)
        await self._pool.execute(
            PUT_GIFT,
            gift.gift_id,
            gift.name,
            gift.price,
            gift.active,
        )

    async def gifts(self, *, active_only: bool) -> list[Gift]:
        rows = await self._pool.fetch(LIST_GIFTS, active_only)
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
            first = await first_use(conn, full_key, rhash)
            if first is None:
                gift = await conn.fetchrow(GIFT_PRICE, gift_id)
                if gift is None or not gift["active"]:
                    raise NotFound(f"no active gift {gift_id!r}")
                price: int = gift["price"]
                accounts = await lock_user_accounts(conn, [(sender, WALLET), (receiver, EARNINGS)])
                if (again := await first_use(conn, full_key, rhash)) is not None:
                    # A concurrent retry committed while we waited.
                    return await gift_replayed(conn, full_key, again)
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
                entry = await claim_and_move(conn, full_key, rhash, "gift", meta, moves)
                if entry is not None:
                    return GiftSent(gift_id, price, to_host, wallet.balance - price, entry_id=entry)
                first = await first_use(conn, full_key, rhash)
                assert first is not None
            return await gift_replayed(conn, full_key, first)

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
            first = await first_use(conn, key, rhash)
            if first is None:
                # The other two are read (under lock, for a consistent result) not created.
                accounts = await lock_user_accounts(
                    conn, [(user_id, WALLET)], optional=[(user_id, EARNINGS), (user_id, PENDING)]
                )
                wallet = accounts[(user_id, WALLET)]
                nothing = Account(0, 0)
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
                if await claim_and_move(conn, key, rhash, kind, {**meta, **result}, moves):
                    return after
                first = await first_use(conn, key, rhash)
                assert first is not None
        return Balances(first["wallet"], first["earnings"], first["withdrawal_pending"])

    async def request_withdrawal(self, key: str, host: str, amount: int) -> Withdrawal:
        check_amount(amount, self._settings.max_amount)
        async with self._pool.acquire() as conn, conn.transaction():
            existing = await withdrawal_by_key(conn, host, key, amount)
            if existing is not None:
                return existing
            accounts = await lock_user_accounts(conn, [(host, EARNINGS), (host, PENDING)])
            existing = await withdrawal_by_key(conn, host, key, amount)
            if existing is not None:
                return existing  # a concurrent retry committed while we waited for the locks
            earnings = accounts[(host, EARNINGS)]
            if earnings.balance < amount:
                raise InsufficientFunds(f"{host} has {earnings.balance} withdrawable coins")
            row = await conn.fetchrow(NEW_WITHDRAWAL, host, key, amount)
            if row is None:
                existing = await withdrawal_by_key(conn, host, key, amount)
                assert existing is not None
                return existing
            withdrawal = withdrawal_record(row)
            step_key = f"wd:{withdrawal.id}:request"
            rhash = request_hash("withdrawal_request", withdrawal.id, host, amount)
            moves = [(earnings.id, -amount), (accounts[(host, PENDING)].id, amount)]
            meta = {"withdrawal": withdrawal.id}
            if not await claim_and_move(conn, step_key, rhash, "withdrawal_request", meta, moves):
                raise InvalidState(f"journal already holds {step_key}")
            return withdrawal

    async def decide_withdrawal(
        self, withdrawal_id: int, *, approve: bool, admin: str
    ) -> Withdrawal:
        step = "paid" if approve else "rejected"
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(LOCK_WITHDRAWAL, withdrawal_id)
            if row is None:
                raise NotFound(f"no withdrawal {withdrawal_id}")
            if row["state"] != "pending":
                raise InvalidState(f"withdrawal {withdrawal_id} is already {row['state']}")
            host: str = row["host"]
            amount: int = row["amount"]
            wanted = [(host, PENDING)] if approve else [(host, EARNINGS), (host, PENDING)]
            accounts = await lock_user_accounts(conn, wanted)
            step_key = f"wd:{withdrawal_id}:{step}"
            rhash = request_hash(f"withdrawal_{step}", withdrawal_id, admin)
            target = (
                await self._system_account(conn, PAYOUTS)
                if approve
                else accounts[(host, EARNINGS)].id
            )
            moves = [(accounts[(host, PENDING)].id, -amount), (target, amount)]
            meta = {"withdrawal": withdrawal_id, "admin": admin}
            if not await claim_and_move(conn, step_key, rhash, f"withdrawal_{step}", meta, moves):
                raise InvalidState(f"journal already holds {step_key}")
            decided = await conn.fetchrow(DECIDE_WITHDRAWAL, withdrawal_id, step, admin)
            assert decided is not None
            return withdrawal_record(decided)

    async def withdrawals(
        self, *, host: str | None, state: WithdrawalState | None, limit: int
    ) -> list[Withdrawal]:
        if limit <= 0:
            return []
        rows = await self._pool.fetch(LIST_WITHDRAWALS, host, state, limit)
        return [withdrawal_record(row) for row in rows]

    # --- audit ----------------------------------------------------------------------------

    async def check(self) -> list[Problem]:
        # One snapshot for every query, so a running billing loop cannot make the books
        # look inconsistent between two of them.
        async with (
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            return await audit_pg.audit(conn)

    async def close(self) -> None:
        """The pool belongs to the caller."""
