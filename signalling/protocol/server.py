"""Server -> client messages of protocol v1 and the objects inside them.

Server frames omit fields that hold their default (§2). Each message's docstring names the
section of docs/protocol.md its table lands in; the nested objects have no docstring, since
msgspec would copy one into the JSON schema.
"""

from __future__ import annotations

import msgspec

from .codes import (
    CallRole,
    CallState,
    EndReason,
    MatchMode,
    MediaMode,
    MessageStatus,
    ReceiptStatus,
    ShownStatus,
    UserRole,
)


class ServerMessage(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=True):
    pass


class UserInfo(msgspec.Struct, frozen=True):
    id: str
    role: UserRole
    name: str


class ChatMessage(msgspec.Struct, frozen=True):
    id: str
    conversation_id: str
    sender: str = msgspec.field(name="from")
    to: str
    client_msg_id: str
    text: str
    created_at: float
    status: MessageStatus


class IceServerInfo(msgspec.Struct, frozen=True, omit_defaults=True):
    urls: list[str]
    username: str | None = None
    credential: str | None = None


class CallInfo(msgspec.Struct, frozen=True, omit_defaults=True):
    call_id: str
    state: CallState
    peer: UserInfo
    role: CallRole


class Welcome(ServerMessage, tag="welcome"):
    """§3 First frame of every session."""

    session_id: str
    user: UserInfo
    heartbeat_s: float
    ice_servers: list[IceServerInfo]
    media: MediaMode
    call: CallInfo | None = None
    resume_token: str | None = None  # §3.1: give it back (with last_seq) to resume
    resumed: bool = False


class Ack(ServerMessage, tag="ack"):
    """§2 Success reply to a client message that carried an ``id``."""

    id: str
    call_id: str | None = None
    presence: dict[str, ShownStatus] | None = None
    balance: int | None = None
    entry_id: int | None = None
    message: ChatMessage | None = None
    messages: list[ChatMessage] | None = None
    next_before: str | None = None
    ticket: str | None = None


class Error(ServerMessage, tag="error"):
    """§2 Failure reply; ``id`` is the request's when it could be read."""

    code: str
    message: str
    id: str | None = None


class PresenceChanged(ServerMessage, tag="presence.changed"):
    """§4.2 A watched user's status changed."""

    user_id: str
    status: ShownStatus


class CallIncoming(ServerMessage, tag="call.incoming"):
    """§5.1 Someone is calling you."""

    call_id: str
    caller: UserInfo
    record: bool = False
    match: bool = False  # §10: the call comes from matchmaking, not a direct invite


class CallRinging(ServerMessage, tag="call.ringing"):
    """§5.1 The callee has been told; waiting for an answer."""

    call_id: str
    callee: UserInfo


class CallStarted(ServerMessage, tag="call.started"):
    """§5.2 The call is connected; start media. ``rate`` and ``balance`` in coins."""

    call_id: str
    peer: UserInfo
    media: MediaMode
    rate: int
    record: bool
    balance: int | None = None


class CallEnded(ServerMessage, tag="call.ended"):
    """§5.4 The call is over, with the minutes and coins charged."""

    call_id: str
    reason: EndReason
    minutes: int
    coins: int


class RtcOfferOut(ServerMessage, tag="rtc.offer"):
    """§5.5 Relayed offer (``from`` is the sender's user id)."""

    call_id: str
    sender: str = msgspec.field(name="from")
    sdp: str


class RtcAnswerOut(ServerMessage, tag="rtc.answer"):
    """§5.5 Relayed answer."""

    call_id: str
    sender: str = msgspec.field(name="from")
    sdp: str


class RtcIceOut(ServerMessage, tag="rtc.ice"):
    """§5.5 Relayed candidate."""

    call_id: str
    sender: str = msgspec.field(name="from")
    candidate: str | None = None
    sdp_mid: str | None = None
    sdp_mline_index: int | None = None


class BillingTick(ServerMessage, tag="billing.tick"):
    """§5.6 A minute of the call was charged (sent to the payer)."""

    call_id: str
    minute: int
    charged: int
    balance: int


class BillingLowBalance(ServerMessage, tag="billing.low_balance"):
    """§5.6 The payer's balance lasts fewer than the warning threshold of minutes."""

    call_id: str
    minutes_left: int


class WalletBalance(ServerMessage, tag="wallet.balance"):
    """§5.7 Your coins changed: bought coins (wallet) and earned coins (earnings)."""

    wallet: int
    earnings: int | None = None


class GiftReceived(ServerMessage, tag="gift.received"):
    """§5.7 Someone sent you a gift; ``coins`` is what it added to your earnings."""

    sender: UserInfo = msgspec.field(name="from")
    gift_id: str
    coins: int
    entry_id: int
    call_id: str | None = None


class ChatMessageOut(ServerMessage, tag="chat.message"):
    """§9.1 A message for you (live, or kept while you were offline)."""

    message: ChatMessage


class ChatReceipt(ServerMessage, tag="chat.receipt"):
    """§9.2 Your messages reached ``status`` on the receiver's side."""

    message_ids: list[str]
    status: ReceiptStatus
    by: str


class ChatTypingOut(ServerMessage, tag="chat.typing"):
    """§9.3 ``from`` is typing to you (or stopped)."""

    sender: str = msgspec.field(name="from")
    typing: bool


class MatchPeer(msgspec.Struct, frozen=True, omit_defaults=True):
    id: str
    name: str
    rate: int
    distance_km: int | None = None


class MatchQueued(ServerMessage, tag="match.queued"):
    """§10.1 No host is free for you yet: you wait in the queue."""

    ticket: str
    mode: MatchMode


class MatchFound(ServerMessage, tag="match.found"):
    """§10.1 A host was found and is being rung (``call.ringing`` follows)."""

    ticket: str
    call_id: str
    peer: MatchPeer


class MatchTimeout(ServerMessage, tag="match.timeout"):
    """§10.1 Nobody was found within the queue's time limit; the ticket is gone."""

    ticket: str


SERVER_MESSAGES: tuple[type[ServerMessage], ...] = (
    Welcome,
    Ack,
    Error,
    PresenceChanged,
    CallIncoming,
    CallRinging,
    CallStarted,
    CallEnded,
    RtcOfferOut,
    RtcAnswerOut,
    RtcIceOut,
    BillingTick,
    BillingLowBalance,
    WalletBalance,
    GiftReceived,
    MatchQueued,
    MatchFound,
    MatchTimeout,
    ChatMessageOut,
    ChatReceipt,
    ChatTypingOut,
)
