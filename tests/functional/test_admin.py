"""The admin surface on the embedded stores: who may call it, the exact figures of a
scripted scenario, bans, metrics, health and readiness."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from signalling.app import create_app
from signalling.keys import HUB, LEDGER
from tests.admin_scenario import RATE, auth, check_stats, play, stats_of
from tests.conftest import MakeSettings, MakeToken
from tests.wsutil import connect, recv

AiohttpClient = Any
Client = TestClient[Any, Any]

# Every admin route (method, path, JSON body): the access matrix below covers each.
ADMIN_ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/v1/admin/stats", None),
    ("GET", "/v1/admin/calls/active", None),
    ("GET", "/v1/admin/users/alice", None),
    ("PUT", "/v1/admin/users/mallory/ban", {"reason": "spam"}),
    ("DELETE", "/v1/admin/users/mallory/ban", None),
    ("POST", "/v1/admin/credit", {"user_id": "alice", "amount": 1, "idempotency_key": "k"}),
    ("PUT", "/v1/admin/hosts/bob/rate", {"rate": 5}),
    ("PUT", "/v1/admin/gifts/rose", {"name": "Rose", "price": 9}),
    ("GET", "/v1/admin/withdrawals", None),
    ("POST", "/v1/admin/withdrawals/1/approve", None),
    ("POST", "/v1/admin/withdrawals/1/reject", None),
    ("POST", "/v1/admin/calls/nope/end", None),
    ("GET", "/v1/admin/recordings", None),
]


@pytest.fixture
async def client(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings
) -> AsyncIterator[Client]:
    app = create_app(make_settings(billing={"default_rate": RATE, "loop_interval_s": 0.05}))
    client: Client = await aiohttp_client(app)
    yield client
    assert await app[LEDGER].check() == []


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
async def test_admin_routes_are_for_admins_only(
    client: Client, token_for: MakeToken, method: str, path: str, body: Any
) -> None:
    resp = await client.request(method, path, json=body)
    assert resp.status == 401, await resp.text()
    assert (await resp.json())["error"] == "token_missing"
    for role in ("caller", "host"):
        resp = await client.request(method, path, json=body, headers=auth(token_for("u", role)))
        assert resp.status == 403, await resp.text()
        assert (await resp.json())["error"] == "forbidden"
    resp = await client.request(method, path, json=body, headers=auth(token_for("root", "admin")))
    # An admin gets past auth: a result, or the route's own refusal (no such withdrawal...).
    assert resp.status in {200, 404, 409}, await resp.text()


async def test_the_admin_page_is_for_admin_tokens_only(
    client: Client, token_for: MakeToken
) -> None:
    assert (await client.get("/admin")).status == 401
    assert (await client.get(f"/admin?token={token_for('bob', 'host')}")).status == 403
    resp = await client.get(f"/admin?token={token_for('root', 'admin')}")
    assert resp.status == 200
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert "/v1/admin/stats" in await resp.text()


async def test_stats_are_exactly_the_scenario(client: Client, token_for: MakeToken) -> None:
    played = await play(client, client, token_for)
    stats = await stats_of(client, token_for)
    check_stats(stats, nodes=1)
    active = await (
        await client.get("/v1/admin/calls/active", headers=auth(token_for("root", "admin")))
    ).json()
    [call] = active["calls"]
    assert (call["call_id"], call["payer"], call["host"]) == (played.running_call, "carol", "dave")
    assert (call["minutes"], call["coins"], call["rate"]) == (1, RATE, RATE)
    assert call["node"] == stats["node"]
    user = await (
        await client.get("/v1/admin/users/alice", headers=auth(token_for("root", "admin")))
    ).json()
    assert user["online"] and user["role"] == "caller" and user["in_call"] is None
    assert user["balances"]["wallet"] == 100 - RATE - 9
    assert [c["call_id"] for c in user["calls"]] == [played.ended_call]
    assert user["banned"] is None
    for ws in played.sockets.values():
        await ws.close()


async def test_a_ban_ends_the_call_disconnects_and_refuses_until_unbanned(
    client: Client, token_for: MakeToken
) -> None:
    played = await play(client, client, token_for)
    admin = auth(token_for("root", "admin"))
    carol, dave = played.sockets["carol"], played.sockets["dave"]
    resp = await client.put("/v1/admin/users/carol/ban", json={"reason": "abuse"}, headers=admin)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["banned"]["banned_by"] == "root"
    ended = await recv(dave, "call.ended")
    assert ended["reason"] == "admin"
    assert (await recv(carol, "call.ended"))["reason"] == "admin"
    closing = await carol.receive()
    while closing.type is aiohttp.WSMsgType.TEXT:
        closing = await carol.receive()
    assert carol.close_code == 4003
    again = await client.ws_connect(f"/v1/ws?token={token_for('carol')}")
    await again.receive()
    assert again.close_code == 4003
    user = await (await client.get("/v1/admin/users/carol", headers=admin)).json()
    assert user["banned"]["reason"] == "abuse" and not user["online"]
    assert (await client.delete("/v1/admin/users/carol/ban", headers=admin)).status == 200
    assert (await client.delete("/v1/admin/users/carol/ban", headers=admin)).status == 404
    back = await connect(client, token_for("carol"))
    await back.close()
    for ws in played.sockets.values():
        await ws.close()


async def test_metrics_parse_and_move_with_traffic(client: Client, token_for: MakeToken) -> None:
    def scrape(text: str) -> dict[str, float]:
        return {
            f"{s.name}{sorted(s.labels.items())}": s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    before = scrape(await (await client.get("/metrics")).text())
    played = await play(client, client, token_for)
    await asyncio.sleep(0.2)  # a few billing rounds (every 0.05 s)
    after = scrape(await (await client.get("/metrics")).text())
    chat_ok = "jalwa_frames_total[('result', 'ok'), ('type', 'chat.send')]"
    assert before.get(chat_ok, 0) == 0 and after[chat_ok] == 3
    hangup = "jalwa_calls_ended_total[('reason', 'hangup')]"
    assert after[hangup] == 1
    assert after["jalwa_sessions[]"] == 4
    assert after["jalwa_calls_active[]"] == 1
    assert after["jalwa_billing_batch_size_count[]"] > before["jalwa_billing_batch_size_count[]"]
    for ws in played.sockets.values():
        await ws.close()


async def test_health_and_readiness(client: Client) -> None:
    assert (await (await client.get("/healthz")).json())["status"] == "ok"
    ready = await client.get("/readyz")
    assert ready.status == 200 and (await ready.json())["status"] == "ready"
    client.app[HUB].draining = True
    ready = await client.get("/readyz")
    assert ready.status == 503 and (await ready.json())["status"] == "draining"
    assert (await client.get("/healthz")).status == 200  # alive, only not taking new users


async def test_the_metrics_are_the_ones_the_dashboard_charts(client: Client) -> None:
    from tests.unit.test_deploy_files import METRICS

    text = await (await client.get("/metrics")).text()
    exported: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        if family.name.endswith("_created"):
            continue  # prometheus-client's creation timestamps of histograms
        name = family.name + ("_total" if family.type == "counter" else "")
        exported[name] = family.type
    assert exported == {name: kind for name, (kind, _) in METRICS.items()}
