"""Codes and closed string sets of protocol v1: error codes, close codes, end reasons.

The enums' docstrings name the section of docs/protocol.md their table lands in. The
Literal aliases are the values a status field may hold; code that builds a message from a
plain ``str`` should hold one of these instead.
"""

from __future__ import annotations

import enum
from typing import Literal

Status = Literal["available", "busy", "away"]
"""A status a user chooses (§4)."""
ShownStatus = Literal["available", "busy", "away", "offline"]
"""The status others see (§4): the chosen one, ``busy`` in a call, ``offline`` if not connected."""
_SHOWN: dict[str, ShownStatus] = {"available": "available", "busy": "busy", "away": "away"}


def shown_status(stored: str) -> ShownStatus:
    """A status read from a store or the node bus (written by a node, so one of these)."""
    return _SHOWN.get(stored, "offline")


MediaMode = Literal["p2p", "sfu"]
MatchMode = Literal["random", "nearby"]
UserRole = Literal["caller", "host", "admin"]
CallState = Literal["ringing", "active"]
CallRole = Literal["caller", "callee"]
MessageStatus = Literal["sent", "delivered", "read"]
"""Where a chat message is on the receiver's side (§9.2)."""
ReceiptStatus = Literal["delivered", "read"]
"""The statuses a ``chat.receipt`` reports (§9.2)."""


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
    LOCATION_REQUIRED = "location_required"
    MATCH_PENDING = "match_pending"
    NOT_MATCHED = "not_matched"
    UNAVAILABLE = "unavailable"
    RESYNC_REQUIRED = "resync_required"
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


# The hub could not register a session (a store is away): 1013 "Try Again Later", from the
# IANA WebSocket close code registry. Kept out of CloseCode (it is not one of ours).
TRY_AGAIN_LATER = 1013


class EndReason(enum.StrEnum):
    """§5.4. Why a call ended."""

    HANGUP = "hangup"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    INSUFFICIENT_BALANCE = "insufficient_balance"
    PEER_LOST = "peer_lost"
    MEDIA_FAILED = "media_failed"
    BILLING_UNAVAILABLE = "billing_unavailable"
    ADMIN = "admin"
    SHUTDOWN = "shutdown"
