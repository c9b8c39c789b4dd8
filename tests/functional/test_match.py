"""Matchmaking through the hub on the embedded stores and ledger (§10): a match becomes an
ordinary paid call, a host who says no is replaced, match.next never goes back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import ClientWebSocketResponse
from aiohttp.test_utils import TestClient

from signalling.app import create_app
from signalling.keys import LEDGER
from tests.conftest import MakeSettings, MakeToken
from tests.wsutil import connect, recv

AiohttpClient = Any
DELHI = {"lat": 28.6139, "lon": 77.2090}


@pytest.fixture
async def client(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings
) -> AsyncIterator[TestClient[Any, Any]]:
    settings = make_settings(
        billing={"minute_seconds": 1, "loop_interval_s": 0.05, "default_rate": 5},
        match={"timeout_s": 3, "widen_every_s": 0.3, "nearby_start_km": 2},
    )
    app = create_app(settings)
    client: TestClient[Any, Any] = await aiohttp_client(app)
    yield client
    assert await app[LEDGER].check() == []


async def credit(client: TestClient[Any, Any], token_for: MakeToken, user: str, n: int) -> None:
    resp = await client.post(
        "/v1/admin/credit",
        json={"user_id": user, "amount": n, "idempotency_key": f"k-{user}"},
        headers={"Authorization": f"Bearer {token_for('root', 'admin')}"},
    )
    assert resp.status == 200, await resp.text()


async def host(
    client: TestClient[Any, Any], token_for: MakeToken, uid: str, **pools: Any
) -> ClientWebSocketResponse:
    ws = await connect(client, token_for(uid, "host"))
    update: dict[str, Any] = {"type": "presence.update", "id": "p", "status": "available"}
    update["match"] = {"random": True, **pools}
    if "location" in pools:
        update["location"] = update["match"].pop("location")
    await ws.send_json(update)
    await recv(ws, "ack")
    return ws


async def test_a_caller_is_matched_and_billed_like_a_direct_call(
    client: TestClient[Any, Any], token_for: MakeToken
) -> None:
    await credit(client, token_for, "ann", 50)
    ann = await connect(client, token_for("ann"))
    await ann.send_json({"type": "match.request", "id": "m", "mode": "random"})
    ticket = (await recv(ann, "ack"))["ticket"]
    assert (await recv(ann, "match.queued"))["ticket"] == ticket
    hal = await host(client, token_for, "hal")  # a host comes: the waiter gets them at once
    found = await recv(ann, "match.found")
    assert (found["ticket"], found["peer"]["id"], found["peer"]["rate"]) == (ticket, "hal", 5)
    incoming = await recv(hal, "call.incoming")
    assert (incoming["call_id"], incoming["match"]) == (found["call_id"], True)
    await hal.send_json({"type": "call.accept", "call_id": found["call_id"]})
    started = await recv(ann, "call.started")
    assert (started["rate"], started["balance"]) == (5, 45)
    await ann.send_json({"type": "call.end", "call_id": found["call_id"]})
    ended = await recv(ann, "call.ended")
    assert (ended["reason"], ended["coins"]) == ("hangup", 5)


async def test_a_host_who_rejects_is_replaced_and_next_never_goes_back(
    client: TestClient[Any, Any], token_for: MakeToken
) -> None:
    await credit(client, token_for, "ann", 100)
    hosts = {uid: await host(client, token_for, uid) for uid in ("h1", "h2", "h3")}
    ann = await connect(client, token_for("ann"))
    await ann.send_json({"type": "match.request", "id": "m", "mode": "random"})
    await recv(ann, "ack")
    first = await recv(ann, "match.found")
    assert first["peer"]["id"] == "h1"  # the host waiting longest
    await hosts["h1"].send_json({"type": "call.reject", "call_id": first["call_id"]})
    assert (await recv(ann, "call.ended"))["reason"] == "rejected"
    second = await recv(ann, "match.found")  # without asking again
    assert second["peer"]["id"] == "h2"
    await hosts["h2"].send_json({"type": "call.accept", "call_id": second["call_id"]})
    await recv(ann, "call.started")
    await ann.send_json({"type": "match.next", "id": "n"})
    assert (await recv(ann, "call.ended"))["reason"] == "hangup"
    await recv(ann, "ack")
    third = await recv(ann, "match.found")
    assert third["peer"]["id"] == "h3"  # h1 and h2 were just met: not again
    await hosts["h3"].send_json({"type": "call.accept", "call_id": third["call_id"]})
    await recv(ann, "call.started")
    await ann.send_json({"type": "match.next", "id": "n2"})
    await recv(ann, "call.ended")
    await recv(ann, "ack")
    await recv(ann, "match.queued")  # everyone free was met recently
    assert (await recv(ann, "match.timeout", within_s=5))["ticket"]


async def test_nearby_auto_accept_and_a_widening_radius(
    client: TestClient[Any, Any], token_for: MakeToken
) -> None:
    await credit(client, token_for, "ann", 50)
    north_10km = {"lat": DELHI["lat"] + 10 / 111.2, "lon": DELHI["lon"]}
    hal = await host(client, token_for, "hal", nearby=True, auto_accept=True, location=north_10km)
    ann = await connect(client, token_for("ann"))
    await ann.send_json({"type": "match.request", "id": "m", "mode": "nearby", "location": DELHI})
    await recv(ann, "ack")
    await recv(ann, "match.queued")  # 2 km at first; 4, 8, then 16 km reaches hal
    found = await recv(ann, "match.found", within_s=5)
    assert (found["peer"]["id"], found["peer"]["distance_km"]) == ("hal", 10)
    assert "lat" not in str(found)
    await recv(ann, "call.started")  # hal auto-accepts
    assert (await recv(hal, "call.started"))["call_id"] == found["call_id"]


async def test_requests_that_cannot_queue(
    client: TestClient[Any, Any], token_for: MakeToken
) -> None:
    poor = await connect(client, token_for("poor"))
    await poor.send_json({"type": "match.request", "id": "1", "mode": "random"})
    assert (await recv(poor, "error"))["code"] == "insufficient_balance"
    await credit(client, token_for, "poor", 10)
    await poor.send_json({"type": "match.request", "id": "2", "mode": "nearby"})
    assert (await recv(poor, "error"))["code"] == "location_required"
    hal = await connect(client, token_for("hal", "host"))
    await hal.send_json({"type": "match.request", "id": "3", "mode": "random"})
    assert (await recv(hal, "error"))["code"] == "forbidden"
    await poor.send_json({"type": "match.next", "id": "4"})
    assert (await recv(poor, "error"))["code"] == "not_matched"
    # a blocked host is never matched
    await poor.send_json({"type": "chat.block", "id": "5", "user_id": "hal"})
    await recv(poor, "ack")
    await hal.send_json(
        {"type": "presence.update", "status": "available", "match": {"random": True}}
    )
    await poor.send_json({"type": "match.request", "id": "6", "mode": "random"})
    await recv(poor, "ack")
    await recv(poor, "match.queued")
    await poor.send_json({"type": "match.cancel", "id": "7"})
    await recv(poor, "ack")
