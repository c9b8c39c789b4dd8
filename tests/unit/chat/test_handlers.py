"""The chat handlers driven without sockets: each request passes the rules once, and the
store is asked only with the typed values they make (or not at all when they refuse)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from signalling.app import assemble
from signalling.auth import Identity, Role
from signalling.calls.hooks import FreeCalls
from signalling.chat.handlers import ChatService
from signalling.chat.memory import MemoryChat
from signalling.chat.model import (
    ChatInvalid,
    ChatNotFound,
    Conversation,
    Cursor,
    MarkRequest,
    Message,
    NewMessage,
)
from signalling.clock import ManualClock
from signalling.presence.memory import MemoryPresence, MemoryWorld
from signalling.session import Session
from signalling.settings import ChatSettings, HubSettings

ALICE = Identity("alice", Role.CALLER, "Alice")
BOB = Identity("bob", Role.HOST, "Bob")


class SpyStore(MemoryChat):
    """The memory store, noting every call the handlers make to it."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock.time)
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    async def send(self, message: NewMessage) -> tuple[Message, bool]:
        self.calls.append(("send", (message,)))
        return await super().send(message)

    async def mark(self, request: MarkRequest) -> list[Message]:
        self.calls.append(("mark", (request,)))
        return await super().mark(request)

    async def history(
        self, conversation_id: str, before: Cursor | None, limit: int
    ) -> list[Message]:
        self.calls.append(("history", (conversation_id, before, limit)))
        return await super().history(conversation_id, before, limit)

    async def conversations(
        self, user: str, before: Cursor | None, limit: int
    ) -> list[Conversation]:
        self.calls.append(("conversations", (user, before, limit)))
        return await super().conversations(user, before, limit)

    async def block(self, user: str, other: str) -> None:
        self.calls.append(("block", (user, other)))
        await super().block(user, other)

    async def is_blocked(self, a: str, b: str) -> bool:
        self.calls.append(("is_blocked", (a, b)))
        return await super().is_blocked(a, b)


class Env:
    def __init__(self) -> None:
        self.clock = ManualClock()
        self.store = SpyStore(self.clock)
        presence = MemoryPresence(MemoryWorld(self.clock), "n1", ttl_s=15, node_ttl_s=10)
        settings = ChatSettings(max_text_chars=20)
        wings = assemble(
            HubSettings(),
            presence,
            clock=self.clock,
            hooks=FreeCalls(),
            chat=lambda port: ChatService(self.store, port, settings, self.clock),
        )
        assert wings.chat is not None
        self.hub, self.chat = wings.hub, wings.chat

    async def send(self, session: Session, **msg: Any) -> dict[str, Any]:
        """Handle one client frame; the reply (ack or error) to it."""
        await self.hub.handle_frame(session, msgspec.json.encode(msg).decode())
        replies = [f for f in frames(session) if f.get("id") == msg.get("id")]
        assert len(replies) == 1, replies
        return replies[0]

    def asked(self) -> list[str]:
        names = [name for name, _ in self.store.calls]
        self.store.calls.clear()
        return names


def frames(session: Session) -> list[dict[str, Any]]:
    return [msgspec.json.decode(f) for f in session.take()]


@pytest.fixture
def env() -> Env:
    return Env()


async def test_send_hands_the_store_a_checked_new_message(env: Env) -> None:
    alice = await env.hub.connect(ALICE)
    ack = await env.send(
        alice, type="chat.send", id="s", to="bob", client_msg_id="c1", text="hi\tbob"
    )
    assert ack["type"] == "ack" and ack["message"]["text"] == "hi\tbob"
    assert env.store.calls == [("send", (NewMessage("alice", "bob", "c1", "hi\tbob"),))]


@pytest.mark.parametrize(
    ("to", "text", "code"),
    [
        ("bob", "x" * 21, "chat_invalid_text"),  # over ChatSettings.max_text_chars
        ("bob", "bell\x07", "chat_invalid_text"),
        ("alice", "hi", "chat_invalid"),  # to yourself
    ],
)
async def test_a_refused_send_never_reaches_the_store(
    env: Env, to: str, text: str, code: str
) -> None:
    alice = await env.hub.connect(ALICE)
    reply = await env.send(alice, type="chat.send", id="s", to=to, client_msg_id="c", text=text)
    assert (reply["type"], reply["code"]) == ("error", code)
    assert env.asked() == []


async def test_receipts_are_one_deduplicated_request_and_carry_its_status(env: Env) -> None:
    alice, bob = await env.hub.connect(ALICE), await env.hub.connect(BOB)
    ack = await env.send(alice, type="chat.send", id="s", to="bob", client_msg_id="c", text="x")
    mid = ack["message"]["id"]
    frames(alice)
    env.asked()
    await env.send(bob, type="chat.read", id="r", message_ids=[mid, "nope", mid])
    assert env.store.calls == [("mark", (MarkRequest("bob", (mid, "nope"), "read"),))]
    [receipt] = [f for f in frames(alice) if f["type"] == "chat.receipt"]
    assert receipt == {"type": "chat.receipt", "message_ids": [mid], "status": "read", "by": "bob"}


async def test_history_is_checked_before_the_store_is_asked(env: Env) -> None:
    alice = await env.hub.connect(ALICE)
    await env.send(alice, type="chat.send", id="s", to="bob", client_msg_id="c", text="x")
    env.asked()
    for conv, before, code in [
        ("dm:bob:carol", None, "chat_forbidden"),
        ("dm:bob:alice", None, "chat_not_found"),  # not canonical
        ("dm:alice:bob", "garbage", "chat_invalid"),
    ]:
        req: dict[str, Any] = {"type": "chat.history", "id": "h", "conversation_id": conv}
        if before is not None:
            req["before"] = before
        assert (await env.send(alice, **req))["code"] == code
    assert env.asked() == []
    page = await env.send(alice, type="chat.history", id="h", conversation_id="dm:alice:bob")
    assert [m["text"] for m in page["messages"]] == ["x"]
    assert env.store.calls == [("history", ("dm:alice:bob", None, 50))]


async def test_rest_listings_go_through_the_rules(env: Env) -> None:
    alice = await env.hub.connect(ALICE)
    for n in range(3):
        env.clock.advance(1)
        msg = {"to": f"p{n}", "client_msg_id": f"c{n}", "text": "x"}
        await env.send(alice, type="chat.send", id="s", **msg)
    env.asked()
    first = await env.chat.conversations("alice", None, 2)
    assert [c.participants for c in first.items] == [("alice", "p2"), ("alice", "p1")]
    assert first.next_before is not None
    rest = await env.chat.conversations("alice", first.next_before, 2)
    assert [c.participants for c in rest.items] == [("alice", "p0")] and rest.next_before is None
    assert env.asked() == ["conversations", "conversations"]
    with pytest.raises(ChatInvalid):
        await env.chat.conversations("alice", "garbage", 2)
    with pytest.raises(ChatInvalid):
        await env.chat.history("alice", "dm:alice:p0", None, 0)
    with pytest.raises(ChatNotFound):
        await env.chat.history("alice", "nope", None, 10)
    assert env.asked() == []


async def test_blocks_typing_and_calls_need_two_different_users(env: Env) -> None:
    alice = await env.hub.connect(ALICE)
    for req in (
        {"type": "chat.block", "id": "b", "user_id": "alice"},
        {"type": "chat.typing", "id": "t", "to": "alice"},
    ):
        assert (await env.send(alice, **req))["code"] == "chat_invalid"
    with pytest.raises(ChatInvalid):
        await env.chat.no_calls_when_blocked(ALICE, ALICE)
    assert env.asked() == []
    assert (await env.send(alice, type="chat.block", id="b", user_id="bob"))["type"] == "ack"
    assert env.store.calls == [("block", ("alice", "bob"))]
