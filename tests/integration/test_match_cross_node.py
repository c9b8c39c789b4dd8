"""Matchmaking across two nodes on the real Redis and PostgreSQL (issue 11): a caller on one
node and hosts on the other match at random and nearby, talk in a paid call, a host who
rejects is replaced, and match.next moves on and never back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import MakeSettings, MakeToken
from tests.integration.test_cross_node_calls import Cluster, Ws, cluster
from tests.wsutil import recv

AiohttpClient = Any
DELHI = {"lat": 28.6139, "lon": 77.2090}


async def offer(c: Cluster, node: Any, uid: str, **pools: Any) -> Ws:
    ws = await c.join(node, uid, "host")
    update: dict[str, Any] = {"type": "presence.update", "id": "p", "status": "available"}
    location = pools.pop("location", None)
    if location is not None:
        update["location"] = location
    update["match"] = pools
    await ws.send_json(update)
    await recv(ws, "ack")
    return ws


async def test_random_across_nodes_reject_next_and_never_back(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings, token_for: MakeToken
) -> None:
    async with cluster(aiohttp_client, make_settings, token_for) as c:
        alice = await c.join(c.a, "alice")
        await alice.send_json({"type": "match.request", "id": "m", "mode": "random"})
        ticket = (await recv(alice, "ack"))["ticket"]
        await recv(alice, "match.queued")
        # a host comes on the other node: the pairing made there is rung from node A
        h1 = await offer(c, c.b, "h1", random=True)
        found = await recv(alice, "match.found")
        assert (found["ticket"], found["peer"]["id"]) == (ticket, "h1")
        assert (await recv(h1, "call.incoming"))["match"] is True
        await h1.send_json({"type": "call.reject", "call_id": found["call_id"]})
        assert (await recv(alice, "call.ended"))["reason"] == "rejected"
        await recv(alice, "match.queued")  # nobody else yet: alice waits again by herself

        h2 = await offer(c, c.b, "h2", random=True)
        second = await recv(alice, "match.found")
        assert second["peer"]["id"] == "h2"
        await h2.send_json({"type": "call.accept", "call_id": second["call_id"]})
        started = await recv(alice, "call.started")
        assert (started["rate"], started["balance"]) == (2, 998)
        await recv(alice, "billing.tick", within_s=5)  # paid per minute (1 s here)

        await alice.send_json({"type": "match.next", "id": "n"})
        ended = await recv(alice, "call.ended")
        assert ended["reason"] == "hangup" and ended["coins"] >= 4
        await recv(alice, "ack")
        # h1 is back in the pool (it rejected: turned down) and h2 was just met: neither
        await recv(alice, "match.queued")
        h3 = await offer(c, c.a, "h3", random=True)
        third = await recv(alice, "match.found")
        assert third["peer"]["id"] == "h3"
        await h3.send_json({"type": "call.end", "call_id": third["call_id"]})
        for ws in (h1, h2, h3, alice):
            await ws.close()


async def test_nearby_across_nodes_is_the_nearest_host(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings, token_for: MakeToken
) -> None:
    async with cluster(
        aiohttp_client, make_settings, token_for, match={"nearby_start_km": 50}
    ) as c:
        far = {"lat": DELHI["lat"] + 30 / 111.2, "lon": DELHI["lon"]}
        near = {"lat": DELHI["lat"] + 3 / 111.2, "lon": DELHI["lon"]}
        hosts = [
            await offer(c, c.b, "far", nearby=True, location=far),
            await offer(c, c.b, "near", nearby=True, auto_accept=True, location=near),
        ]
        carol = await c.join(c.a, "carol")
        await carol.send_json(
            {"type": "match.request", "id": "m", "mode": "nearby", "location": DELHI}
        )
        await recv(carol, "ack")
        found = await recv(carol, "match.found")
        assert (found["peer"]["id"], found["peer"]["distance_km"]) == ("near", 3)
        started = await recv(carol, "call.started")  # auto-accepted, across nodes
        assert started["call_id"] == found["call_id"]
        await carol.send_json({"type": "call.end", "call_id": found["call_id"]})
        await recv(carol, "call.ended")
        for ws in (*hosts, carol):
            await ws.close()


@pytest.mark.parametrize("how", ["close", "end_then_close", "close_while_ringing"])
async def test_a_host_who_left_in_a_matched_call_is_not_pooled_again(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings, token_for: MakeToken, how: str
) -> None:
    async with cluster(aiohttp_client, make_settings, token_for) as c:
        host = await offer(c, c.b, "h1", random=True, auto_accept=how != "close_while_ringing")
        alice = await c.join(c.a, "alice")
        await alice.send_json({"type": "match.request", "id": "m", "mode": "random"})
        found = await recv(alice, "match.found")
        await recv(host, "call.incoming")
        if how != "close_while_ringing":
            await recv(host, "call.started")
        if how == "end_then_close":
            await host.send_json({"type": "call.end", "call_id": found["call_id"]})
        await host.close()
        carol = await c.join(c.a, "carol")
        for _ in range(10):  # over the next 2 s, carol is never given the host who left
            await carol.send_json({"type": "match.request", "id": "m", "mode": "random"})
            await recv(carol, "ack")
            frame = await carol.receive_json(timeout=5)
            while frame["type"] not in ("match.queued", "match.found"):
                frame = await carol.receive_json(timeout=5)
            assert frame["type"] == "match.queued", frame
            await asyncio.sleep(0.2)
        for ws in (alice, carol):
            await ws.close()
