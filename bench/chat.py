"""Chat throughput: chat.send through the hub to the store, against a raw driver insert loop.

Run: ``.venv/bin/python -m bench.chat [--mongo-url URL] [--messages N] [--clients C]``

The MongoDB server is ``--mongo-url``, else ``JALWA_TEST_MONGO_URL``, else the mongoeco wire
server of ``scripts/mongo-wire`` (reused if it is already running, otherwise started here
and stopped at the end). The paths run in the same process, one after the other, each with
the same concurrency C and (but for MemoryChat) the same N messages:

- raw insert_one (the baseline): C asyncio tasks, each calling ``AsyncMongoClient.insert_one``
  in a loop with documents shaped like the chat store's message documents, into a fresh
  database and collection (only the ``_id`` index);
- raw insert_one, chat idx: the same into a fresh collection carrying MongoChat's indexes on
  ``messages`` (the unique ``(sender, client_msg_id)`` and two others), to tell the cost of
  those indexes on this server from the cost of our path;
- hub -> MongoChat: a real jalwa app (``create_app`` with ``mongo_url`` and a fresh database,
  ``hooks=FreeCalls()``, rate limits raised out of the way) served by ``web.AppRunner`` on
  127.0.0.1 port 0, and C sender/receiver WebSocket client pairs (aiohttp). Each sender
  pipelines its share of ``chat.send`` frames (with ids) keeping at most ``--window`` requests
  in flight; the run ends when every ack has arrived and every receiver has got every
  ``chat.message``;
- hub -> MemoryChat: the same app with ``mongo_url`` unset (the embedded store), to separate
  the hub's own cost from the store's; ``--memory-messages`` of them, since N takes only
  milliseconds there.

Connections are opened and warmed up (one untimed message per client) before timing. The
rate is acked messages per second, end to end; the ratio is against the raw baseline in the
same run. Afterwards the stored message and conversation counts are checked, and the bench's
databases are dropped. All measured paths share a budget of ``BUDGET_S`` seconds. The
clients run in the bench process, so the hub paths' time includes the client side (JSON and
WebSocket framing) as well as the server side. Also printed: CPU per message of this process
and (when it is a local ``scripts/mongo-wire`` server) of the MongoDB server, and the driver
commands per message with their mean latency (from a pymongo ``CommandListener``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import os
import platform
import pstats
import secrets
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web
from pymongo import AsyncMongoClient, monitoring
from pymongo.errors import PyMongoError

from bench.loop import loop_factory
from signalling.app import create_app
from signalling.auth import Identity, Role, load_keys, mint_token
from signalling.calls.hooks import FreeCalls
from signalling.chat.mongo import INDEXES
from signalling.clock import SystemClock
from signalling.settings import Settings

Doc = dict[str, Any]
ROOT = Path(__file__).resolve().parents[1]
MONGO_WIRE = ROOT / "scripts" / "mongo-wire"
WIRE_PID_FILE = ROOT / ".cache" / "mongo-wire.pid"
HOST = "127.0.0.1"
TEXT = "benchmark message: " + "x" * 45  # 64 characters
HIGH = 1_000_000_000  # rate limits far beyond what the bench can send
BUDGET_S = 100.0  # all measured paths together; past it the run fails (bounded runtime)


class BenchError(Exception):
    pass


# --- measurements -------------------------------------------------------------------------


class CommandCounter(monitoring.CommandListener):
    """Counts the commands every MongoClient created after registration sends, and their
    latency as the driver sees it (server time, plus queueing when requests overlap)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.micros: Counter[str] = Counter()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.counts[event.command_name] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self.micros[event.command_name] += event.duration_micros

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self.micros[event.command_name] += event.duration_micros


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of another process (Linux /proc), None if unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    path: str
    messages: int
    seconds: float
    cpu_s: float  # this process (clients + hub + driver)
    server_cpu_s: float | None  # the wire server process, when known
    commands: Counter[str] = field(default_factory=Counter)
    micros: Counter[str] = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


@dataclass
class Env:
    """What every path shares: the command counter, the server to watch, the deadline."""

    counter: CommandCounter
    server_pid: int | None
    deadline: float  # loop time

    @contextlib.asynccontextmanager
    async def budget(self, label: str) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout_at(self.deadline):
                yield
        except TimeoutError:
            raise BenchError(
                f"{label}: over the {BUDGET_S:.0f} s budget of the run; lower --messages"
            ) from None


@contextlib.contextmanager
def measured(path: str, messages: int, env: Env) -> Iterator[Result]:
    counter, server_pid = env.counter, env.server_pid
    result = Result(path, messages, 0.0, 0.0, None)
    server0 = process_cpu_s(server_pid) if server_pid else None
    commands0, micros0 = Counter(counter.counts), Counter(counter.micros)
    cpu0, t0 = time.process_time(), time.perf_counter()
    yield result
    result.seconds = time.perf_counter() - t0
    result.cpu_s = time.process_time() - cpu0
    result.commands = Counter(counter.counts)
    result.commands.subtract(commands0)
    result.commands = +result.commands
    result.micros = Counter(counter.micros)
    result.micros.subtract(micros0)
    if server_pid and server0 is not None:
        server1 = process_cpu_s(server_pid)
        result.server_cpu_s = None if server1 is None else server1 - server0


def shares(n: int, c: int) -> list[int]:
    """n split over c clients as evenly as possible."""
    return [n // c + (1 if i < n % c else 0) for i in range(c)]


# --- the MongoDB server -------------------------------------------------------------------


def _mongo_wire(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MONGO_WIRE), command], cwd=ROOT, capture_output=True, text=True, check=False
    )


@contextlib.contextmanager
def mongo_server(url: str | None) -> Iterator[tuple[str, str, int | None]]:
    """(url, where it came from, wire server pid if it is ours to watch)."""
    if url:
        yield url, "--mongo-url", None
        return
    if env := os.environ.get("JALWA_TEST_MONGO_URL"):
        yield env, "JALWA_TEST_MONGO_URL", None
        return
    running = _mongo_wire("url")
    if running.returncode == 0:  # someone else's server: use it, leave it running
        yield running.stdout.strip(), "scripts/mongo-wire (already running)", _wire_pid()
        return
    started = _mongo_wire("start")
    if started.returncode != 0:
        raise BenchError(f"scripts/mongo-wire start failed:\n{started.stderr}")
    try:
        found = _mongo_wire("url")
        if found.returncode != 0:
            raise BenchError(f"scripts/mongo-wire url failed:\n{found.stderr}")
        yield found.stdout.strip(), "scripts/mongo-wire (started by the bench)", _wire_pid()
    finally:
        stopped = _mongo_wire("stop")
        if stopped.returncode != 0:
            print(f"scripts/mongo-wire stop failed:\n{stopped.stderr}", file=sys.stderr)


def _wire_pid() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(WIRE_PID_FILE.read_text().strip())
    return None


# --- raw driver baseline ------------------------------------------------------------------


def raw_doc(client: int, k: int, now: float) -> Doc:
    """A document shaped like MongoChat's message documents."""
    sender, receiver = f"s{client}", f"r{client}"
    return {
        "_id": f"{uuid.uuid4().hex[:26].upper()}",
        "conversation_id": f"dm:{receiver}:{sender}",
        "sender": sender,
        "receiver": receiver,
        "client_msg_id": f"c{client}-{k}",
        "text": TEXT,
        "created_at": now,
        "status": "sent",
        "applied": False,
    }


async def raw_path(
    label: str,
    url: str,
    database: str,
    n: int,
    c: int,
    env: Env,
    *,
    indexes: bool,
) -> Result:
    client: AsyncMongoClient[Doc] = AsyncMongoClient(
        url, tz_aware=True, serverSelectionTimeoutMS=5000
    )
    try:
        coll = client[database]["messages"]
        if indexes:  # exactly MongoChat's indexes on its messages collection
            for name, keys, unique in INDEXES["messages"]:
                await coll.create_index(list(keys), name=name, unique=unique)
        now = time.time()
        docs = [[raw_doc(i, k, now) for k in range(share)] for i, share in enumerate(shares(n, c))]
        # Warm-up (untimed): one insert per task, so the pool holds C open connections.
        await asyncio.gather(*(coll.insert_one(raw_doc(i, -1, now)) for i in range(c)))

        async def insert_all(batch: list[Doc]) -> None:
            for doc in batch:
                await coll.insert_one(doc)

        with measured(label, n, env) as result:
            async with env.budget(label):
                await asyncio.gather(*(insert_all(batch) for batch in docs))
        stored = await coll.count_documents({})
        if stored != n + c:
            raise BenchError(f"{label}: {stored} documents stored, expected {n + c}")
        return result
    finally:
        await client.close()


# --- through the hub ----------------------------------------------------------------------


def bench_settings(mongo_url: str | None, database: str, secret: str) -> Settings:
    return Settings.model_validate(
        {
            "auth": {"secret": secret},
            "mongo_url": mongo_url,
            "hub": {
                "rate_per_s": HIGH,
                "rate_burst": HIGH,
                "send_queue_max": 100_000,
                "demo_page": False,
            },
            "chat": {"rate_per_s": HIGH, "rate_burst": HIGH, "database": database},
            "presence": {"key_prefix": f"jalwa-bench-{uuid.uuid4().hex[:8]}"},
        }
    )


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[str]:
    """The real app on 127.0.0.1, port chosen by the kernel; yields its ws URL."""
    runner = web.AppRunner(create_app(settings, hooks=FreeCalls()), handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, HOST, 0)
        await site.start()
        port = runner.addresses[0][1]
        yield f"ws://{HOST}:{port}/v1/ws"
    finally:
        await runner.cleanup()


async def next_frame(ws: aiohttp.ClientWebSocketResponse) -> Doc:
    msg = await ws.receive()
    if msg.type is not WSMsgType.TEXT:
        raise BenchError(f"unexpected {msg.type.name} from the hub: {msg.data!r} {msg.extra!r}")
    frame: Doc = json.loads(msg.data)
    if frame.get("type") == "error":
        hint = ""
        if frame.get("code") == "unavailable":
            hint = " (did the MongoDB server go away? scripts/mongo-wire is shared by everyone)"
        raise BenchError(f"the hub answered an error: {frame}{hint}")
    return frame


async def connect(
    http: aiohttp.ClientSession, url: str, token: str
) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(f"{url}?token={token}", autoping=True, max_msg_size=0)
    while (await next_frame(ws))["type"] != "welcome":
        pass
    return ws


def send_frame(to: str, cmid: str) -> str:
    return json.dumps(
        {"type": "chat.send", "id": cmid, "to": to, "client_msg_id": cmid, "text": TEXT}
    )


async def send_all(
    ws: aiohttp.ClientWebSocketResponse, to: str, prefix: str, count: int, window: int
) -> list[str]:
    """Send ``count`` chat.send frames, at most ``window`` unacknowledged; message ids."""
    slots = asyncio.Semaphore(window)
    pending: set[str] = set()
    acked: list[str] = []

    async def write() -> None:
        for k in range(count):
            await slots.acquire()
            cmid = f"{prefix}-{k}"
            pending.add(cmid)
            await ws.send_str(send_frame(to, cmid))

    async def read() -> None:
        while len(acked) < count:
            frame = await next_frame(ws)
            if frame["type"] != "ack":
                continue
            cmid = frame["id"]
            if cmid not in pending:
                raise BenchError(f"ack for an unknown request: {frame}")
            pending.remove(cmid)
            acked.append(frame["message"]["id"])
            slots.release()

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(write())
            group.create_task(read())
    except ExceptionGroup as failed:
        first = failed.exceptions[0]
        if isinstance(first, BenchError):
            raise first from None
        raise
    return acked


async def receive_all(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[str]:
    got: list[str] = []
    while len(got) < count:
        frame = await next_frame(ws)
        if frame["type"] == "chat.message":
            got.append(frame["message"]["id"])
    return got


async def hub_path(
    label: str,
    settings: Settings,
    n: int,
    c: int,
    window: int,
    env: Env,
    profile: cProfile.Profile | None = None,
) -> Result:
    keys, clock = load_keys(settings, create_dev_key=False), SystemClock()

    def token(user: str, role: Role) -> str:
        return mint_token(keys, settings.auth, Identity(user, role, user), ttl_s=600, clock=clock)

    async with serving(settings) as url, aiohttp.ClientSession() as http:
        senders = [await connect(http, url, token(f"s{i}", Role.CALLER)) for i in range(c)]
        receivers = [await connect(http, url, token(f"r{i}", Role.HOST)) for i in range(c)]
        try:
            # Warm-up (untimed): one message per pair opens the store's connections.
            async with env.budget(label):
                await asyncio.gather(
                    *(send_all(s, f"r{i}", f"w{i}", 1, 1) for i, s in enumerate(senders)),
                    *(receive_all(r, 1) for r in receivers),
                )
            counts = shares(n, c)
            if profile is not None:
                profile.enable()
            with measured(label, n, env) as result:
                async with env.budget(label):
                    outcome = await asyncio.gather(
                        *(
                            send_all(s, f"r{i}", f"m{i}", counts[i], window)
                            for i, s in enumerate(senders)
                        ),
                        *(receive_all(r, counts[i]) for i, r in enumerate(receivers)),
                    )
            if profile is not None:
                profile.disable()
        finally:
            for ws in senders + receivers:
                await ws.close()
    acked, received = outcome[:c], outcome[c:]
    for i in range(c):
        if sorted(acked[i]) != sorted(received[i]) or len(set(acked[i])) != counts[i]:
            raise BenchError(f"{label}: pair {i} acked and received different messages")
    return result


async def check_store(url: str, database: str, n: int, c: int) -> None:
    client: AsyncMongoClient[Doc] = AsyncMongoClient(url, serverSelectionTimeoutMS=5000)
    try:
        db = client[database]
        messages = await db["messages"].count_documents({"applied": True})
        conversations = await db["conversations"].count_documents({})
        if messages != n + c or conversations != c:
            raise BenchError(
                f"hub -> MongoChat: {messages} applied messages and {conversations}"
                f" conversations stored, expected {n + c} and {c}"
            )
    finally:
        await client.close()


async def drop(url: str, databases: list[str]) -> bool:
    """Drop the bench's databases; on failure say so (the run may already be failing)."""
    client: AsyncMongoClient[Doc] = AsyncMongoClient(url, serverSelectionTimeoutMS=5000)
    try:
        for name in databases:
            await client.drop_database(name)
        return True
    except PyMongoError as exc:
        print(f"bench.chat: could not drop {', '.join(databases)}: {exc}", file=sys.stderr)
        return False
    finally:
        await client.close()


# --- the report ---------------------------------------------------------------------------


def per_message_us(seconds: float | None, n: int) -> str:
    return "-" if seconds is None else f"{seconds / n * 1e6:,.0f}"


def table(results: list[Result], raw: Result) -> list[str]:
    lines = [
        "| path                     | messages | seconds | messages/s | ratio to raw"
        " | bench CPU us/msg | server CPU us/msg | driver commands/msg |",
        "|--------------------------|---------:|--------:|-----------:|-------------:"
        "|-----------------:|------------------:|--------------------:|",
    ]
    for r in results:
        commands = sum(r.commands.values()) / r.messages
        lines.append(
            f"| {r.path:<24} | {r.messages:>8,} | {r.seconds:>7.2f} | {r.rate:>10,.0f}"
            f" | {r.rate / raw.rate:>11.2f}x | {per_message_us(r.cpu_s, r.messages):>16}"
            f" | {per_message_us(r.server_cpu_s, r.messages):>17} | {commands:>19.2f} |"
        )
    return lines


def command_mix(r: Result) -> str:
    """Per message: how many of each command, and its mean latency seen by the driver."""
    return ", ".join(
        f"{name} {count / r.messages:.2f} x {r.micros[name] / count / 1000:.2f} ms"
        for name, count in sorted(r.commands.items())
    )


def top_costs(profile: cProfile.Profile, limit: int) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.strip_dirs().sort_stats(pstats.SortKey.TIME).print_stats(limit)
    return out.getvalue()


async def main(args: argparse.Namespace) -> int:
    n, c, window, n_memory = args.messages, args.clients, args.window, args.memory_messages
    if min(n, n_memory) < c or c < 1 or window < 1:
        raise BenchError("need --messages, --memory-messages >= --clients >= 1, --window >= 1")
    counter = CommandCounter()
    monitoring.register(counter)  # every client created from here on, the app's included
    tag = uuid.uuid4().hex[:10]
    databases = [f"jalwa_bench_{kind}_{tag}" for kind in ("raw", "rawidx", "chat")]
    raw_db, indexed_db, hub_db = databases
    secret = secrets.token_hex(32)
    profile = cProfile.Profile() if args.profile else None
    with mongo_server(args.mongo_url) as (url, source, server_pid):
        affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        print(
            f"cores: {os.cpu_count()} (usable: {affinity}); Python {platform.python_version()};"
            f" MongoDB at {url} from {source}; N={n:,} messages ({n_memory:,} for MemoryChat),"
            f" C={c} client pairs, window {window} per client",
            flush=True,
        )
        env = Env(counter, server_pid, asyncio.get_running_loop().time() + BUDGET_S)
        try:
            raw = await raw_path("raw insert_one", url, raw_db, n, c, env, indexes=False)
            print(f"raw insert_one: {raw.seconds:.2f} s", flush=True)
            indexed = await raw_path(
                "raw insert_one, chat idx", url, indexed_db, n, c, env, indexes=True
            )
            print(f"raw insert_one, chat indexes: {indexed.seconds:.2f} s", flush=True)
            mongo_settings = bench_settings(url, hub_db, secret)
            mongo = await hub_path("hub -> MongoChat", mongo_settings, n, c, window, env, profile)
            await check_store(url, hub_db, n, c)
            print(f"hub -> MongoChat: {mongo.seconds:.2f} s (store checked)", flush=True)
            memory_env = Env(counter, None, env.deadline)
            memory_settings = bench_settings(None, hub_db, secret)
            memory = await hub_path(
                "hub -> MemoryChat", memory_settings, n_memory, c, window, memory_env
            )
            print(f"hub -> MemoryChat: {memory.seconds:.2f} s", flush=True)
        finally:
            dropped = await drop(url, databases)
        if dropped:
            print(f"dropped {', '.join(databases)}")
    print()
    print("\n".join(table([raw, indexed, mongo, memory], raw)))
    print()
    print("driver commands per message x their mean latency (as the driver sees it):")
    for result in (raw, indexed, mongo):
        print(f"  {result.path}: {command_mix(result)}")
    if server_pid is None:
        print("(server CPU: unknown, the server is not a local scripts/mongo-wire process)")
    if profile is not None:
        print()
        print("cProfile of the bench process during hub -> MongoChat (top by own time):")
        print(top_costs(profile, args.profile))
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chat",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--mongo-url", default=None, help="default JALWA_TEST_MONGO_URL")
    parser.add_argument("--messages", type=int, default=1000, help="N, in total")
    parser.add_argument("--clients", type=int, default=8, help="C sender/receiver pairs")
    parser.add_argument("--window", type=int, default=32, help="requests in flight per client")
    parser.add_argument(
        "--memory-messages",
        type=int,
        default=20_000,
        help="messages for the hub -> MemoryChat path (N is over in milliseconds there)",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="LINES",
        help="cProfile the hub -> MongoChat path and print this many top functions",
    )
    return parser.parse_args(argv)


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        try:
            return runner.run(main(args))
        except (BenchError, PyMongoError) as exc:
            print(f"bench.chat: {exc}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(run())
