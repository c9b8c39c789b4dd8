"""The worlds the ``ChatStore`` contract suites run in (test_chat_contract*.py).

A world has a manual clock (both adapters take ``now``) and ``node()``: another store
object on the same data. For memory that is the same object; for Mongo it is a new
``MongoChat`` with its own ``AsyncMongoClient``, as another jalwa process (or the same one
after a restart) has.

The Mongo world talks to a MongoDB wire-protocol server at JALWA_TEST_MONGO_URL through the
real pymongo async driver (``scripts/test`` starts mongoeco's server and sets it; by hand:
``scripts/mongo-wire start`` and ``export JALWA_TEST_MONGO_URL=$(scripts/mongo-wire url)``).
If it is unset or unreachable the tests fail, they never skip. Each test uses a database of
its own and drops it afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from signalling.chat.memory import MemoryChat
from signalling.chat.model import MarkRequest, MarkStatus, Message, NewMessage
from signalling.chat.mongo import MongoChat
from signalling.chat.store import ChatStore

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
        self.store = MemoryChat(self.clock)

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
        store = MongoChat(client, self.database, self.clock)
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


def marking(user: str, ids: Sequence[str], status: MarkStatus) -> MarkRequest:
    return MarkRequest(user, tuple(ids), status)


async def send_many(
    chat: ChatStore, world: World, sender: str, receiver: str, n: int, tag: str = "m"
) -> list[Message]:
    out = []
    for i in range(n):
        world.clock.tick()
        msg, created = await chat.send(NewMessage(sender, receiver, f"{tag}{i}", f"{tag} {i}"))
        assert created
        out.append(msg)
    return out
