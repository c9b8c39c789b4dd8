"""GET /v1/hosts on two nodes sharing the real Redis (presence) and PostgreSQL (rates):
hosts connected to either node are listed, with the same answer from both nodes, and a
host who goes away on one node leaves both nodes' lists."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from aiohttp.test_utils import TestClient

from signalling.app import create_app
from signalling.keys import LEDGER
from tests.conftest import MakeSettings, MakeToken
from tests.contract.ledger.books import fresh_database
from tests.integration.services import forget_prefix, require_redis
from tests.wsutil import connect, recv

AiohttpClient = Any
Client = TestClient[Any, Any]
RATE = 7


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def until_both(nodes: list[Client], headers: dict[str, str], expected: Any) -> None:
    deadline = time.monotonic() + 5
    while True:
        got = []
        for node in nodes:
            resp = await node.get("/v1/hosts", headers=headers)
            assert resp.status == 200, await resp.text()
            got.append(await resp.json())
        if got == [{"hosts": expected}] * len(nodes):
            return
        assert time.monotonic() < deadline, f"the nodes answered {got}, expected {expected}"
        await asyncio.sleep(0.05)


async def test_both_nodes_list_the_same_hosts(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings, token_for: MakeToken
) -> None:
    prefix = f"jalwa-test-{uuid.uuid4().hex[:8]}"
    async with fresh_database() as dsn:
        common = {
            "redis_url": require_redis(),
            "database_url": dsn,
            "presence": {"key_prefix": prefix},
            "billing": {"default_rate": RATE, "orphan_after_s": 0},
        }
        nodes: list[Client] = []
        try:
            for name in ("node-a", "node-b"):
                app = create_app(make_settings(node_id=name, **common))
                nodes.append(await aiohttp_client(app))
            a, b = nodes
            admin = auth(token_for("root", "admin"))
            resp = await b.put("/v1/admin/hosts/h1/rate", json={"rate": 3}, headers=admin)
            assert resp.status == 200, await resp.text()
            zara = await connect(a, token_for("h1", "host", name="Zara"))
            asha = await connect(b, token_for("h2", "host", name="Asha"))
            away = await connect(a, token_for("h3", "host", name="Aaron"))
            await away.send_json({"type": "presence.update", "id": "p", "status": "away"})
            await recv(away, "ack")
            asker = auth(token_for("alice"))
            both = [
                {"id": "h2", "name": "Asha", "rate": RATE},
                {"id": "h1", "name": "Zara", "rate": 3},
            ]
            await until_both(nodes, asker, both)
            await zara.send_json({"type": "presence.update", "id": "p", "status": "away"})
            await recv(zara, "ack")
            await until_both(nodes, asker, both[:1])
            await asha.close()
            await until_both(nodes, asker, [])
            for ws in (zara, away):
                await ws.close()
            for node in nodes:
                assert await node.app[LEDGER].check() == []
        finally:
            for node in nodes:
                await node.close()  # before the database goes
            await forget_prefix(prefix)
