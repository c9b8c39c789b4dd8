"""Contract suite for ``ChatStore``: MemoryChat and MongoChat behave the same.

Every test takes the ``world`` fixture, which runs it once per adapter (chat_worlds.py says
what a world is and how the Mongo one reaches its server; the Mongo-only tests are in
test_chat_contract_mongo.py).

A store trusts its inputs (store.py): these tests give it the typed values the chat rules
make (``NewMessage``, ``MarkRequest``, ``Cursor``); the refusals of bad input are the rules'
and are tested in tests/unit/test_chat_rules.py and through the hub.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from signalling.chat.ids import conversation_id
from signalling.chat.model import (
    ChatBlocked,
    ChatForbidden,
    Conversation,
    Cursor,
    Message,
    NewMessage,
)
from tests.contract.chat_worlds import World, marking, open_world, send_many


@pytest.fixture(params=["memory", "mongo"])
async def world(request: pytest.FixtureRequest) -> AsyncIterator[World]:
    async with open_world(request.param) as w:
        yield w


# --- send ---------------------------------------------------------------------------------


async def test_send_stores_and_returns_the_message(world: World) -> None:
    chat = await world.node()
    msg, created = await chat.send(NewMessage("alice", "bob", "c1", "hello ✨\nline two\ttab"))

    assert created
    assert msg.sender == "alice" and msg.receiver == "bob"
    assert msg.client_msg_id == "c1"
    assert msg.text == "hello ✨\nline two\ttab"
    assert msg.status == "sent"
    assert msg.created_at == world.clock()
    assert msg.conversation_id == conversation_id("alice", "bob") == conversation_id("bob", "alice")
    assert len(msg.id) == 26
    assert await chat.history(msg.conversation_id, None, 10) == [msg]


async def test_ids_sort_in_creation_order_even_when_the_clock_stands_still(world: World) -> None:
    chat = await world.node()
    sent = [(await chat.send(NewMessage("alice", "bob", f"c{i}", f"t{i}")))[0] for i in range(20)]
    assert [m.id for m in sent] == sorted(m.id for m in sent)
    assert len({m.id for m in sent}) == 20
    history = await chat.history(sent[0].conversation_id, None, 50)
    assert history == sent[::-1]


async def test_duplicate_client_msg_id_is_stored_once(world: World) -> None:
    chat = await world.node()
    first, created = await chat.send(NewMessage("alice", "bob", "c1", "hello"))
    world.clock.tick(5)
    again, created_again = await chat.send(NewMessage("alice", "bob", "c1", "hello, edited"))

    assert created and not created_again
    assert again == first  # the original, unchanged
    # The same client id from another sender is another message.
    other, other_created = await chat.send(NewMessage("bob", "alice", "c1", "hi"))
    assert other_created and other.id != first.id

    cid = first.conversation_id
    assert await chat.history(cid, None, 10) == [other, first]
    assert await chat.undelivered("bob", 10) == [first]
    [conv] = await chat.conversations("bob", None, 10)
    assert conv.unread == {"alice": 1, "bob": 1}


async def test_concurrent_duplicate_sends_store_one_message(world: World) -> None:
    nodes = [await world.node() for _ in range(3)]
    results = await asyncio.gather(
        *(nodes[i % 3].send(NewMessage("alice", "bob", "same", "hello")) for i in range(12))
    )

    assert sum(created for _, created in results) == 1
    assert len({msg for msg, _ in results}) == 1
    msg = results[0][0]
    assert await nodes[0].history(msg.conversation_id, None, 50) == [msg]
    [conv] = await nodes[1].conversations("bob", None, 10)
    assert conv.unread == {"alice": 0, "bob": 1}
    assert conv.last_message == msg


async def test_concurrent_distinct_sends_all_stored(world: World) -> None:
    nodes = [await world.node() for _ in range(2)]
    results = await asyncio.gather(
        *(nodes[i % 2].send(NewMessage("alice", "bob", f"c{i}", f"text {i}")) for i in range(10))
    )
    assert all(created for _, created in results)
    cid = conversation_id("alice", "bob")
    history = await nodes[0].history(cid, None, 50)
    assert len(history) == 10 and {m.id for m in history} == {m.id for m, _ in results}
    [conv] = await nodes[1].conversations("alice", None, 10)
    assert conv.unread == {"alice": 0, "bob": 10}
    assert conv.last_message == history[0]


async def test_long_and_unicode_text_is_stored_exactly(world: World) -> None:
    chat = await world.node()
    texts = ["x" * 4000, "👩‍👩‍👧 family", "नमस्ते", "a\u200db", "tab\tand\nnewline"]
    sent = []
    for i, text in enumerate(texts):
        world.clock.tick()
        msg, created = await chat.send(NewMessage("alice", "bob", f"c{i}", text))
        assert created and msg.text == text
        sent.append(msg)
    history = await (await world.node()).history(sent[0].conversation_id, None, 10)
    assert [m.text for m in history] == texts[::-1]


# --- receipts -----------------------------------------------------------------------------


async def test_status_only_advances(world: World) -> None:
    chat = await world.node()
    [m1, m2] = await send_many(chat, world, "alice", "bob", 2)

    read = await chat.mark(marking("bob", [m1.id], "read"))
    assert [(m.id, m.status) for m in read] == [(m1.id, "read")]
    # Delivered after read: stays read, nothing advanced.
    assert await chat.mark(marking("bob", [m1.id], "delivered")) == []
    assert await chat.mark(marking("bob", [m1.id], "read")) == []

    delivered = await chat.mark(marking("bob", [m2.id, m1.id], "delivered"))
    assert [(m.id, m.status) for m in delivered] == [(m2.id, "delivered")]
    read = await chat.mark(marking("bob", [m1.id, m2.id], "read"))
    assert [(m.id, m.status) for m in read] == [(m2.id, "read")]
    assert read[0] == Message(**{**_fields(m2), "status": "read"})

    history = await chat.history(m1.conversation_id, None, 10)
    assert [m.status for m in history] == ["read", "read"]


def _fields(m: Message) -> dict[str, Any]:
    return {name: getattr(m, name) for name in Message.__slots__}


async def test_only_the_receiver_can_mark(world: World) -> None:
    chat = await world.node()
    [msg] = await send_many(chat, world, "alice", "bob", 1)

    assert await chat.mark(marking("alice", [msg.id], "read")) == []  # the sender
    assert await chat.mark(marking("mallory", [msg.id], "delivered")) == []  # a stranger
    assert await chat.mark(marking("bob", ["no-such-id", msg.id], "delivered")) == [
        Message(**{**_fields(msg), "status": "delivered"})
    ]
    [stored] = await chat.history(msg.conversation_id, None, 1)
    assert stored.status == "delivered"


async def test_an_empty_mark_changes_nothing(world: World) -> None:
    chat = await world.node()
    await send_many(chat, world, "alice", "bob", 1)
    assert await chat.mark(marking("bob", [], "read")) == []
    [conv] = await chat.conversations("bob", None, 10)
    assert conv.unread == {"alice": 0, "bob": 1}


async def test_concurrent_marks_advance_each_message_once(world: World) -> None:
    nodes = [await world.node() for _ in range(3)]
    msgs = await send_many(nodes[0], world, "alice", "bob", 5)
    ids = [m.id for m in msgs]
    results = await asyncio.gather(*(n.mark(marking("bob", ids, "read")) for n in nodes))
    advanced = [m.id for result in results for m in result]
    assert sorted(advanced) == sorted(ids)
    [conv] = await nodes[1].conversations("bob", None, 10)
    assert conv.unread == {"alice": 0, "bob": 0}


async def test_undelivered_oldest_first_exactly_once(world: World) -> None:
    chat = await world.node()
    to_bob = await send_many(chat, world, "alice", "bob", 5, "a")
    from_carol = await send_many(chat, world, "carol", "bob", 2, "c")
    await send_many(chat, world, "bob", "alice", 2, "b")  # to alice: not bob's

    first = await chat.undelivered("bob", 4)
    assert first == to_bob[:4]
    await chat.mark(marking("bob", [m.id for m in first], "delivered"))

    second = await chat.undelivered("bob", 4)
    assert second == [to_bob[4], *from_carol]
    # A message read straight from 'sent' is no longer undelivered either.
    await chat.mark(marking("bob", [from_carol[0].id], "read"))
    assert await chat.undelivered("bob", 10) == [to_bob[4], from_carol[1]]
    await chat.mark(marking("bob", [to_bob[4].id, from_carol[1].id], "delivered"))
    assert await chat.undelivered("bob", 10) == []
    assert [m.client_msg_id for m in await chat.undelivered("alice", 10)] == ["b0", "b1"]


# --- history ------------------------------------------------------------------------------


async def test_history_pages_newest_first_without_gaps(world: World) -> None:
    chat = await world.node()
    cid = conversation_id("alice", "bob")
    old = await send_many(chat, world, "alice", "bob", 4, "x")
    # Same created_at for several messages: the id breaks the tie across page boundaries.
    for i in range(4):
        await chat.send(NewMessage("bob", "alice", f"same{i}", f"same {i}"))
    old += await chat.history(cid, None, 4)
    old += await send_many(chat, world, "bob", "alice", 3, "y")
    expected = sorted(old, key=lambda m: (m.created_at, m.id), reverse=True)

    seen: list[Message] = []
    before: Cursor | None = None
    while True:
        page = await chat.history(cid, before, 3)
        seen += page
        if not page:
            break
        # New messages arrive between pages: they are newer than every cursor.
        await send_many(chat, world, "alice", "bob", 2, f"new{len(seen)}-")
        before = Cursor.decode(Cursor.of(page[-1]).encode())

    assert [m.id for m in seen] == [m.id for m in expected]
    assert len(seen) == len(old) == 11
    newest = await chat.history(cid, None, 1)
    assert newest[0].client_msg_id.startswith("new") and newest[0] not in old


async def test_history_of_a_conversation_without_messages_is_empty(world: World) -> None:
    chat = await world.node()
    await send_many(chat, world, "alice", "bob", 1)
    assert await chat.history(conversation_id("alice", "zed"), None, 10) == []


# --- conversations ------------------------------------------------------------------------


async def test_conversations_last_message_and_unread(world: World) -> None:
    chat = await world.node()
    ab = await send_many(chat, world, "alice", "bob", 3, "ab")
    ca = await send_many(chat, world, "carol", "alice", 2, "ca")
    [reply] = await send_many(chat, world, "bob", "alice", 1, "ba")

    convs = await chat.conversations("alice", None, 10)
    assert [c.id for c in convs] == [
        conversation_id("alice", "bob"),
        conversation_id("alice", "carol"),
    ]
    assert convs[0] == Conversation(
        conversation_id("alice", "bob"), ("alice", "bob"), reply, {"alice": 1, "bob": 3}
    )
    assert convs[1].participants == ("alice", "carol")
    assert convs[1].last_message == ca[-1]
    assert convs[1].unread == {"alice": 2, "carol": 0}
    assert [c.id for c in await chat.conversations("carol", None, 10)] == [convs[1].id]
    assert await chat.conversations("zed", None, 10) == []

    # Reading some lowers the reader's count by that many; reading all resets it.
    await chat.mark(marking("bob", [ab[0].id], "delivered"))
    [bob_view] = await chat.conversations("bob", None, 10)
    assert bob_view.unread == {"alice": 1, "bob": 3}
    await chat.mark(marking("bob", [ab[0].id], "read"))
    [bob_view] = await chat.conversations("bob", None, 10)
    assert bob_view.unread == {"alice": 1, "bob": 2}
    await chat.mark(marking("bob", [m.id for m in ab], "read"))
    await chat.mark(marking("bob", [m.id for m in ab], "read"))  # again: no effect
    [bob_view] = await chat.conversations("bob", None, 10)
    assert bob_view.unread == {"alice": 1, "bob": 0}
    # The last message is shown with its current status.
    await chat.mark(marking("alice", [reply.id], "read"))
    [bob_view] = await chat.conversations("bob", None, 10)
    assert bob_view.last_message is not None and bob_view.last_message.status == "read"
    assert bob_view.unread == {"alice": 0, "bob": 0}


async def test_conversations_page_by_activity(world: World) -> None:
    chat = await world.node()
    for peer in ["p1", "p2", "p3", "p4", "p5"]:
        await send_many(chat, world, peer, "host", 1, peer)
    await send_many(chat, world, "host", "p2", 1, "again")  # p2 becomes the most recent

    first = await chat.conversations("host", None, 2)
    assert [c.participants for c in first] == [("host", "p2"), ("host", "p5")]
    second = await chat.conversations("host", Cursor.of_conversation(first[-1]), 2)
    assert [c.participants for c in second] == [("host", "p4"), ("host", "p3")]
    third = await chat.conversations("host", Cursor.of_conversation(second[-1]), 2)
    assert [c.participants for c in third] == [("host", "p1")]


# --- blocks -------------------------------------------------------------------------------


async def test_block_stops_messages_both_ways_and_unblock_restores(world: World) -> None:
    chat = await world.node()
    sent, _ = await chat.send(NewMessage("alice", "bob", "c1", "before"))
    await chat.block("bob", "alice")
    await chat.block("bob", "alice")  # idempotent

    assert await chat.is_blocked("alice", "bob") and await chat.is_blocked("bob", "alice")
    with pytest.raises(ChatBlocked) as info:
        await chat.send(NewMessage("alice", "bob", "c2", "hello?"))
    assert info.value.code == "chat_blocked" and isinstance(info.value, ChatForbidden)
    with pytest.raises(ChatBlocked):
        await chat.send(NewMessage("bob", "alice", "c3", "hi"))
    # A retry of a message stored before the block returns it (the request succeeded).
    assert await chat.send(NewMessage("alice", "bob", "c1", "before")) == (sent, False)
    # Others are unaffected; the blocked user cannot lift the block.
    assert not await chat.is_blocked("alice", "carol")
    await chat.send(NewMessage("carol", "bob", "c1", "hi bob"))
    await chat.unblock("alice", "bob")
    assert await chat.is_blocked("alice", "bob")

    await chat.unblock("bob", "alice")
    assert not await chat.is_blocked("alice", "bob")
    assert (await chat.send(NewMessage("alice", "bob", "c2", "hello again")))[1]
    # Both directions blocked: lifting one still blocks.
    await chat.block("alice", "bob")
    await chat.block("bob", "alice")
    await chat.unblock("bob", "alice")
    assert await chat.is_blocked("bob", "alice")


async def test_count_since_counts_each_stored_message_once(world: World) -> None:
    chat = await world.node()
    start = world.clock()
    for i in range(3):
        await chat.send(NewMessage("alice", "bob", f"c{i}", "hi"))
        world.clock.tick(10)
    await chat.send(NewMessage("alice", "bob", "c0", "hi"))  # a retry stores nothing
    assert await chat.count_since(start) == 3
    assert await chat.count_since(start + 10) == 2  # at or after
    assert await chat.count_since(world.clock()) == 0
    other = await world.node()  # another process sees the same figures
    assert await other.count_since(start) == 3
