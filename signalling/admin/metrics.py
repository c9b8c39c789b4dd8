"""Prometheus metrics (prometheus-client), on a registry of this app's own (no global state:
a test process builds many apps).

Hot paths keep plain counters (the hub's ``frames``, the calls wing's ``ended``, the SFU's
forwarding stats) that a custom collector reads on scrape; timings are histograms observed
where they happen (relay, billing round, store calls)."""

from __future__ import annotations

import bisect
import functools
import inspect
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .stalls import Stalls

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
T = TypeVar("T")
# Exceptions of the store drivers (and the network): a store error, not a refusal the
# store's own rules made (insufficient funds, a duplicate, ...).
_DRIVERS = ("redis.", "asyncpg.", "pymongo.", "bson.")


@dataclass(frozen=True, slots=True)
class Readings:
    """Live values, read on each scrape (given by the composition root)."""

    sessions: Callable[[], int]
    frames: Callable[[], Mapping[tuple[str, str], int]]
    calls_active: Callable[[], int]
    calls_ended: Callable[[], Mapping[str, int]]
    ledger_errors: Callable[[], int]
    sfu_legs: Callable[[], int]
    sfu_forwarded: Callable[[], tuple[int, int]]  # (frames, packets)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # Observed once per relayed frame: a plain histogram (prometheus-client's takes a
        # lock per bucket, a measurable share of the relay's time at 50k frames/s).
        self.relay_latency = PlainHistogram(FAST)
        self.billing_lag = Histogram(
            "jalwa_billing_lag_seconds",
            "Time one billing round takes (claim, charge, report)",
            buckets=FAST,
            registry=r,
        )
        self.billing_batch = Histogram(
            "jalwa_billing_batch_size",
            "Call-minutes charged or calls stopped per billing round",
            buckets=(0, 1, 10, 50, 100, 250, 500, 1000, 2500, 5000),
            registry=r,
        )
        self.store_latency = Histogram(
            "jalwa_store_latency_seconds",
            "Latency of store calls, by store",
            ["store"],
            buckets=FAST,
            registry=r,
        )
        self.store_errors = Counter(
            "jalwa_store_errors", "Store calls that failed in the driver", ["store"], registry=r
        )
        self.match_wait = Histogram(
            "jalwa_match_wait_seconds",
            "Time from match.request to match.found, by mode",
            ["mode"],
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.stalls = Stalls(r)

    def read(self, readings: Readings) -> None:
        self.registry.register(_Live(readings, self.relay_latency))

    def billing_round(self, batch: int, seconds: float) -> None:
        self.billing_batch.observe(batch)
        self.billing_lag.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def timed(self, target: T, store: str) -> T:
        """``target`` with every coroutine method timed and its driver errors counted."""
        return cast(T, _Timed(target, store, self))


class PlainHistogram:
    """Bucket counts in a list, for a hot path (one event loop thread: no lock needed)."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        cumulative, total = [], 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            total += count
            cumulative.append(("+Inf" if math.isinf(bound) else repr(bound), total))
        return HistogramMetricFamily(name, documentation, buckets=cumulative, sum_value=self.sum)


class _Live(Collector):
    def __init__(self, readings: Readings, relay: PlainHistogram) -> None:
        self._r = readings
        self._relay = relay

    def collect(self) -> Iterator[Metric]:
        r = self._r
        yield self._relay.family(
            "jalwa_relay_latency_seconds",
            "Time an rtc.* frame takes on this node (handler and effects)",
        )
        yield GaugeMetricFamily("jalwa_sessions", "Live WebSocket sessions", value=r.sessions())
        frames = CounterMetricFamily(
            "jalwa_frames", "Client frames by type and result", labels=["type", "result"]
        )
        for (kind, result), count in sorted(r.frames().items()):
            frames.add_metric([kind, result], count)
        yield frames
        yield GaugeMetricFamily(
            "jalwa_calls_active", "Calls this node runs", value=r.calls_active()
        )
        ended = CounterMetricFamily("jalwa_calls_ended", "Calls ended by reason", labels=["reason"])
        for reason, count in sorted(r.calls_ended().items()):
            ended.add_metric([reason], count)
        yield ended
        yield CounterMetricFamily(
            "jalwa_ledger_errors", "Billing rounds the ledger failed", value=r.ledger_errors()
        )
        yield GaugeMetricFamily("jalwa_sfu_legs", "SFU peer connections open", value=r.sfu_legs())
        frames_out, packets_out = r.sfu_forwarded()
        yield CounterMetricFamily(
            "jalwa_sfu_forwarded_frames", "Encoded frames the SFU forwarded", value=frames_out
        )
        yield CounterMetricFamily(
            "jalwa_sfu_forwarded_packets",
            "RTP packets the SFU forwarded (RTP forwarding mode)",
            value=packets_out,
        )


class _Timed:
    """A store proxy: the same methods, timed. Attributes that are not coroutine functions
    pass through untouched."""

    def __init__(self, target: Any, store: str, metrics: Metrics) -> None:
        self._target = target
        self._latency = metrics.store_latency.labels(store)
        self._errors = metrics.store_errors.labels(store)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not inspect.iscoroutinefunction(attr):
            return attr
        latency, errors = self._latency, self._errors

        @functools.wraps(attr)
        async def call(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await attr(*args, **kwargs)
            except Exception as exc:
                if _from_driver(exc) or (exc.__cause__ is not None and _from_driver(exc.__cause__)):
                    errors.inc()
                raise
            finally:
                latency.observe(time.perf_counter() - started)

        setattr(self, name, call)  # built once per method, not once per call
        return call


def _from_driver(exc: BaseException) -> bool:
    return isinstance(exc, OSError | TimeoutError) or type(exc).__module__.startswith(_DRIVERS)
