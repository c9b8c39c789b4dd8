"""Calls between users on different nodes (issue 10), two in-process nodes on the real
Redis and PostgreSQL: a paid call across nodes from invite to end, the parties moving
between nodes mid-call, busy everywhere, admin ending a call from any node."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

from signalling.app import create_app
from signalling.keys import LEDGER
from tests.conftest import MakeSettings, MakeToken
from tests.contract.ledger.books import fresh_database
from tests.integration.services import forget_prefix, require_redis
from tests.wsutil import recv

AiohttpClient = Any
Ws = Any


@dataclass
class Cluster:
    a: TestClient[Any, Any]
    b: TestClient[Any, Any]
    token: MakeToken

    async def join(self, node: TestClient[Any, Any], user: str, role: str = "caller") -> Ws:
        ws: Ws = await node.ws_connect("/v1/ws?token=" + self.token(user, role))
        welcome = await recv(ws, "welcome")
        ws.welcome = welcome
        return ws


@asynccontextmanager
async def cluster(
    aiohttp_client: AiohttpClient,
    make_settings: MakeSettings,
    token_for: MakeToken,
    *,
    credits: dict[str, int] | None = None,
    **settings: Any,
) -> AsyncIterator[Cluster]:
    """Nodes A and B on one Redis and a fresh database; ``credits`` (default: alice and
    carol 1,000 coins each); ``settings`` replace whole sections (billing, hub, media)."""
    async with fresh_database() as dsn:
        prefix = f"jalwa-test-{uuid.uuid4().hex[:8]}"
        common: dict[str, Any] = {
            "redis_url": require_redis(),
            "database_url": dsn,
            "presence": {"key_prefix": prefix},
            "billing": {"minute_seconds": 1, "loop_interval_s": 0.05, "default_rate": 2},
            "hub": {"peer_lost_grace_s": 5},
            **settings,
        }
        app_a = create_app(make_settings(node_id="node-a", **common))
        app_b = create_app(make_settings(node_id="node-b", **common))
        a, b = await aiohttp_client(app_a), await aiohttp_client(app_b)
        admin = {"Authorization": "Bearer " + token_for("root", "admin")}
        for user, amount in (credits or {"alice": 1000, "carol": 1000}).items():
            credit = {"user_id": user, "amount": amount, "idempotency_key": f"seed-{user}"}
            assert (await a.post("/v1/admin/credit", json=credit, headers=admin)).status == 200
        yield Cluster(a, b, token_for)
        for app in (app_a, app_b):
            assert await app[LEDGER].check() == []
        await a.close()  # before the database goes
        await b.close()
        await forget_prefix(prefix)


async def closed_with(ws: Ws) -> int | None:
    while True:
        msg = await ws.receive(timeout=5)
        if msg.type is not WSMsgType.TEXT:
            return msg.data if msg.type is WSMsgType.CLOSE else None


async def test_a_paid_call_across_two_nodes_from_invite_to_end(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings, token_for: MakeToken
) -> None:
    async with cluster(aiohttp_client, make_settings, token_for) as c:
        alice = await c.join(c.a, "alice")
        bob = await c.join(c.b, "bob", "host")
        carol = await c.join(c.a, "carol")
        await carol.send_json({"type": "presence.watch", "id": "w", "user_ids": ["bob"]})
        assert (await recv(carol, "ack"))["presence"] == {"bob": "available"}

        await alice.send_json({"type": "call.invite", "id": "i", "to": "bob"})
        cid = (await recv(alice, "ack"))["call_id"]
        assert (await recv(bob, "call.incoming"))["call_id"] == cid
        assert (await recv(alice, "call.ringing"))["call_id"] == cid
        # bob is busy on every node while he is rung.
        assert (await recv(carol, "presence.changed"))["status"] == "busy"
        await carol.send_json({"type": "call.invite", "id": "i2", "to": "bob"})
        assert (await recv(carol, "error"))["code"] == "callee_busy"

        # bob's answer goes to the node that runs the call (node A) and back.
        await bob.send_json({"type": "call.accept", "id": "acc", "call_id": cid})
        assert (await recv(bob, "ack"))["id"] == "acc"
        started_b = await recv(bob, "call.started")
        started_a = await recv(alice, "call.started")
        assert started_a["balance"] == 998 and started_b["rate"] == 2

        # The SDP/ICE relay both ways across the nodes.
        await bob.send_json({"type": "rtc.offer", "id": "o", "call_id": cid, "sdp": "v=0 b"})
        assert (await recv(bob, "ack"))["id"] == "o"
        offer = await recv(alice, "rtc.offer")
        assert (offer["from"], offer["sdp"]) == ("bob", "v=0 b")
        await alice.send_json({"type": "rtc.answer", "call_id": cid, "sdp": "v=0 a"})
        assert (await recv(bob, "rtc.answer"))["sdp"] == "v=0 a"
        ice = {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdp_mid": "0"}
        await bob.send_json({"type": "rtc.ice", "call_id": cid, **ice})
        assert (await recv(alice, "rtc.ice"))["candidate"] == ice["candidate"]
        # A forwarded message the owner refuses comes back as the owner's error.
        await bob.send_json({"type": "call.cancel", "id": "x", "call_id": cid})
        assert (await recv(bob, "error"))["code"] == "forbidden"

        tick = await recv(alice, "billing.tick", within_s=5)
        assert tick["call_id"] == cid and tick["minute"] == 2

        # A gift in the call, from the caller on A to the host on B.
        admin = {"Authorization": "Bearer " + token_for("root", "admin")}
        gift = {"name": "Rose", "price": 10}
        assert (await c.a.put("/v1/admin/gifts/rose", json=gift, headers=admin)).status in (
            200,
            201,
        )
        await alice.send_json(
            {
                "type": "gift.send",
                "id": "g",
                "to": "bob",
                "call_id": cid,
                "gift_id": "rose",
                "idempotency_key": "g1",
            }
        )
        assert (await recv(alice, "ack"))["id"] == "g"
        assert (await recv(bob, "gift.received"))["call_id"] == cid

        await bob.send_json({"type": "call.end", "id": "e", "call_id": cid})
        ended_b = await recv(bob, "call.ended")
        ended_a = await recv(alice, "call.ended")
        assert ended_a == ended_b and ended_a["reason"] == "hangup"
        assert ended_a["minutes"] >= 2 and ended_a["coins"] == 2 * ended_a["minutes"]
        assert (await recv(carol, "presence.changed"))["status"] == "available"

        # Free again everywhere: carol (on A) can call bob (on B) now.
        await carol.send_json({"type": "call.invite", "id": "i3", "to": "bob"})
        assert "call_id" in await recv(carol, "ack")


async def test_parties_move_between_nodes_mid_call_and_keep_it(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings, token_for: MakeToken
) -> None:
    async with cluster(aiohttp_client, make_settings, token_for) as c:
        alice = await c.join(c.a, "alice")
        bob = await c.join(c.b, "bob", "host")
        await alice.send_json({"type": "call.invite", "id": "i", "to": "bob"})
        cid = (await recv(alice, "ack"))["call_id"]
        await recv(bob, "call.incoming")
        await bob.send_json({"type": "call.accept", "call_id": cid})
        await recv(alice, "call.started")

        # The host reconnects on the node that runs the call: his welcome has it, the
        # older session on B is closed (4009), and the call goes on.
        bob_on_a = await c.join(c.a, "bob", "host")
        assert bob_on_a.welcome["call"] == {
            "call_id": cid,
            "state": "active",
            "peer": {"id": "alice", "role": "caller", "name": "Alice"},
            "role": "callee",
        }
        assert await closed_with(bob) == 4009
        # ... and back to B again; then the caller moves from A (the owner) to B too.
        bob = await c.join(c.b, "bob", "host")
        assert bob.welcome["call"]["call_id"] == cid
        assert await closed_with(bob_on_a) == 4009
        alice_on_b = await c.join(c.b, "alice")
        assert alice_on_b.welcome["call"]["call_id"] == cid
        assert alice_on_b.welcome["call"]["role"] == "caller"
        assert await closed_with(alice) == 4009

        # Both now on B, the call still owned by A: everything goes through A.
        await alice_on_b.send_json({"type": "rtc.offer", "call_id": cid, "sdp": "v=0 again"})
        assert (await recv(bob, "rtc.offer"))["sdp"] == "v=0 again"
        await asyncio.sleep(6)  # longer than the grace period: nobody was lost
        await alice_on_b.send_json({"type": "call.end", "call_id": cid})
        ended = await recv(bob, "call.ended")
        # Never peer_lost; a minute is charged once the owner touched the call after it began.
        assert ended["reason"] == "hangup" and ended["minutes"] >= 5


async def test_a_party_between_connections_is_busy_everywhere_and_comes_back(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings, token_for: MakeToken
) -> None:
    async with cluster(aiohttp_client, make_settings, token_for) as c:
        alice = await c.join(c.a, "alice")
        bob = await c.join(c.b, "bob", "host")
        carol = await c.join(c.b, "carol")
        await alice.send_json({"type": "call.invite", "id": "i", "to": "bob"})
        cid = (await recv(alice, "ack"))["call_id"]
        await bob.send_json({"type": "call.accept", "call_id": cid})
        await recv(alice, "call.started")

        await bob.close()  # within the grace period the call waits for him
        await asyncio.sleep(0.3)
        for who, node in ((carol, "b"), (await c.join(c.a, "dave"), "a")):
            await who.send_json({"type": "call.invite", "id": "x", "to": "bob"})
            assert (await recv(who, "error"))["code"] == "callee_busy", node

        bob = await c.join(c.a, "bob", "host")  # back, on the other node
        assert bob.welcome["call"]["call_id"] == cid
        await asyncio.sleep(6)  # past the grace period: he is back, the call goes on
        await bob.send_json({"type": "rtc.offer", "call_id": cid, "sdp": "v=0 back"})
        assert (await recv(alice, "rtc.offer"))["sdp"] == "v=0 back"

        # An admin ends it from node B although node A runs it.
        admin = {"Authorization": "Bearer " + token_for("root", "admin")}
        resp = await c.b.post(f"/v1/admin/calls/{cid}/end", headers=admin)
        assert resp.status == 200
        assert (await recv(alice, "call.ended"))["reason"] == "admin"
        assert (await recv(bob, "call.ended"))["reason"] == "admin"
        resp = await c.b.post(f"/v1/admin/calls/{cid}/end", headers=admin)
        assert resp.status == 404
