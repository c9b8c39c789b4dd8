"""kill -9 of a node in a call across two nodes (issue 10), real `jalwa serve` processes on
the real Redis and PostgreSQL. Each kill happens at the worst moment: just after the doomed
node refreshed its liveness key, so the survivors wait the key's whole TTL.

- The party's node (without the media) dies: the call's owner ends it (peer_lost) for the
  survivor within 10 s and watchers elsewhere see the dead node's user offline within 10 s.
- The owner node (with the call's media) dies: the survivor's node ends it for its user
  within 10 s; the ledger closes it once (its node stopped touching it); the party who was
  on the dead node is told at their next connect; no minute after the kill is charged; the
  books are clean.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from redis.asyncio import Redis

from tests.integration import processes
from tests.integration.processes import Server
from tests.integration.services import require_redis
from tests.wsutil import recv

WITHIN_S = 10.0  # the bound from the kill to the survivor being told
NODE_TTL_S = 5  # the default presence.node_ttl_s


def two_nodes(tmp_path: Path) -> AbstractAsyncContextManager[tuple[Server, Server, str, str]]:
    return processes.two_nodes(
        tmp_path,
        "death",
        JALWA_BILLING__MINUTE_SECONDS="1",
        JALWA_BILLING__LOOP_INTERVAL_S="0.1",
        JALWA_BILLING__ORPHAN_AFTER_S="6",
        JALWA_BILLING__DEFAULT_RATE="1",
        # The SFU runs (on the node that owns the call): one kill takes the media node,
        # the other the node without it. No media connects; the watchdog waits 20 s.
        JALWA_MEDIA__MODE="sfu",
        JALWA_MEDIA__HOST_ADDRESSES='["127.0.0.1"]',
        JALWA_MEDIA__INCLUDE_LOOPBACK="true",
    )


async def token(http: aiohttp.ClientSession, node: Server, query: str) -> str:
    resp = await http.get(f"{node.url}/v1/dev/token?{query}")
    return str((await resp.json())["token"])


async def kill_just_after_a_beat(node: Server, prefix: str, node_id: str) -> float:
    """kill -9 the moment the node's liveness key was refreshed; returns the kill time."""
    redis = Redis.from_url(require_redis())
    try:
        key = f"{prefix}:p:node:{node_id}"
        last = await redis.pttl(key)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            now = await redis.pttl(key)
            if now > last:  # it went up: refreshed just now
                break
            last = now
            await asyncio.sleep(0.002)
        node.proc.kill()
        killed = time.monotonic()
        node.proc.wait(10)
        return killed
    finally:
        await redis.aclose()


async def paid_call(
    http: aiohttp.ClientSession, caller_node: Server, host_node: Server
) -> tuple[Any, Any, str, dict[str, str]]:
    tokens = {
        "alice": await token(http, caller_node, "user=alice&credit=1000"),
        "bob": await token(http, caller_node, "user=bob&role=host"),
    }
    alice = await http.ws_connect(f"{caller_node.url}/v1/ws?token={tokens['alice']}")
    bob = await http.ws_connect(f"{host_node.url}/v1/ws?token={tokens['bob']}")
    await recv(alice, "welcome")
    await recv(bob, "welcome")
    await alice.send_json({"type": "call.invite", "id": "1", "to": "bob"})
    cid = (await recv(alice, "ack"))["call_id"]
    await recv(bob, "call.incoming")
    await bob.send_json({"type": "call.accept", "call_id": cid})
    await recv(alice, "call.started")
    await recv(bob, "call.started")
    await recv(alice, "billing.tick")
    return alice, bob, cid, tokens


async def ledger_row(dsn: str, cid: str, *, within_s: float) -> asyncpg.Record:
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + within_s
        while True:
            row = await conn.fetchrow(
                "SELECT state, end_reason, minutes, coins FROM calls WHERE call_id = $1", cid
            )
            assert row is not None
            if row["state"] == "ended":
                return row
            assert time.monotonic() < deadline, "the call was never closed in the ledger"
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def test_the_node_of_the_other_party_dies(tmp_path: Path) -> None:
    async with two_nodes(tmp_path) as (a, b, dsn, prefix), aiohttp.ClientSession() as http:
        alice, _bob, cid, _ = await paid_call(http, a, b)  # node A runs the call
        carol_token = await token(http, a, "user=carol")
        carol = await http.ws_connect(f"{a.url}/v1/ws?token={carol_token}")
        await recv(carol, "welcome")
        await carol.send_json({"type": "presence.watch", "id": "w", "user_ids": ["bob"]})
        assert (await recv(carol, "ack"))["presence"] == {"bob": "busy"}

        killed = await kill_just_after_a_beat(b, prefix, "node-b")
        ended = await recv(alice, "call.ended", within_s=WITHIN_S + 2)
        told_after = time.monotonic() - killed
        offline = await recv(carol, "presence.changed", within_s=WITHIN_S)
        offline_after = time.monotonic() - killed
        print(
            f"\nparty's node killed: peer_lost after {told_after:.1f} s, offline after "
            f"{offline_after:.1f} s"
        )
        assert ended["reason"] == "peer_lost" and ended["call_id"] == cid
        assert told_after <= WITHIN_S and offline["status"] == "offline"
        assert offline_after <= WITHIN_S
        assert ended["minutes"] >= 1 and ended["coins"] == ended["minutes"]

        row = await ledger_row(dsn, cid, within_s=5)
        assert (row["end_reason"], row["minutes"]) == ("peer_lost", ended["minutes"])
        await a.ledger_check(dsn)


async def test_the_node_running_the_call_dies(tmp_path: Path) -> None:
    async with two_nodes(tmp_path) as (a, b, dsn, prefix), aiohttp.ClientSession() as http:
        alice, bob, cid, tokens = await paid_call(http, a, b)  # node A runs the call
        started = time.monotonic()

        killed = await kill_just_after_a_beat(a, prefix, "node-a")
        ended = await recv(bob, "call.ended", within_s=WITHIN_S + 2)
        told_after = time.monotonic() - killed
        print(f"\nowner node killed: peer_lost to the survivor after {told_after:.1f} s")
        assert ended["reason"] == "peer_lost" and ended["call_id"] == cid
        assert told_after <= WITHIN_S

        # The ledger: closed once by the survivor, no minute charged after the kill.
        row = await ledger_row(dsn, cid, within_s=15)
        assert row["end_reason"] == "peer_lost"
        assert 1 <= row["minutes"] <= int(killed - started) + 2, dict(row)
        await b.ledger_check(dsn)

        # bob is free again at once; alice, who was on the dead node, hears of her call at
        # her next connect (it ended while she had no connection), then can call again.
        alice = await http.ws_connect(f"{b.url}/v1/ws?token={tokens['alice']}")
        welcome = await recv(alice, "welcome")
        assert welcome.get("call") is None
        told = await recv(alice, "call.ended")
        assert (told["call_id"], told["reason"]) == (cid, "peer_lost")
        assert (told["minutes"], told["coins"]) == (row["minutes"], row["coins"])
        await alice.send_json({"type": "call.invite", "id": "2", "to": "bob"})
        # 15 s, not 5: in the full suite this ack once took longer (cause not found yet).
        again = (await recv(alice, "ack", within_s=15))["call_id"]
        await bob.send_json({"type": "call.accept", "call_id": again})
        assert (await recv(alice, "call.started"))["call_id"] == again
        await alice.send_json({"type": "call.end", "call_id": again})
        assert (await recv(bob, "call.ended"))["reason"] == "hangup"
        await b.ledger_check(dsn)
