"""The chat rules: every check a chat request passes before a store is asked.

The handlers (handlers.ChatService, for the WebSocket and the REST chat routes) run them
once and hand the store the typed values they return (``NewMessage``, ``MarkRequest``, a
``Cursor``, a conversation the reader belongs to); the stores trust those and only persist.
What only a store can know (a block, a message's status, an earlier send with the same
``client_msg_id``) is decided by the store.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from . import ids
from .ids import participants_of
from .model import (
    MAX_CLIENT_MSG_ID_CHARS,
    MAX_MARK_IDS,
    MAX_PAGE,
    MAX_USER_ID_CHARS,
    ChatForbidden,
    ChatInvalid,
    ChatInvalidText,
    Cursor,
    MarkRequest,
    MarkStatus,
    NewMessage,
)


def validate_text(text: object, max_chars: int) -> str:
    """The message text if acceptable, else ``ChatInvalidText`` saying what is wrong.

    Accepts ``str`` (or UTF-8 ``bytes``); rejects empty / whitespace-only text, more than
    ``max_chars`` code points, lone surrogates (what invalid UTF-8 turns into) and control
    characters other than newline and tab.
    """
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ChatInvalidText(f"text is not valid UTF-8 (byte {exc.start})") from None
    if not isinstance(text, str):
        raise ChatInvalidText(f"text must be a string, not {type(text).__name__}")
    if not text.strip():
        raise ChatInvalidText("text is empty")
    if len(text) > max_chars:
        raise ChatInvalidText(f"text is {len(text)} characters long; the limit is {max_chars}")
    for pos, ch in enumerate(text):
        if ch in "\n\t":
            continue
        category = unicodedata.category(ch)
        if category == "Cs":
            raise ChatInvalidText(
                f"text contains a lone surrogate U+{ord(ch):04X} at position {pos} "
                "(invalid UTF-8 / UTF-16)"
            )
        if category == "Cc":
            raise ChatInvalidText(
                f"text contains the control character U+{ord(ch):04X} at position {pos} "
                "(only newline and tab are allowed)"
            )
    return text


def check_user(value: object, what: str = "user id") -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_USER_ID_CHARS:
        raise ChatInvalid(f"{what} must be a non-empty string of at most {MAX_USER_ID_CHARS}")
    return value


def check_client_msg_id(value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_CLIENT_MSG_ID_CHARS:
        raise ChatInvalid(
            f"client_msg_id must be a non-empty string of at most {MAX_CLIENT_MSG_ID_CHARS}"
        )
    return value


def check_limit(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PAGE:
        raise ChatInvalid(f"limit must be an integer from 1 to {MAX_PAGE}")
    return value


def cursor(before: object) -> Cursor | None:
    """The cursor a client sent back (``Cursor.encode`` of a previous page), or None."""
    return None if before is None else Cursor.decode(before)


def check_pair(sender: object, receiver: object) -> tuple[str, str]:
    """Two different user ids (a message, a block, a typing notice, a call)."""
    a, b = check_user(sender, "sender"), check_user(receiver, "receiver")
    if a == b:
        raise ChatInvalid("cannot message yourself")
    return a, b


def new_message(
    sender: object, receiver: object, client_msg_id: object, text: object, max_chars: int
) -> NewMessage:
    """What ``chat.send`` asks to store; the text is checked first."""
    text = validate_text(text, max_chars)
    sender, receiver = check_pair(sender, receiver)
    return NewMessage(sender, receiver, check_client_msg_id(client_msg_id), text)


def _mark_status(status: object) -> MarkStatus:
    if status == "delivered":
        return "delivered"
    if status == "read":
        return "read"
    raise ChatInvalid("status must be 'delivered' or 'read'")


def mark_request(user: object, message_ids: object, status: object) -> MarkRequest:
    """A receipt: the ids deduplicated (first occurrence order) and the target status."""
    user = check_user(user)
    target = _mark_status(status)
    if isinstance(message_ids, str) or not isinstance(message_ids, Sequence):
        raise ChatInvalid("message_ids must be a list of strings")
    if len(message_ids) > MAX_MARK_IDS:
        raise ChatInvalid(f"at most {MAX_MARK_IDS} message ids at a time")
    ids: dict[str, None] = {}
    for mid in message_ids:
        if not isinstance(mid, str) or not mid or len(mid) > 64:
            raise ChatInvalid("message_ids must be non-empty strings")
        ids[mid] = None
    return MarkRequest(user, tuple(ids), target)


def readable_conversation(user: object, conversation_id: object) -> str:
    """The conversation id if ``user`` may read it: ``ChatNotFound`` for a malformed (or
    not canonical) id, ``ChatForbidden`` if the user is not one of its two participants."""
    user = check_user(user)
    pair = participants_of(conversation_id)
    if user not in pair:
        raise ChatForbidden("you are not a participant of this conversation")
    return ids.conversation_id(*pair)  # the same id: participants_of accepts only canonical
