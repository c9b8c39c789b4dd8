"""Chat: 1:1 messages, receipts, conversations and blocks.

``ChatStore`` is the interface the chat handlers use; ``memory.MemoryChat`` is the embedded
adapter and ``mongo.MongoChat`` the real one. One contract suite (tests/contract/
test_chat_contract.py) runs against both.

**A store trusts its inputs.** Every request reaches it through the chat rules (rules.py),
which the handlers (handlers.ChatService, behind the WebSocket and the REST chat routes) run
once: text, user ids, ``client_msg_id``, receipt status and ids, limits, cursors, "not to
yourself" and "only participants read a conversation" are checked there, and the store is
given the typed values that came out (``NewMessage``, ``MarkRequest``, ``Cursor``, a
conversation id the reader belongs to). A store does not check them again; it decides only
what needs its data: idempotency, a block, a message's current status.

Semantics both adapters keep:

- **Ids.** A message id is a 26-character ULID-like string (48-bit millisecond time from the
  store's ``now`` + 80 random bits, Crockford base32, increasing within a store object even
  when the clock stands still), so ids sort in creation order and do not collide across
  processes. Messages are ordered by ``(created_at, id)``; that pair is the paging ``Cursor``.
- **Conversations** are 1:1 and their id is derived from the two user ids
  (``ids.conversation_id``): ``dm:<a>:<b>`` with ``a < b`` and ``%``/``:`` inside an id
  escaped as ``%25``/``%3A``, so the id is canonical and maps back to exactly one pair.
- **send** is idempotent per ``(sender, client_msg_id)``: a retry returns the original
  message unchanged with ``created=False`` (even if its text or receiver differ, and even if
  a block was placed since: the retry is the same request, which already succeeded). A new
  message needs no block in either direction (``ChatBlocked``).
- **mark** moves status forward only (sent -> delivered -> read; a read message never goes
  back to delivered). Only the receiver marks: ids that are unknown, not addressed to the
  user, or already at/after the status are **ignored** (not an error), so a stale or foreign
  id neither fails a whole receipt batch nor reveals whether a message exists. It returns the
  messages whose status advanced, in the order their ids were given; the hub sends receipts
  to their senders.
- **unread** per participant counts the messages to them not yet read: +1 on send, minus the
  number of their messages that reached ``read`` in a ``mark`` (never below 0).
- **history** is newest first, strictly older than ``before``; a conversation with no
  messages is an empty page. **conversations** is newest activity (last message) first,
  the cursor being (last message's created_at, conversation id). **undelivered** lists
  messages to the user still ``sent``, oldest first; the hub marks them delivered once the
  client confirms, so the next call returns the rest.
- **Blocks** are directed (``block(user, other)`` / ``unblock(user, other)`` only touch the
  user's own block); ``is_blocked(a, b)`` is true if either blocked the other.

Limits are ``1 <= limit <= MAX_PAGE``; a store failure is ``ChatUnavailable``.
"""

from __future__ import annotations

from typing import Protocol

from .model import Conversation, Cursor, MarkRequest, Message, NewMessage


class ChatStore(Protocol):
    async def send(self, message: NewMessage) -> tuple[Message, bool]:
        """Store a message; (message, True) if created now, (original, False) for a retry."""

    async def mark(self, request: MarkRequest) -> list[Message]:
        """Advance the user's received messages to the status; returns those that advanced."""

    async def history(
        self, conversation_id: str, before: Cursor | None, limit: int
    ) -> list[Message]:
        """Up to ``limit`` messages of the conversation older than ``before``, newest first."""

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

    async def blocked_with(self, user: str, limit: int) -> frozenset[str]:
        """Up to ``limit`` users the user blocked or was blocked by (kept apart by matching)."""

    async def count_since(self, since: float) -> int:
        """How many messages were stored at or after ``since`` (unix seconds; admin stats)."""

    async def close(self) -> None: ...
