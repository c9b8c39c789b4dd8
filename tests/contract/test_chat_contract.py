"""Contract suite for ``ChatStore``: MemoryChat and MongoChat behave the same.

Every contract test takes the ``world`` fixture, which runs it once per adapter. A world
has a manual clock (both adapters take ``now``) and ``node()``: another store object on the
same data. For memory that is the same object; for Mongo it is a new ``MongoChat`` with its
own ``AsyncMongoClient``, as another jalwa process (or the same one after a restart) has.

The Mongo world talks to a MongoDB wire-protocol server at JALWA_TEST_MONGO_URL through the
real pymongo async driver (``scripts/test`` starts mongoeco's server and sets it; by hand:
``scripts/mongo-wire start`` and ``export JALWA_TEST_MONGO_URL=$(scripts/mongo-wire url)``).
If it is unset or unreachable the tests fail, they never skip. Each test uses a database of
its own and drops it afterwards.
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from signalling.chat.memory import MemoryChat
from signalling.chat.model import (
    ChatBlocked,
    ChatError,
    ChatForbidden,
    ChatInvalid,
    ChatInvalidText,
    ChatNotFound,
    Conversation,
    Cursor,
    Message,
)
from signalling.chat.mongo import INDEXES, MongoChat
from signalling.chat.rules import MessageIds, conversation_id, participants_of, validate_text
from signalling.chat.store import ChatStore
from signalling.errors import JalwaError

MAX_TEXT = 50
START_MONGO = (
    "scripts/mongo-wire start && export JALWA_TEST_MONGO_URL=$(scripts/mongo-wire url)  "
    "(or run ./scripts/test, which does both)"
)


class Clock:
    """A manual clock; ``tick`` moves it a little so created_at values differ."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def tick(self, seconds: float = 0.001) -> None:
        self.t += seconds


class World:
    kind: str

    def __init__(self) -> None:
        self.clock = Clock()

    async def node(self) -> ChatStore:
        raise NotImplementedError


class MemoryWorld(World):
    kind = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.store = MemoryChat(self.clock, max_text_chars=MAX_TEXT)

    async def node(self) -> ChatStore:
        return self.store


class MongoWorld(World):
    kind = "mongo"

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.database = f"jalwa_test_{uuid.uuid4().hex[:12]}"
        self.admin: AsyncMongoClient[dict[str, Any]] = self.client()
        self._clients: list[AsyncMongoClient[dict[str, Any]]] = []

    def client(self) -> AsyncMongoClient[dict[str, Any]]:
        return AsyncMongoClient(self.url, serverSelectionTimeoutMS=3000, connectTimeoutMS=3000)

    async def node(self) -> MongoChat:
        client = self.client()
        self._clients.append(client)
        store = MongoChat(client, self.database, self.clock, max_text_chars=MAX_TEXT)
        await store.ensure_indexes()
        return store

    async def aclose(self) -> None:
        try:
            await self.admin.drop_database(self.database)
        finally:
            for client in self._clients:
                await client.close()
            await self.admin.close()


@asynccontextmanager
async def open_world(kind: str) -> AsyncIterator[World]:
    if kind == "memory":
        yield MemoryWorld()
        return
    url = os.environ.get("JALWA_TEST_MONGO_URL", "")
    if not url:
        pytest.fail(
            "the Mongo chat tests need a MongoDB wire server: JALWA_TEST_MONGO_URL is not set. "
            f"Start one with: {START_MONGO}",
            pytrace=False,
        )
    world = MongoWorld(url)
    try:
        await world.admin.admin.command("ping")
    except PyMongoError as exc:
        await world.admin.close()
        pytest.fail(
            f"the MongoDB wire server at JALWA_TEST_MONGO_URL={url} is not reachable "
            f"({type(exc).__name__}). Start it with: {START_MONGO}",
            pytrace=False,
        )
    try:
        yield world
    finally:
        await world.aclose()


@pytest.fixture(params=["memory", "mongo"])
async def world(request: pytest.FixtureRequest) -> AsyncIterator[World]:
    async with open_world(request.param) as w:
        yield w


@pytest.fixture
async def mongo_world() -> AsyncIterator[MongoWorld]:
    async with open_world("mongo") as w:
        assert isinstance(w, MongoWorld)
        yield w


async def send_many(
    chat: ChatStore, world: World, sender: str, receiver: str, n: int, tag: str = "m"
) -> list[Message]:
    out = []
    for i in range(n):
        world.clock.tick()
        msg, created = await chat.send(sender, receiver, f"{tag}{i}", f"{tag} {i}")
        assert created
        out.append(msg)
    return out


# --- send ---------------------------------------------------------------------------------


async def test_send_stores_and_returns_the_message(world: World) -> None:
    chat = await world.node()
    msg, created = await chat.send("alice", "bob", "c1", "hello ✨\nline two\ttab")

    assert created
    assert msg.sender == "alice" and msg.receiver == "bob"
    assert msg.client_msg_id == "c1"
    assert msg.text == "hello ✨\nline two\ttab"
    assert msg.status == "sent"
    assert msg.created_at == world.clock()
    assert msg.conversation_id == conversation_id("alice", "bob") == conversation_id("bob", "alice")
    assert len(msg.id) == 26
    assert await chat.history("bob", msg.conversation_id, None, 10) == [msg]


async def test_ids_sort_in_creation_order_even_when_the_clock_stands_still(world: World) -> None:
    chat = await world.node()
    sent = [(await chat.send("alice", "bob", f"c{i}", f"t{i}"))[0] for i in range(20)]
    assert [m.id for m in sent] == sorted(m.id for m in sent)
    assert len({m.id for m in sent}) == 20
    history = await chat.history("alice", sent[0].conversation_id, None, 50)
    assert history == sent[::-1]


async def test_duplicate_client_msg_id_is_stored_once(world: World) -> None:
    chat = await world.node()
    first, created = await chat.send("alice", "bob", "c1", "hello")
    world.clock.tick(5)
    again, created_again = await chat.send("alice", "bob", "c1", "hello, edited")

    assert created and not created_again
    assert again == first  # the original, unchanged
    # The same client id from another sender is another message.
    other, other_created = await chat.send("bob", "alice", "c1", "hi")
    assert other_created and other.id != first.id

    cid = first.conversation_id
    assert await chat.history("bob", cid, None, 10) == [other, first]
    assert await chat.undelivered("bob", 10) == [first]
    [conv] = await chat.conversations("bob", None, 10)
    assert conv.unread == {"alice": 1, "bob": 1}


async def test_concurrent_duplicate_sends_store_one_message(world: World) -> None:
    nodes = [await world.node() for _ in range(3)]
    results = await asyncio.gather(
        *(nodes[i % 3].send("alice", "bob", "same", "hello") for i in range(12))
    )

    assert sum(created for _, created in results) == 1
    assert len({msg for msg, _ in results}) == 1
    msg = results[0][0]
    assert await nodes[0].history("alice", msg.conversation_id, None, 50) == [msg]
    [conv] = await nodes[1].conversations("bob", None, 10)
    assert conv.unread == {"alice": 0, "bob": 1}
    assert conv.last_message == msg


async def test_concurrent_distinct_sends_all_stored(world: World) -> None:
    nodes = [await world.node() for _ in range(2)]
    results = await asyncio.gather(
        *(nodes[i % 2].send("alice", "bob", f"c{i}", f"text {i}") for i in range(10))
    )
    assert all(created for _, created in results)
    cid = conversation_id("alice", "bob")
    history = await nodes[0].history("bob", cid, None, 50)
    assert len(history) == 10 and {m.id for m in history} == {m.id for m, _ in results}
    [conv] = await nodes[1].conversations("alice", None, 10)
    assert conv.unread == {"alice": 0, "bob": 10}
    assert conv.last_message == history[0]


async def test_cannot_message_yourself(world: World) -> None:
    chat = await world.node()
    with pytest.raises(ChatInvalid):
        await chat.send("alice", "alice", "c1", "hi")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("   \n\t", "empty"),
        ("x" * (MAX_TEXT + 1), "limit is 50"),
        ("bell\x07", "control character U+0007"),
        ("nul\x00", "control character U+0000"),
        ("cr\r\n", "control character U+000D"),
        ("del\x7f", "control character U+007F"),
        ("c1 control\x85", "control character U+0085"),
        ("lone \ud800 surrogate", "lone surrogate U+D800"),
        ("lone \udcff low", "lone surrogate U+DCFF"),
    ],
)
async def test_invalid_text_is_rejected(world: World, text: str, why: str) -> None:
    chat = await world.node()
    with pytest.raises(ChatInvalidText, match=re.escape(why)) as info:
        await chat.send("alice", "bob", "c1", text)
    assert info.value.code == "chat_invalid_text"
    assert await chat.undelivered("bob", 10) == []
    # Nothing was stored under that client id: a corrected retry creates the message.
    msg, created = await chat.send("alice", "bob", "c1", "fine")
    assert created and msg.text == "fine"


async def test_text_at_the_limit_and_unicode_are_accepted(world: World) -> None:
    chat = await world.node()
    for i, text in enumerate(["x" * MAX_TEXT, "👩‍👩‍👧 family", "नमस्ते", "a\u200db"]):
        msg, created = await chat.send("alice", "bob", f"c{i}", text)
        assert created and msg.text == text


# --- receipts -----------------------------------------------------------------------------


async def test_status_only_advances(world: World) -> None:
    chat = await world.node()
    [m1, m2] = await send_many(chat, world, "alice", "bob", 2)

    read = await chat.mark("bob", [m1.id], "read")
    assert [(m.id, m.status) for m in read] == [(m1.id, "read")]
    # Delivered after read: stays read, nothing advanced.
    assert await chat.mark("bob", [m1.id], "delivered") == []
    assert await chat.mark("bob", [m1.id], "read") == []

    delivered = await chat.mark("bob", [m2.id, m1.id, m2.id], "delivered")
    assert [(m.id, m.status) for m in delivered] == [(m2.id, "delivered")]
    read = await chat.mark("bob", [m1.id, m2.id], "read")
    assert [(m.id, m.status) for m in read] == [(m2.id, "read")]
    assert read[0] == Message(**{**_fields(m2), "status": "read"})

    history = await chat.history("alice", m1.conversation_id, None, 10)
    assert [m.status for m in history] == ["read", "read"]


def _fields(m: Message) -> dict[str, Any]:
    return {name: getattr(m, name) for name in Message.__slots__}


async def test_only_the_receiver_can_mark(world: World) -> None:
    chat = await world.node()
    [msg] = await send_many(chat, world, "alice", "bob", 1)

    assert await chat.mark("alice", [msg.id], "read") == []  # the sender
    assert await chat.mark("mallory", [msg.id], "delivered") == []  # a stranger
    assert await chat.mark("bob", ["no-such-id", msg.id], "delivered") == [
        Message(**{**_fields(msg), "status": "delivered"})
    ]
    [stored] = await chat.history("alice", msg.conversation_id, None, 1)
    assert stored.status == "delivered"


async def test_mark_rejects_malformed_requests(world: World) -> None:
    chat = await world.node()
    [msg] = await send_many(chat, world, "alice", "bob", 1)
    for status in ("sent", "seen", ""):
        with pytest.raises(ChatInvalid):
            await chat.mark("bob", [msg.id], status)
    with pytest.raises(ChatInvalid):
        await chat.mark("bob", msg.id, "read")  # a string, not a list of ids
    with pytest.raises(ChatInvalid):
        await chat.mark("bob", [msg.id, 7], "read")  # type: ignore[list-item]
    assert await chat.mark("bob", [], "read") == []


async def test_concurrent_marks_advance_each_message_once(world: World) -> None:
    nodes = [await world.node() for _ in range(3)]
    msgs = await send_many(nodes[0], world, "alice", "bob", 5)
    ids = [m.id for m in msgs]
    results = await asyncio.gather(*(n.mark("bob", ids, "read") for n in nodes))
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
    await chat.mark("bob", [m.id for m in first], "delivered")

    second = await chat.undelivered("bob", 4)
    assert second == [to_bob[4], *from_carol]
    # A message read straight from 'sent' is no longer undelivered either.
    await chat.mark("bob", [from_carol[0].id], "read")
    assert await chat.undelivered("bob", 10) == [to_bob[4], from_carol[1]]
    await chat.mark("bob", [to_bob[4].id, from_carol[1].id], "delivered")
    assert await chat.undelivered("bob", 10) == []
    assert [m.client_msg_id for m in await chat.undelivered("alice", 10)] == ["b0", "b1"]


# --- history ------------------------------------------------------------------------------


async def test_history_pages_newest_first_without_gaps(world: World) -> None:
    chat = await world.node()
    cid = conversation_id("alice", "bob")
    old = await send_many(chat, world, "alice", "bob", 4, "x")
    # Same created_at for several messages: the id breaks the tie across page boundaries.
    for i in range(4):
        await chat.send("bob", "alice", f"same{i}", f"same {i}")
    old += await chat.history("alice", cid, None, 4)
    old += await send_many(chat, world, "bob", "alice", 3, "y")
    expected = sorted(old, key=lambda m: (m.created_at, m.id), reverse=True)

    seen: list[Message] = []
    before: Cursor | None = None
    while True:
        page = await chat.history("alice", cid, before, 3)
        seen += page
        if not page:
            break
        # New messages arrive between pages: they are newer than every cursor.
        await send_many(chat, world, "alice", "bob", 2, f"new{len(seen)}-")
        before = Cursor.decode(Cursor.of(page[-1]).encode())

    assert [m.id for m in seen] == [m.id for m in expected]
    assert len(seen) == len(old) == 11
    newest = await chat.history("bob", cid, None, 1)
    assert newest[0].client_msg_id.startswith("new") and newest[0] not in old


async def test_history_forbidden_for_non_participants(world: World) -> None:
    chat = await world.node()
    [msg] = await send_many(chat, world, "alice", "bob", 1)
    with pytest.raises(ChatForbidden) as info:
        await chat.history("mallory", msg.conversation_id, None, 10)
    assert info.value.code == "chat_forbidden"
    with pytest.raises(ChatNotFound):
        await chat.history("alice", "dm:alice", None, 10)
    with pytest.raises(ChatNotFound):
        await chat.history("alice", "dm:bob:alice", None, 10)  # not canonical
    # A participant of a conversation with no messages gets an empty page.
    assert await chat.history("alice", conversation_id("alice", "zed"), None, 10) == []
    for limit in (0, -1, 1000, True):
        with pytest.raises(ChatInvalid):
            await chat.history("alice", msg.conversation_id, None, limit)


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
    await chat.mark("bob", [ab[0].id], "delivered")
    [bob_view] = await chat.conversations("bob", None, 10)
    assert bob_view.unread == {"alice": 1, "bob": 3}
    await chat.mark("bob", [ab[0].id], "read")
    [bob_view] = await chat.conversations("bob", None, 10)
    assert bob_view.unread == {"alice": 1, "bob": 2}
    await chat.mark("bob", [m.id for m in ab], "read")
    await chat.mark("bob", [m.id for m in ab], "read")  # again: no effect
    [bob_view] = await chat.conversations("bob", None, 10)
    assert bob_view.unread == {"alice": 1, "bob": 0}
    # The last message is shown with its current status.
    await chat.mark("alice", [reply.id], "read")
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
    sent, _ = await chat.send("alice", "bob", "c1", "before")
    await chat.block("bob", "alice")
    await chat.block("bob", "alice")  # idempotent

    assert await chat.is_blocked("alice", "bob") and await chat.is_blocked("bob", "alice")
    with pytest.raises(ChatBlocked) as info:
        await chat.send("alice", "bob", "c2", "hello?")
    assert info.value.code == "chat_blocked" and isinstance(info.value, ChatForbidden)
    with pytest.raises(ChatBlocked):
        await chat.send("bob", "alice", "c3", "hi")
    # A retry of a message stored before the block returns it (the request succeeded).
    assert await chat.send("alice", "bob", "c1", "before") == (sent, False)
    # Others are unaffected; the blocked user cannot lift the block.
    assert not await chat.is_blocked("alice", "carol")
    await chat.send("carol", "bob", "c1", "hi bob")
    await chat.unblock("alice", "bob")
    assert await chat.is_blocked("alice", "bob")

    await chat.unblock("bob", "alice")
    assert not await chat.is_blocked("alice", "bob")
    assert (await chat.send("alice", "bob", "c2", "hello again"))[1]
    # Both directions blocked: lifting one still blocks.
    await chat.block("alice", "bob")
    await chat.block("bob", "alice")
    await chat.unblock("bob", "alice")
    assert await chat.is_blocked("bob", "alice")
    with pytest.raises(ChatInvalid):
        await chat.block("alice", "alice")


async def test_typed_arguments_are_enforced(world: World) -> None:
    chat = await world.node()
    with pytest.raises(ChatInvalid):
        await chat.send("alice", "", "c1", "hi")
    with pytest.raises(ChatInvalid):
        await chat.send("alice", 42, "c1", "hi")  # type: ignore[arg-type]
    with pytest.raises(ChatInvalid):
        await chat.send("alice", "bob", "", "hi")
    with pytest.raises(ChatInvalid):
        await chat.send("alice", "bob", "c" * 65, "hi")
    with pytest.raises(ChatInvalidText):
        await chat.send("alice", "bob", "c1", None)  # type: ignore[arg-type]
    with pytest.raises(ChatInvalid):
        await chat.history("alice", conversation_id("alice", "bob"), "cursor", 10)  # type: ignore[arg-type]
    with pytest.raises(ChatInvalid):
        await chat.undelivered("alice", 0)


# --- Mongo only ---------------------------------------------------------------------------


async def test_new_mongo_store_sees_everything(mongo_world: MongoWorld) -> None:
    """A restart: a new MongoChat (new client) on the same database."""
    world = mongo_world
    chat = await world.node()
    msgs = await send_many(chat, world, "alice", "bob", 3)
    await chat.mark("bob", [msgs[0].id], "read")
    await chat.block("carol", "alice")
    before = (
        await chat.history("alice", msgs[0].conversation_id, None, 10),
        await chat.conversations("bob", None, 10),
        await chat.undelivered("bob", 10),
    )

    restarted = await world.node()
    after = (
        await restarted.history("alice", msgs[0].conversation_id, None, 10),
        await restarted.conversations("bob", None, 10),
        await restarted.undelivered("bob", 10),
    )
    assert after == before
    assert before[1][0].unread == {"alice": 0, "bob": 2}
    assert await restarted.is_blocked("alice", "carol")
    assert await restarted.send("alice", "bob", "m1", "again") == (msgs[1], False)
    world.clock.tick()
    msg, created = await restarted.send("alice", "bob", "later", "later")
    assert created and msg.id > msgs[-1].id


async def test_indexes_have_explicit_names(mongo_world: MongoWorld) -> None:
    chat = await mongo_world.node()
    await chat.ensure_indexes()  # idempotent
    db = mongo_world.admin[mongo_world.database]
    for collection, specs in INDEXES.items():
        info = await db[collection].index_information()
        for name, keys, unique in specs:
            assert info[name]["key"] == list(keys)
            assert bool(info[name].get("unique")) is unique


async def test_send_creates_missing_indexes_before_relying_on_them(
    mongo_world: MongoWorld,
) -> None:
    client = mongo_world.client()
    try:
        chat = MongoChat(client, mongo_world.database, mongo_world.clock)
        results = await asyncio.gather(*(chat.send("a", "b", "same", "x") for _ in range(5)))
        assert sum(created for _, created in results) == 1
    finally:
        await client.close()


async def test_retry_repairs_a_conversation_update_lost_in_a_crash(
    mongo_world: MongoWorld,
) -> None:
    chat = await mongo_world.node()
    msg, _ = await chat.send("alice", "bob", "c1", "hello")
    db = mongo_world.admin[mongo_world.database]
    # Simulate a crash between the insert and the conversation update.
    await db.conversations.delete_many({})
    await db.messages.update_one({"_id": msg.id}, {"$set": {"applied": False}})
    assert await chat.conversations("bob", None, 10) == []

    assert await chat.send("alice", "bob", "c1", "hello") == (msg, False)
    [conv] = await chat.conversations("bob", None, 10)
    assert conv.last_message == msg and conv.unread == {"alice": 0, "bob": 1}
    await chat.send("alice", "bob", "c1", "hello")
    [conv] = await chat.conversations("bob", None, 10)
    assert conv.unread == {"alice": 0, "bob": 1}


# --- pure functions -----------------------------------------------------------------------


def test_validate_text_accepts_utf8_bytes_and_rejects_invalid_utf8() -> None:
    assert validate_text("héllo".encode(), 10) == "héllo"
    with pytest.raises(ChatInvalidText, match="not valid UTF-8"):
        validate_text(b"bad \xff byte", 10)
    with pytest.raises(ChatInvalidText, match="not valid UTF-8"):
        validate_text(b"\xed\xa0\x80", 10)  # an encoded surrogate
    with pytest.raises(ChatInvalidText, match="must be a string"):
        validate_text(12, 10)


@pytest.mark.parametrize(
    ("a", "b"), [("alice", "bob"), ("a:b", "c"), ("a", "b:c"), ("x%3Ay", "x:y"), ("%", "%25")]
)
def test_conversation_ids_are_canonical_and_reversible(a: str, b: str) -> None:
    cid = conversation_id(a, b)
    assert cid == conversation_id(b, a)
    assert participants_of(cid) == tuple(sorted((a, b)))


def test_conversation_ids_of_different_pairs_differ() -> None:
    pairs = [("a:b", "c"), ("a", "b:c"), ("x%3Ay", "x:y"), ("x", "y")]
    assert len({conversation_id(a, b) for a, b in pairs}) == len(pairs)
    for bad in ("", "dm:", "dm:a", "dm:a:a", "dm:b:a", "dm:a:b:c", "dm:a%3a:b", "xx:a:b", 7):
        with pytest.raises(ChatNotFound):
            participants_of(bad)


def test_cursor_round_trips_and_rejects_garbage() -> None:
    c = Cursor(1_700_000_000.123456, "01ARZ3NDEKTSV4RRFFQ69G5FAV")
    assert Cursor.decode(c.encode()) == c
    assert Cursor.decode(Cursor(0.1 + 0.2, "dm:a:b").encode()) == Cursor(0.1 + 0.2, "dm:a:b")
    for bad in ("", "x", "1.5:", "nan:abc", "inf:abc", ":abc", 5, None):
        with pytest.raises(ChatInvalid):
            Cursor.decode(bad)


def test_message_ids_are_monotonic_and_time_ordered() -> None:
    gen = MessageIds()
    ids = [gen.next(1000.0) for _ in range(100)] + [gen.next(999.0), gen.next(1000.5)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert MessageIds().next(1001.0) > ids[-1]  # another process, a later millisecond
    # Overflow of the random part borrows the next millisecond.
    maxed = MessageIds(randbits=lambda bits: (1 << bits) - 1)
    first = maxed.next(5.0)
    maxed._last_rand = (1 << 80) - 1
    assert maxed.next(5.0) > first


def test_error_tree_and_codes() -> None:
    codes = {
        ChatInvalid: "chat_invalid",
        ChatInvalidText: "chat_invalid_text",
        ChatForbidden: "chat_forbidden",
        ChatBlocked: "chat_blocked",
        ChatNotFound: "chat_not_found",
    }
    for cls, code in codes.items():
        err = cls("why")
        assert isinstance(err, ChatError) and isinstance(err, JalwaError)
        assert err.code == code and err.message == "why"
