"""The server's own stalls over a bench round, read from its /metrics before and after:
garbage collections (``jalwa_gc_pause_seconds``) and the event loop's lag
(``jalwa_event_loop_lag_seconds``); and from the kernel, how long the server's loop thread
ran and how long it was ready to run but waited for a core (/proc/PID/schedstat). A late
loop with a long wait for a core is the machine's doing, not the server's code."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

Snapshot = dict[tuple[str, str], float]  # (sample name, "le/generation") -> value


@dataclass(frozen=True)
class Stalls:
    collections: int
    gc_ms: float  # time in collections, all generations
    gc_longest_ms: float  # the upper bound of the highest bucket that moved
    full_collections: int
    lag_samples: int
    lag_p99_ms: float  # bucket upper bounds: "at most"
    lag_longest_ms: float

    def line(self) -> str:
        return (
            f"{self.collections} collections "
            f"({self.full_collections} full), {self.gc_ms:.1f} ms in all, the longest <= "
            f"{self.gc_longest_ms:g} ms; loop lag p99 <= {self.lag_p99_ms:g} ms, the longest "
            f"<= {self.lag_longest_ms:g} ms ({self.lag_samples} samples)"
        )


@dataclass(frozen=True)
class Cpu:
    on_cpu_s: float
    waiting_s: float  # runnable, on a run queue, not running

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(self.on_cpu_s - other.on_cpu_s, self.waiting_s - other.waiting_s)

    def line(self, seconds: float) -> str:
        return (
            f"loop thread on a core {100 * self.on_cpu_s / seconds:.0f}% of the round, "
            f"ready but waiting for one {100 * self.waiting_s / seconds:.0f}%"
        )


def cpu_of(pid: int | str) -> Cpu:
    """The scheduler times of ``pid``'s main thread (a server's event loop), or of the
    calling thread for ``"thread-self"``; zeros off Linux."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            on_cpu, waiting = f.read().split()[:2]
    except (OSError, ValueError):
        return Cpu(0.0, 0.0)
    return Cpu(int(on_cpu) / 1e9, int(waiting) / 1e9)


async def scrape(http: aiohttp.ClientSession, base: str) -> Snapshot:
    async with http.get(f"{base}/metrics") as resp:
        text = await resp.text()
    snapshot: Snapshot = {}
    for family in text_string_to_metric_families(text):
        if family.name not in ("jalwa_gc_pause_seconds", "jalwa_event_loop_lag_seconds"):
            continue
        for s in family.samples:
            key = s.labels.get("le", "") + "/" + s.labels.get("generation", "")
            snapshot[(s.name, key)] = snapshot.get((s.name, key), 0.0) + s.value
    return snapshot


def between(before: Snapshot, after: Snapshot) -> Stalls:
    moved = {k: v - before.get(k, 0.0) for k, v in after.items()}
    gc_buckets = _buckets(moved, "jalwa_gc_pause_seconds_bucket")
    lag_buckets = _buckets(moved, "jalwa_event_loop_lag_seconds_bucket")
    gc_count = sum(v for (name, _), v in moved.items() if name == "jalwa_gc_pause_seconds_count")
    lag_count = moved.get(("jalwa_event_loop_lag_seconds_count", "/"), 0.0)
    return Stalls(
        collections=int(gc_count),
        gc_ms=1000 * sum(v for (n, _), v in moved.items() if n == "jalwa_gc_pause_seconds_sum"),
        gc_longest_ms=_longest(gc_buckets),
        full_collections=int(moved.get(("jalwa_gc_pause_seconds_count", "/2"), 0.0)),
        lag_samples=int(lag_count),
        lag_p99_ms=_quantile(lag_buckets, lag_count, 0.99),
        lag_longest_ms=_longest(lag_buckets),
    )


def _buckets(moved: Snapshot, name: str) -> list[tuple[float, float]]:
    """Cumulative (bound in ms, count) summed over the label sets, by bound."""
    totals: dict[float, float] = {}
    for (sample, key), value in moved.items():
        if sample == name:
            bound = 1000 * float(key.split("/", 1)[0])
            totals[bound] = totals.get(bound, 0.0) + value
    return sorted(totals.items())


def _longest(buckets: list[tuple[float, float]]) -> float:
    """The smallest bound every observation is under (inf: some were above the last)."""
    total = buckets[-1][1] if buckets else 0.0
    return next((bound for bound, c in buckets if c >= total), 0.0) if total else 0.0


def _quantile(buckets: list[tuple[float, float]], count: float, q: float) -> float:
    for bound, cumulative in buckets:
        if count and cumulative >= q * count:
            return bound
    return 0.0
