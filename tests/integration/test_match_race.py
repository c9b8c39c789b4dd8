"""The matchmaking race (issue 11) with real processes on the real Redis and PostgreSQL.

A third node fills the pools with a few hundred users and is killed with kill -9: its hosts
stay in the random pool and its callers in the nearby queue as ghosts. Then two `jalwa
serve` nodes take ``LIVES`` arrivals, each followed by its departure (callers and hosts
half and half, ``WORKERS`` clients at a time per node; see ``match_race``). From the
clients' log alone: 0 self-matches, 0 double pairings, 0 pairings with a ghost or with a
user who had left, 0 callers left waiting while a compatible host was free. Afterwards the
pools hold nothing but ghosts, and the books balance.

``GRACE_S`` is what "at the same time" means in a log written by clients: a frame's trip
through a hub, Redis and possibly the other hub under this load. The longest overlap seen
is printed; the bound is checked, not the figure.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from redis.asyncio import Redis

from billing.ledger_pg import PgLedger
from billing.settings import BillingSettings
from signalling.auth import Identity, Role, load_keys, mint_token
from signalling.clock import SystemClock
from signalling.cluster.replies import as_str
from signalling.settings import Settings
from tests.contract.ledger.books import fresh_database
from tests.integration.match_race import DELHI, Crowd, Log, check, summary
from tests.integration.processes import serve
from tests.integration.services import forget_prefix, require_redis

LIVES = int(os.environ.get("JALWA_TEST_RACE_LIVES", "20000"))
WORKERS = 64  # clients at a time on each node
GHOST_HOSTS, GHOST_CALLERS = 200, 100
GRACE_S = 1.5
PEER_LOST_S = 1
SECRET = "race-secret-" + "x" * 32


def _env(prefix: str, dsn: str) -> dict[str, str]:
    return {
        "JALWA_REDIS_URL": require_redis(),
        "JALWA_PRESENCE__KEY_PREFIX": prefix,
        "JALWA_DATABASE_URL": dsn,
        "JALWA_AUTH__SECRET": SECRET,
        "JALWA_BILLING__DEFAULT_RATE": "1",
        "JALWA_HUB__PEER_LOST_GRACE_S": str(PEER_LOST_S),
        "JALWA_MATCH__NEARBY_START_KM": "50",
        # one address (127.0.0.1) is every client here
        "JALWA_HUB__MAX_CONNECTIONS_PER_IP": "100000",
        "JALWA_HUB__CONNECTS_PER_IP_PER_S": "100000",
        "JALWA_HUB__CONNECT_BURST_PER_IP": "100000",
        "JALWA_LOG_LEVEL": "warning",
    }


class Tokens:
    def __init__(self, env: dict[str, str]) -> None:
        self._settings = Settings.from_env(env)
        self._keys = load_keys(self._settings, create_dev_key=False)
        self._clock = SystemClock()

    def __call__(self, uid: str, role: str) -> str:
        ident = Identity(uid, Role(role), uid)
        return mint_token(self._keys, self._settings.auth, ident, ttl_s=3600, clock=self._clock)


async def credit(dsn: str, users: list[str]) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=4, max_size=8)
    try:
        ledger = PgLedger(pool, BillingSettings())
        sem = asyncio.Semaphore(8)

        async def one(uid: str) -> None:
            async with sem:
                await ledger.credit(f"race:{uid}", uid, 20, admin="race")

        await asyncio.gather(*(one(uid) for uid in users))
    finally:
        await pool.close()


async def ghosts(url: str, tokens: Tokens, log: Log) -> list[Any]:
    """Hosts in the random pool and callers in the nearby queue, on the doomed node."""
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    sockets = []
    for i in range(GHOST_HOSTS + GHOST_CALLERS):
        host = i < GHOST_HOSTS
        uid = f"gh{i}" if host else f"gc{i}"
        ws = await http.ws_connect(f"{url}/v1/ws?token={tokens(uid, 'host' if host else 'caller')}")
        if host:
            await ws.send_json(
                {
                    "type": "presence.update",
                    "id": "p",
                    "status": "available",
                    "match": {"random": True, "auto_accept": True},
                }
            )
        else:  # near where the nearby hosts will come, within their radius
            where = {"lat": DELHI[0], "lon": DELHI[1]}
            await ws.send_json(
                {
                    "type": "match.request",
                    "id": "m",
                    "mode": "nearby",
                    "location": where,
                    "radius_km": 2,
                }
            )
        want = "ack" if host else "match.queued"
        seen: list[dict[str, Any]] = []
        while not seen or seen[-1]["type"] != want:
            try:
                seen.append(await ws.receive_json(timeout=30))
            except TimeoutError:
                raise AssertionError(f"{uid} never got {want}: {seen}") from None
        log.ghosts.add(uid)
        sockets.append(ws)
    return [http, *sockets]


async def test_matchmaking_race_two_nodes_and_ghosts(tmp_path: Path) -> None:
    prefix = f"jalwa-race-{time.time_ns()}"
    log = Log()
    async with fresh_database() as dsn:
        env = _env(prefix, dsn)
        tokens = Tokens(env)
        crowd = Crowd(urls=[], token=tokens, lives=LIVES, workers=WORKERS, log=log)
        await credit(
            dsn,
            crowd.caller_ids()
            + [f"gc{i}" for i in range(GHOST_HOSTS, GHOST_HOSTS + GHOST_CALLERS)],
        )
        redis = Redis.from_url(require_redis())
        try:
            with serve(tmp_path, JALWA_NODE_ID="node-g", **env) as g:
                held = await ghosts(g.url, tokens, log)
                g.proc.kill()  # kill -9: nothing of it is cleaned up by itself
                g.proc.wait(10)
                await held[0].close()
            deadline = time.monotonic() + 15
            while await redis.exists(f"{prefix}:p:node:node-g"):
                assert time.monotonic() < deadline, "the dead node's liveness key never lapsed"
                await asyncio.sleep(0.1)
            pooled = await redis.zcard(f"{prefix}:m:pool")
            queued = await redis.zcard(f"{prefix}:m:wgeo")
            assert (pooled, queued) == (GHOST_HOSTS, GHOST_CALLERS)  # the ghosts are there

            with (
                serve(tmp_path, JALWA_NODE_ID="node-a", **env) as a,
                serve(tmp_path, JALWA_NODE_ID="node-b", **env) as b,
            ):
                crowd.urls = [a.url, b.url]
                started = time.monotonic()
                await crowd.run()
                took = time.monotonic() - started
                await asyncio.sleep(2)  # the last departures reach the stores
                left = set()
                for key in ("pool", "geo", "wait", "wgeo"):
                    left |= {as_str(m) for m in await redis.zrange(f"{prefix}:m:{key}", 0, -1)}
                await a.ledger_check(dsn)
        finally:
            await redis.aclose()
            await forget_prefix(prefix)

    with (tmp_path / "race-log.jsonl").open("w") as out:  # for a failure's post-mortem
        for e in sorted(log.events, key=lambda e: e.t):
            row = {"t": round(e.t - started, 4), "user": e.user, "kind": e.kind}
            row.update({"peer": e.peer, "call": e.call, "modes": sorted(e.modes)})
            out.write(json.dumps(row) + "\n")
    verdict = check(log, grace_s=GRACE_S, call_tail_s=PEER_LOST_S + GRACE_S)
    counts = summary(log)
    print(
        f"\n{LIVES:,} arrivals and departures in {took:.0f} s ({LIVES / took:.0f}/s), "
        f"{verdict.pairings:,} pairings, {counts['wait']:,} waits, {counts['refused']} refused, "
        f"longest caller/host overlap past the {GRACE_S} s grace "
        f"{verdict.longest_overlap_s:.2f} s, latest pairing after a host had closed "
        f"{verdict.latest_after_leaving_s:.2f} s; client failures {len(crowd.failures)}"
    )
    refusals = Counter(e.peer for e in log.events if e.kind == "refused")
    print(f"refusals by code: {dict(refusals)}; frames seen: {dict(counts)}")
    lag = sorted(crowd.lag_s)
    print(
        f"hub lag (a no-op's round trip): median {lag[len(lag) // 2] * 1000:.0f} ms, "
        f"p99 {lag[int(len(lag) * 0.99)] * 1000:.0f} ms, max {lag[-1] * 1000:.0f} ms"
    )
    assert not crowd.failures, crowd.failures[:10]
    assert not verdict.failures(), verdict.failures()
    assert verdict.pairings > LIVES // 10, "too few pairings for the race to mean anything"
    assert counts["wait"] > LIVES // 50, "too few waits for the race to mean anything"
    assert left <= log.ghosts, (
        f"live users still pooled or queued: {sorted(left - log.ghosts)[:10]}"
    )
