"""Callers and hosts arriving and leaving at random through real hubs, for the matchmaking
race test (``test_match_race``): each client writes what it saw and when into one ``Log``,
and ``check`` judges the pairings from that log alone.

A caller lives once: it queues (random or nearby), and either is matched (the host
auto-accepts), talks for a moment and hangs up, or gives up after a patience of its own
(``match.cancel`` or just closing). A host lives a while: it offers itself (random, nearby or
both), takes the calls it is given, and leaves, sometimes in the middle of a call.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

DELHI = (28.6139, 77.2090)
KM = 1 / 111.2  # degrees of latitude per km


@dataclass(frozen=True, slots=True)
class Event:
    t: float
    user: str
    kind: str  # wait found incoming started ended free leave gone refused (paired: derived)
    peer: str | None = None
    call: str | None = None
    modes: frozenset[str] = frozenset()


@dataclass
class Log:
    events: list[Event] = field(default_factory=list)
    ghosts: set[str] = field(default_factory=set)

    def add(self, user: str, kind: str, **more: Any) -> None:
        self.events.append(Event(time.monotonic(), user, kind, **more))


def near(rng: random.Random, km: float) -> dict[str, float]:
    return {
        "lat": DELHI[0] + rng.uniform(-km, km) * KM,
        "lon": DELHI[1] + rng.uniform(-km, km) * KM,
    }


async def _frames(ws: aiohttp.ClientWebSocketResponse, until: float) -> dict[str, Any] | None:
    """The next JSON frame, or None at ``until`` (monotonic) or when the socket closes."""
    left = until - time.monotonic()
    if left <= 0:
        return None
    try:
        msg = await ws.receive(timeout=left)
    except TimeoutError:
        return None
    if msg.type != aiohttp.WSMsgType.TEXT:
        return {"type": "closed"}
    frame: dict[str, Any] = msg.json()
    return frame


async def _welcomed(ws: aiohttp.ClientWebSocketResponse) -> None:
    first = await ws.receive_json(timeout=30)
    assert first["type"] == "welcome", first


async def caller_life(
    http: aiohttp.ClientSession, url: str, uid: str, token: str, rng: random.Random, log: Log
) -> None:
    mode = "nearby" if rng.random() < 0.25 else "random"
    request: dict[str, Any] = {"type": "match.request", "id": "m", "mode": mode}
    if mode == "nearby":
        request.update(location=near(rng, 5), radius_km=50)
    patience = time.monotonic() + rng.uniform(0.05, 1.5)
    async with http.ws_connect(f"{url}/v1/ws?token={token}") as ws:
        await _welcomed(ws)
        await ws.send_json(request)
        call: str | None = None
        while True:
            frame = await _frames(ws, patience if call is None else time.monotonic() + 30)
            kind = None if frame is None else frame["type"]
            if kind == "match.queued":
                log.add(uid, "wait", modes=frozenset({mode}))
            elif kind == "match.found":
                call = frame["call_id"] if frame else None
                log.add(uid, "found", peer=frame["peer"]["id"] if frame else None, call=call)
            elif kind == "call.started" and frame is not None and frame["call_id"] == call:
                log.add(uid, "started", call=call)
                await asyncio.sleep(rng.uniform(0, 0.05))
                await ws.send_json({"type": "call.end", "call_id": call})
            elif kind == "call.ended" and frame is not None:
                log.add(uid, "ended", call=frame["call_id"])
                if frame["call_id"] == call and frame["reason"] == "hangup":
                    break  # the call is over, by us or by the host
                call = None  # the host vanished: the hub queues us again by itself
            elif kind == "error" and frame is not None:
                log.add(uid, "refused", peer=frame.get("code"))
                if call is None or frame.get("code") != "call_not_found":
                    break
                # the host ended it first: its call.ended (after the books) is on its way
            elif kind in (None, "closed"):
                break  # out of patience while waiting (or the server closed)
        log.add(uid, "leave")
        if call is None and rng.random() < 0.5:
            await ws.send_json({"type": "match.cancel", "id": "c"})
    log.add(uid, "gone")


async def host_life(
    http: aiohttp.ClientSession, url: str, uid: str, token: str, rng: random.Random, log: Log
) -> None:
    pick = rng.random()
    modes = {"random"} if pick < 0.6 else {"nearby"} if pick < 0.8 else {"random", "nearby"}
    update: dict[str, Any] = {
        "type": "presence.update",
        "id": "p",
        "status": "available",
        "match": {"random": "random" in modes, "nearby": "nearby" in modes, "auto_accept": True},
    }
    if "nearby" in modes:
        update["location"] = near(rng, 3)
    leave_at = time.monotonic() + rng.uniform(0.3, 2.5)
    async with http.ws_connect(f"{url}/v1/ws?token={token}") as ws:
        await _welcomed(ws)
        await ws.send_json(update)
        call: str | None = None
        while True:
            frame = await _frames(ws, leave_at)
            kind = None if frame is None else frame["type"]
            if frame is not None and kind == "ack":
                log.add(uid, "free", modes=frozenset(modes))
            elif frame is not None and kind == "call.incoming":
                call = frame["call_id"]
                log.add(uid, "incoming", peer=frame["caller"]["id"], call=call)
            elif frame is not None and kind == "call.started":
                log.add(uid, "started", call=frame["call_id"])
            elif frame is not None and kind == "call.ended":
                log.add(uid, "ended", call=frame["call_id"])
                if frame["call_id"] == call:
                    call = None
                    log.add(uid, "free", modes=frozenset(modes))
            elif kind in (None, "closed"):
                break
        log.add(uid, "leave")
        if call is not None and rng.random() < 0.7:
            await ws.send_json({"type": "call.end", "call_id": call})
    log.add(uid, "gone")


@dataclass
class Crowd:
    """``lives`` arrivals (each followed by its departure) spread over ``workers`` clients
    per node URL: life ``i`` is caller ``c<i>`` or host ``h<i>`` (seeded), half and half
    overall but in waves of ``wave`` lives where hosts are scarce, then plentiful, so that
    callers wait at times and hosts at others."""

    urls: list[str]
    token: Callable[[str, str], str]
    lives: int
    workers: int
    log: Log
    seed: int = 1
    wave: int = 400
    failures: list[str] = field(default_factory=list)
    lag_s: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        hosts = [0.1 if (i // self.wave) % 2 else 0.9 for i in range(self.lives)]
        self.plan = [f"h{i}" if rng.random() < p else f"c{i}" for i, p in enumerate(hosts)]

    def caller_ids(self) -> list[str]:
        return [uid for uid in self.plan if uid.startswith("c")]

    async def run(self) -> None:
        lives = iter(self.plan)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            jobs = [
                self._worker(http, url, random.Random(self.seed * 1000 + i), lives)
                for i, url in enumerate(self.urls * self.workers)
            ]
            probes = [
                asyncio.create_task(self._probe(http, url, n)) for n, url in enumerate(self.urls)
            ]
            await asyncio.gather(*jobs)
            for probe in probes:
                probe.cancel()

    async def _probe(self, http: aiohttp.ClientSession, url: str, n: int) -> None:
        """How long a node takes to answer a no-op (match.cancel) while the crowd runs:
        the hubs' own lag, which is what separates two clients' views of one moment."""
        uid = f"probe{n}"
        async with http.ws_connect(f"{url}/v1/ws?token={self.token(uid, 'caller')}") as ws:
            await _welcomed(ws)
            while True:
                sent = time.monotonic()
                await ws.send_json({"type": "match.cancel", "id": "p"})
                while (await ws.receive_json())["type"] != "ack":
                    pass
                self.lag_s.append(time.monotonic() - sent)
                await asyncio.sleep(0.1)

    async def _worker(
        self, http: aiohttp.ClientSession, url: str, rng: random.Random, lives: Iterator[str]
    ) -> None:
        for uid in lives:
            life = caller_life if uid.startswith("c") else host_life
            role = "caller" if uid.startswith("c") else "host"
            try:
                await life(http, url, uid, self.token(uid, role), rng, self.log)
            except (aiohttp.ClientError, TimeoutError, AssertionError) as exc:
                self.failures.append(f"{uid}: {exc!r}")


# --- the checks, from the log alone -------------------------------------------------------


@dataclass
class Verdict:
    self_matches: list[str] = field(default_factory=list)
    double: list[str] = field(default_factory=list)
    ghost: list[str] = field(default_factory=list)
    offline: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    pairings: int = 0
    longest_overlap_s: float = 0.0
    latest_after_leaving_s: float = 0.0  # a host paired this long after their socket closed

    def failures(self) -> dict[str, list[str]]:
        named = {
            "self-matches": self.self_matches,
            "double pairings": self.double,
            "pairings with a ghost": self.ghost,
            "pairings with a user who had left": self.offline,
            "waiters left waiting while a partner was free": self.stuck,
        }
        return {name: items[:10] for name, items in named.items() if items}


def check(log: Log, *, grace_s: float, call_tail_s: float) -> Verdict:
    """Judge the run. ``grace_s``: how long a frame may take through two hubs and Redis
    (so how far apart two clients' clocks of one moment may be). ``call_tail_s``: how long
    a call outlives a caller who vanished in it (the hub's peer-lost grace).

    A call's life is read from its caller, who is connected to the node that owns the call
    (match.found to call.ended); a host on another node hears of it later, and frames from
    two nodes may reach a host out of order (a ring relayed through Redis after a later
    ring made on the host's own node), so the host's own log is only checked for agreeing
    on who its calls were with."""
    v = Verdict()
    events = sorted(log.events, key=lambda e: e.t)
    found = [e for e in events if e.kind == "found"]
    paired = [Event(e.t, e.peer, "paired", peer=e.user, call=e.call) for e in found if e.peer]
    by_user: dict[str, list[Event]] = defaultdict(list)
    for e in sorted(events + paired, key=lambda e: e.t):
        by_user[e.user].append(e)
    left = {u: next((e.t for e in es if e.kind == "leave"), None) for u, es in by_user.items()}
    gone = {u: next((e.t for e in es if e.kind == "gone"), None) for u, es in by_user.items()}
    v.pairings = len(found)

    owner: dict[str, tuple[str, str]] = {}
    spans: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for e in found:
        host = e.peer or ""
        if e.call in owner:
            v.double.append(f"{e.call} found twice: {owner[e.call]} and {(e.user, host)}")
        owner[e.call or ""] = (e.user, host)
        if host == e.user:
            v.self_matches.append(f"{e.user} in {e.call}")
        if host in log.ghosts:
            v.ghost.append(f"{e.user} with {host} in {e.call}")
        host_gone = gone.get(host)
        if host_gone is not None:
            v.latest_after_leaving_s = max(v.latest_after_leaving_s, e.t - host_gone)
        if host_gone is not None and e.t > host_gone + grace_s:
            v.offline.append(f"{e.user} with {host}, {e.t - host_gone:.2f} s after they left")
        ended = next((x.t for x in by_user[e.user] if x.kind == "ended" and x.call == e.call), None)
        end = ended if ended is not None else (gone[e.user] or e.t) + call_tail_s
        for who in (e.user, host):
            spans[who].append((e.t, end, e.call or ""))
    for e in events:
        if e.kind != "incoming":
            continue
        pair = owner.get(e.call or "")
        if e.peer == e.user:
            v.self_matches.append(f"{e.user} in {e.call}")
        if e.peer in log.ghosts:
            v.ghost.append(f"{e.user} with {e.peer} in {e.call}")
        if pair is None:  # its caller never heard: they must have been leaving by then
            caller_left = left.get(e.peer or "")
            if caller_left is None or e.t > caller_left + grace_s + call_tail_s:
                v.offline.append(f"{e.user} rung for {e.call} by {e.peer}, who had left")
        elif pair != (e.peer, e.user):
            v.double.append(f"{e.call}: the caller says {pair}, the host {(e.peer, e.user)}")
    for user, calls in spans.items():
        calls.sort()
        for (_, end, first), (start, _, second) in itertools.pairwise(calls):
            if start < end - grace_s:
                v.double.append(f"{user}: {second} began {end - start:.2f} s before {first} ended")
    v.stuck, v.longest_overlap_s = _stuck(by_user, grace_s)
    return v


def _intervals(
    events: Iterable[Event], opens: str, closes: tuple[str, ...]
) -> list[tuple[float, float, frozenset[str]]]:
    out, start, modes = [], None, frozenset[str]()
    for e in events:
        if e.kind == opens and start is None:
            start, modes = e.t, e.modes
        elif e.kind in closes and start is not None:
            out.append((start, e.t, modes))
            start = None
    return out


def _stuck(by_user: dict[str, list[Event]], grace_s: float) -> tuple[list[str], float]:
    """Times when a caller had waited longer than the grace while a compatible host had
    been free longer than the grace: a sweep over both kinds of interval, per mode."""
    edges: list[tuple[float, int, str, str]] = []  # (time, +1/-1, side:mode, user)
    for user, events in by_user.items():
        waits = _intervals(events, "wait", ("found", "leave"))
        frees = _intervals(events, "free", ("incoming", "paired", "leave"))
        for side, spans in (("caller", waits), ("host", frees)):
            for start, end, modes in spans:
                for mode in modes:
                    if end > start + grace_s:
                        edges.append((start + grace_s, 1, f"{side}:{mode}", user))
                        edges.append((end, -1, f"{side}:{mode}", user))
    edges.sort(key=lambda e: (e[0], e[1]))
    active: dict[str, set[str]] = defaultdict(set)
    both_since: dict[str, float] = {}
    stuck: list[str] = []
    longest = 0.0
    for t, step, key, user in edges:
        (active[key].add if step > 0 else active[key].discard)(user)
        for mode in ("random", "nearby"):
            together = bool(active[f"caller:{mode}"]) and bool(active[f"host:{mode}"])
            if together and mode not in both_since:
                both_since[mode] = t
                callers, hosts = sorted(active[f"caller:{mode}"]), sorted(active[f"host:{mode}"])
                stuck.append(f"{mode} at {t:.2f}: callers {callers[:3]} hosts {hosts[:3]}")
            elif not together and mode in both_since:
                longest = max(longest, t - both_since.pop(mode))
    return stuck, longest


def summary(log: Log) -> Counter[str]:
    return Counter(e.kind for e in log.events)
