"""The REST surface's bodies as types: what the handlers decode and encode, and what the
OpenAPI document (``openapi.py``) describes, so the two cannot drift apart.

Request bodies are decoded into the ``*Request`` Structs (unknown fields refused). Replies
are encoded from the Structs below or from the ledger's own value types (``Balances``,
``Entry``, ``CallRecord``, ``Gift``), which msgspec encodes and describes as they are.
Field order is the order on the wire.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from billing.ledger import CallRecord, Entry, Gift, Withdrawal, WithdrawalState

from ..protocol import ChatMessage

Key = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:@-]+$")]
Amount = Annotated[int, msgspec.Meta(gt=0)]

# --- request bodies -----------------------------------------------------------------------


class WithdrawalRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Move earnings to pending; the key makes a retry return the same withdrawal."""

    amount: Amount
    idempotency_key: Key


class CreditRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A manual top-up of a user's wallet (admin); the key makes it happen once."""

    user_id: Key
    amount: Amount
    idempotency_key: Key


class RateRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A host's rate in coins per minute (0: free calls)."""

    rate: Annotated[int, msgspec.Meta(ge=0)]


class GiftRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A gift catalog item; ``active: false`` takes it off sale."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    price: Amount
    active: bool = True


# --- replies ------------------------------------------------------------------------------


class ErrorBody(msgspec.Struct, frozen=True):
    """Every error reply: a code a client can branch on and a message for people."""

    error: str
    message: str


class EntryPage(msgspec.Struct, frozen=True):
    """Journal entries touching the caller, newest first; ``next_before`` pages on."""

    entries: list[Entry]
    next_before: int | None


class CallPage(msgspec.Struct, frozen=True):
    """Calls the caller paid for or hosted, newest first; ``next_before`` is a unix time."""

    calls: list[CallRecord]
    next_before: float | None


class GiftList(msgspec.Struct, frozen=True):
    """Gift catalog items."""

    gifts: list[Gift]


class WithdrawalInfo(msgspec.Struct, frozen=True):
    """A withdrawal of earnings, as it is now."""

    id: int
    host: str
    amount: int
    state: WithdrawalState
    created_at: float
    decided_at: float | None

    @classmethod
    def of(cls, w: Withdrawal) -> WithdrawalInfo:
        # ``replayed`` is a property of one request, not of the withdrawal: not shown.
        return cls(w.id, w.host, w.amount, w.state, w.created_at, w.decided_at)


class WithdrawalList(msgspec.Struct, frozen=True):
    """Withdrawals, newest first."""

    withdrawals: list[WithdrawalInfo]


class ConversationInfo(msgspec.Struct, frozen=True):
    """A conversation with its last message and the caller's unread count."""

    id: str
    participants: list[str]
    last_message: ChatMessage | None
    unread: int


class ConversationPage(msgspec.Struct, frozen=True):
    """Conversations, newest activity first; ``next_before`` is an opaque cursor."""

    conversations: list[ConversationInfo]
    next_before: str | None


class MessagePage(msgspec.Struct, frozen=True):
    """Messages of one conversation, newest first; ``next_before`` is an opaque cursor."""

    messages: list[ChatMessage]
    next_before: str | None


class HostRate(msgspec.Struct, frozen=True):
    """A host's rate as now set."""

    host: str
    rate: int


class AvailableHost(msgspec.Struct, frozen=True):
    """A host one can call now, and what a minute with them costs (coins)."""

    id: str
    name: str
    rate: int


class HostList(msgspec.Struct, frozen=True):
    """Hosts online with status available (not the caller), by name then id."""

    hosts: list[AvailableHost]


class EndedCall(msgspec.Struct, frozen=True):
    """The call that was ended (reason ``admin``)."""

    ended: str


class RecordingInfo(msgspec.Struct, frozen=True):
    """One party's recording file of one call."""

    call_id: str
    party: str
    file: str
    size_bytes: int
    duration_s: float | None
    complete: bool


class RecordingList(msgspec.Struct, frozen=True):
    """Recording files under ``media.record_dir``."""

    recordings: list[RecordingInfo]


class Health(msgspec.Struct, frozen=True):
    """The node is alive; how many sessions it holds."""

    status: str
    node: str
    sessions: int
