"""The books ``MemoryLedger`` keeps, the same tables as PgLedger's schema: accounts with
balances, an append-only journal keyed by idempotency key, postings that sum to zero per
entry, calls and withdrawals (plus the indexes the operations look things up by), and
posting one entry to them. ``audit_memory`` checks them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from billing.errors import IdempotencyConflict
from billing.ledger import CallRecord, CallState, Gift, Withdrawal, WithdrawalState
from billing.rules import EARNINGS, PLATFORM, USER_KINDS, WALLET, host_part

AccountName = tuple[str, str]  # (owner, kind)
Move = tuple[AccountName, int]


@dataclass(slots=True)
class AccountRow:
    id: int
    owner: str
    kind: str
    is_user: bool
    balance: int = 0
    entry_ids: list[int] = field(default_factory=list)  # ascending


@dataclass(frozen=True, slots=True)
class JournalEntry:
    id: int
    key: str
    request_hash: str
    kind: str
    created_at: float
    meta: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Posting:
    entry_id: int
    account_id: int
    amount: int


@dataclass(slots=True)
class CallRow:
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
class WithdrawalRow:
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


class Books:
    """The tables, on the ledger's clock ``now`` (unix seconds)."""

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self.accounts: dict[AccountName, AccountRow] = {}
        self.accounts_by_id: dict[int, AccountRow] = {}
        self.journal: dict[int, JournalEntry] = {}
        self.by_key: dict[str, JournalEntry] = {}
        self.postings: dict[int, list[Posting]] = {}  # by entry id
        self.calls: dict[str, CallRow] = {}
        self.active: dict[str, CallRow] = {}
        self.calls_of: defaultdict[str, list[CallRow]] = defaultdict(list)
        self.rates: dict[str, int] = {}
        self.gifts: dict[str, Gift] = {}
        self.withdrawals: dict[int, WithdrawalRow] = {}
        self.withdrawal_keys: dict[tuple[str, str], WithdrawalRow] = {}
        self.account(PLATFORM)  # as the migration does

    def account(self, name: AccountName) -> AccountRow:
        account = self.accounts.get(name)
        if account is None:
            account = AccountRow(len(self.accounts) + 1, *name, is_user=name[1] in USER_KINDS)
            self.accounts[name] = account
            self.accounts_by_id[account.id] = account
        return account

    def balance(self, name: AccountName) -> int:
        account = self.accounts.get(name)
        return 0 if account is None else account.balance

    def first_use(self, key: str, rhash: str) -> dict[str, Any] | None:
        entry = self.by_key.get(key)
        if entry is None:
            return None
        if entry.request_hash != rhash:
            raise IdempotencyConflict(f"key {key!r} was already used for a different request")
        return entry.meta

    def post(
        self, key: str, rhash: str, kind: str, meta: dict[str, Any], moves: Sequence[Move]
    ) -> JournalEntry:
        """Record one entry and its postings; callers have checked keys and funds."""
        moves = [(name, amount) for name, amount in moves if amount != 0]
        assert key not in self.by_key, key
        assert sum(amount for _, amount in moves) == 0, moves
        entry = JournalEntry(len(self.journal) + 1, key, rhash, kind, self._now(), meta)
        postings: list[Posting] = []
        for name, amount in moves:
            account = self.account(name)
            assert not account.is_user or account.balance + amount >= 0, (name, amount)
            account.balance += amount
            account.entry_ids.append(entry.id)
            postings.append(Posting(entry.id, account.id, amount))
        self.journal[entry.id] = entry
        self.by_key[key] = entry
        self.postings[entry.id] = postings
        return entry

    def end_call(self, call: CallRow, reason: str, now: float) -> None:
        call.state = "ended"
        call.ended_at = now
        call.end_reason = reason
        del self.active[call.call_id]


def charge(coins: int, share_bps: int, payer: str, host: str) -> list[Move]:
    """The moves of a charge: from the payer's wallet to the host's earnings (floored
    share) and the platform (the rest)."""
    to_host = host_part(coins, share_bps)
    return [((payer, WALLET), -coins), ((host, EARNINGS), to_host), (PLATFORM, coins - to_host)]
