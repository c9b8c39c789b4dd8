"""GET /v1/hosts on the embedded stores: the hosts one can call now (online, status
available; not away, not in a call, not the asker), with names and the rates the ledger
charges, sorted by name then id; ``limit``; the refusals."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from signalling.app import create_app
from signalling.keys import LEDGER
from tests.conftest import MakeSettings, MakeToken
from tests.wsutil import connect, recv

AiohttpClient = Any
Client = TestClient[Any, Any]
Socket = aiohttp.ClientWebSocketResponse
RATE = 7  # billing.default_rate here
SET_RATE = 3  # zara's own rate, set by an admin


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def client(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings
) -> AsyncIterator[Client]:
    app = create_app(make_settings(billing={"default_rate": RATE}))
    client: Client = await aiohttp_client(app)
    yield client
    assert await app[LEDGER].check() == []


async def hosts(client: Client, headers: dict[str, str], query: str = "") -> list[Any]:
    resp = await client.get(f"/v1/hosts{query}", headers=headers)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert list(body) == ["hosts"], body
    listed: list[Any] = body["hosts"]
    return listed


async def until_hosts(
    client: Client, headers: dict[str, str], expected: list[Any], query: str = ""
) -> None:
    """Presence is written as sessions come, change and go: wait (briefly) for the list."""
    deadline = time.monotonic() + 5
    while (got := await hosts(client, headers, query)) != expected:
        assert time.monotonic() < deadline, f"hosts stayed {got}, expected {expected}"
        await asyncio.sleep(0.05)


async def update(ws: Socket, status: str, **extra: Any) -> None:
    await ws.send_json({"type": "presence.update", "id": "p", "status": status, **extra})
    await recv(ws, "ack")


async def test_the_hosts_one_can_call_now(client: Client, token_for: MakeToken) -> None:
    admin = auth(token_for("root", "admin"))
    resp = await client.put("/v1/admin/hosts/h1/rate", json={"rate": SET_RATE}, headers=admin)
    assert resp.status == 200, await resp.text()
    resp = await client.post(
        "/v1/admin/credit",
        json={"user_id": "payer", "amount": 100, "idempotency_key": "k-payer"},
        headers=admin,
    )
    assert resp.status == 200, await resp.text()
    # Ids and names sort differently: the list goes by name, then id.
    zara = await connect(client, token_for("h1", "host", name="Zara"))
    asha = await connect(client, token_for("h2", "host", name="Asha"))
    away = await connect(client, token_for("h3", "host", name="Aaron"))
    busy = await connect(client, token_for("h4", "host", name="Abe"))
    alice = await connect(client, token_for("alice", name="Alice"))
    payer = await connect(client, token_for("payer", name="Payer"))
    await update(zara, "available", location={"lat": 28.6, "lon": 77.2})
    await update(away, "away")
    await payer.send_json({"type": "call.invite", "id": "i", "to": "h4"})
    call_id = (await recv(payer, "ack"))["call_id"]
    await recv(busy, "call.incoming")
    await busy.send_json({"type": "call.accept", "call_id": call_id})
    await recv(payer, "call.started")
    await recv(busy, "call.started")

    asker = auth(token_for("alice", name="Alice"))
    both = [
        {"id": "h2", "name": "Asha", "rate": RATE},
        {"id": "h1", "name": "Zara", "rate": SET_RATE},
    ]
    await until_hosts(client, asker, both)  # nothing of where zara is, nor her node/session
    assert await hosts(client, asker, "?limit=1") == both[:1]
    assert await hosts(client, asker, "?limit=200") == both
    # A host asking is not in their own list.
    assert await hosts(client, auth(token_for("h1", "host", name="Zara"))) == both[:1]

    await update(asha, "away")
    await until_hosts(client, asker, both[1:])
    await update(asha, "available")
    await until_hosts(client, asker, both)
    await zara.close()
    await until_hosts(client, asker, both[:1])

    # The call ends: its host is available again.
    await payer.send_json({"type": "call.end", "id": "e", "call_id": call_id})
    await recv(busy, "call.ended")
    await until_hosts(client, asker, [{"id": "h4", "name": "Abe", "rate": RATE}, both[0]])
    for ws in (asha, away, busy, alice, payer):
        await ws.close()


async def test_one_name_twice_goes_by_id(client: Client, token_for: MakeToken) -> None:
    sockets = [
        await connect(client, token_for(uid, "host", name="Sam")) for uid in ("s2", "s1", "s3")
    ]
    asker = auth(token_for("alice"))
    sams = [{"id": uid, "name": "Sam", "rate": RATE} for uid in ("s1", "s2", "s3")]
    await until_hosts(client, asker, sams)
    assert await hosts(client, asker, "?limit=2") == sams[:2]
    for ws in sockets:
        await ws.close()


async def test_limit_must_be_1_to_200(client: Client, token_for: MakeToken) -> None:
    asker = auth(token_for("alice"))
    for limit in ("0", "201", "abc", "-1", "", "%C2%B2"):
        resp = await client.get(f"/v1/hosts?limit={limit}", headers=asker)
        body = await resp.json()
        assert (resp.status, body["error"]) == (400, "invalid_request"), (limit, body)
        assert set(body) == {"error", "message"}, body
    assert await hosts(client, asker, "?limit=1") == []
    assert await hosts(client, asker, "?limit=200") == []


async def test_a_token_is_needed_and_a_banned_user_is_refused(
    client: Client, token_for: MakeToken
) -> None:
    resp = await client.get("/v1/hosts")
    assert (resp.status, (await resp.json())["error"]) == (401, "token_missing")
    resp = await client.get("/v1/hosts", headers=auth("not.a.jwt"))
    assert (resp.status, (await resp.json())["error"]) == (401, "token_invalid")
    admin = auth(token_for("root", "admin"))
    resp = await client.put("/v1/admin/users/mallory/ban", json={"reason": "x"}, headers=admin)
    assert resp.status == 200, await resp.text()
    for role in ("caller", "host"):
        resp = await client.get("/v1/hosts", headers=auth(token_for("mallory", role)))
        assert (resp.status, (await resp.json())["error"]) == (403, "banned"), role
    # Every role may list hosts.
    for role in ("caller", "host", "admin"):
        assert await hosts(client, auth(token_for("u1", role))) == []


async def test_a_banned_host_leaves_the_list(client: Client, token_for: MakeToken) -> None:
    host = await connect(client, token_for("h1", "host", name="Zara"))
    asker = auth(token_for("alice"))
    await until_hosts(client, asker, [{"id": "h1", "name": "Zara", "rate": RATE}])
    admin = auth(token_for("root", "admin"))
    resp = await client.put("/v1/admin/users/h1/ban", json={"reason": "x"}, headers=admin)
    assert resp.status == 200, await resp.text()
    await until_hosts(client, asker, [])
    await host.close()
