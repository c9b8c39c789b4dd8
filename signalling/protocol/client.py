"""Client -> server messages of protocol v1 (§4, §5, §9).

Frames decode straight into ``AnyClientMessage``, a tagged union of Structs keyed by
``type``; unknown fields are ignored (forward compatibility), and a wrong type or a broken
constraint is an ``invalid_message`` error (codec.py). Each docstring names the section of
docs/protocol.md its table lands in.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from .codes import MatchMode, Status

ClientId = Annotated[str, msgspec.Meta(max_length=64, description="client-chosen request id")]
UserId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@:-]+$")]
CallId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Sdp = Annotated[str, msgspec.Meta(max_length=60_000)]


class ClientMessage(msgspec.Struct, tag_field="type", kw_only=True):
    id: ClientId | None = None


class Location(msgspec.Struct, frozen=True):
    lat: Annotated[float, msgspec.Meta(ge=-90, le=90)]
    lon: Annotated[float, msgspec.Meta(ge=-180, le=180)]


Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=32, pattern=r"^[a-z0-9_-]+$")]


class MatchPools(msgspec.Struct, frozen=True):
    random: bool = False
    nearby: bool = False
    auto_accept: bool = False


class PresenceUpdate(ClientMessage, tag="presence.update"):
    """§4.1 Set my status (and optionally where I am). A host also says here which match
    pools they are in (§10): ``match`` replaces the previous choice, absent keeps it."""

    status: Status
    location: Location | None = None
    match: MatchPools | None = None


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


class MatchFilters(msgspec.Struct, frozen=True):
    language: Tag | None = None
    gender: Tag | None = None
    tags: Annotated[list[Tag], msgspec.Meta(max_length=10)] = []
    max_rate: Annotated[int, msgspec.Meta(ge=0)] | None = None


class MatchRequest(ClientMessage, tag="match.request"):
    """§10.1 Queue for a host, at random or nearby; the ack carries the ticket. A second
    request replaces the first."""

    mode: MatchMode
    radius_km: Annotated[float, msgspec.Meta(gt=0, le=20_000)] | None = None
    filters: MatchFilters | None = None
    location: Location | None = None


class MatchCancel(ClientMessage, tag="match.cancel"):
    """§10.2 Leave the queue (a no-op when not queued)."""


class MatchNext(ClientMessage, tag="match.next"):
    """§10.3 End the current matched call and queue again with the same request."""


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
    | MatchRequest
    | MatchCancel
    | MatchNext
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
