"""Chat values: messages, conversations, paging cursors, statuses, the requests a store is
given, and the chat errors.

The semantics every store keeps are in store.py; the checks that make the requests in
rules.py; the ids in ids.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final, Generic, Literal, TypeVar

from ..errors import JalwaError

Status = Literal["sent", "delivered", "read"]
STATUSES: Final[tuple[Status, ...]] = ("sent", "delivered", "read")
STATUS_RANK: Final[dict[str, int]] = {s: i for i, s in enumerate(STATUSES)}
MarkStatus = Literal["delivered", "read"]  # what a receipt may move a message to

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


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to store, as ``rules.new_message`` accepted it: ``sender`` and ``receiver``
    are different user ids, ``client_msg_id`` is 1-64 characters, ``text`` is valid."""

    sender: str
    receiver: str
    client_msg_id: str
    text: str


@dataclass(frozen=True, slots=True)
class MarkRequest:
    """``user`` moves messages addressed to them to ``status``, as ``rules.mark_request``
    accepted it: at most ``MAX_MARK_IDS`` ids, each once, in the order the client gave."""

    user: str
    message_ids: tuple[str, ...]
    status: MarkStatus


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """A page of a newest-first listing; ``next_before`` (an encoded ``Cursor``) asks for
    the next one, None when this page was not full."""

    items: list[T]
    next_before: str | None


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
