"""Two hub nodes on one Redis (and one MongoDB for chat) behave as one service."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import WSMsgType
from pymongo import AsyncMongoClient

from signalling.app import create_app
from signalling.calls.hooks import FreeCalls
from tests.conftest import MakeSettings, MakeToken
from tests.integration.services import require_mongo, require_redis
from tests.wsutil import recv

AiohttpClient = Any


async def test_presence_chat_and_session_replacement_across_nodes(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings, token_for: MakeToken
) -> None:
    mongo_url, database = require_mongo(), f"jalwa_test_{uuid.uuid4().hex[:12]}"
    prefix = f"jalwa-test-{uuid.uuid4().hex[:8]}"
    common = {
        "redis_url": require_redis(),
        "mongo_url": mongo_url,
        "chat": {"database": database},
        "presence": {"key_prefix": prefix},
    }
    try:
        node_a = await aiohttp_client(
            create_app(make_settings(node_id="node-a", **common), hooks=FreeCalls())
        )
        node_b = await aiohttp_client(
            create_app(make_settings(node_id="node-b", **common), hooks=FreeCalls())
        )
        alice = await node_a.ws_connect("/v1/ws?token=" + token_for("alice"))
        await recv(alice, "welcome")
        bob = await node_b.ws_connect("/v1/ws?token=" + token_for("bob", "host"))
        await recv(bob, "welcome")

        await alice.send_json({"type": "presence.watch", "id": "w", "user_ids": ["bob"]})
        assert (await recv(alice, "ack"))["presence"] == {"bob": "available"}
        await bob.send_json({"type": "presence.update", "id": "u", "status": "away"})
        changed = await recv(alice, "presence.changed")
        if changed["status"] == "available":  # bob's coming online may arrive after the ack
            changed = await recv(alice, "presence.changed")
        assert (changed["user_id"], changed["status"]) == ("bob", "away")

        await alice.send_json(
            {"type": "chat.send", "id": "m", "to": "bob", "client_msg_id": "c1", "text": "hi"}
        )
        sent = (await recv(alice, "ack"))["message"]
        got = (await recv(bob, "chat.message"))["message"]
        assert got["id"] == sent["id"]
        await bob.send_json({"type": "chat.read", "id": "r", "message_ids": [got["id"]]})
        receipt = await recv(alice, "chat.receipt")
        assert (receipt["status"], receipt["by"]) == ("read", "bob")

        # bob connects again, on node A: his older session on node B is closed (4009).
        bob2 = await node_a.ws_connect("/v1/ws?token=" + token_for("bob", "host"))
        await recv(bob2, "welcome")
        while True:
            msg = await bob.receive(timeout=5)
            if msg.type is not WSMsgType.TEXT:
                break
        assert msg.type is WSMsgType.CLOSE and msg.data == 4009
        await alice.send_json(
            {"type": "chat.send", "id": "m2", "to": "bob", "client_msg_id": "c2", "text": "again"}
        )
        assert (await recv(bob2, "chat.message"))["message"]["text"] == "again"
        for ws in (alice, bob2):
            await ws.close()
    finally:
        mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
        await mongo.drop_database(database)
        await mongo.close()
