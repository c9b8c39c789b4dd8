"""Chat through the hub and REST, on the embedded store and on MongoDB (real pymongo driver
against the wire server the test command starts)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from pymongo import AsyncMongoClient

from signalling.app import create_app
from signalling.calls.hooks import FreeCalls
from signalling.settings import Settings
from tests.conftest import MakeSettings, MakeToken
from tests.integration.services import require_mongo
from tests.wsutil import connect, recv

AiohttpClient = Any
Start = Callable[[], Any]


@pytest.fixture(params=["memory", "mongo"])
async def chat_settings(
    request: pytest.FixtureRequest, make_settings: MakeSettings
) -> AsyncIterator[Settings]:
    if request.param == "memory":
        yield make_settings()
        return
    url = require_mongo()
    database = f"jalwa_test_{uuid.uuid4().hex[:12]}"
    yield make_settings(mongo_url=url, chat={"database": database})
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url)
    try:
        await client.drop_database(database)
    finally:
        await client.close()


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, chat_settings: Settings) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(chat_settings, hooks=FreeCalls()))  # type: ignore[no-any-return]


async def send(
    ws: aiohttp.ClientWebSocketResponse, to: str, cmid: str, text: str
) -> dict[str, Any]:
    await ws.send_json(
        {"type": "chat.send", "id": cmid, "to": to, "client_msg_id": cmid, "text": text}
    )
    ack = await recv(ws, "ack")
    assert ack["id"] == cmid, ack
    message: dict[str, Any] = ack["message"]
    return message


async def test_send_deliver_read_receipts(
    client: TestClient[Any, Any], token_for: MakeToken
) -> None:
    alice = await connect(client, token_for("alice"))
    bob = await connect(client, token_for("bob", "host"))
    sent = await send(alice, "bob", "m1", "hello bob")
    assert sent["status"] == "sent" and sent["from"] == "alice"
    got = (await recv(bob, "chat.message"))["message"]
    assert got["id"] == sent["id"] and got["text"] == "hello bob"
    await bob.send_json({"type": "chat.delivered", "id": "d", "message_ids": [got["id"]]})
    receipt = await recv(alice, "chat.receipt")
    assert receipt == {
        "type": "chat.receipt",
        "message_ids": [got["id"]],
        "status": "delivered",
        "by": "bob",
    }
    await bob.send_json({"type": "chat.read", "id": "r", "message_ids": [got["id"]]})
    assert (await recv(alice, "chat.receipt"))["status"] == "read"
    await bob.send_json({"type": "chat.delivered", "id": "d2", "message_ids": [got["id"]]})
    await recv(bob, "ack")  # never backwards: no receipt for this one
    await bob.send_json({"type": "chat.typing", "to": "alice"})
    assert (await recv(alice, "chat.typing"))["from"] == "bob"

    again = await send(alice, "bob", "m1", "hello bob (retry)")  # same client_msg_id
    assert again["id"] == sent["id"] and again["text"] == "hello bob"
    await alice.send_json(
        {
            "type": "chat.send",
            "id": "x",
            "to": "bob",
            "client_msg_id": "m2",
            "text": "bad\u0007bell",
        }
    )
    assert (await recv(alice, "error"))["code"] == "chat_invalid_text"
    # The rules refused it before the store was asked: a corrected retry is a new message.
    fixed = await send(alice, "bob", "m2", "no bell")
    assert fixed["id"] != sent["id"] and fixed["text"] == "no bell"
    assert (await recv(bob, "chat.message"))["message"]["id"] == fixed["id"]
    await alice.send_json(
        {"type": "chat.send", "id": "me", "to": "alice", "client_msg_id": "m3", "text": "hi"}
    )
    assert (await recv(alice, "error"))["code"] == "chat_invalid"


async def test_offline_receiver_gets_backlog_in_order_once(
    client: TestClient[Any, Any], token_for: MakeToken
) -> None:
    alice = await connect(client, token_for("alice"))
    ids = [(await send(alice, "bob", f"m{n}", f"msg {n}"))["id"] for n in range(5)]
    bob = await client.ws_connect("/v1/ws?token=" + token_for("bob", "host"))
    await recv(bob, "welcome")
    backlog = [(await recv(bob, "chat.message"))["message"]["id"] for _ in ids]
    assert backlog == ids
    await bob.send_json({"type": "chat.delivered", "id": "d", "message_ids": backlog})
    await recv(bob, "ack")
    await bob.close()
    bob = await client.ws_connect("/v1/ws?token=" + token_for("bob", "host"))
    await recv(bob, "welcome")
    await bob.send_json({"type": "presence.update", "id": "p", "status": "available"})
    frames = []
    while (frame := await bob.receive_json(timeout=3))["type"] != "ack":
        frames.append(frame["type"])
    assert "chat.message" not in frames  # acknowledged messages are not pushed again


async def test_history_pages_without_gaps_while_messages_arrive(
    client: TestClient[Any, Any], token_for: MakeToken
) -> None:
    alice = await connect(client, token_for("alice"))
    bob = await connect(client, token_for("bob", "host"))
    for n in range(7):
        await send(alice, "bob", f"a{n}", f"first {n}")
    conv = "dm:alice:bob"
    seen: list[str] = []
    before = None
    while True:
        req: dict[str, Any] = {
            "type": "chat.history",
            "id": f"h{len(seen)}",
            "conversation_id": conv,
            "limit": 3,
        }
        if before:
            req["before"] = before
        await bob.send_json(req)
        page = await recv(bob, "ack")
        seen += [m["text"] for m in page["messages"]]
        await send(alice, "bob", f"late{len(seen)}", "arrived while paging")
        before = page.get("next_before")
        if before is None:
            break
    assert seen == [f"first {n}" for n in reversed(range(7))]

    carol = await connect(client, token_for("carol"))
    await carol.send_json({"type": "chat.history", "id": "c", "conversation_id": conv})
    assert (await recv(carol, "error"))["code"] == "chat_forbidden"
    headers = {"Authorization": "Bearer " + token_for("carol")}
    resp = await client.get(f"/v1/conversations/{conv}/messages", headers=headers)
    assert resp.status == 403
    headers = {"Authorization": "Bearer " + token_for("bob", "host")}
    resp = await client.get(f"/v1/conversations/{conv}/messages?limit=2", headers=headers)
    body = await resp.json()
    assert resp.status == 200 and len(body["messages"]) == 2 and body["next_before"]
    convs = await (await client.get("/v1/conversations", headers=headers)).json()
    assert convs["conversations"][0]["id"] == conv and convs["conversations"][0]["unread"] > 0


async def test_block_stops_messages_and_calls(
    client: TestClient[Any, Any], token_for: MakeToken
) -> None:
    alice = await connect(client, token_for("alice"))
    await connect(client, token_for("bob", "host"))
    await alice.send_json({"type": "chat.block", "id": "b", "user_id": "bob"})
    await recv(alice, "ack")
    await alice.send_json(
        {"type": "chat.send", "id": "s", "to": "bob", "client_msg_id": "z", "text": "hi"}
    )
    assert (await recv(alice, "error"))["code"] == "chat_blocked"
    await alice.send_json({"type": "call.invite", "id": "c", "to": "bob"})
    assert (await recv(alice, "error"))["code"] == "blocked"
    await alice.send_json({"type": "chat.unblock", "id": "u", "user_id": "bob"})
    await recv(alice, "ack")
    await send(alice, "bob", "z", "hi again")


async def test_messages_survive_a_restart(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings, token_for: MakeToken
) -> None:
    url = require_mongo()
    database = f"jalwa_test_{uuid.uuid4().hex[:12]}"
    settings = make_settings(mongo_url=url, chat={"database": database})
    try:
        first = await aiohttp_client(create_app(settings, hooks=FreeCalls()))
        alice = await connect(first, token_for("alice"))
        sent = await send(alice, "bob", "m1", "kept across restarts")
        await alice.close()
        await first.close()  # jalwa stops; the message lives in MongoDB

        second = await aiohttp_client(create_app(settings, hooks=FreeCalls()))
        bob = await second.ws_connect("/v1/ws?token=" + token_for("bob", "host"))
        await recv(bob, "welcome")
        got = (await recv(bob, "chat.message"))["message"]
        assert (got["id"], got["text"]) == (sent["id"], "kept across restarts")
    finally:
        mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url)
        await mongo.drop_database(database)
        await mongo.close()
