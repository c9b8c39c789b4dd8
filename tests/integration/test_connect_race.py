"""Two connects of one user racing on two nodes (real Redis): exactly one session is left.

Each node's connect claims the user's presence record in one step (presence/store.py), so
whichever claims second sees the first and closes it (4009), even while it is still joining.
Before the claim, both read "nobody holds the user" and both kept a live session: a ghost
that presence named on one node while the other went on serving it.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
from aiohttp import WSMsgType
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from signalling.app import create_app
from signalling.calls.hooks import FreeCalls
from signalling.keys import HUB
from signalling.presence.redis_store import RedisPresence
from tests.conftest import MakeSettings, MakeToken
from tests.integration.services import require_mongo, require_redis

AiohttpClient = Any
USERS = 24
SETTLE_S = 2.0  # for a CloseSession to cross the node bus (milliseconds, in practice)


async def _outcome(ws: aiohttp.ClientWebSocketResponse) -> tuple[str | None, int | None]:
    """(session id from the welcome if one came, close code if closed within SETTLE_S)."""
    session_id = None
    try:
        async with asyncio.timeout(SETTLE_S):
            while True:
                msg = await ws.receive()
                if msg.type is not WSMsgType.TEXT:
                    return session_id, ws.close_code
                frame = msg.json()
                if frame["type"] == "welcome":
                    session_id = frame["session_id"]
    except TimeoutError:
        return session_id, None  # still open


async def test_racing_connects_on_two_nodes_leave_one_live_session(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings, token_for: MakeToken
) -> None:
    redis_url, mongo_url = require_redis(), require_mongo()
    database = f"jalwa_test_{uuid.uuid4().hex[:12]}"
    prefix = f"jalwa-test-{uuid.uuid4().hex[:8]}"
    common = {
        "redis_url": redis_url,
        "mongo_url": mongo_url,
        "chat": {"database": database},
        "presence": {"key_prefix": prefix},
    }
    redis = Redis.from_url(redis_url)
    reader = RedisPresence(redis, "reader", prefix=prefix, ttl_s=15, node_ttl_s=5)
    try:
        nodes = [
            await aiohttp_client(
                create_app(make_settings(node_id=f"node-{n}", **common), hooks=FreeCalls())
            )
            for n in "ab"
        ]
        users = [f"racer{i}" for i in range(USERS)]
        tokens = {uid: token_for(uid, "host") for uid in users}
        sockets = await asyncio.gather(
            *(node.ws_connect("/v1/ws?token=" + tokens[uid]) for uid in users for node in nodes)
        )
        outcomes = await asyncio.gather(*(_outcome(ws) for ws in sockets))
        records = await reader.get_many(users)
        hubs = [node.app[HUB] for node in nodes]

        for i, uid in enumerate(users):
            pair = outcomes[2 * i : 2 * i + 2]
            still_open = [n for n, (_, code) in enumerate(pair) if code is None]
            assert len(still_open) == 1, f"{uid}: {pair} (two live sessions, or none)"
            (survivor,) = still_open
            loser_code = pair[1 - survivor][1]
            assert loser_code == 4009, f"{uid}: the other socket closed {loser_code}"
            session_id = pair[survivor][0]
            record = records.get(uid)
            assert record is not None, f"{uid} is offline though a session is open"
            assert (record.node_id, record.session_id) == (f"node-{'ab'[survivor]}", session_id)
            assert record.status == "available"
            holders = [n for n, hub in enumerate(hubs) if uid in hub.sessions]
            assert holders == [survivor], f"{uid} held by nodes {holders}"
        for ws in sockets:
            await ws.close()
    finally:
        await redis.aclose()
        mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
        await mongo.drop_database(database)
        await mongo.close()
