"""The admin surface on two nodes sharing the real Redis, PostgreSQL and MongoDB (wire
server): both answer the scenario's figures exactly; a ban made on one node ends the
user's call and closes their session on the other, keeps them out of every node and out
of the match pools, and is stored (a node started afterwards refuses them too)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient
from pymongo import AsyncMongoClient

from signalling.app import create_app
from signalling.keys import LEDGER
from tests.admin_scenario import RATE, auth, check_stats, play, stats_of
from tests.conftest import MakeSettings, MakeToken
from tests.contract.ledger.books import fresh_database
from tests.integration.services import forget_prefix, require_mongo, require_redis
from tests.wsutil import connect, recv

AiohttpClient = Any
Client = TestClient[Any, Any]


@asynccontextmanager
async def cluster(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings
) -> AsyncIterator[tuple[Client, Client, dict[str, Any]]]:
    mongo_url, database = require_mongo(), f"jalwa_test_{uuid.uuid4().hex[:12]}"
    prefix = f"jalwa-test-{uuid.uuid4().hex[:8]}"
    async with fresh_database() as dsn:
        common = {
            "redis_url": require_redis(),
            "database_url": dsn,
            "mongo_url": mongo_url,
            "chat": {"database": database},
            # A beat every second: a node's figures on the board are at most that old.
            "presence": {"key_prefix": prefix, "node_ttl_s": 3, "ttl_s": 3},
            "billing": {"default_rate": RATE, "orphan_after_s": 0},
        }
        nodes: list[Client] = []
        try:
            for name in ("node-a", "node-b"):
                nodes.append(
                    await aiohttp_client(create_app(make_settings(node_id=name, **common)))
                )
            yield nodes[0], nodes[1], common
            for node in nodes:
                assert await node.app[LEDGER].check() == []
        finally:
            for node in nodes:
                await node.close()  # before the database goes
            await forget_prefix(prefix)
            mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
            await mongo.drop_database(database)
            await mongo.close()


async def agreed_stats(a: Client, b: Client, token_for: MakeToken) -> list[dict[str, Any]]:
    """Both nodes' answers once the board holds both nodes' current figures."""
    deadline = time.monotonic() + 5
    while True:
        answers = [await stats_of(node, token_for) for node in (a, b)]
        shown = [{k: v for k, v in s.items() if k not in {"node", "nodes"}} for s in answers]
        sessions = [
            sorted((n["node"], n["sessions"], n["calls"]) for n in s["nodes"]) for s in answers
        ]
        if shown[0] == shown[1] and sessions[0] == sessions[1] and len(sessions[0]) == 2:
            return answers
        assert time.monotonic() < deadline, f"the nodes never agreed: {answers}"
        await asyncio.sleep(0.2)


async def test_both_nodes_answer_the_scenario_exactly(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings, token_for: MakeToken
) -> None:
    async with cluster(aiohttp_client, make_settings) as (a, b, _):
        played = await play(a, b, token_for)
        for stats in await agreed_stats(a, b, token_for):
            check_stats(stats, nodes=2)
        active = await (
            await b.get("/v1/admin/calls/active", headers=auth(token_for("root", "admin")))
        ).json()
        [call] = active["calls"]
        # carol (node B) called dave (node A): the call runs on the caller's node.
        assert (call["call_id"], call["node"]) == (played.running_call, "node-b")
        for ws in played.sockets.values():
            await ws.close()


async def closed_code(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    async with asyncio.timeout(5):
        while (await ws.receive()).type is aiohttp.WSMsgType.TEXT:
            pass
    return ws.close_code


async def test_a_ban_on_one_node_holds_on_every_node_and_is_stored(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings, token_for: MakeToken
) -> None:
    async with cluster(aiohttp_client, make_settings) as (a, b, common):
        admin = auth(token_for("root", "admin"))
        played = await play(a, b, token_for)
        carol, dave = played.sockets["carol"], played.sockets["dave"]  # carol is on node B
        # eve, a host on node B, offers herself to random matches.
        eve = await connect(b, token_for("eve", "host"))
        offer = {"type": "presence.update", "id": "p", "status": "available"}
        await eve.send_json({**offer, "match": {"random": True}})
        await recv(eve, "ack")
        waiting = (await stats_of(a, token_for))["waiting"]
        assert waiting.get("hosts_random") == 1, waiting

        resp = await a.put("/v1/admin/users/carol/ban", json={"reason": "abuse"}, headers=admin)
        assert resp.status == 200, await resp.text()
        # Out at once; her call ends for her peer (admin). Whether her own call.ended beats
        # the close depends on the order of two messages from node A to node B.
        assert await closed_code(carol) == 4003
        assert (await recv(dave, "call.ended"))["reason"] == "admin"
        for node in (a, b):
            again = await node.ws_connect(f"/v1/ws?token={token_for('carol')}")
            assert await closed_code(again) == 4003

        resp = await a.put("/v1/admin/users/eve/ban", json={"reason": "fake"}, headers=admin)
        assert resp.status == 200
        assert await closed_code(eve) == 4003
        # Nobody is matched with her now: a caller on node A waits, then times out of hosts.
        alice = played.sockets["alice"]
        await alice.send_json({"type": "match.request", "id": "r", "mode": "random"})
        await recv(alice, "ack")
        stats = await stats_of(a, token_for)
        assert stats["waiting"].get("hosts_random", 0) == 0, stats["waiting"]
        assert stats["waiting"].get("random") == 1, stats["waiting"]  # alice, unmatched
        try:
            found = await recv(alice, "match.found", within_s=1.0)
        except TimeoutError:
            found = None
        assert found is None, f"matched with a banned host: {found}"

        # Stored, not remembered: a node started now refuses carol as well.
        c = await aiohttp_client(create_app(make_settings(node_id="node-c", **common)))
        try:
            late = await c.ws_connect(f"/v1/ws?token={token_for('carol')}")
            assert await closed_code(late) == 4003
            user = await (await c.get("/v1/admin/users/carol", headers=admin)).json()
            assert user["banned"]["reason"] == "abuse" and user["banned"]["banned_by"] == "root"
            for ws in played.sockets.values():
                await ws.close()
        finally:
            await c.close()
