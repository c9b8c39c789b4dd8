"""Protocol v1 message schemas, declared once (docs/protocol.md is generated from them).

Client frames decode straight into a tagged union of Structs keyed by ``type``; unknown
fields are ignored (forward compatibility), wrong types are an ``invalid_message`` error.
Section numbers (§) refer to docs/protocol.md.
"""

from __future__ import annotations

import enum
import json
import re
from typing import Annotated, Literal, NoReturn

import msgspec

ClientId = Annotated[str, msgspec.Meta(max_length=64, description="client-chosen request id")]
UserId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@:-]+$")]
CallId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Sdp = Annotated[str, msgspec.Meta(max_length=60_000)]
Status = Literal["available", "busy", "away"]
MediaMode = Literal["p2p", "sfu"]
ShownStatus = Literal["available", "busy", "away", "offline"]


class ErrorCode(enum.StrEnum):
    """§6. Error codes carried by ``error`` frames."""

    BAD_JSON = "bad_json"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_MESSAGE = "invalid_message"
    FRAME_TOO_LARGE = "frame_too_large"
    BINARY_NOT_SUPPORTED = "binary_not_supported"
    RATE_LIMITED = "rate_limited"
    CALL_NOT_FOUND = "call_not_found"
    INVALID_STATE = "invalid_state"
    CALLEE_OFFLINE = "callee_offline"
    CALLEE_BUSY = "callee_busy"
    CALLEE_AWAY = "callee_away"
    CALLEE_UNREACHABLE = "callee_unreachable"
    SELF_CALL = "self_call"
    ALREADY_IN_CALL = "already_in_call"
    FORBIDDEN = "forbidden"
    TOO_MANY_WATCHES = "too_many_watches"
    INSUFFICIENT_BALANCE = "insufficient_balance"
    UNKNOWN_GIFT = "unknown_gift"
    INVALID_AMOUNT = "invalid_amount"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    BLOCKED = "blocked"
    CHAT_INVALID = "chat_invalid"
    CHAT_INVALID_TEXT = "chat_invalid_text"
    CHAT_FORBIDDEN = "chat_forbidden"
    CHAT_BLOCKED = "chat_blocked"
    CHAT_NOT_FOUND = "chat_not_found"
    MEDIA_FAILED = "media_failed"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class CloseCode(enum.IntEnum):
    """§7. WebSocket close codes the server uses."""

    NORMAL = 1000
    MESSAGE_TOO_BIG = 1009
    SERVICE_RESTART = 1012
    BAD_TOKEN = 4001
    FORBIDDEN = 4003
    POLICY = 4008
    REPLACED = 4009


class EndReason(enum.StrEnum):
    """§5.4. Why a call ended."""

    HANGUP = "hangup"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    INSUFFICIENT_BALANCE = "insufficient_balance"
    PEER_LOST = "peer_lost"
    MEDIA_FAILED = "media_failed"
    ADMIN = "admin"
    SHUTDOWN = "shutdown"


# --- client -> server -------------------------------------------------------------------


class ClientMessage(msgspec.Struct, tag_field="type", kw_only=True):
    id: ClientId | None = None


class Location(msgspec.Struct, frozen=True):
    lat: Annotated[float, msgspec.Meta(ge=-90, le=90)]
    lon: Annotated[float, msgspec.Meta(ge=-180, le=180)]


class PresenceUpdate(ClientMessage, tag="presence.update"):
    """§4.1 Set my status (and optionally where I am)."""

    status: Status
    location: Location | None = None


class PresenceWatch(ClientMessage, tag="presence.watch"):
    """§4.2 Be told when these users' status changes; the ack carries their status now."""

    user_ids: Annotated[list[UserId], msgspec.Meta(min_length=1, max_length=200)]


class PresenceUnwatch(ClientMessage, tag="presence.unwatch"):
    """§4.2 Stop watching these users."""

    user_ids: Annotated[list[UserId], msgspec.Meta(min_length=1, max_length=200)]


class CallInvite(ClientMessage, tag="call.invite"):
    """§5.1 Ring a user. The ack carries the new call_id."""

    to: UserId
    record: bool = False


class CallAccept(ClientMessage, tag="call.accept"):
    """§5.2 Callee answers a ringing call."""

    call_id: CallId
    record: bool = False


class CallReject(ClientMessage, tag="call.reject"):
    """§5.2 Callee declines a ringing call."""

    call_id: CallId


class CallCancel(ClientMessage, tag="call.cancel"):
    """§5.2 Caller withdraws a ringing call."""

    call_id: CallId


class CallEnd(ClientMessage, tag="call.end"):
    """§5.3 Either party ends a call (while ringing it counts as cancel / reject)."""

    call_id: CallId


class RtcOffer(ClientMessage, tag="rtc.offer"):
    """§5.5 SDP offer for the call's media."""

    call_id: CallId
    sdp: Sdp


class RtcAnswer(ClientMessage, tag="rtc.answer"):
    """§5.5 SDP answer for the call's media."""

    call_id: CallId
    sdp: Sdp


class RtcIce(ClientMessage, tag="rtc.ice"):
    """§5.5 A trickled ICE candidate; ``candidate: null`` means end of candidates."""

    call_id: CallId
    candidate: Annotated[str, msgspec.Meta(max_length=1024)] | None = None
    sdp_mid: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    sdp_mline_index: Annotated[int, msgspec.Meta(ge=0, le=64)] | None = None


class GiftSend(ClientMessage, tag="gift.send"):
    """§5.7 Send a catalog gift, paid from your wallet; idempotent on ``idempotency_key``."""

    to: UserId
    gift_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    idempotency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    call_id: CallId | None = None


MessageIdList = Annotated[
    list[Annotated[str, msgspec.Meta(max_length=64)]], msgspec.Meta(min_length=1, max_length=500)
]


class ChatSend(ClientMessage, tag="chat.send"):
    """§9.1 Send a text message; a retry with the same ``client_msg_id`` is stored once."""

    to: UserId
    client_msg_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    text: Annotated[str, msgspec.Meta(max_length=20_000)]


class ChatDelivered(ClientMessage, tag="chat.delivered"):
    """§9.2 These messages to me reached my device."""

    message_ids: MessageIdList


class ChatRead(ClientMessage, tag="chat.read"):
    """§9.2 I have read these messages."""

    message_ids: MessageIdList


class ChatTyping(ClientMessage, tag="chat.typing"):
    """§9.3 I am (or stopped) typing to ``to``; relayed, never stored."""

    to: UserId
    typing: bool = True


class ChatHistory(ClientMessage, tag="chat.history"):
    """§9.4 A page of a conversation, newest first; the ack carries ``messages``."""

    conversation_id: Annotated[str, msgspec.Meta(min_length=1, max_length=300)]
    before: Annotated[str, msgspec.Meta(max_length=512)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=200)] = 50


class ChatBlock(ClientMessage, tag="chat.block"):
    """§9.5 Block a user: no messages and no calls either way until unblocked."""

    user_id: UserId


class ChatUnblock(ClientMessage, tag="chat.unblock"):
    """§9.5 Lift my block of a user."""

    user_id: UserId


AnyClientMessage = (
    PresenceUpdate
    | PresenceWatch
    | PresenceUnwatch
    | CallInvite
    | CallAccept
    | CallReject
    | CallCancel
    | CallEnd
    | RtcOffer
    | RtcAnswer
    | RtcIce
    | GiftSend
    | ChatSend
    | ChatDelivered
    | ChatRead
    | ChatTyping
    | ChatHistory
    | ChatBlock
    | ChatUnblock
)
CLIENT_MESSAGES: tuple[type[ClientMessage], ...] = AnyClientMessage.__args__
CLIENT_TYPES = frozenset(m.__struct_config__.tag for m in CLIENT_MESSAGES)


# --- server -> client -------------------------------------------------------------------


class ServerMessage(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=True):
    pass


class UserInfo(msgspec.Struct, frozen=True):
    id: str
    role: Literal["caller", "host", "admin"]
    name: str


class ChatMessage(msgspec.Struct, frozen=True):
    id: str
    conversation_id: str
    sender: str = msgspec.field(name="from")
    to: str
    client_msg_id: str
    text: str
    created_at: float
    status: Literal["sent", "delivered", "read"]


class IceServerInfo(msgspec.Struct, frozen=True, omit_defaults=True):
    urls: list[str]
    username: str | None = None
    credential: str | None = None


class CallInfo(msgspec.Struct, frozen=True, omit_defaults=True):
    call_id: str
    state: Literal["ringing", "active"]
    peer: UserInfo
    role: Literal["caller", "callee"]


class Welcome(ServerMessage, tag="welcome"):
    """§3 First frame of every session."""

    session_id: str
    user: UserInfo
    heartbeat_s: float
    ice_servers: list[IceServerInfo]
    media: MediaMode
    call: CallInfo | None = None


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
    status: Literal["delivered", "read"]
    by: str


class ChatTypingOut(ServerMessage, tag="chat.typing"):
    """§9.3 ``from`` is typing to you (or stopped)."""

    sender: str = msgspec.field(name="from")
    typing: bool


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
    ChatMessageOut,
    ChatReceipt,
    ChatTypingOut,
)


class _Envelope(msgspec.Struct):
    """What is readable of a frame that failed to decode: enough to address the error."""

    type: object = None
    id: object = None


_decoder = msgspec.json.Decoder(AnyClientMessage)
_envelope_decoder = msgspec.json.Decoder(_Envelope)
_encoder = msgspec.json.Encoder()


class DecodeFailure(Exception):
    def __init__(self, code: ErrorCode, message: str, request_id: str | None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


def decode(frame: bytes | str) -> AnyClientMessage:
    """One frame -> a typed message, or DecodeFailure with the error code to send (§6)."""
    try:
        message: AnyClientMessage = _decoder.decode(frame)
    except (msgspec.DecodeError, RecursionError) as exc:
        _raise_decode_failure(frame, exc)
    return message


def _raise_decode_failure(frame: bytes | str, exc: Exception) -> NoReturn:
    try:
        env = _envelope_decoder.decode(frame)
    except (msgspec.DecodeError, RecursionError):
        _raise_unreadable(frame)
    rid = _request_id(env.id)
    if isinstance(exc, RecursionError):
        raise DecodeFailure(ErrorCode.INVALID_MESSAGE, TOO_DEEP, rid)
    if not isinstance(env.type, str):
        raise DecodeFailure(ErrorCode.INVALID_MESSAGE, "field `type` must be a string", rid)
    if env.type not in CLIENT_TYPES:
        raise DecodeFailure(ErrorCode.UNKNOWN_TYPE, f"unknown message type {env.type!r}", rid)
    raise DecodeFailure(ErrorCode.INVALID_MESSAGE, str(exc), rid)


TOO_DEEP = "frame is nested too deeply"
_LONE_SURROGATE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _raise_unreadable(frame: bytes | str) -> NoReturn:
    """msgspec could not read even the envelope. Python's json is more lenient (it takes
    lone surrogate escapes): if it reads a JSON object, the frame has an id to answer."""
    text = frame.decode("utf-8", "replace") if isinstance(frame, bytes) else frame
    try:
        value = json.loads(text)
    except RecursionError:
        raise DecodeFailure(ErrorCode.INVALID_MESSAGE, TOO_DEEP, _scan_id(text)) from None
    except ValueError:
        raise DecodeFailure(ErrorCode.BAD_JSON, "frame is not a JSON object", None) from None
    if not isinstance(value, dict):
        raise DecodeFailure(ErrorCode.BAD_JSON, "frame is not a JSON object", None)
    why = (
        "strings must be valid Unicode: a lone surrogate escape (\\ud800-\\udfff) is refused"
        if _LONE_SURROGATE.search(text)
        else "frame cannot be decoded"
    )
    raise DecodeFailure(ErrorCode.INVALID_MESSAGE, why, _request_id(value.get("id")))


# Strings and structural characters: enough to find the top-level "id" of a frame too deep
# for a recursive parser, in one flat pass.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]:,]')


def _scan_id(text: str) -> str | None:
    """The top-level ``id`` of a JSON object, read without recursion."""
    depth = 0
    key: str | None = None
    in_value = False
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token in "{[":
            if depth == 0 and token != "{":
                return None
            depth += 1
        elif token in "}]":
            depth -= 1
            if depth <= 0:
                return None
        elif depth != 1:
            continue
        elif token == ":":
            in_value = True
        elif token == ",":
            key, in_value = None, False
        elif not in_value:
            key = token
        elif key == '"id"':
            return _request_id(json.loads(token))
    return None


def peek_id(frame: bytes | str) -> str | None:
    """The ``id`` of a frame that will not be handled (e.g. over the rate limit), if readable."""
    try:
        return _request_id(_envelope_decoder.decode(frame).id)
    except (msgspec.DecodeError, RecursionError):
        # Too deep, or a lone surrogate somewhere: the flat scan still finds the id.
        return _scan_id(frame.decode("utf-8", "replace") if isinstance(frame, bytes) else frame)


def _request_id(value: object) -> str | None:
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        value.encode()
    except UnicodeEncodeError:
        return None  # a lone surrogate: it could not be sent back
    return value


def encode(message: ServerMessage) -> bytes:
    return _encoder.encode(message)
