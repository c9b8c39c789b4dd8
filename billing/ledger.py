"""The ledger interface billing is built on (DESIGN §5), with its value types.

The interface is split by concern, so each caller can say what it needs: ``CallBilling``
(the hub's call hooks and the billing loop), ``Wallets`` (balances, history, money in),
``Catalog`` (host rates, gifts), ``Payouts`` (withdrawals) and ``Audit`` (the books'
invariants). ``Ledger`` is all of them plus ``close``; two adapters implement it:
``ledger_memory.MemoryLedger`` (embedded default) and ``ledger_pg.PgLedger`` (PostgreSQL,
asyncpg). One contract suite (tests/contract/ledger/) runs against both. The rules both
adapters share live in ``rules``, their audits side by side in ``audit``, ``audit_pg`` and
``audit_memory``.

Money model, shared by both adapters:
- Integer coins only. Accounts: per user ``wallet`` (bought coins), ``earnings`` (earned
  coins, the only withdrawable ones), ``withdrawal_pending``; ``platform`` ``revenue``; and
  external clearing accounts (``ext:<provider>`` ``clearing`` for recharges, ``ext:admin``
  for manual credits, ``ext:payouts`` for paid withdrawals) which may go negative. User
  accounts never go negative.
- Every change is one immutable journal entry with a UNIQUE idempotency key and a hash of
  the request; its postings sum to zero. Replaying a key with the same request returns the
  first result and changes nothing; the same key with a different request raises
  IdempotencyConflict.
- Keys: ``cm:<call>:<minute>`` call-minute, ``gift:<sender>:<client key>``,
  ``rc:<provider>:<txn>`` recharge, ``credit:<admin key>`` manual credit,
  ``wd:<withdrawal>:request|paid|rejected`` withdrawal steps.
- A call's share (basis points) is copied onto the call when it opens. A charge of ``c``
  coins credits the host ``c * share_bps // 10000`` (floored) and the platform the rest.
- Minutes are prepaid: minute 1 is charged by ``open_call``; minute ``n`` falls due at
  ``started_at + (n - 1) * minute_seconds`` on the ledger's clock (the database clock for
  PostgreSQL) and is charged by the first ``bill_due`` after that instant (strictly after,
  so a minute due at the very instant a call is closed is never charged). A call whose
  next minute cannot be paid is ended by ``bill_due`` with reason ``insufficient_balance``.
  No minute n >= 2 is ever charged at or after a call's end. The minute length is copied
  onto the call when it opens, like its share.
- A call's payer and host must differ (InvalidAmount otherwise, as for a gift to oneself:
  both would turn bought coins into withdrawable earnings).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

WithdrawalState = Literal["pending", "paid", "rejected"]
CallState = Literal["active", "ended"]
UNLIMITED_MINUTES = 2**31 - 1


def minutes_left(balance: int, rate: int) -> int:
    """Whole further minutes ``balance`` pays for at ``rate``; a free call never runs out."""
    return balance // rate if rate > 0 else UNLIMITED_MINUTES


# --- call billing -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallTerms:
    call_id: str
    payer: str
    host: str
    rate: int  # coins per minute, >= 0
    share_bps: int  # host share, 0..10000


@dataclass(frozen=True, slots=True)
class OpenedCall:
    call_id: str
    rate: int
    balance: int  # payer's wallet after minute 1


@dataclass(frozen=True, slots=True)
class Tick:
    """One call-minute charged by ``bill_due``."""

    call_id: str
    payer: str
    host: str
    minute: int  # 1-based; bill_due produces minute >= 2
    charged: int
    balance: int  # payer's wallet after this charge
    minutes_left: int  # whole further minutes the balance pays for (balance // rate;
    # UNLIMITED_MINUTES for a free call, rate 0)


@dataclass(frozen=True, slots=True)
class Stop:
    """A call ``bill_due`` ended: its next minute could not be paid (reason
    insufficient_balance), or its node stopped touching it (reason peer_lost)."""

    call_id: str
    payer: str
    host: str
    minutes: int  # minutes charged in total
    coins: int  # coins charged in total
    reason: str = "insufficient_balance"


@dataclass(frozen=True, slots=True)
class BillingRound:
    ticks: list[Tick]
    stopped: list[Stop]


@dataclass(frozen=True, slots=True)
class CallTotals:
    call_id: str
    minutes: int
    coins: int


@dataclass(frozen=True, slots=True)
class CallRecord:
    call_id: str
    payer: str
    host: str
    rate: int
    share_bps: int
    started_at: float  # unix seconds
    ended_at: float | None
    state: CallState
    end_reason: str | None
    minutes: int
    coins: int


class CallBilling(Protocol):
    """Calls charged per started minute: the hub's call hooks and the billing loop."""

    async def open_call(self, terms: CallTerms) -> OpenedCall:
        """Record the call and charge minute 1 (key cm:<call>:1). InsufficientFunds (and
        nothing recorded) if the payer cannot pay one minute. Replaying the same call id
        with the same terms returns the same result; other terms: IdempotencyConflict."""

    async def bill_due(self, limit: int) -> BillingRound:
        """Charge up to ``limit`` due call-minutes (set-based; safe to run concurrently in
        many processes: each due call-minute is charged exactly once), ending calls whose
        next minute cannot be paid. A call more than one minute behind gets one minute per
        round, so a slow round never skips or double-charges a minute. A minute is due only
        once its call was touched after the minute began: a minute that starts after the
        node's last sign of life is never charged."""

    async def touch_calls(self, call_ids: Sequence[str]) -> dict[str, str]:
        """The node running these calls is alive (it touches them every ``keepalive_s``).
        An active call not touched for ``orphan_after_s`` is ended by ``bill_due`` with
        reason peer_lost, uncharged, and ``ended_at`` at its last touch. Returns the given
        calls the ledger has already ended, with their end reasons, so the node ends them
        too even if it missed the news."""

    async def close_call(self, call_id: str, reason: str) -> CallTotals:
        """End the call (idempotent: closing an ended call returns its totals).
        NotFound for an unknown call."""

    async def calls(self, user_id: str, *, limit: int, before: float | None) -> list[CallRecord]:
        """Calls the user paid for or hosted, newest first, started before ``before``."""


# --- wallets ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Balances:
    wallet: int
    earnings: int
    withdrawal_pending: int


@dataclass(frozen=True, slots=True)
class Entry:
    """One journal entry as seen from one user's accounts (newest first when listed)."""

    id: int
    key: str
    kind: str  # call_minute, gift, recharge, credit, withdrawal_request, ...
    created_at: float  # unix seconds
    wallet_delta: int
    earnings_delta: int
    pending_delta: int


class Wallets(Protocol):
    """What a user holds and how it got there; money in from providers and admins."""

    async def balances(self, user_id: str) -> Balances:
        """Zeros for a user with no accounts yet."""

    async def entries(self, user_id: str, *, limit: int, before: int | None) -> list[Entry]:
        """The user's journal entries, newest first, with id < ``before``."""

    async def recharge(self, provider: str, txn_id: str, user_id: str, amount: int) -> Balances:
        """Credit the wallet from ext:<provider> (key rc:<provider>:<txn>)."""

    async def credit(self, key: str, user_id: str, amount: int, *, admin: str) -> Balances:
        """Manual top-up of a wallet from ext:admin (key credit:<key>)."""


# --- catalog ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Gift:
    gift_id: str
    name: str
    price: int  # coins, > 0
    active: bool


@dataclass(frozen=True, slots=True)
class GiftSent:
    gift_id: str
    price: int
    host_credit: int
    sender_balance: int  # sender's wallet after the gift
    entry_id: int  # the journal entry: the same on every replay of the key
    replayed: bool = False  # True when the key had been used: nothing moved this time


class Catalog(Protocol):
    """What things cost: host rates and the gift catalog, and sending a gift."""

    async def host_rate(self, host: str) -> int | None:
        """The rate an admin set for this host, or None (the caller uses the default)."""

    async def set_host_rate(self, host: str, rate: int) -> None: ...

    async def put_gift(self, gift: Gift) -> None:
        """Create or replace a catalog item (admin)."""

    async def gifts(self, *, active_only: bool) -> list[Gift]: ...

    async def send_gift(
        self,
        key: str,
        *,
        sender: str,
        receiver: str,
        gift_id: str,
        share_bps: int,
    ) -> GiftSent:
        """Debit the sender the gift's price, credit the receiver's earnings the floored
        share and the platform the rest. NotFound for an unknown or inactive gift,
        InsufficientFunds if the wallet is short, InvalidAmount for sender == receiver."""


# --- payouts ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Withdrawal:
    id: int
    host: str
    amount: int
    state: WithdrawalState
    created_at: float
    decided_at: float | None
    # On request_withdrawal's result only: the key had been used, nothing moved this time.
    replayed: bool = False


class Payouts(Protocol):
    """Hosts withdrawing their earnings, decided by an admin."""

    async def request_withdrawal(self, key: str, host: str, amount: int) -> Withdrawal:
        """Move ``amount`` from earnings to withdrawal_pending; InsufficientFunds if the
        earnings are short. ``key`` is the client's idempotency key (scoped to the host); a
        replay returns the same withdrawal as it is now (it may have been decided since)."""

    async def decide_withdrawal(
        self, withdrawal_id: int, *, approve: bool, admin: str
    ) -> Withdrawal:
        """pending -> paid (to ext:payouts) or rejected (back to earnings), exactly once:
        InvalidState if already decided, NotFound if unknown."""

    async def withdrawals(
        self, *, host: str | None, state: WithdrawalState | None, limit: int
    ) -> list[Withdrawal]: ...


# --- audit --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """One failed invariant, with the offending rows described."""

    check: str
    detail: str


class Audit(Protocol):
    """The books checked against every invariant of the money model."""

    async def check(self) -> list[Problem]:
        """Every invariant of the model; empty when the books are clean."""


# --- all of it ----------------------------------------------------------------------------


class Ledger(CallBilling, Wallets, Catalog, Payouts, Audit, Protocol):
    """The whole ledger, as the composition root builds it (both adapters are one)."""

    async def close(self) -> None: ...
