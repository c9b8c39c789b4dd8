"""The embedded chat store: one process, in memory, same semantics as MongoDB (store.py)."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from .ids import MessageIds, participants, stored_message
from .model import (
    STATUS_RANK,
    ChatBlocked,
    Conversation,
    Cursor,
    MarkRequest,
    Message,
    NewMessage,
)


def _key(m: Message) -> tuple[float, str]:
    return (m.created_at, m.id)


@dataclass(slots=True)
class _ConversationState:
    participants: tuple[str, str]
    keys: list[tuple[float, str]] = field(default_factory=list)  # sorted (created_at, id)
    unread: dict[str, int] = field(default_factory=dict)


class MemoryChat:
    """Everything in this object's dicts: one process, gone on restart.

    No method awaits between reading and writing its state, so each call is atomic. Inputs
    are trusted (store.py): the handlers ran the chat rules on them.
    """

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self._ids = MessageIds()
        self._messages: dict[str, Message] = {}
        self._by_client: dict[tuple[str, str], str] = {}
        self._conversations: dict[str, _ConversationState] = {}
        self._by_user: dict[str, set[str]] = {}
        self._pending: dict[str, set[str]] = {}  # receiver -> ids still 'sent'
        self._blocks: set[tuple[str, str]] = set()

    async def send(self, message: NewMessage) -> tuple[Message, bool]:
        existing = self._by_client.get((message.sender, message.client_msg_id))
        if existing is not None:
            return self._messages[existing], False
        if self._blocked(message.sender, message.receiver):
            raise ChatBlocked("you cannot message this user")
        msg = stored_message(self._ids, message, self._now())
        cid = msg.conversation_id
        self._messages[msg.id] = msg
        self._by_client[(msg.sender, msg.client_msg_id)] = msg.id
        self._pending.setdefault(msg.receiver, set()).add(msg.id)
        conv = self._conversations.get(cid)
        if conv is None:
            lo, hi = participants(msg.sender, msg.receiver)
            conv = self._conversations[cid] = _ConversationState((lo, hi), unread={lo: 0, hi: 0})
            self._by_user.setdefault(lo, set()).add(cid)
            self._by_user.setdefault(hi, set()).add(cid)
        bisect.insort(conv.keys, _key(msg))
        conv.unread[msg.receiver] += 1
        return msg, True

    async def mark(self, request: MarkRequest) -> list[Message]:
        user, target = request.user, request.status
        advanced = []
        for mid in request.message_ids:
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
        self, conversation_id: str, before: Cursor | None, limit: int
    ) -> list[Message]:
        conv = self._conversations.get(conversation_id)
        if conv is None:
            return []
        end = len(conv.keys) if before is None else bisect.bisect_left(conv.keys, _key_of(before))
        keys = conv.keys[max(0, end - limit) : end]
        return [self._messages[mid] for _, mid in reversed(keys)]

    async def conversations(
        self, user: str, before: Cursor | None, limit: int
    ) -> list[Conversation]:
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
        pending = (self._messages[mid] for mid in self._pending.get(user, ()))
        return sorted(pending, key=_key)[:limit]

    async def block(self, user: str, other: str) -> None:
        self._blocks.add((user, other))

    async def unblock(self, user: str, other: str) -> None:
        self._blocks.discard((user, other))

    async def is_blocked(self, a: str, b: str) -> bool:
        return self._blocked(a, b)

    async def blocked_with(self, user: str, limit: int) -> frozenset[str]:
        others = {b if a == user else a for a, b in self._blocks if user in (a, b)}
        return frozenset(sorted(others)[:limit])

    def _blocked(self, a: str, b: str) -> bool:
        return (a, b) in self._blocks or (b, a) in self._blocks

    async def count_since(self, since: float) -> int:
        return sum(1 for msg in self._messages.values() if msg.created_at >= since)

    async def close(self) -> None:
        pass


def _key_of(cursor: Cursor) -> tuple[float, str]:
    return (cursor.created_at, cursor.id)
