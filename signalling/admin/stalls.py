"""What holds up every frame at once: the event loop's lag and the garbage collector's
pauses, as Prometheus histograms.

A relayed frame's latency is its handler's time (``jalwa_relay_latency_seconds``) plus the
time it waited for the loop. That wait is invisible to the handler: a collection, a slow
callback or the kernel not scheduling the process all stop every frame in flight. These two
histograms tell the server's own stalls from the machine's (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

STALL = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LAG_EVERY_S = 0.1  # the sampler's period: 10 wake-ups a second, nothing at idle


class Stalls:
    def __init__(self, registry: CollectorRegistry) -> None:
        pause = Histogram(
            "jalwa_gc_pause_seconds",
            "Garbage collections of this process, by generation (every frame waits)",
            ["generation"],
            buckets=STALL,
            registry=registry,
        )
        self._pauses = [pause.labels(str(generation)) for generation in range(3)]
        self.loop_lag = Histogram(
            "jalwa_event_loop_lag_seconds",
            f"How late a timer due every {LAG_EVERY_S:g} s ran (a sample of the loop's waits)",
            buckets=STALL,
            registry=registry,
        )
        self._gc_started = 0.0

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self._pauses[info["generation"]].observe(time.perf_counter() - self._gc_started)

    @contextlib.contextmanager
    def timing_gc(self) -> Iterator[None]:
        """Time every collection while open. ``gc.callbacks`` is the process's: a test
        process builds many apps, each removes its own callback when it stops."""
        gc.callbacks.append(self._on_gc)
        try:
            yield
        finally:
            gc.callbacks.remove(self._on_gc)

    async def sample_lag(self, every: float = LAG_EVERY_S) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + every
            await asyncio.sleep(every)
            self.loop_lag.observe(max(0.0, loop.time() - due))
