"""A scripted scenario for the admin figures, played on one node or across two (``a`` and
``b`` are test clients of the nodes; the same client twice for one node), and the figures
``GET /v1/admin/stats`` must then return: exactly what happened."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from tests.conftest import MakeToken
from tests.wsutil import connect, recv

Client = TestClient[Any, Any]
RATE = 7  # billing.default_rate of the scenario; the share is the default 5000 bps
GIFT_PRICE = 9


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Played:
    sockets: dict[str, aiohttp.ClientWebSocketResponse]
    running_call: str  # carol -> dave, still charging
    ended_call: str  # alice -> bob, ended by alice after a gift and three messages


EXPECTED_WINDOW = {
    "calls_started": 2,
    "call_minutes": 2,  # minute 1 of each (minute_seconds is long)
    "call_coins": 2 * RATE,
    "gifts": 1,
    "gift_coins": GIFT_PRICE,
    "coins_spent": 2 * RATE + GIFT_PRICE,
    # The platform keeps the remainder of each floored host share: 7 -> 4, 9 -> 5.
    "platform_revenue": 2 * (RATE - RATE // 2) + (GIFT_PRICE - GIFT_PRICE // 2),
    "messages": 3,
}


async def _ok(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def _call(
    caller: aiohttp.ClientWebSocketResponse, host: aiohttp.ClientWebSocketResponse, to: str
) -> str:
    await caller.send_json({"type": "call.invite", "id": "i", "to": to})
    cid: str = (await recv(caller, "ack"))["call_id"]
    await recv(host, "call.incoming")
    await host.send_json({"type": "call.accept", "call_id": cid})
    await recv(caller, "call.started")
    await recv(host, "call.started")
    return cid


async def play(a: Client, b: Client, token_for: MakeToken) -> Played:
    admin = auth(token_for("root", "admin"))
    for user, coins in (("alice", 100), ("carol", 50)):
        await _ok(
            await a.post(
                "/v1/admin/credit",
                json={"user_id": user, "amount": coins, "idempotency_key": f"k-{user}"},
                headers=admin,
            )
        )
    await _ok(
        await a.put(
            "/v1/admin/gifts/rose", json={"name": "Rose", "price": GIFT_PRICE}, headers=admin
        )
    )
    alice = await connect(a, token_for("alice"))
    bob = await connect(b, token_for("bob", "host"))
    carol = await connect(b, token_for("carol"))
    dave = await connect(a, token_for("dave", "host"))
    ended = await _call(alice, bob, "bob")
    await alice.send_json(
        {
            "type": "gift.send",
            "id": "g",
            "call_id": ended,
            "to": "bob",
            "gift_id": "rose",
            "idempotency_key": "g1",
        }
    )
    await recv(alice, "ack")
    await recv(bob, "gift.received")
    for sender, to, n in ((alice, "bob", 1), (alice, "bob", 2), (bob, "alice", 3)):
        await sender.send_json(
            {"type": "chat.send", "id": f"m{n}", "to": to, "client_msg_id": f"m{n}", "text": "hi"}
        )
        await recv(sender, "ack")
    await alice.send_json({"type": "call.end", "id": "e", "call_id": ended})
    for ws in (alice, bob):
        end = await recv(ws, "call.ended")
        assert (end["minutes"], end["coins"]) == (1, RATE)
    running = await _call(carol, dave, "dave")
    sockets = {"alice": alice, "bob": bob, "carol": carol, "dave": dave}
    return Played(sockets, running, ended)


async def stats_of(client: Client, token_for: MakeToken) -> dict[str, Any]:
    return await _ok(await client.get("/v1/admin/stats", headers=auth(token_for("root", "admin"))))


def check_stats(stats: dict[str, Any], nodes: int) -> None:
    assert stats["last_hour"] == EXPECTED_WINDOW, stats
    if time.time() % 86_400 > 600:  # (just after 00:00 UTC "today" started afresh)
        assert stats["today"] == EXPECTED_WINDOW, stats
    assert stats["active_calls"] == 1
    assert stats["online"] == {"caller": 2, "host": 2, "admin": 0}
    assert stats["waiting"].get("random", 0) == stats["waiting"].get("nearby", 0) == 0
    assert len(stats["nodes"]) == nodes
    assert sum(n["sessions"] for n in stats["nodes"]) == 4
    assert sum(n["calls"] for n in stats["nodes"]) == 1
    for node in stats["nodes"]:
        assert node["billing_lag_s"] < 30
