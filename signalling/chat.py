"""Chat: 1:1 messages, receipts, conversations and blocks.

``ChatStore`` is the interface the hub uses; ``MemoryChat`` is the embedded adapter and
``chat_mongo.MongoChat`` the real one. One contract suite (tests/contract/
test_chat_contract.py) runs against both.

Semantics both adapters keep:

- **Ids.** A message id is a 26-character ULID-like string (48-bit millisecond time from the
  store's ``now`` + 80 random bits, Crockford base32, increasing within a store object even
  when the clock stands still), so ids sort in creation order and do not collide across
  processes. Messages are ordered by ``(created_at, id)``; that pair is the paging ``Cursor``.
- **Conversations** are 1:1 and their id is derived from the two user ids
  (``conversation_id``): ``dm:<a>:<b>`` with ``a < b`` and ``%``/``:`` inside an id escaped
  as ``%25``/``%3A``, so the id is canonical and maps back to exactly one pair.
- **send** is idempotent per ``(sender, client_msg_id)``: a retry returns the original
  message unchanged with ``created=False`` (even if its text or receiver differ, and even if
  a block was placed since: the retry is the same request, which already succeeded). The
  text is checked by ``validate_text`` first; a new message needs sender != receiver and no
  block in either direction.
- **mark** moves status forward only (sent -> delivered -> read; a read message never goes
  back to delivered). Only the receiver marks: ids that are unknown, not addressed to the
  user, or already at/after the status are **ignored** (not an error), so a stale or foreign
  id neither fails a whole receipt batch nor reveals whether a message exists. It returns the
  messages whose status advanced, in the order their ids were given (duplicates once);
  the hub sends receipts to their senders.
- **unread** per participant counts the messages to them not yet read: +1 on send, minus the
  number of their messages that reached ``read`` in a ``mark`` (never below 0).
- **history** is newest first, strictly older than ``before``; only participants may read a
  conversation (``ChatForbidden``); a malformed id is ``ChatNotFound``; a well-formed id with
  no messages is an empty page. **conversations** is newest activity (last message) first,
  the cursor being (last message's created_at, conversation id). **undelivered** lists
  messages to the user still ``sent``, oldest first; the hub marks them delivered once the
  client confirms, so the next call returns the rest.
- **Blocks** are directed (``block(user, other)`` / ``unblock(user, other)`` only touch the
  user's own block); ``is_blocked(a, b)`` is true if either blocked the other.
"""

from __future__ import annotations

import bisect
import math
import re
import secrets
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Final, Literal, Protocol

from .errors import JalwaError

Status = Literal["sent", "delivered", "read"]
STATUSES: Final[tuple[Status, ...]] = ("sent", "delivered", "read")
STATUS_RANK: Final[dict[str, int]] = {s: i for i, s in enumerate(STATUSES)}

DEFAULT_MAX_TEXT_CHARS: Final = 4000
MAX_PAGE: Final = 200  # largest `limit` of history / conversations / undelivered
MAX_MARK_IDS: Final = 500  # most message ids one mark call may carry
MAX_USER_ID_CHARS: Final = 200
MAX_CLIENT_MSG_ID_CHARS: Final = 64


# --- errors -------------------------------------------------------------------------------


class ChatError(JalwaError):
    """Base of the chat errors; ``code`` is what the edge sends to the client, ``status``
    the HTTP status of the REST edge."""

    code = "chat_error"
    status = 400


class ChatInvalid(ChatError):
    """A malformed request: self-message, bad id, bad limit, bad cursor, bad status."""

    code = "chat_invalid"


class ChatInvalidText(ChatInvalid):
    """The text is empty, too long, not valid UTF-8 or contains control characters."""

    code = "chat_invalid_text"


class ChatForbidden(ChatError):
    """The user is not a participant of the conversation."""

    code = "chat_forbidden"
    status = 403


class ChatBlocked(ChatForbidden):
    """One of the two users blocked the other."""

    code = "chat_blocked"


class ChatNotFound(ChatError):
    """No such conversation (a malformed conversation id)."""

    code = "chat_not_found"
    status = 404


class ChatUnavailable(ChatError):
    """The backing store failed or returned something malformed."""

    code = "unavailable"
    status = 503


# --- values -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    conversation_id: str
    sender: str
    receiver: str
    client_msg_id: str
    text: str
    created_at: float  # unix seconds, from the store's `now`
    status: Status


@dataclass(frozen=True, slots=True)
class Conversation:
    id: str
    participants: tuple[str, str]  # sorted
    last_message: Message | None
    unread: dict[str, int] = field(default_factory=dict)  # both participants, >= 0


@dataclass(frozen=True, slots=True, order=True)
class Cursor:
    """A position in a newest-first listing: items strictly older than it come next."""

    created_at: float
    id: str

    @classmethod
    def of(cls, message: Message) -> Cursor:
        return cls(message.created_at, message.id)

    @classmethod
    def of_conversation(cls, conversation: Conversation) -> Cursor:
        if conversation.last_message is None:
            raise ChatInvalid("a conversation without messages has no cursor")
        return cls(conversation.last_message.created_at, conversation.id)

    def encode(self) -> str:
        """An opaque string for clients; ``decode`` reads it back exactly."""
        return f"{self.created_at!r}:{self.id}"

    @classmethod
    def decode(cls, text: object) -> Cursor:
        if not isinstance(text, str) or len(text) > 512:
            raise ChatInvalid("cursor must be a string from a previous page")
        when, sep, ident = text.partition(":")
        try:
            created_at = float(when)
        except ValueError:
            created_at = math.nan
        if not sep or not ident or not math.isfinite(created_at):
            raise ChatInvalid("malformed cursor")
        return cls(created_at, ident)


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


# --- the interface ------------------------------------------------------------------------


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


class ChatStore(Protocol):
    async def send(
        self, sender: str, receiver: str, client_msg_id: str, text: str
    ) -> tuple[Message, bool]:
        """Store a message; (message, True) if created now, (original, False) for a retry."""

    async def mark(self, user: str, message_ids: Sequence[str], status: str) -> list[Message]:
        """Advance the user's received messages to ``status``; returns those that advanced."""

    async def history(
        self, user: str, conversation_id: str, before: Cursor | None, limit: int
    ) -> list[Message]:
        """Up to ``limit`` messages older than ``before``, newest first."""

    async def conversations(
        self, user: str, before: Cursor | None, limit: int
    ) -> list[Conversation]:
        """The user's conversations, newest activity first."""

    async def undelivered(self, user: str, limit: int) -> list[Message]:
        """Messages to the user still 'sent', oldest first."""

    async def block(self, user: str, other: str) -> None: ...

    async def unblock(self, user: str, other: str) -> None: ...

    async def is_blocked(self, a: str, b: str) -> bool:
        """True if either user blocked the other."""

    async def close(self) -> None: ...


# --- the embedded adapter -----------------------------------------------------------------


def _key(m: Message) -> tuple[float, str]:
    return (m.created_at, m.id)


@dataclass(slots=True)
class _ConversationState:
    participants: tuple[str, str]
    keys: list[tuple[float, str]] = field(default_factory=list)  # sorted (created_at, id)
    unread: dict[str, int] = field(default_factory=dict)


class MemoryChat:
    """Everything in this object's dicts: one process, gone on restart.

    No method awaits between reading and writing its state, so each call is atomic.
    """

    def __init__(
        self, now: Callable[[], float], *, max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
    ) -> None:
        self._now = now
        self._max_text = max_text_chars
        self._ids = MessageIds()
        self._messages: dict[str, Message] = {}
        self._by_client: dict[tuple[str, str], str] = {}
        self._conversations: dict[str, _ConversationState] = {}
        self._by_user: dict[str, set[str]] = {}
        self._pending: dict[str, set[str]] = {}  # receiver -> ids still 'sent'
        self._blocks: set[tuple[str, str]] = set()

    async def send(
        self, sender: str, receiver: str, client_msg_id: str, text: str
    ) -> tuple[Message, bool]:
        text = validate_text(text, self._max_text)
        sender, receiver = check_pair(sender, receiver)
        client_msg_id = check_client_msg_id(client_msg_id)
        existing = self._by_client.get((sender, client_msg_id))
        if existing is not None:
            return self._messages[existing], False
        if self._blocked(sender, receiver):
            raise ChatBlocked("you cannot message this user")
        msg = new_message(self._ids, sender, receiver, client_msg_id, text, self._now())
        cid = msg.conversation_id
        self._messages[msg.id] = msg
        self._by_client[(sender, client_msg_id)] = msg.id
        self._pending.setdefault(receiver, set()).add(msg.id)
        conv = self._conversations.get(cid)
        if conv is None:
            lo, hi = participants_of(cid)
            conv = self._conversations[cid] = _ConversationState((lo, hi), unread={lo: 0, hi: 0})
            self._by_user.setdefault(lo, set()).add(cid)
            self._by_user.setdefault(hi, set()).add(cid)
        bisect.insort(conv.keys, _key(msg))
        conv.unread[receiver] += 1
        return msg, True

    async def mark(self, user: str, message_ids: Sequence[str], status: str) -> list[Message]:
        user = check_user(user)
        ids, target = check_mark(message_ids, status)
        advanced = []
        for mid in ids:
            msg = self._messages.get(mid)
            if msg is None or msg.receiver != user:
                continue
            if STATUS_RANK[msg.status] >= STATUS_RANK[target]:
                continue
            was = msg.status
            msg = self._messages[mid] = replace(msg, status=target)
            if was == "sent":
                self._pending[user].discard(mid)
            if target == "read":
                unread = self._conversations[msg.conversation_id].unread
                unread[user] = max(0, unread[user] - 1)
            advanced.append(msg)
        return advanced

    async def history(
        self, user: str, conversation_id: str, before: Cursor | None, limit: int
    ) -> list[Message]:
        user, limit, before = check_user(user), check_limit(limit), check_cursor(before)
        if user not in participants_of(conversation_id):
            raise ChatForbidden("you are not a participant of this conversation")
        conv = self._conversations.get(conversation_id)
        if conv is None:
            return []
        end = len(conv.keys) if before is None else bisect.bisect_left(conv.keys, _key_of(before))
        keys = conv.keys[max(0, end - limit) : end]
        return [self._messages[mid] for _, mid in reversed(keys)]

    async def conversations(
        self, user: str, before: Cursor | None, limit: int
    ) -> list[Conversation]:
        user, limit, before = check_user(user), check_limit(limit), check_cursor(before)
        entries = []
        for cid in self._by_user.get(user, ()):
            state = self._conversations[cid]
            position = (state.keys[-1][0], cid)
            if before is None or position < _key_of(before):
                entries.append((position, cid))
        entries.sort(reverse=True)
        return [self._conversation(cid) for _, cid in entries[:limit]]

    def _conversation(self, cid: str) -> Conversation:
        state = self._conversations[cid]
        last = self._messages[state.keys[-1][1]] if state.keys else None
        return Conversation(cid, state.participants, last, dict(state.unread))

    async def undelivered(self, user: str, limit: int) -> list[Message]:
        user, limit = check_user(user), check_limit(limit)
        pending = (self._messages[mid] for mid in self._pending.get(user, ()))
        return sorted(pending, key=_key)[:limit]

    async def block(self, user: str, other: str) -> None:
        self._blocks.add(check_pair(user, other))

    async def unblock(self, user: str, other: str) -> None:
        self._blocks.discard(check_pair(user, other))

    async def is_blocked(self, a: str, b: str) -> bool:
        a, b = check_pair(a, b)
        return self._blocked(a, b)

    def _blocked(self, a: str, b: str) -> bool:
        return (a, b) in self._blocks or (b, a) in self._blocks

    async def close(self) -> None:
        pass


def _key_of(cursor: Cursor) -> tuple[float, str]:
    return (cursor.created_at, cursor.id)
