"""Chat ids: conversation ids from a pair of users, block keys, and message ids.

Pure functions with no checks of their own: stores and rules both use them. The rules that
decide what may be stored are in rules.py.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable

from .model import ChatNotFound, Message, NewMessage

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


def participants(a: str, b: str) -> tuple[str, str]:
    """The two users of a conversation in the order its id and documents keep them."""
    return (a, b) if a < b else (b, a)


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


def stored_message(ids: MessageIds, new: NewMessage, created_at: float) -> Message:
    """A message as every store creates it: a fresh id, status sent."""
    return Message(
        id=ids.next(created_at),
        conversation_id=conversation_id(new.sender, new.receiver),
        sender=new.sender,
        receiver=new.receiver,
        client_msg_id=new.client_msg_id,
        text=new.text,
        created_at=created_at,
        status="sent",
    )
