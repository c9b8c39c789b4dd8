"""The one clock of the process: the hub, its wings, the SFU's watchdogs and the recorder
all read time (and wait) through the ``Clock`` the composition root gives them, so tests
drive timers by moving a ``ManualClock`` instead of sleeping.

It is media's clock: ``media`` may not import ``signalling``, the reverse is allowed.
"""

from __future__ import annotations

from media.clock import Clock, ManualClock, SystemClock

__all__ = ["Clock", "ManualClock", "SystemClock"]
