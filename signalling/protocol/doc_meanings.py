"""What the generated tables of docs/protocol.md say about each code, object and field.

Kept as Python rather than in docs/protocol.template.md because they are keyed by the enums
and Structs themselves: doc.py refuses to render while an error code, end reason, close code
or nested object has no meaning here, or a note names a field that does not exist.
"""

from __future__ import annotations

from .codes import TRY_AGAIN_LATER, CloseCode, EndReason, ErrorCode

# --- meanings: every enum member must have one, or render() raises -----------------------

ERROR_MEANINGS: dict[ErrorCode, str] = {
    ErrorCode.BAD_JSON: "The frame is not JSON, or not a JSON object.",
    ErrorCode.UNKNOWN_TYPE: "`type` names no client message.",
    ErrorCode.INVALID_MESSAGE: (
        "`type` is missing or not a string, or a field is missing, mistyped or breaks a "
        "constraint; `message` names the field (`$.to`)."
    ),
    ErrorCode.FRAME_TOO_LARGE: "Text frame longer than `max_frame_bytes`; it was not read.",
    ErrorCode.BINARY_NOT_SUPPORTED: "Binary frame; send JSON in text frames.",
    ErrorCode.RATE_LIMITED: "Over the rate limit; the frame was dropped, not handled (§6).",
    ErrorCode.CALL_NOT_FOUND: (
        "No such call, the call has ended, or you are not one of its parties."
    ),
    ErrorCode.INVALID_STATE: (
        "The call is not in the state the action needs; `message` names the state."
    ),
    ErrorCode.CALLEE_OFFLINE: "The callee is connected to no node and in no call.",
    ErrorCode.CALLEE_BUSY: "The callee is in a call or has chosen `busy`.",
    ErrorCode.CALLEE_AWAY: "The callee has chosen `away`.",
    ErrorCode.SELF_CALL: "You invited yourself.",
    ErrorCode.ALREADY_IN_CALL: "You are already in a ringing or active call.",
    ErrorCode.FORBIDDEN: (
        "Not yours to do: a call that is not between a caller and a host, or an action "
        "reserved for the other party (§5.2)."
    ),
    ErrorCode.TOO_MANY_WATCHES: "The watch would exceed `presence_watch_max` users (§4.2).",
    ErrorCode.INSUFFICIENT_BALANCE: (
        "The payer cannot pay one minute of the call (at `call.invite`), or the sender's "
        "wallet cannot pay for the gift."
    ),
    ErrorCode.UNKNOWN_GIFT: "No such gift in the catalog, or it is not on sale (§5.7).",
    ErrorCode.INVALID_AMOUNT: "An amount that is zero, negative or too large.",
    ErrorCode.IDEMPOTENCY_CONFLICT: (
        "The `idempotency_key` was used before for a different request."
    ),
    ErrorCode.BLOCKED: "One of the two users blocked the other: no calls between them (§9.5).",
    ErrorCode.CHAT_INVALID: "A malformed chat request: a message to yourself, a bad cursor.",
    ErrorCode.CHAT_INVALID_TEXT: (
        "Text empty, longer than the limit, or with control characters other than newline "
        "and tab (§9.1)."
    ),
    ErrorCode.CHAT_FORBIDDEN: "You are not a participant of that conversation.",
    ErrorCode.CHAT_BLOCKED: "One of the two users blocked the other (§9.5).",
    ErrorCode.CHAT_NOT_FOUND: "No such conversation id.",
    ErrorCode.MEDIA_FAILED: (
        "The SFU could not use the offer or candidate (bad SDP, no common codec) (§5.5)."
    ),
    ErrorCode.LOCATION_REQUIRED: (
        "`match.request` nearby without a location (in the request or a `presence.update`), "
        "or one beyond ±85° latitude (§10.1)."
    ),
    ErrorCode.MATCH_PENDING: (
        "A match of yours is being connected; wait for its `match.found` (§10.1)."
    ),
    ErrorCode.NOT_MATCHED: (
        "`match.next` with no earlier `match.request`, or while in a call that was not "
        "matched (§10.3)."
    ),
    ErrorCode.UNAVAILABLE: (
        "A backing store failed while handling the message; try again shortly."
    ),
    ErrorCode.RESYNC_REQUIRED: (
        "Sent right after `welcome` when a resume (§3.1) could not give every missed frame "
        "(token unknown, expired or not yours; buffer overflowed; `last_seq` not in it): "
        "this is a fresh session, reload state (calls, chat, wallet) over the API."
    ),
    ErrorCode.INTERNAL: "Unexpected server fault (reserved; not sent by this version).",
}

END_REASON_MEANINGS: dict[EndReason, str] = {
    EndReason.HANGUP: "A party sent `call.end` during the active call.",
    EndReason.REJECTED: "The callee declined the ringing call (`call.reject` or `call.end`).",
    EndReason.CANCELLED: "The caller withdrew the ringing call (`call.cancel` or `call.end`).",
    EndReason.TIMEOUT: "Nobody answered within `ring_timeout_s`.",
    EndReason.INSUFFICIENT_BALANCE: (
        "Billing ended it: the payer cannot pay the first or the next minute."
    ),
    EndReason.PEER_LOST: "A party was disconnected longer than `peer_lost_grace_s`.",
    EndReason.MEDIA_FAILED: (
        "In `sfu` mode a party's peer connection with the server was not connected within "
        "`media.connect_timeout_s` of the call's start, its offer or its failing (§5.5)."
    ),
    EndReason.BILLING_UNAVAILABLE: (
        "The ledger could not be reached for `billing.unreachable_grace_s`: minutes that"
        " cannot be charged are not given away. Call again shortly."
    ),
    EndReason.ADMIN: "An operator ended it.",
    EndReason.SHUTDOWN: "The server is shutting down (a 1012 close follows).",
}

# code -> (reason text sent with the close frame, meaning and what the client should do)
CLOSE_MEANINGS: dict[int, tuple[str, str]] = {
    CloseCode.NORMAL: ("", "Normal end, in reply to the client's own close."),
    CloseCode.MESSAGE_TOO_BIG: (
        "",
        "A frame was larger than `hard_frame_bytes`; aiohttp closes without handling it.",
    ),
    CloseCode.SERVICE_RESTART: (
        "server restarting, reconnect; server draining: reconnect to another node",
        "The server is shutting down or draining (SIGTERM, docs/operations.md): a session in "
        "a call is kept until the call ends or the drain deadline, then its call ends "
        "(`shutdown`). Reconnect after a short random delay; the load balancer sends you to "
        "another node (a draining one refuses new sessions with this code).",
    ),
    TRY_AGAIN_LATER: (
        "try again later",
        "The hub could not register the session (store failure). Reconnect with backoff.",
    ),
    CloseCode.BAD_TOKEN: (
        "token_missing, token_invalid or token_expired",
        "The token was refused (§1). Get a new token; do not retry with the same one.",
    ),
    CloseCode.FORBIDDEN: (
        "banned",
        "An admin banned this user: the session is closed at once on every node (a call "
        "ends with `admin`) and every new one is refused. Do not reconnect.",
    ),
    CloseCode.POLICY: (
        "rate limit exceeded; too many connections from your address; connecting too often"
        " from your address; reconnecting too often",
        "Flooding (§6), or a connection limit (§6): back off before reconnecting. A client"
        " dropped for reading too slowly sees the connection cut (1006), not this code.",
    ),
    CloseCode.REPLACED: (
        "replaced by a newer session",
        "The same user connected again (§1). Do not reconnect automatically.",
    ),
}

OBJECT_MEANINGS: dict[str, str] = {
    "Location": "Where the user is, in degrees (WGS 84).",
    "UserInfo": "A user as others see them.",
    "IceServerInfo": "One entry for `RTCPeerConnection`'s `iceServers`.",
    "CallInfo": "The call a user is already in when a session starts (§3).",
    "ChatMessage": "A stored chat message (§9).",
    "MatchPools": "The match pools a host is in (§10); callers cannot set it.",
    "MatchFilters": "What a caller asks of a host (§10.1); every given filter must hold.",
    "MatchPeer": "The host a match found (§10.1): never where they are, only how far.",
}

# (Struct name, JSON field name) -> note for what the schema types cannot say; a key that
# names no field makes render() raise.
FIELD_NOTES: dict[tuple[str, str], str] = {
    ("UserInfo", "id"): "user id (the token's `sub`)",
    ("UserInfo", "role"): "`caller`, `host` or `admin`",
    ("CallInfo", "state"): "`ringing` or `active`",
    ("CallInfo", "role"): "your side of the call",
    ("Welcome", "heartbeat_s"): "seconds (§1)",
    ("Welcome", "media"): "`sfu` or `p2p` (§5.5)",
    ("Ack", "call_id"): "after `call.invite`",
    ("Ack", "presence"): "after `presence.watch`: user id to shown status",
    ("Ack", "ticket"): "after `match.request` and `match.next`",
    ("MatchPeer", "rate"): "coins per minute",
    ("MatchPeer", "distance_km"): "nearby only: rounded to whole km, at least 1",
    ("MatchFilters", "max_rate"): "coins per minute at most",
    ("MatchFilters", "language"): "one of the host's `lang` token claim",
    ("MatchFilters", "tags"): "the host has every one (`tags` token claim)",
    ("CallIncoming", "match"): "rung by matchmaking (§10)",
    ("Error", "code"): "an error code (§6)",
    ("Error", "message"): "for people; wording may change",
    ("CallIncoming", "record"): "the caller asked to record",
    ("CallStarted", "media"): "`sfu` or `p2p` (§5.5)",
    ("CallStarted", "rate"): "coins per minute",
    ("CallStarted", "balance"): "the payer's coins; in the payer's copy only",
    ("CallStarted", "record"): "both parties asked to record",
    ("CallEnded", "reason"): "an end reason (§5.4)",
    ("CallEnded", "minutes"): "minutes billed",
    ("CallEnded", "coins"): "coins charged",
    ("RtcOfferOut", "from"): "the sender's user id",
    ("RtcAnswerOut", "from"): "the sender's user id",
    ("RtcIceOut", "from"): "the sender's user id",
    ("RtcIceOut", "candidate"): "absent: end of candidates",
    ("CallInvite", "record"): "ask to record the call",
    ("CallAccept", "record"): "consent to record, if the caller asked",
    ("RtcIce", "candidate"): "`null` or absent: end of candidates",
    ("Ack", "balance"): "after `gift.send`: your wallet's coins",
    ("Ack", "entry_id"): "after `gift.send`: the gift's ledger entry, the same on a retry",
    ("BillingTick", "minute"): "1-based minute of the call just paid",
    ("BillingTick", "charged"): "coins charged for it",
    ("BillingTick", "balance"): "your wallet after the charge",
    ("BillingLowBalance", "minutes_left"): "whole minutes your wallet still pays for",
    ("WalletBalance", "wallet"): "bought coins",
    ("WalletBalance", "earnings"): "earned coins (withdrawable); absent when not known",
    ("GiftReceived", "from"): "the sender",
    ("GiftReceived", "coins"): "what the gift added to your earnings (your share)",
    ("GiftReceived", "entry_id"): "the gift's ledger entry: one gift, one entry, one frame",
    ("GiftSend", "idempotency_key"): "a retry with the same key changes nothing",
    ("GiftSend", "call_id"): "the call the gift is sent in, if any",
    ("Ack", "message"): "after `chat.send`: the stored message (the original, for a retry)",
    ("Ack", "messages"): "after `chat.history`: the page, newest first",
    ("Ack", "next_before"): "after `chat.history`: cursor of the next page; absent at the end",
    ("ChatMessage", "from"): "the sender's user id",
    ("ChatMessage", "created_at"): "unix seconds",
    ("ChatMessage", "id"): "sortable by creation; unique",
    ("ChatReceipt", "by"): "the receiver who delivered or read them",
    ("ChatTypingOut", "from"): "who is typing",
    ("ChatHistory", "before"): "`next_before` of the previous page",
}

HIDDEN_SETTINGS = frozenset({"demo_page", "demo_gifts"})  # not part of the protocol
