"""Chat rules both stores share: input checks, conversation ids, message ids."""

from __future__ import annotations

import re
import secrets
import unicodedata
from collections.abc import Callable, Sequence

from .model import (
    MAX_CLIENT_MSG_ID_CHARS,
    MAX_MARK_IDS,
    MAX_PAGE,
    MAX_USER_ID_CHARS,
    ChatInvalid,
    ChatInvalidText,
    ChatNotFound,
    Cursor,
    Message,
    Status,
)

# --- checks -------------------------------------------------------------------------------


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


def check_cursor(value: object) -> Cursor | None:
    if value is None:
        return None
    if not isinstance(value, Cursor):
        raise ChatInvalid("before must be a Cursor or None")
    return value


def check_mark(message_ids: object, status: object) -> tuple[list[str], Status]:
    """Deduplicated ids (first occurrence order) and the target status."""
    if status not in ("delivered", "read"):
        raise ChatInvalid("status must be 'delivered' or 'read'")
    if isinstance(message_ids, str) or not isinstance(message_ids, Sequence):
        raise ChatInvalid("message_ids must be a list of strings")
    if len(message_ids) > MAX_MARK_IDS:
        raise ChatInvalid(f"at most {MAX_MARK_IDS} message ids at a time")
    ids: dict[str, None] = {}
    for mid in message_ids:
        if not isinstance(mid, str) or not mid or len(mid) > 64:
            raise ChatInvalid("message_ids must be non-empty strings")
        ids[mid] = None
    return list(ids), status


def check_pair(sender: object, receiver: object) -> tuple[str, str]:
    a, b = check_user(sender, "sender"), check_user(receiver, "receiver")
    if a == b:
        raise ChatInvalid("cannot message yourself")
    return a, b


# --- conversation ids ---------------------------------------------------------------------

_UNESCAPE = re.compile(r"%(25|3A)")


def _escape(user: str) -> str:
    return user.replace("%", "%25").replace(":", "%3A")


def _unescape(part: str) -> str:
    return _UNESCAPE.sub(lambda m: "%" if m.group(1) == "25" else ":", part)


def conversation_id(a: str, b: str) -> str:
    """The id of the 1:1 conversation between two different users (order irrelevant)."""
    lo, hi = sorted((a, b))
    return f"dm:{_escape(lo)}:{_escape(hi)}"


def participants_of(conv_id: object) -> tuple[str, str]:
    """The two (sorted) users of a conversation id; ``ChatNotFound`` if malformed."""
    if isinstance(conv_id, str) and conv_id.startswith("dm:"):
        parts = conv_id[3:].split(":")
        if len(parts) == 2:
            lo, hi = _unescape(parts[0]), _unescape(parts[1])
            if lo and hi and lo < hi and conversation_id(lo, hi) == conv_id:
                return lo, hi
    raise ChatNotFound("no such conversation")


def block_key(blocker: str, blocked: str) -> str:
    return f"{_escape(blocker)}:{_escape(blocked)}"


# --- message ids --------------------------------------------------------------------------

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_BITS = 80


def _base32(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        value, digit = divmod(value, 32)
        out.append(_CROCKFORD[digit])
    return "".join(reversed(out))


class MessageIds:
    """ULID-like ids: 10 chars of millisecond time + 16 chars of randomness.

    Within one object ids strictly increase even if the clock stands still or goes back
    (the random part is incremented, as in monotonic ULIDs); across processes the 80
    random bits make collisions practically impossible (and the store retries one anyway).
    """

    def __init__(self, randbits: Callable[[int], int] = secrets.randbits) -> None:
        self._randbits = randbits
        self._last_ms = -1
        self._last_rand = 0

    def next(self, when: float) -> str:
        ms = max(0, int(when * 1000))
        if ms <= self._last_ms:
            ms, rand = self._last_ms, self._last_rand + 1
            if rand >> _RANDOM_BITS:  # the random part overflowed: borrow the next ms
                ms, rand = ms + 1, self._randbits(_RANDOM_BITS - 1)
        else:
            rand = self._randbits(_RANDOM_BITS - 1)  # headroom so increments do not overflow
        self._last_ms, self._last_rand = ms, rand
        return _base32(ms, 10) + _base32(rand, 16)


def new_message(
    ids: MessageIds, sender: str, receiver: str, client_msg_id: str, text: str, created_at: float
) -> Message:
    """A message as every store creates it: a fresh id, status sent."""
    return Message(
        id=ids.next(created_at),
        conversation_id=conversation_id(sender, receiver),
        sender=sender,
        receiver=receiver,
        client_msg_id=client_msg_id,
        text=text,
        created_at=created_at,
        status="sent",
    )
