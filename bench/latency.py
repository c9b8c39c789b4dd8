"""Latency at half load, measured as a probe measures it: the load comes from a process of
its own, and a few pairs in this process, sending little, time their frames.

Timing every frame of the load in the process that also generates it (the first version of
bench/signalling.py) measures that process too: at tens of thousands of frames a second its
event loop is busy, and a frame that arrived waits for the loop before it is timed. The bare
relay then showed a p99 of 40-80 ms where ANCHORS.md has 8-11 ms for it. Here the loader
still times its own frames (reported as the loader's p99, the old figure), but the figure
that counts is the probe's: few frames, a loop that is free when they arrive.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection

import aiohttp
import uvloop

Pair = tuple[aiohttp.ClientWebSocketResponse, aiohttp.ClientWebSocketResponse, str]
Opener = Callable[[aiohttp.ClientSession, int], Awaitable[Pair]]
PROBE_PAIRS = 4
PROBE_RATE = 50.0  # frames per second per probe pair: 200/s in all
LOADER_FIRST_PAIR = 100_000  # the loader's users are c100000.., far from the probe's
RAMP_S = 0.5  # the load runs this long before the probe starts, and after it stops


@dataclass(frozen=True)
class Target:
    """Where pairs are opened: picklable, so the loader process can open its own."""

    kind: str  # "jalwa" or "bare"
    base: str
    host_base: str | None = None  # jalwa: hosts on another node


@dataclass
class Latency:
    p50_ms: float
    p99_ms: float
    load_rate: float  # frames per second the loader achieved
    load_p99_ms: float  # the loader's own frames, timed in the loader (the old figure)


def opener_of(target: Target) -> Opener:
    from bench.signalling import bare_opener, jalwa_opener  # it imports this module

    if target.kind == "jalwa":
        return jalwa_opener(target.base, target.host_base)
    return bare_opener(target.base)


async def paced(pairs: list[Pair], per_pair: float, seconds: float) -> list[float]:
    """Every caller sends ``per_pair`` frames a second for ``seconds``; the hosts time each
    frame from its send stamp. Returns the latencies in ms."""
    from bench.signalling import frame

    count = max(1, int(per_pair * seconds))
    samples: list[float] = []

    async def send(caller: aiohttp.ClientWebSocketResponse, call_id: str) -> None:
        start = time.perf_counter()
        for k in range(count):
            delay = start + k / per_pair - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await caller.send_str(frame(call_id, time.perf_counter_ns()))

    async def receive(host: aiohttp.ClientWebSocketResponse) -> None:
        for _ in range(count):
            msg = await host.receive(timeout=60)
            sent = int(str(msg.data).split(" ts ", 1)[1].split('"', 1)[0])
            samples.append((time.perf_counter_ns() - sent) / 1e6)

    await asyncio.gather(*(send(c, cid) for c, _, cid in pairs), *(receive(h) for _, h, _ in pairs))
    return samples


async def at_half_load(
    target: Target,
    probes: list[Pair],
    load_rate: float,
    load_pairs: int,
    seconds: float,
) -> Latency:
    """``load_rate`` frames a second from a loader process over ``load_pairs`` pairs of its
    own, while ``probes`` (open pairs of this process) send PROBE_RATE each and are timed."""
    context = multiprocessing.get_context("spawn")
    here, there = context.Pipe()
    loader = context.Process(
        target=_loader,
        args=(target, load_pairs, max(1.0, load_rate - PROBE_RATE * len(probes)), seconds, there),
        daemon=True,
    )
    loader.start()
    try:
        ready = await asyncio.to_thread(here.recv)
        assert ready == "ready", ready
        here.send("go")
        await asyncio.sleep(RAMP_S)
        samples = await paced(probes, PROBE_RATE, seconds)
        achieved, load_p99 = await asyncio.to_thread(here.recv)
    finally:
        await asyncio.to_thread(loader.join, 30)
        if loader.is_alive():
            loader.kill()
    samples.sort()
    return Latency(statistics.median(samples), _p99(samples), achieved, load_p99)


def _p99(samples: list[float]) -> float:
    return samples[max(0, int(len(samples) * 0.99) - 1)]


def _loader(target: Target, pairs: int, rate: float, seconds: float, pipe: Connection) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_load(target, pairs, rate, seconds, pipe))


async def _load(target: Target, n: int, rate: float, seconds: float, pipe: Connection) -> None:
    opener = opener_of(target)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        pairs = [await opener(http, LOADER_FIRST_PAIR + k) for k in range(n)]
        pipe.send("ready")
        await asyncio.to_thread(pipe.recv)  # "go"
        started = time.perf_counter()
        samples = await paced(pairs, rate / n, seconds + 2 * RAMP_S)
        achieved = len(samples) / (time.perf_counter() - started)
        samples.sort()
        pipe.send((achieved, _p99(samples)))
        for caller, host, _ in pairs:
            await caller.close()
            await host.close()
