"""Chat on the hub (docs/protocol.md §9): send, receipts, typing, history, blocks, and the
backlog pushed on connect; and the conversation listings the REST chat routes serve.

Every request passes the chat rules (rules.py) here, once, before the store is asked; the
store (memory or MongoDB) is given the typed values the rules return and only persists.
Delivery goes through the hub port, so it reaches the receiver on whichever node they are
connected to.
"""

from __future__ import annotations

import weakref
from collections import defaultdict

from ..auth import Identity
from ..clock import Clock
from ..errors import JalwaError
from ..port import DONE, HubPort, Outcome
from ..protocol import (
    Ack,
    ChatBlock,
    ChatDelivered,
    ChatHistory,
    ChatMessage,
    ChatMessageOut,
    ChatRead,
    ChatReceipt,
    ChatSend,
    ChatTyping,
    ChatTypingOut,
    ChatUnblock,
    ErrorCode,
)
from ..ratelimit import TokenBucket
from ..session import Session
from ..settings import ChatSettings
from . import rules
from .model import ChatBlocked, Conversation, Cursor, MarkStatus, Message, Page
from .store import ChatStore


def wire(message: Message) -> ChatMessage:
    return ChatMessage(
        id=message.id,
        conversation_id=message.conversation_id,
        sender=message.sender,
        to=message.receiver,
        client_msg_id=message.client_msg_id,
        text=message.text,
        created_at=message.created_at,
        status=message.status,
    )


class ChatService:
    def __init__(
        self, store: ChatStore, port: HubPort, settings: ChatSettings, clock: Clock
    ) -> None:
        self.store = store
        self._port = port
        self._settings = settings
        self._clock = clock
        # One bucket per session for chat.send, on top of the hub's per-frame limit.
        self._buckets: weakref.WeakKeyDictionary[Session, TokenBucket] = weakref.WeakKeyDictionary()

    def install(self) -> None:
        hub = self._port
        hub.register(ChatSend, self._send)
        hub.register(ChatDelivered, self._delivered)
        hub.register(ChatRead, self._read)
        hub.register(ChatTyping, self._typing)
        hub.register(ChatHistory, self._history)
        hub.register(ChatBlock, self._block)
        hub.register(ChatUnblock, self._unblock)
        hub.on_connect(self._push_backlog)

    async def _send(self, session: Session, msg: ChatSend) -> Outcome:
        bucket = self._buckets.get(session)
        if bucket is None:
            bucket = TokenBucket(self._settings.rate_per_s, self._settings.rate_burst, self._clock)
            self._buckets[session] = bucket
        if not bucket.allow():
            raise JalwaError("too many messages; slow down", code=ErrorCode.RATE_LIMITED)
        new = rules.new_message(
            session.user_id, msg.to, msg.client_msg_id, msg.text, self._settings.max_text_chars
        )
        message, created = await self.store.send(new)
        out = wire(message)
        if created:
            await self._port.deliver_anywhere(msg.to, ChatMessageOut(message=out))
        return (Ack(id=msg.id, message=out) if msg.id is not None else None), []

    async def _delivered(self, session: Session, msg: ChatDelivered) -> Outcome:
        await self._mark(session, msg.message_ids, "delivered")
        return DONE

    async def _read(self, session: Session, msg: ChatRead) -> Outcome:
        await self._mark(session, msg.message_ids, "read")
        return DONE

    async def _mark(self, session: Session, ids: list[str], status: MarkStatus) -> None:
        request = rules.mark_request(session.user_id, ids, status)
        advanced = await self.store.mark(request)
        by_sender: dict[str, list[str]] = defaultdict(list)
        for message in advanced:
            by_sender[message.sender].append(message.id)
        for sender, message_ids in by_sender.items():
            receipt = ChatReceipt(message_ids=message_ids, status=request.status, by=request.user)
            await self._port.deliver_anywhere(sender, receipt)

    async def _typing(self, session: Session, msg: ChatTyping) -> Outcome:
        if await self.store.is_blocked(*rules.check_pair(session.user_id, msg.to)):
            raise ChatBlocked("you cannot message this user")
        typing = ChatTypingOut(sender=session.user_id, typing=msg.typing)
        await self._port.deliver_anywhere(msg.to, typing)
        return DONE

    async def _history(self, session: Session, msg: ChatHistory) -> Outcome:
        page = await self.history(session.user_id, msg.conversation_id, msg.before, msg.limit)
        if msg.id is None:
            return DONE
        messages = [wire(m) for m in page.items]
        return Ack(id=msg.id, messages=messages, next_before=page.next_before), []

    async def history(
        self, user: str, conversation_id: str, before: str | None, limit: int
    ) -> Page[Message]:
        """A page of a conversation the user takes part in (chat.history and REST)."""
        cursor = rules.cursor(before)
        limit = rules.check_limit(limit)
        conversation = rules.readable_conversation(user, conversation_id)
        page = await self.store.history(conversation, cursor, limit)
        nxt = Cursor.of(page[-1]).encode() if len(page) == limit else None
        return Page(page, nxt)

    async def conversations(self, user: str, before: str | None, limit: int) -> Page[Conversation]:
        """The user's conversations, newest activity first (REST)."""
        cursor = rules.cursor(before)
        user, limit = rules.check_user(user), rules.check_limit(limit)
        convs = await self.store.conversations(user, cursor, limit)
        nxt = Cursor.of_conversation(convs[-1]).encode() if len(convs) == limit else None
        return Page(convs, nxt)

    async def _block(self, session: Session, msg: ChatBlock) -> Outcome:
        await self.store.block(*rules.check_pair(session.user_id, msg.user_id))
        return DONE

    async def _unblock(self, session: Session, msg: ChatUnblock) -> Outcome:
        await self.store.unblock(*rules.check_pair(session.user_id, msg.user_id))
        return DONE

    async def _push_backlog(self, session: Session) -> None:
        """What arrived while the user was away, oldest first; the client acknowledges
        with chat.delivered, and anything it does not acknowledge comes again next time.
        A resumed session got what it missed in the resume (§3.1): no second copy."""
        if session.resumed:
            return
        user = rules.check_user(session.user_id)
        limit = rules.check_limit(self._settings.backlog_limit)
        for message in await self.store.undelivered(user, limit):
            session.send(ChatMessageOut(message=wire(message)))

    async def no_calls_when_blocked(self, caller: Identity, callee: Identity) -> None:
        """An invite guard for the calls wing (app.py wires it): blocks hold for calls too."""
        if await self.store.is_blocked(*rules.check_pair(caller.user_id, callee.user_id)):
            raise JalwaError("one of you blocked the other", code=ErrorCode.BLOCKED)
