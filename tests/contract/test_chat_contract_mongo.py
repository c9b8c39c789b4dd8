"""Contract suite for ``MongoChat`` alone: restarts, indexes, crash repair (the shared
contract is test_chat_contract.py; the world is in chat_worlds.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from signalling.chat.model import NewMessage
from signalling.chat.mongo import INDEXES, MongoChat
from tests.contract.chat_worlds import MongoWorld, marking, open_world, send_many


@pytest.fixture
async def mongo_world() -> AsyncIterator[MongoWorld]:
    async with open_world("mongo") as w:
        assert isinstance(w, MongoWorld)
        yield w


async def test_new_mongo_store_sees_everything(mongo_world: MongoWorld) -> None:
    """A restart: a new MongoChat (new client) on the same database."""
    world = mongo_world
    chat = await world.node()
    msgs = await send_many(chat, world, "alice", "bob", 3)
    await chat.mark(marking("bob", [msgs[0].id], "read"))
    await chat.block("carol", "alice")
    before = (
        await chat.history(msgs[0].conversation_id, None, 10),
        await chat.conversations("bob", None, 10),
        await chat.undelivered("bob", 10),
    )

    restarted = await world.node()
    after = (
        await restarted.history(msgs[0].conversation_id, None, 10),
        await restarted.conversations("bob", None, 10),
        await restarted.undelivered("bob", 10),
    )
    assert after == before
    assert before[1][0].unread == {"alice": 0, "bob": 2}
    assert await restarted.is_blocked("alice", "carol")
    assert await restarted.send(NewMessage("alice", "bob", "m1", "again")) == (msgs[1], False)
    world.clock.tick()
    msg, created = await restarted.send(NewMessage("alice", "bob", "later", "later"))
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
        results = await asyncio.gather(
            *(chat.send(NewMessage("a", "b", "same", "x")) for _ in range(5))
        )
        assert sum(created for _, created in results) == 1
    finally:
        await client.close()


async def test_retry_repairs_a_conversation_update_lost_in_a_crash(
    mongo_world: MongoWorld,
) -> None:
    chat = await mongo_world.node()
    msg, _ = await chat.send(NewMessage("alice", "bob", "c1", "hello"))
    db = mongo_world.admin[mongo_world.database]
    # Simulate a crash between the insert and the conversation update.
    await db.conversations.delete_many({})
    await db.messages.update_one({"_id": msg.id}, {"$set": {"applied": False}})
    assert await chat.conversations("bob", None, 10) == []

    assert await chat.send(NewMessage("alice", "bob", "c1", "hello")) == (msg, False)
    [conv] = await chat.conversations("bob", None, 10)
    assert conv.last_message == msg and conv.unread == {"alice": 0, "bob": 1}
    await chat.send(NewMessage("alice", "bob", "c1", "hello"))
    [conv] = await chat.conversations("bob", None, 10)
    assert conv.unread == {"alice": 0, "bob": 1}
