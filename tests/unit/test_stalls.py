"""The stall histograms see what they are for: a collection, and a loop held up."""

from __future__ import annotations

import asyncio
import gc
import time

from prometheus_client import CollectorRegistry

from signalling.admin.stalls import Stalls


def _count(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(f"{name}_count", labels)
    return 0.0 if value is None else value


def test_collections_are_timed_by_generation_while_open_and_not_after() -> None:
    registry = CollectorRegistry()
    stalls = Stalls(registry)
    with stalls.timing_gc():
        gc.collect(2)
        gc.collect(0)
    assert _count(registry, "jalwa_gc_pause_seconds", generation="2") >= 1
    assert _count(registry, "jalwa_gc_pause_seconds", generation="0") >= 1
    assert stalls._on_gc not in gc.callbacks
    seen = _count(registry, "jalwa_gc_pause_seconds", generation="2")
    gc.collect(2)
    assert _count(registry, "jalwa_gc_pause_seconds", generation="2") == seen


async def test_a_blocked_loop_shows_as_lag() -> None:
    registry = CollectorRegistry()
    stalls = Stalls(registry)
    sampler = asyncio.create_task(stalls.sample_lag(every=0.01))
    await asyncio.sleep(0.03)  # a few samples of a free loop
    time.sleep(0.08)  # noqa: ASYNC251 - on purpose: a callback that holds the loop
    await asyncio.sleep(0.03)
    sampler.cancel()
    late = registry.get_sample_value("jalwa_event_loop_lag_seconds_bucket", {"le": "0.05"})
    total = _count(registry, "jalwa_event_loop_lag_seconds")
    assert total >= 3
    assert late is not None and total - late >= 1, "the 80 ms hold is not above 50 ms"
