"""Embedded ``Ledger`` for a single process (the default when no database URL is set).

It keeps the same books as the PostgreSQL adapter, not a shortcut: accounts with balances,
an append-only journal keyed by idempotency key, and postings that sum to zero per entry,
so ``check()`` audits exactly what ``PgLedger.check()`` audits, with the same wording
(``memory_books`` holds the books, ``audit_memory`` checks them). No
method awaits anything, so on one event loop each call runs atomically, which is what a
transaction gives the PostgreSQL adapter.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
from collections.abc import Callable, Sequence
from typing import Any

from billing import audit_memory
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
from billing.memory_books import AccountName, Books, CallRow, WithdrawalRow, charge
from billing.reports_memory import MemoryReports
from billing.rules import (
    ADMIN_CLEARING,
    EARNINGS,
    INSUFFICIENT_BALANCE,
    PAYOUTS,
    PEER_LOST,
    PENDING,
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


class MemoryLedger:
    """``Ledger`` in process memory; ``now`` returns unix seconds (the ledger's clock)."""

    def __init__(self, settings: BillingSettings, now: Callable[[], float]) -> None:
        self._settings = settings
        self._now = now
        self._books = Books(now)

    def reports(self) -> MemoryReports:
        """The admin figures over these books."""
        return MemoryReports(self._books, self._now)

    # --- calls ----------------------------------------------------------------------------

    async def open_call(self, terms: CallTerms) -> OpenedCall:
        check_terms(terms, self._settings.max_amount)
        key = call_minute_key(terms.call_id, 1)
        rhash = request_hash(
            "open_call", terms.call_id, terms.payer, terms.host, terms.rate, terms.share_bps
        )
        first = self._books.first_use(key, rhash)
        if first is not None:
            return OpenedCall(terms.call_id, terms.rate, int(first["balance"]))
        wallet = self._books.balance((terms.payer, WALLET))
        if wallet < terms.rate:
            raise InsufficientFunds(
                f"{terms.payer} has {wallet} coins, one minute costs {terms.rate}"
            )
        balance = wallet - terms.rate
        meta = {"call_id": terms.call_id, "balance": balance}
        self._books.post(
            key,
            rhash,
            "call_minute",
            meta,
            charge(terms.rate, terms.share_bps, terms.payer, terms.host),
        )
        self._books.account((terms.host, EARNINGS))  # as PgLedger, which refers to it from the call
        now = self._now()
        minute_s = self._settings.minute_seconds
        call = CallRow(
            terms.call_id,
            terms.payer,
            terms.host,
            terms.rate,
            terms.share_bps,
            minute_s,
            started_at=now,
            next_due=now + minute_s,
            minutes=1,
            coins=terms.rate,
            seen_at=now,
        )
        self._books.calls[call.call_id] = call
        self._books.active[call.call_id] = call
        self._books.calls_of[call.payer].append(call)
        self._books.calls_of[call.host].append(call)
        return OpenedCall(terms.call_id, terms.rate, balance)

    async def bill_due(self, limit: int) -> BillingRound:
        if limit <= 0:
            return BillingRound([], [])
        now = self._now()
        orphan_after = self._settings.orphan_after_s

        def orphaned(call: CallRow) -> bool:
            return orphan_after > 0 and call.seen_at < now - orphan_after

        # As in PgLedger: a due minute is charged only once the node has shown life since it
        # began; otherwise the call waits, uncharged, for a touch or to be orphaned.
        due = heapq.nsmallest(
            limit,
            (
                call
                for call in self._books.active.values()
                if call.next_due < now and (call.seen_at > call.next_due or orphaned(call))
            ),
            key=lambda call: (call.next_due, call.call_id),
        )
        ticks: list[Tick] = []
        stops: list[Stop] = []
        for call in due:
            if orphaned(call):
                # Its node is gone: end it at its last sign of life, charge nothing.
                self._books.end_call(call, PEER_LOST, call.seen_at)
                stops.append(
                    Stop(call.call_id, call.payer, call.host, call.minutes, call.coins, PEER_LOST)
                )
                continue
            wallet = self._books.balance((call.payer, WALLET))
            if wallet < call.rate:
                self._books.end_call(call, INSUFFICIENT_BALANCE, now)
                stops.append(Stop(call.call_id, call.payer, call.host, call.minutes, call.coins))
                continue
            minute = call.minutes + 1
            key = call_minute_key(call.call_id, minute)
            # As in PgLedger: a key already in the journal means that minute was billed,
            # so the call's counters catch up with the journal but nothing is charged.
            if key not in self._books.by_key:
                self._books.post(
                    key,
                    request_hash("call_minute", call.call_id, minute, call.rate),
                    "call_minute",
                    {},
                    charge(call.rate, call.share_bps, call.payer, call.host),
                )
                balance = wallet - call.rate
                ticks.append(
                    Tick(
                        call.call_id,
                        call.payer,
                        call.host,
                        minute,
                        call.rate,
                        balance,
                        minutes_left(balance, call.rate),
                    )
                )
            call.minutes = minute
            call.coins += call.rate
            call.next_due += call.minute_s
        return BillingRound(ticks, stops)

    async def touch_calls(self, call_ids: Sequence[str]) -> dict[str, str]:
        now = self._now()
        ended: dict[str, str] = {}
        for call_id in call_ids:
            call = self._books.calls.get(call_id)
            if call is None:
                continue
            if call.state == "active":
                call.seen_at = now
            else:
                ended[call_id] = call.end_reason or ""
        return ended

    async def close_call(self, call_id: str, reason: str) -> CallTotals:
        call = self._books.calls.get(call_id)
        if call is None:
            raise NotFound(f"no call {call_id!r}")
        if call.state == "active":
            self._books.end_call(call, reason, self._now())
        return CallTotals(call_id, call.minutes, call.coins)

    async def calls(self, user_id: str, *, limit: int, before: float | None) -> list[CallRecord]:
        found = [
            call
            for call in self._books.calls_of.get(user_id, [])
            if before is None or call.started_at < before
        ]
        found.sort(key=lambda call: (call.started_at, call.call_id), reverse=True)
        return [call.record() for call in found[: max(limit, 0)]]

    # --- balances and history -------------------------------------------------------------

    async def balances(self, user_id: str) -> Balances:
        return Balances(
            self._books.balance((user_id, WALLET)),
            self._books.balance((user_id, EARNINGS)),
            self._books.balance((user_id, PENDING)),
        )

    async def entries(self, user_id: str, *, limit: int, before: int | None) -> list[Entry]:
        if limit <= 0:
            return []
        mine = {
            account.id: account
            for kind in USER_KINDS
            if (account := self._books.accounts.get((user_id, kind))) is not None
        }
        newest: set[int] = set()
        for account in mine.values():
            end = len(account.entry_ids)
            if before is not None:
                end = bisect.bisect_left(account.entry_ids, before)
            newest.update(account.entry_ids[max(0, end - limit) : end])
        found: list[Entry] = []
        for entry_id in sorted(newest, reverse=True)[:limit]:
            entry = self._books.journal[entry_id]
            delta = dict.fromkeys(USER_KINDS, 0)
            for posting in self._books.postings[entry_id]:
                if posting.account_id in mine:
                    delta[mine[posting.account_id].kind] += posting.amount
            found.append(
                Entry(
                    entry.id,
                    entry.key,
                    entry.kind,
                    entry.created_at,
                    delta[WALLET],
                    delta[EARNINGS],
                    delta[PENDING],
                )
            )
        return found

    # --- rates and gifts ------------------------------------------------------------------

    async def host_rate(self, host: str) -> int | None:
        return self._books.rates.get(host)

    async def set_host_rate(self, host: str, rate: int) -> None:
        if rate != 0:
            check_amount(rate, self._settings.max_amount)
        self._books.rates[host] = rate

    async def put_gift(self, gift: Gift) -> None:
        check_amount(gift.price, self._settings.max_amount)
        self._books.gifts[gift.gift_id] = gift

    async def gifts(self, *, active_only: bool) -> list[Gift]:
        found = [gift for gift in self._books.gifts.values() if gift.active or not active_only]
        return sorted(found, key=lambda gift: (gift.price, gift.gift_id))

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
        first = self._books.first_use(full_key, rhash)
        if first is not None:
            return GiftSent(
                first["gift_id"],
                first["price"],
                first["host_credit"],
                first["sender_balance"],
                entry_id=self._books.by_key[full_key].id,
                replayed=True,
            )
        gift = self._books.gifts.get(gift_id)
        if gift is None or not gift.active:
            raise NotFound(f"no active gift {gift_id!r}")
        wallet = self._books.balance((sender, WALLET))
        if wallet < gift.price:
            raise InsufficientFunds(f"{sender} has {wallet} coins, the gift costs {gift.price}")
        to_host = host_part(gift.price, share_bps)
        meta = {
            "receiver": receiver,
            "gift_id": gift_id,
            "price": gift.price,
            "host_credit": to_host,
            "sender_balance": wallet - gift.price,
        }
        entry = self._books.post(
            full_key, rhash, "gift", meta, charge(gift.price, share_bps, sender, receiver)
        )
        return GiftSent(gift_id, gift.price, to_host, wallet - gift.price, entry_id=entry.id)

    # --- money in and out -----------------------------------------------------------------

    async def recharge(self, provider: str, txn_id: str, user_id: str, amount: int) -> Balances:
        check_amount(amount, self._settings.max_amount)
        return self._fund_wallet(
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
        return self._fund_wallet(
            key=f"credit:{key}",
            rhash=request_hash("credit", key, user_id, amount, admin),
            kind="credit",
            user_id=user_id,
            source=ADMIN_CLEARING,
            amount=amount,
            meta={"admin": admin},
        )

    def _fund_wallet(
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
        first = self._books.first_use(key, rhash)
        if first is not None:
            return Balances(first["wallet"], first["earnings"], first["withdrawal_pending"])
        after = Balances(
            self._books.balance((user_id, WALLET)) + amount,
            self._books.balance((user_id, EARNINGS)),
            self._books.balance((user_id, PENDING)),
        )
        result = {
            "wallet": after.wallet,
            "earnings": after.earnings,
            "withdrawal_pending": after.withdrawal_pending,
        }
        self._books.post(
            key, rhash, kind, {**meta, **result}, [(source, -amount), ((user_id, WALLET), amount)]
        )
        return after

    async def request_withdrawal(self, key: str, host: str, amount: int) -> Withdrawal:
        check_amount(amount, self._settings.max_amount)
        existing = self._books.withdrawal_keys.get((host, key))
        if existing is not None:
            if existing.amount != amount:
                raise IdempotencyConflict(f"withdrawal key {key!r} was used for another amount")
            return dataclasses.replace(existing.public(), replayed=True)
        earnings = self._books.balance((host, EARNINGS))
        if earnings < amount:
            raise InsufficientFunds(f"{host} has {earnings} withdrawable coins")
        withdrawal = WithdrawalRow(len(self._books.withdrawals) + 1, host, key, amount, self._now())
        self._books.withdrawals[withdrawal.id] = withdrawal
        self._books.withdrawal_keys[(host, key)] = withdrawal
        self._books.post(
            f"wd:{withdrawal.id}:request",
            request_hash("withdrawal_request", withdrawal.id, host, amount),
            "withdrawal_request",
            {"withdrawal": withdrawal.id},
            [((host, EARNINGS), -amount), ((host, PENDING), amount)],
        )
        return withdrawal.public()

    async def decide_withdrawal(
        self, withdrawal_id: int, *, approve: bool, admin: str
    ) -> Withdrawal:
        withdrawal = self._books.withdrawals.get(withdrawal_id)
        if withdrawal is None:
            raise NotFound(f"no withdrawal {withdrawal_id}")
        if withdrawal.state != "pending":
            raise InvalidState(f"withdrawal {withdrawal_id} is already {withdrawal.state}")
        step: WithdrawalState = "paid" if approve else "rejected"
        step_key = f"wd:{withdrawal_id}:{step}"
        if step_key in self._books.by_key:
            raise InvalidState(f"journal already holds {step_key}")
        target = PAYOUTS if approve else (withdrawal.host, EARNINGS)
        self._books.post(
            step_key,
            request_hash(f"withdrawal_{step}", withdrawal_id, admin),
            f"withdrawal_{step}",
            {"withdrawal": withdrawal_id, "admin": admin},
            [((withdrawal.host, PENDING), -withdrawal.amount), (target, withdrawal.amount)],
        )
        withdrawal.state = step
        withdrawal.decided_at = self._now()
        withdrawal.decided_by = admin
        return withdrawal.public()

    async def withdrawals(
        self, *, host: str | None, state: WithdrawalState | None, limit: int
    ) -> list[Withdrawal]:
        found = [
            withdrawal.public()
            for withdrawal in sorted(self._books.withdrawals.values(), key=lambda w: -w.id)
            if (host is None or withdrawal.host == host)
            and (state is None or withdrawal.state == state)
        ]
        return found[: max(limit, 0)]

    # --- audit (same checks and wording as PgLedger) --------------------------------------

    async def check(self) -> list[Problem]:
        return audit_memory.audit(self._books, self._now())

    async def close(self) -> None:
        """Nothing to release."""
