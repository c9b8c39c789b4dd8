"""Embedded ``Ledger`` for a single process (the default when no database URL is set).

It keeps the same books as the PostgreSQL adapter, not a shortcut: accounts with balances,
an append-only journal keyed by idempotency key, and postings that sum to zero per entry,
so ``check()`` audits exactly what ``PgLedger.check()`` audits, with the same wording. No
method awaits anything, so on one event loop each call runs atomically, which is what a
transaction gives the PostgreSQL adapter.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

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
    CallState,
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

AccountName = tuple[str, str]  # (owner, kind)
Move = tuple[AccountName, int]


@dataclass(slots=True)
class _Account:
    id: int
    owner: str
    kind: str
    is_user: bool
    balance: int = 0
    entry_ids: list[int] = field(default_factory=list)  # ascending


@dataclass(frozen=True, slots=True)
class _Entry:
    id: int
    key: str
    request_hash: str
    kind: str
    created_at: float
    meta: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Posting:
    entry_id: int
    account_id: int
    amount: int


@dataclass(slots=True)
class _Call:
    call_id: str
    payer: str
    host: str
    rate: int
    share_bps: int
    minute_s: int
    started_at: float
    next_due: float
    minutes: int
    coins: int
    state: CallState = "active"
    ended_at: float | None = None
    end_reason: str | None = None
    seen_at: float = 0.0

    def record(self) -> CallRecord:
        return CallRecord(
            self.call_id,
            self.payer,
            self.host,
            self.rate,
            self.share_bps,
            self.started_at,
            self.ended_at,
            self.state,
            self.end_reason,
            self.minutes,
            self.coins,
        )


@dataclass(slots=True)
class _Withdrawal:
    id: int
    host: str
    client_key: str
    amount: int
    created_at: float
    state: WithdrawalState = "pending"
    decided_at: float | None = None
    decided_by: str | None = None

    def public(self) -> Withdrawal:
        return Withdrawal(
            self.id, self.host, self.amount, self.state, self.created_at, self.decided_at
        )


class MemoryLedger:
    """``Ledger`` in process memory; ``now`` returns unix seconds (the ledger's clock)."""

    def __init__(self, settings: BillingSettings, now: Callable[[], float]) -> None:
        self._settings = settings
        self._now = now
        self._accounts: dict[AccountName, _Account] = {}
        self._accounts_by_id: dict[int, _Account] = {}
        self._journal: dict[int, _Entry] = {}
        self._by_key: dict[str, _Entry] = {}
        self._postings: dict[int, list[_Posting]] = {}  # by entry id
        self._calls: dict[str, _Call] = {}
        self._active: dict[str, _Call] = {}
        self._calls_of: defaultdict[str, list[_Call]] = defaultdict(list)
        self._rates: dict[str, int] = {}
        self._gifts: dict[str, Gift] = {}
        self._withdrawals: dict[int, _Withdrawal] = {}
        self._withdrawal_keys: dict[tuple[str, str], _Withdrawal] = {}
        self._account(PLATFORM)  # as the migration does

    # --- the books ------------------------------------------------------------------------

    def _account(self, name: AccountName) -> _Account:
        account = self._accounts.get(name)
        if account is None:
            account = _Account(len(self._accounts) + 1, *name, is_user=name[1] in USER_KINDS)
            self._accounts[name] = account
            self._accounts_by_id[account.id] = account
        return account

    def _balance(self, name: AccountName) -> int:
        account = self._accounts.get(name)
        return 0 if account is None else account.balance

    def _first_use(self, key: str, rhash: str) -> dict[str, Any] | None:
        entry = self._by_key.get(key)
        if entry is None:
            return None
        if entry.request_hash != rhash:
            raise IdempotencyConflict(f"key {key!r} was already used for a different request")
        return entry.meta

    def _post(
        self, key: str, rhash: str, kind: str, meta: dict[str, Any], moves: Sequence[Move]
    ) -> _Entry:
        """Record one entry and its postings; callers have checked keys and funds."""
        moves = [(name, amount) for name, amount in moves if amount != 0]
        assert key not in self._by_key, key
        assert sum(amount for _, amount in moves) == 0, moves
        entry = _Entry(len(self._journal) + 1, key, rhash, kind, self._now(), meta)
        postings: list[_Posting] = []
        for name, amount in moves:
            account = self._account(name)
            assert not account.is_user or account.balance + amount >= 0, (name, amount)
            account.balance += amount
            account.entry_ids.append(entry.id)
            postings.append(_Posting(entry.id, account.id, amount))
        self._journal[entry.id] = entry
        self._by_key[key] = entry
        self._postings[entry.id] = postings
        return entry

    @staticmethod
    def _charge(coins: int, share_bps: int, payer: str, host: str) -> list[Move]:
        to_host = host_part(coins, share_bps)
        return [((payer, WALLET), -coins), ((host, EARNINGS), to_host), (PLATFORM, coins - to_host)]

    # --- calls ----------------------------------------------------------------------------

    async def open_call(self, terms: CallTerms) -> OpenedCall:
        check_terms(terms, self._settings.max_amount)
        key = call_minute_key(terms.call_id, 1)
        rhash = request_hash(
            "open_call", terms.call_id, terms.payer, terms.host, terms.rate, terms.share_bps
        )
        first = self._first_use(key, rhash)
        if first is not None:
            return OpenedCall(terms.call_id, terms.rate, int(first["balance"]))
        wallet = self._balance((terms.payer, WALLET))
        if wallet < terms.rate:
            raise InsufficientFunds(
                f"{terms.payer} has {wallet} coins, one minute costs {terms.rate}"
            )
        balance = wallet - terms.rate
        meta = {"call_id": terms.call_id, "balance": balance}
        self._post(
            key,
            rhash,
            "call_minute",
            meta,
            self._charge(terms.rate, terms.share_bps, terms.payer, terms.host),
        )
        self._account((terms.host, EARNINGS))  # as PgLedger, which refers to it from the call
        now = self._now()
        minute_s = self._settings.minute_seconds
        call = _Call(
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
        self._calls[call.call_id] = call
        self._active[call.call_id] = call
        self._calls_of[call.payer].append(call)
        self._calls_of[call.host].append(call)
        return OpenedCall(terms.call_id, terms.rate, balance)

    async def bill_due(self, limit: int) -> BillingRound:
        if limit <= 0:
            return BillingRound([], [])
        now = self._now()
        due = heapq.nsmallest(
            limit,
            (call for call in self._active.values() if call.next_due < now),
            key=lambda call: (call.next_due, call.call_id),
        )
        ticks: list[Tick] = []
        stops: list[Stop] = []
        orphan_after = self._settings.orphan_after_s
        for call in due:
            if orphan_after > 0 and call.seen_at < now - orphan_after:
                self._end(call, PEER_LOST, now)  # its node is gone: end it, charge nothing
                stops.append(
                    Stop(call.call_id, call.payer, call.host, call.minutes, call.coins, PEER_LOST)
                )
                continue
            wallet = self._balance((call.payer, WALLET))
            if wallet < call.rate:
                self._end(call, INSUFFICIENT_BALANCE, now)
                stops.append(Stop(call.call_id, call.payer, call.host, call.minutes, call.coins))
                continue
            minute = call.minutes + 1
            key = call_minute_key(call.call_id, minute)
            # As in PgLedger: a key already in the journal means that minute was billed,
            # so the call's counters catch up with the journal but nothing is charged.
            if key not in self._by_key:
                self._post(
                    key,
                    request_hash("call_minute", call.call_id, minute, call.rate),
                    "call_minute",
                    {},
                    self._charge(call.rate, call.share_bps, call.payer, call.host),
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

    def _end(self, call: _Call, reason: str, now: float) -> None:
        call.state = "ended"
        call.ended_at = now
        call.end_reason = reason
        del self._active[call.call_id]

    async def touch_calls(self, call_ids: Sequence[str]) -> dict[str, str]:
        now = self._now()
        ended: dict[str, str] = {}
        for call_id in call_ids:
            call = self._calls.get(call_id)
            if call is None:
                continue
            if call.state == "active":
                call.seen_at = now
            else:
                ended[call_id] = call.end_reason or ""
        return ended

    async def close_call(self, call_id: str, reason: str) -> CallTotals:
        call = self._calls.get(call_id)
        if call is None:
            raise NotFound(f"no call {call_id!r}")
        if call.state == "active":
            self._end(call, reason, self._now())
        return CallTotals(call_id, call.minutes, call.coins)

    async def calls(self, user_id: str, *, limit: int, before: float | None) -> list[CallRecord]:
        found = [
            call
            for call in self._calls_of.get(user_id, [])
            if before is None or call.started_at < before
        ]
        found.sort(key=lambda call: (call.started_at, call.call_id), reverse=True)
        return [call.record() for call in found[: max(limit, 0)]]

    # --- balances and history -------------------------------------------------------------

    async def balances(self, user_id: str) -> Balances:
        return Balances(
            self._balance((user_id, WALLET)),
            self._balance((user_id, EARNINGS)),
            self._balance((user_id, PENDING)),
        )

    async def entries(self, user_id: str, *, limit: int, before: int | None) -> list[Entry]:
        if limit <= 0:
            return []
        mine = {
            account.id: account
            for kind in USER_KINDS
            if (account := self._accounts.get((user_id, kind))) is not None
        }
        newest: set[int] = set()
        for account in mine.values():
            end = len(account.entry_ids)
            if before is not None:
                end = bisect.bisect_left(account.entry_ids, before)
            newest.update(account.entry_ids[max(0, end - limit) : end])
        found: list[Entry] = []
        for entry_id in sorted(newest, reverse=True)[:limit]:
            entry = self._journal[entry_id]
            delta = dict.fromkeys(USER_KINDS, 0)
            for posting in self._postings[entry_id]:
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
        return self._rates.get(host)

    async def set_host_rate(self, host: str, rate: int) -> None:
        if rate != 0:
            check_amount(rate, self._settings.max_amount)
        self._rates[host] = rate

    async def put_gift(self, gift: Gift) -> None:
        check_amount(gift.price, self._settings.max_amount)
        self._gifts[gift.gift_id] = gift

    async def gifts(self, *, active_only: bool) -> list[Gift]:
        found = [gift for gift in self._gifts.values() if gift.active or not active_only]
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
        first = self._first_use(full_key, rhash)
        if first is not None:
            return GiftSent(
                first["gift_id"],
                first["price"],
                first["host_credit"],
                first["sender_balance"],
                entry_id=self._by_key[full_key].id,
                replayed=True,
            )
        gift = self._gifts.get(gift_id)
        if gift is None or not gift.active:
            raise NotFound(f"no active gift {gift_id!r}")
        wallet = self._balance((sender, WALLET))
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
        entry = self._post(
            full_key, rhash, "gift", meta, self._charge(gift.price, share_bps, sender, receiver)
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
        first = self._first_use(key, rhash)
        if first is not None:
            return Balances(first["wallet"], first["earnings"], first["withdrawal_pending"])
        after = Balances(
            self._balance((user_id, WALLET)) + amount,
            self._balance((user_id, EARNINGS)),
            self._balance((user_id, PENDING)),
        )
        result = {
            "wallet": after.wallet,
            "earnings": after.earnings,
            "withdrawal_pending": after.withdrawal_pending,
        }
        self._post(
            key, rhash, kind, {**meta, **result}, [(source, -amount), ((user_id, WALLET), amount)]
        )
        return after

    async def request_withdrawal(self, key: str, host: str, amount: int) -> Withdrawal:
        check_amount(amount, self._settings.max_amount)
        existing = self._withdrawal_keys.get((host, key))
        if existing is not None:
            if existing.amount != amount:
                raise IdempotencyConflict(f"withdrawal key {key!r} was used for another amount")
            return dataclasses.replace(existing.public(), replayed=True)
        earnings = self._balance((host, EARNINGS))
        if earnings < amount:
            raise InsufficientFunds(f"{host} has {earnings} withdrawable coins")
        withdrawal = _Withdrawal(len(self._withdrawals) + 1, host, key, amount, self._now())
        self._withdrawals[withdrawal.id] = withdrawal
        self._withdrawal_keys[(host, key)] = withdrawal
        self._post(
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
        withdrawal = self._withdrawals.get(withdrawal_id)
        if withdrawal is None:
            raise NotFound(f"no withdrawal {withdrawal_id}")
        if withdrawal.state != "pending":
            raise InvalidState(f"withdrawal {withdrawal_id} is already {withdrawal.state}")
        step: WithdrawalState = "paid" if approve else "rejected"
        step_key = f"wd:{withdrawal_id}:{step}"
        if step_key in self._by_key:
            raise InvalidState(f"journal already holds {step_key}")
        target = PAYOUTS if approve else (withdrawal.host, EARNINGS)
        self._post(
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
            for withdrawal in sorted(self._withdrawals.values(), key=lambda w: -w.id)
            if (host is None or withdrawal.host == host)
            and (state is None or withdrawal.state == state)
        ]
        return found[: max(limit, 0)]

    # --- audit (same checks and wording as PgLedger) --------------------------------------

    async def check(self) -> list[Problem]:
        audits: list[tuple[str, str, Iterable[str]]] = [
            (
                "balance_mismatch",
                "accounts whose balance is not the sum of their postings",
                self._balance_mismatches(),
            ),
            (
                "orphan_posting",
                "postings without their journal entry or account",
                (
                    f"posting of {p.amount} to account {p.account_id} in entry {p.entry_id}"
                    for entry_id in sorted(self._postings)
                    for p in self._postings[entry_id]
                    if p.entry_id not in self._journal or p.account_id not in self._accounts_by_id
                ),
            ),
            (
                "unbalanced_entry",
                "journal entries whose postings do not sum to zero",
                (
                    f"entry {entry_id} {self._journal[entry_id].key} sums to {total}"
                    for entry_id in sorted(self._postings)
                    if (total := sum(p.amount for p in self._postings[entry_id])) != 0
                ),
            ),
            (
                "negative_balance",
                "user accounts below zero",
                (
                    f"account {a.id} ({a.owner}/{a.kind}) balance {a.balance}"
                    for a in sorted(self._accounts.values(), key=lambda a: a.id)
                    if a.is_user and a.balance < 0
                ),
            ),
            *self._call_minute_audits(),
            (
                "withdrawal_steps",
                "withdrawals whose state disagrees with their journal steps",
                self._withdrawal_step_problems(),
            ),
        ]
        problems = [
            problem(check, what, items) for check, what, found in audits if (items := list(found))
        ]
        held, paid_in, paid_out = self._conservation()
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

    def _balance_mismatches(self) -> Iterable[str]:
        totals: defaultdict[int, int] = defaultdict(int)
        for postings in self._postings.values():
            for p in postings:
                totals[p.account_id] += p.amount
        for a in sorted(self._accounts.values(), key=lambda a: a.id):
            if a.balance != totals[a.id]:
                yield (
                    f"account {a.id} ({a.owner}/{a.kind}) balance {a.balance},"
                    f" postings {totals[a.id]}"
                )

    def _call_minutes(self) -> list[tuple[_Entry, str, int]]:
        """(entry, call id, minute) of every cm entry, parsed from its key like the SQL."""
        found = []
        for entry in self._journal.values():
            if not entry.key.startswith("cm:"):
                continue
            call_id, sep, minute = entry.key[3:].rpartition(":")
            if sep and minute.isascii() and minute.isdigit() and len(minute) <= 9:
                found.append((entry, call_id, int(minute)))
        return found

    def _call_minute_audits(self) -> list[tuple[str, str, Iterable[str]]]:
        minutes = self._call_minutes()
        by_minute: defaultdict[tuple[str, int], list[str]] = defaultdict(list)
        per_call: defaultdict[str, list[int]] = defaultdict(list)
        debits: defaultdict[str, int] = defaultdict(int)
        stray: list[tuple[str, str]] = []
        late: list[str] = []
        now = self._now()
        for entry, call_id, minute in sorted(minutes, key=lambda m: (m[1], m[2])):
            by_minute[(call_id, minute)].append(entry.key)
            per_call[call_id].append(minute)
            call = self._calls.get(call_id)
            if call is None:
                stray.append((entry.key, f"entry {entry.id} {entry.key} bills no known call"))
                continue
            wallet = self._accounts.get((call.payer, WALLET))
            for p in self._postings[entry.id]:
                if wallet is not None and p.account_id == wallet.id:
                    debits[call_id] -= p.amount
            due = call.started_at + (minute - 1) * call.minute_s
            if minute >= 2 and due >= (call.ended_at if call.ended_at is not None else now):
                if call.ended_at is None:
                    late.append(f"{entry.key} (charged before it fell due)")
                else:
                    late.append(f"{entry.key} (due at or after the call ended)")
        twice = [
            f"call {call_id} minute {minute}: {', '.join(sorted(keys))}"
            for (call_id, minute), keys in sorted(by_minute.items())
            if len(keys) > 1
        ]
        wrong: list[tuple[str, str]] = list(stray)  # (sort key, item) as the SQL sorts
        for call in self._calls.values():
            billed = per_call.get(call.call_id, [])
            last = max(billed, default=0)
            coins = debits.get(call.call_id, 0)
            if (
                len(billed) != call.minutes
                or last != call.minutes
                or coins != call.coins
                or call.coins != call.minutes * call.rate
            ):
                wrong.append(
                    (
                        call.call_id,
                        f"call {call.call_id} has {call.minutes} minutes / {call.coins} coins;"
                        f" journal: {len(billed)} entries, last minute {last}, {coins} coins",
                    )
                )
        return [
            ("minute_billed_twice", "call-minutes billed more than once", twice),
            (
                "call_minutes",
                "calls whose minutes or coins disagree with their cm entries",
                [item for _, item in sorted(wrong)],
            ),
            (
                "minute_out_of_time",
                "call-minutes charged at or after their call ended, or before they fell due",
                late,
            ),
        ]

    def _withdrawal_step_problems(self) -> Iterable[str]:
        steps: defaultdict[int, list[str]] = defaultdict(list)
        stray: list[tuple[int, str]] = []
        for entry in self._journal.values():
            if not entry.key.startswith("wd:"):
                continue
            wid, _, step = entry.key[3:].partition(":")
            if wid.isascii() and wid.isdigit() and step in ("request", "paid", "rejected"):
                steps[int(wid)].append(step)
                if int(wid) not in self._withdrawals:
                    stray.append((int(wid), f"entry {entry.key} belongs to no withdrawal"))
            else:
                stray.append((0, f"entry {entry.key} belongs to no withdrawal"))
        expected = {"pending": "request", "paid": "paid,request", "rejected": "rejected,request"}
        wrong = [
            (w.id, f"withdrawal {w.id} is {w.state}, journal steps [{got}]")
            for w in self._withdrawals.values()
            if (got := ",".join(sorted(steps.get(w.id, [])))) != expected[w.state]
        ]
        return [item for _, item in sorted(wrong + stray)]

    def _conservation(self) -> tuple[int, int, int]:
        held = sum(a.balance for a in self._accounts.values() if a.is_user)
        held += self._balance(PLATFORM)
        paid_in = paid_out = 0
        payouts = self._accounts.get(PAYOUTS)
        for entry_id, postings in self._postings.items():
            kind = self._journal[entry_id].kind
            for p in postings:
                account = self._accounts_by_id.get(p.account_id)
                if account is None:
                    continue  # an orphan posting, reported as such
                if kind in ("recharge", "credit") and account.owner.startswith("ext:"):
                    paid_in -= p.amount
                elif kind == "withdrawal_paid" and payouts is not None and account is payouts:
                    paid_out += p.amount
        return held, paid_in, paid_out

    async def close(self) -> None:
        """Nothing to release."""
