"""Matchmaking throughput on Redis: pairings per second through the match store the hub
uses (``RedisMatch``: tickets built, replies parsed, in Python) against the same pairing
script driven directly (``EVALSHA`` with arguments prepared beforehand), in the same run.

Run: ``.venv/bin/python -m bench.matchmaking [--redis redis://127.0.0.1:6379/0]
[--pool 100000] [--pairings 20000] [--concurrency 64]``

For each mode (random, nearby) and each driver: ``--pool`` hosts wait in the pool (live
presence records on a live node, as a hub writes them; nearby hosts spread over a 40 km
square), then ``--pairings`` callers request one, ``--concurrency`` at a time. Every request
must pair (the bench fails otherwise). Keys live under a prefix of their own, deleted at the
end. Goals (ANCHORS.md): >= 20k random and >= 10k nearby pairings/s.

The time from ``match.request`` to ``match.found`` through a real hub is measured by
``--latency N``: a ``jalwa serve``-equivalent app in this process on that Redis, N hosts in
the pool over WebSocket, then N callers one after another; median and p99.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from signalling.match.redis_store import _REQUEST, RedisMatch, _ticket_json
from signalling.match.store import Limits, Mode, Ticket

NODE = "bench-node"
CENTRE = (28.6139, 77.2090)
LIMITS = Limits(scan_max=200, avoid_recent_s=1800, reserve_s=10, nearby_max_km=100)


def place(rng: random.Random) -> tuple[float, float]:
    return CENTRE[0] + rng.uniform(-0.18, 0.18), CENTRE[1] + rng.uniform(-0.2, 0.2)


async def fill(r: Redis, prefix: str, mode: Mode, hosts: int, callers: int) -> None:
    """Hosts in the pool and callers online, written as the hub's scripts write them."""
    rng = random.Random(7)
    await r.set(f"{prefix}:p:node:{NODE}", "1", ex=600)
    pipe = r.pipeline(transaction=False)
    now_ms = int(time.time() * 1000)
    for i in range(hosts):
        uid = f"h{i}"
        pipe.hset(
            f"{prefix}:p:u:{uid}",
            mapping={"status": "available", "role": "host", "node": NODE, "session": "s-" + uid},
        )
        entry: dict[Any, Any] = {"uid": uid, "name": uid, "node": NODE, "session": "s-" + uid}
        entry["rate"] = "10"
        if mode == "random":
            entry["random"] = "1"
            pipe.zadd(f"{prefix}:m:pool", {uid: now_ms + i})
        else:
            lat, lon = place(rng)
            entry.update(nearby="1", lat=repr(lat), lon=repr(lon))
            pipe.geoadd(f"{prefix}:m:geo", (lon, lat, uid))
        pipe.hset(f"{prefix}:m:h:{uid}", mapping=entry)
        if len(pipe) > 5000:
            await pipe.execute()
    for i in range(callers):
        uid = f"c{i}"
        pipe.hset(
            f"{prefix}:p:u:{uid}",
            mapping={"status": "available", "role": "caller", "node": NODE, "session": "s-" + uid},
        )
        if len(pipe) > 5000:
            await pipe.execute()
    await pipe.execute()


def tickets(mode: Mode, n: int) -> list[Ticket]:
    rng = random.Random(11)
    out = []
    for i in range(n):
        lat, lon = place(rng) if mode == "nearby" else (None, None)
        out.append(
            Ticket(
                ticket_id=f"t{i}",
                user_id=f"c{i}",
                name=f"c{i}",
                node_id=NODE,
                session_id=f"s-c{i}",
                mode=mode,
                lat=lat,
                lon=lon,
                radius_km=100.0 if mode == "nearby" else 0.0,
            )
        )
    return out


async def drive(
    jobs: list[Callable[[], Awaitable[int]]] | list[Callable[[], Awaitable[bool]]],
    concurrency: int,
    *,
    requests: int | None = None,
) -> float:
    """Pairings per second (requests that did not pair are reported, not counted); a job
    returns how many of its requests paired."""
    queue = iter(jobs)
    paired = 0
    wanted = len(jobs) if requests is None else requests

    async def worker() -> None:
        nonlocal paired
        for job in queue:
            ok = await job()  # (not `paired += await`: that reads paired before awaiting)
            paired += ok

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    if paired != wanted:
        print(f"  (only {paired:,} of {wanted:,} requests paired)")
    return paired / elapsed


async def round_(url: str, mode: Mode, driver: str, args: argparse.Namespace) -> float:
    prefix = f"jalwa-bench-{uuid.uuid4().hex[:8]}"
    r = Redis.from_url(url, max_connections=args.concurrency + 4)
    try:
        await fill(r, prefix, mode, args.pool, args.pairings)
        batch = tickets(mode, args.pairings)
        store = RedisMatch(r, prefix=prefix, limits=LIMITS, ticket_ttl_s=120)
        if driver == "hub":

            def job(t: Ticket) -> Callable[[], Awaitable[bool]]:
                async def run() -> bool:
                    return await store.request(t) is not None

                return run

            return await drive([job(t) for t in batch], args.concurrency)
        # The script alone: batches of `concurrency` requests, two calls in flight (as the
        # hub's store at most), arguments prepared beforehand.
        sha = await r.script_load(_REQUEST)
        head = store._head  # the same fixed arguments the store sends
        calls = []
        for i in range(0, len(batch), args.concurrency):
            argv: list[str | bytes] = [*head, str(len(batch[i : i + args.concurrency]))]
            for t in batch[i : i + args.concurrency]:
                argv += ["", "0", _ticket_json(t)]
            calls.append(argv)

        def call(argv: list[str | bytes]) -> Callable[[], Awaitable[int]]:
            async def run() -> int:
                replies: Any = await r.evalsha(sha, 0, *argv)
                return sum(reply[0] == 1 for reply in replies)

            return run

        return await drive([call(argv) for argv in calls], 2, requests=len(batch))
    finally:
        keys = [k async for k in r.scan_iter(match=f"{prefix}:*", count=5000)]
        for i in range(0, len(keys), 5000):
            await r.delete(*keys[i : i + 5000])
        await r.aclose()


async def latency(url: str, n: int) -> tuple[float, float]:
    """match.request -> match.found through a hub on Redis, a host always waiting."""
    import aiohttp
    from aiohttp.test_utils import TestClient, TestServer

    from signalling.app import create_app
    from signalling.auth import Identity, Role, mint_token
    from signalling.calls.hooks import FreeCalls
    from signalling.keys import CLOCK, KEYS, SETTINGS
    from signalling.settings import Settings

    prefix = f"jalwa-bench-{uuid.uuid4().hex[:8]}"
    settings = Settings.from_env(
        {
            "JALWA_REDIS_URL": url,
            "JALWA_PRESENCE__KEY_PREFIX": prefix,
            "JALWA_AUTH__SECRET": "b" * 32,
            "JALWA_LOG_LEVEL": "warning",
            # every client of this bench is 127.0.0.1
            "JALWA_HUB__MAX_CONNECTIONS_PER_IP": "100000",
            "JALWA_HUB__CONNECTS_PER_IP_PER_S": "100000",
            "JALWA_HUB__CONNECT_BURST_PER_IP": "100000",
        }
    )
    app = create_app(settings, hooks=FreeCalls())
    client: TestClient[Any, Any] = TestClient(
        TestServer(app), connector=aiohttp.TCPConnector(limit=0)
    )
    await client.start_server()

    def token(uid: str, role: Role) -> str:
        ident = Identity(uid, role, uid)
        return mint_token(app[KEYS], app[SETTINGS].auth, ident, ttl_s=600, clock=app[CLOCK])

    async def frame(ws: Any, kind: str) -> dict[str, Any]:
        while True:
            msg: dict[str, Any] = await ws.receive_json(timeout=10)
            if msg["type"] == kind:
                return msg

    times: list[float] = []
    sockets = []
    try:
        for i in range(n):
            host = await client.ws_connect("/v1/ws?token=" + token(f"lh{i}", Role.HOST))
            await host.send_json(
                {
                    "type": "presence.update",
                    "id": "p",
                    "status": "available",
                    "match": {"random": True},
                }
            )
            await frame(host, "ack")
            sockets.append(host)
        for i in range(n):
            caller = await client.ws_connect("/v1/ws?token=" + token(f"lc{i}", Role.CALLER))
            await frame(caller, "welcome")
            start = time.perf_counter()
            await caller.send_json({"type": "match.request", "id": "m", "mode": "random"})
            await frame(caller, "match.found")
            times.append(time.perf_counter() - start)
            sockets.append(caller)
    finally:
        for ws in sockets:
            await ws.close()
        await client.close()
        r = Redis.from_url(url)
        keys = [k async for k in r.scan_iter(match=f"{prefix}:*", count=5000)]
        if keys:
            await r.delete(*keys)
        await r.aclose()
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--pool", type=int, default=100_000)
    parser.add_argument("--pairings", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=int, default=200)
    args = parser.parse_args()
    print(f"pool {args.pool:,} hosts, {args.pairings:,} pairings, {args.concurrency} at a time")
    for mode in ("random", "nearby"):
        direct = await round_(args.redis, mode, "direct", args)
        hub = await round_(args.redis, mode, "hub", args)
        print(
            f"{mode:7} pairings/s: hub store {hub:9,.0f}   script direct {direct:9,.0f}"
            f"   ratio {hub / direct:.2f}"
        )
    if args.latency > 0:
        median, p99 = await latency(args.redis, args.latency)
        print(
            f"match.request -> match.found ({args.latency} callers, a host waiting): "
            f"median {median * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"
        )


if __name__ == "__main__":
    asyncio.run(main())
