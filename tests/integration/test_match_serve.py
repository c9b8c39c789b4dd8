"""Matchmaking end to end with real `jalwa serve` processes on the real Redis and
PostgreSQL (issue 11): a caller on one node and hosts on the other match at random and
nearby and talk in a paid call (offer relayed, minutes billed); a host who rejects is
replaced by another without the caller asking; match.next moves on to a different host
and never back to the one just left; the books balance afterwards."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp

from tests.integration import processes
from tests.integration.processes import Server
from tests.wsutil import recv

DELHI = {"lat": 28.6139, "lon": 77.2090}


def two_nodes(tmp_path: Path) -> AbstractAsyncContextManager[tuple[Server, Server, str, str]]:
    return processes.two_nodes(
        tmp_path,
        "match-serve",
        JALWA_BILLING__MINUTE_SECONDS="1",
        JALWA_BILLING__LOOP_INTERVAL_S="0.1",
        JALWA_BILLING__DEFAULT_RATE="2",
        JALWA_MATCH__NEARBY_START_KM="50",
    )


class People:
    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.sockets: list[Any] = []

    async def join(self, node: Server, user: str, role: str = "caller", credit: int = 0) -> Any:
        query = f"user={user}&role={role}&credit={credit}"
        token = (await (await self.http.get(f"{node.url}/v1/dev/token?{query}")).json())["token"]
        ws = await self.http.ws_connect(f"{node.url}/v1/ws?token={token}")
        await recv(ws, "welcome")
        self.sockets.append(ws)
        return ws

    async def host(self, node: Server, user: str, **pools: Any) -> Any:
        ws = await self.join(node, user, "host")
        update: dict[str, Any] = {"type": "presence.update", "id": "p", "status": "available"}
        if "location" in pools:
            update["location"] = pools.pop("location")
        update["match"] = pools
        await ws.send_json(update)
        await recv(ws, "ack")
        return ws

    async def close(self) -> None:
        for ws in self.sockets:
            await ws.close()


async def test_random_match_across_processes_reject_next_never_back(tmp_path: Path) -> None:
    async with two_nodes(tmp_path) as (a, b, dsn, _), aiohttp.ClientSession() as http:
        people = People(http)
        alice = await people.join(a, "alice", credit=1000)
        await alice.send_json({"type": "match.request", "id": "m", "mode": "random"})
        ticket = (await recv(alice, "ack"))["ticket"]
        await recv(alice, "match.queued")

        h1 = await people.host(b, "h1", random=True)  # on the other process
        found = await recv(alice, "match.found")
        assert (found["ticket"], found["peer"]["id"], found["peer"]["rate"]) == (ticket, "h1", 2)
        incoming = await recv(h1, "call.incoming")
        assert (incoming["call_id"], incoming["match"]) == (found["call_id"], True)
        await h1.send_json({"type": "call.reject", "call_id": found["call_id"]})
        assert (await recv(alice, "call.ended"))["reason"] == "rejected"
        await recv(alice, "match.queued")  # queued again by the hub, not by alice

        h2 = await people.host(b, "h2", random=True)
        second = await recv(alice, "match.found")
        assert second["peer"]["id"] == "h2"  # h1 turned alice down: not offered again
        await h2.send_json({"type": "call.accept", "call_id": second["call_id"]})
        started = await recv(alice, "call.started")
        assert (started["rate"], started["balance"]) == (2, 998)  # the first minute paid
        await recv(h2, "call.started")
        offer = {"type": "rtc.offer", "call_id": second["call_id"], "sdp": "v=0 alice"}
        await alice.send_json(offer)
        assert (await recv(h2, "rtc.offer"))["sdp"] == "v=0 alice"  # relayed across nodes
        tick = await recv(alice, "billing.tick", within_s=5)
        assert tick["balance"] < 998

        await alice.send_json({"type": "match.next", "id": "n"})
        ended = await recv(alice, "call.ended")
        assert ended["reason"] == "hangup" and ended["coins"] == 2 * ended["minutes"] >= 4
        await recv(alice, "ack")
        await recv(alice, "match.queued")  # h1 (turned down) and h2 (just left) are free...
        h3 = await people.host(a, "h3", random=True)
        third = await recv(alice, "match.found")
        assert third["peer"]["id"] == "h3"  # ...but alice gets neither
        await h3.send_json({"type": "call.accept", "call_id": third["call_id"]})
        await recv(alice, "call.started")
        await alice.send_json({"type": "call.end", "call_id": third["call_id"]})
        await recv(h3, "call.ended")
        await people.close()
        await a.ledger_check(dsn)


async def test_nearby_match_across_processes_is_the_nearest_host(tmp_path: Path) -> None:
    async with two_nodes(tmp_path) as (a, b, dsn, _), aiohttp.ClientSession() as http:
        people = People(http)
        far = {"lat": DELHI["lat"] + 30 / 111.2, "lon": DELHI["lon"]}
        near = {"lat": DELHI["lat"] + 3 / 111.2, "lon": DELHI["lon"]}
        await people.host(b, "far", nearby=True, auto_accept=True, location=far)
        host = await people.host(b, "near", nearby=True, auto_accept=True, location=near)
        carol = await people.join(a, "carol", credit=100)
        request = {"type": "match.request", "id": "m", "mode": "nearby", "location": DELHI}
        await carol.send_json(request)
        await recv(carol, "ack")
        found = await recv(carol, "match.found")
        assert (found["peer"]["id"], found["peer"]["distance_km"]) == ("near", 3)
        assert "lat" not in str(found)  # a distance, never a place
        started = await recv(carol, "call.started")  # auto-accepted on the host's behalf
        assert started["call_id"] == found["call_id"]
        assert (await recv(host, "call.started"))["call_id"] == found["call_id"]
        await recv(carol, "billing.tick", within_s=5)
        await carol.send_json({"type": "call.end", "call_id": found["call_id"]})
        ended = await recv(host, "call.ended")
        assert ended["reason"] == "hangup" and ended["minutes"] >= 2
        await people.close()
        await a.ledger_check(dsn)
