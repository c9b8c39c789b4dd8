"""Signalling throughput, latency and memory: the hub's rtc relay between call parties
against a bare aiohttp relay measured in the same run.

Run: ``.venv/bin/python -m bench.signalling [--pairs 50] [--messages 2000] [--idle 2000]
[--redis redis://127.0.0.1:6379/0] [--workers-db postgresql://... --workers-mongo mongodb://...]``

Both servers run as their own process (one core each at most on a 2-core machine; the load
generator, this process and in the latency round a loader process of its own, shares them):

- **jalwa**: ``jalwa serve`` on its embedded stores, p2p media, rate and connection limits
  raised out of the way (auth, validation, routing, presence, the per-session queue and the
  write-stall timer all stay on). Each pair is a caller and a host in a paid call; callers
  send ``rtc.ice`` frames, which the hub validates and relays to the host.
- **bare**: ``bench/bare_relay.py``: accept, JSON-decode, stamp the sender, re-encode, send
  to the peer. No auth, no validation, no limits. Same frames, same event loop (uvloop).

Measured, in this order, on each server:
1. **throughput**: every caller sends ``--messages`` frames as fast as its socket takes
   them; the rate is frames received by the hosts per second, first send to last receipt;
2. **latency at half load** (bench/latency.py): a loader process of its own opens as many
   pairs and paces them to half the throughput just measured for ``--latency-s`` seconds,
   while 4 probe pairs of this process send 50 frames a second each; each frame carries its
   send time; p50 and p99 of the probes' receipt - send (and, for comparison, the p99 of
   the loader's own frames timed in the loader, the figure of the first version);
3. **memory per idle connection**: ``--idle`` more connections (authenticated, for jalwa)
   opened and left idle; the server's RSS growth divided by their number.

With ``--redis``, the same rounds again with the call's parties on **two nodes**: two
``jalwa serve`` processes on that Redis (a key prefix of their own), callers on node A (which
runs the calls), hosts on node B: every relayed frame crosses Redis pub/sub. With
``--workers-db`` and ``--workers-mongo`` too, **``jalwa serve --workers 2``** (each worker a
node; the kernel spreads the connections, so some pairs are split across workers): the
total throughput of the two.

Printed: each figure for each server and jalwa's ratio to bare; then, over the half-load
round, each server's loop thread on a core and waiting for one (bench/stalls.py), and over
the half-load and idle rounds jalwa's collections and loop lag from its /metrics.
Goals (ANCHORS.md): >= 50k msg/s and >= 0.65 of the bare relay, p99 <= 10 ms at half load
(<= 20 ms across nodes), <= 20 KB per idle connection.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import uvloop

from bench.latency import PROBE_PAIRS, Opener, Pair, Target, at_half_load, opener_of
from bench.stalls import Cpu, Stalls, between, cpu_of, scrape
from tests.integration.services import free_port
from tests.wsutil import recv

JALWA = str(Path(sys.executable).parent / "jalwa")
CANDIDATE = "candidate:1 1 udp 2122260223 192.0.2.10 54321 typ host"
ACCEPT_CONCURRENCY = 50  # idle connections opened at once
IDLE_CPU_S = 15.0  # the idle round's CPU window: more than one heartbeat (10 s)


@dataclass
class Figures:
    rate: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    load_rate: float = 0.0  # the half load the loader process achieved, frames/s
    load_p99_ms: float = 0.0  # p99 of the loader's own frames, timed in the loader
    idle_kb: float = 0.0
    idle_cpu: float = 0.0  # % of one core the servers burn while the connections idle
    accepts: float = 0.0  # new (authenticated) connections per second, one after another
    stalls: dict[str, Stalls] = field(default_factory=dict)  # per server, over the half load
    cpu: dict[int, Cpu] = field(default_factory=dict)  # per server process, over the half load
    half_s: float = 0.0  # how long the half-load round took, the loader's connecting included
    idle_stalls: Stalls | None = None  # over the idle CPU window (one node only)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def wait_healthy(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextmanager
def jalwa_server(workdir: Path, *args: str, **extra: str) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "JALWA_AUTH__DEV_KEY_FILE": str(workdir / "dev-key"),
        "JALWA_MEDIA__MODE": "p2p",
        "JALWA_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "warning"),
        "JALWA_HUB__RATE_PER_S": "1000000",
        "JALWA_HUB__RATE_BURST": "1000000",
        "JALWA_HUB__MAX_CONNECTIONS_PER_IP": "1000000",
        "JALWA_HUB__CONNECTS_PER_IP_PER_S": "1000000",
        "JALWA_HUB__CONNECT_BURST_PER_IP": "1000000",
        "JALWA_HUB__SEND_QUEUE_MAX": "100000",
        "JALWA_HUB__SEND_QUEUE_MAX_BYTES": str(64 << 20),
        **extra,
    }
    proc = subprocess.Popen([JALWA, "serve", "--port", str(port), *args], env=env)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz", proc)
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(40)  # SIGTERM drains; a stuck shutdown logs its tasks after ~25 s
        except subprocess.TimeoutExpired:
            # Say so and go on: the figures measured so far are not lost with the run.
            print(f"jalwa serve (pid {proc.pid}) did not exit after SIGTERM: killed", flush=True)
            proc.kill()
            proc.wait(10)


@contextmanager
def bare_server() -> Iterator[tuple[str, int]]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.bare_relay", "--port", str(port)])
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                import socket

                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(20)


def jalwa_opener(base: str, host_base: str | None = None) -> Opener:
    """Pairs in a paid call; the hosts connect to ``host_base`` when given (another node)."""
    host_base = host_base or base

    async def token(http: aiohttp.ClientSession, user: str, role: str) -> str:
        credit = "&credit=10000" if role == "caller" else ""
        resp = await http.get(f"{base}/v1/dev/token?user={user}&role={role}{credit}")
        value: str = (await resp.json())["token"]
        return value

    async def open_pair(http: aiohttp.ClientSession, n: int) -> Pair:
        # Compression offered as apps offer it (declined by the hub, docs/decisions.md).
        caller_token = await token(http, f"c{n}", "caller")
        caller = await http.ws_connect(f"{base}/v1/ws?token={caller_token}", compress=15)
        host_token = await token(http, f"h{n}", "host")
        host = await http.ws_connect(f"{host_base}/v1/ws?token={host_token}", compress=15)
        await recv(caller, "welcome", within_s=10)
        await recv(host, "welcome", within_s=10)
        await caller.send_json({"type": "call.invite", "id": "i", "to": f"h{n}"})
        call_id = str((await recv(caller, "ack", within_s=10))["call_id"])
        await host.send_json({"type": "call.accept", "call_id": call_id})
        await recv(caller, "call.started", within_s=10)
        await recv(host, "call.started", within_s=10)
        return caller, host, call_id

    return open_pair


def bare_opener(base: str) -> Opener:
    async def open_pair(http: aiohttp.ClientSession, n: int) -> Pair:
        caller = await http.ws_connect(f"{base}/ws?user=c{n}&peer=h{n}")
        host = await http.ws_connect(f"{base}/ws?user=h{n}&peer=c{n}")
        return caller, host, f"call-{n}"

    return open_pair


def frame(call_id: str, sent_ns: int) -> str:
    return (
        '{"type":"rtc.ice","call_id":"' + call_id + '","candidate":"' + CANDIDATE
        + f" ts {sent_ns}" + '","sdp_mid":"0","sdp_mline_index":0}'
    )  # fmt: skip


async def throughput(pairs: list[Pair], messages: int) -> float:
    async def send(caller: aiohttp.ClientWebSocketResponse, call_id: str) -> None:
        text = frame(call_id, 0)
        for _ in range(messages):
            await caller.send_str(text)

    async def receive(host: aiohttp.ClientWebSocketResponse) -> None:
        for _ in range(messages):
            await host.receive(timeout=60)

    started = time.perf_counter()
    await asyncio.gather(*(send(c, cid) for c, _, cid in pairs), *(receive(h) for _, h, _ in pairs))
    return len(pairs) * messages / (time.perf_counter() - started)


async def idle_memory(
    base: str, pids: list[int], idle: int, jalwa: bool, cpu_s: float = IDLE_CPU_S
) -> tuple[float, float, float, Stalls | None]:
    """RSS growth of the server processes per idle connection opened, in KB; the CPU they
    burn over ``cpu_s`` seconds with those connections idle, in % of one core; and the
    connections accepted per second while opening them (one after another, each up to its
    ``welcome`` for jalwa)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        tokens: list[str] = []
        if jalwa:
            for n in range(idle):
                resp = await http.get(f"{base}/v1/dev/token?user=idle{n}&role=caller")
                tokens.append((await resp.json())["token"])
        await asyncio.sleep(0.5)
        before = sum(map(rss, pids))
        sockets = []
        readers = []

        async def open_one(n: int) -> None:
            url = f"{base}/v1/ws?token={tokens[n]}" if jalwa else f"{base}/ws?user=i{n}&peer=x"
            # Offered as browsers and OkHttp offer it (the bare relay's clients do not: it
            # would take it and hold zlib state per connection).
            ws = await http.ws_connect(url, autoping=True, compress=15 if jalwa else 0)
            if jalwa:
                await recv(ws, "welcome", within_s=30)
            sockets.append(ws)
            # An idle app still reads: aiohttp answers the server's pings while receiving.
            readers.append(asyncio.create_task(_drain(ws)))

        opened_at = time.perf_counter()
        for start in range(0, idle, ACCEPT_CONCURRENCY):  # a crowd arriving, not a queue
            await asyncio.gather(
                *map(open_one, range(start, min(idle, start + ACCEPT_CONCURRENCY)))
            )
        accepts = idle / (time.perf_counter() - opened_at)
        await asyncio.sleep(1.0)
        grown = sum(map(rss, pids)) - before
        # The collector's and the loop's stalls while they idle (one node's /metrics).
        metrics_before = await scrape(http, base) if jalwa and len(pids) == 1 else None
        cpu_before = sum(map(cpu_seconds, pids))
        await asyncio.sleep(cpu_s)
        cpu = (sum(map(cpu_seconds, pids)) - cpu_before) / cpu_s * 100
        stalls = None
        if metrics_before is not None:
            stalls = between(metrics_before, await scrape(http, base))
        for ws in sockets:
            await ws.close()
        await asyncio.gather(*readers, return_exceptions=True)
        return grown / idle / 1024, cpu, accepts, stalls


async def _drain(ws: aiohttp.ClientWebSocketResponse) -> None:
    async for _ in ws:
        pass


async def measure(
    target: Target, args: argparse.Namespace, pids: list[int], watched: tuple[str, ...] = ()
) -> Figures:
    """The throughput and latency rounds; over the half load, the scheduler times of the
    server processes ``pids`` and the stalls of the servers at ``watched`` (their /metrics)."""
    figures = Figures()
    opener = opener_of(target)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        pairs = [await opener(http, n) for n in range(args.pairs)]
        await throughput(pairs, 50)  # warm up
        figures.rate = await throughput(pairs, args.messages)
        before = [await scrape(http, base) for base in watched]
        cpu_before = {pid: cpu_of(pid) for pid in pids}
        started = time.perf_counter()
        half = await at_half_load(
            target, pairs[:PROBE_PAIRS], figures.rate / 2, args.pairs, args.latency_s
        )
        figures.half_s = time.perf_counter() - started
        figures.cpu = {pid: cpu_of(pid) - was for pid, was in cpu_before.items()}
        for base, was in zip(watched, before, strict=True):
            figures.stalls[base] = between(was, await scrape(http, base))
        figures.p50_ms, figures.p99_ms = half.p50_ms, half.p99_ms
        figures.load_rate, figures.load_p99_ms = half.load_rate, half.load_p99_ms
        for caller, host, _ in pairs:
            await caller.close()
            await host.close()
    return figures


def pids_of(supervisor: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(supervisor)], capture_output=True)
    return [int(pid) for pid in out.stdout.split()]


def cross_node(runner: asyncio.Runner, args: argparse.Namespace) -> Figures:
    prefix = f"jalwa-bench-{os.getpid()}-{time.time_ns()}"
    shared = {"JALWA_REDIS_URL": args.redis, "JALWA_PRESENCE__KEY_PREFIX": prefix}
    with (
        tempfile.TemporaryDirectory() as tmp,
        jalwa_server(Path(tmp), JALWA_NODE_ID="bench-a", **shared) as (base_a, pid_a),
        jalwa_server(Path(tmp), JALWA_NODE_ID="bench-b", **shared) as (base_b, pid_b),
    ):
        target = Target("jalwa", base_a, base_b)
        figures = runner.run(measure(target, args, [pid_a, pid_b], (base_a, base_b)))
        figures.idle_kb, figures.idle_cpu, figures.accepts, figures.idle_stalls = runner.run(
            idle_memory(base_a, [pid_a], args.idle, jalwa=True)
        )
    return figures


def two_workers(runner: asyncio.Runner, args: argparse.Namespace) -> Figures:
    prefix = f"jalwa-bench-{os.getpid()}-{time.time_ns()}"
    stores = {
        "JALWA_REDIS_URL": args.redis,
        "JALWA_PRESENCE__KEY_PREFIX": prefix,
        "JALWA_DATABASE_URL": args.workers_db,
        "JALWA_MIGRATE_ON_START": "true",
        "JALWA_MONGO_URL": args.workers_mongo,
        "JALWA_CHAT__DATABASE": prefix.replace("-", "_"),
    }
    with (
        tempfile.TemporaryDirectory() as tmp,
        jalwa_server(Path(tmp), "--workers", "2", **stores) as (base, supervisor),
    ):
        time.sleep(1.0)  # both workers listening
        workers = pids_of(supervisor)
        figures = runner.run(measure(Target("jalwa", base), args, workers))
        figures.idle_kb, figures.idle_cpu, figures.accepts, figures.idle_stalls = runner.run(
            idle_memory(base, workers, args.idle, jalwa=True)
        )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--messages", type=int, default=2000, help="frames per caller")
    parser.add_argument("--latency-s", type=float, default=3.0)
    parser.add_argument("--idle", type=int, default=2000, help="idle connections opened")
    parser.add_argument("--redis", help="Redis URL: also measure a call across two nodes")
    parser.add_argument("--workers-db", help="PostgreSQL URL: also measure --workers 2")
    parser.add_argument("--workers-mongo", help="MongoDB URL: also measure --workers 2")
    args = parser.parse_args()
    print(
        f"cores: {os.cpu_count()}; Python {platform.python_version()}; "
        f"pairs {args.pairs}, {args.messages} frames each, idle {args.idle}"
    )
    results: dict[str, Figures] = {}
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        with bare_server() as (base, pid):
            figures = runner.run(measure(Target("bare", base), args, [pid]))
            figures.idle_kb, figures.idle_cpu, figures.accepts, figures.idle_stalls = runner.run(
                idle_memory(base, [pid], args.idle, jalwa=False)
            )
            results["bare"] = figures
        with tempfile.TemporaryDirectory() as tmp, jalwa_server(Path(tmp)) as (base, pid):
            figures = runner.run(measure(Target("jalwa", base), args, [pid], (base,)))
            figures.idle_kb, figures.idle_cpu, figures.accepts, figures.idle_stalls = runner.run(
                idle_memory(base, [pid], args.idle, jalwa=True)
            )
            results["jalwa"] = figures
        if args.redis:
            results["jalwa, 2 nodes"] = cross_node(runner, args)
        if args.redis and args.workers_db and args.workers_mongo:
            results["jalwa --workers 2"] = two_workers(runner, args)
    bare, ours = results["bare"], results["jalwa"]
    print()
    print(
        "| server | relayed msg/s | half load, msg/s | p50 ms (probe) | p99 ms (probe) "
        f"| p99 ms (loader) | KB per idle conn | % core, {args.idle} idle | accepts/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, f in results.items():
        print(
            f"| {name} | {f.rate:,.0f} | {f.load_rate:,.0f} | {f.p50_ms:.2f} | {f.p99_ms:.2f} "
            f"| {f.load_p99_ms:.2f} | {f.idle_kb:.1f} | {f.idle_cpu:.1f} | {f.accepts:,.0f} |"
        )
    print("\nOver the half-load round:")
    for name, f in results.items():
        for pid, cpu in f.cpu.items():
            print(f"- {name}, pid {pid}: {cpu.line(f.half_s)}")
        for node, stalls in enumerate(f.stalls.values()):
            print(f"- {name}, node {node + 1}: {stalls.line()}")
    print(f"\nWhile {args.idle} connections idle ({IDLE_CPU_S:g} s):")
    for name, f in results.items():
        if f.idle_stalls is not None:
            print(f"- {name}, node 1: {f.idle_stalls.line()}")
    for name, f in results.items():
        if name.startswith("jalwa,") or name.startswith("jalwa --"):
            print(
                f"{name} / bare: throughput {f.rate / bare.rate:.2f}, p99 {f.p99_ms:.1f} ms "
                f"(goal <= 20 across nodes: {'met' if f.p99_ms <= 20 else 'missed'}), "
                f"idle {f.idle_kb:.1f} KB"
            )
    print(
        f"\njalwa / bare: throughput {ours.rate / bare.rate:.2f} (goal >= 0.65; >= 50k msg/s: "
        f"{'met' if ours.rate >= 50_000 else 'missed'}), p99 {ours.p99_ms:.1f} ms (goal <= 10: "
        f"{'met' if ours.p99_ms <= 10 else 'missed'}), idle {ours.idle_kb:.1f} KB (goal <= 20: "
        f"{'met' if ours.idle_kb <= 20 else 'missed'}; bare {bare.idle_kb:.1f} KB)"
    )


if __name__ == "__main__":
    main()
