"""The broker's event-loop lag, sampled: a timer due every ``interval`` seconds records how late it ran
(``orion_jupyter_broker_loop_lag_seconds``), so an operator sees a loop kept busy by other work, and a
benchmark reads it from GET metrics (benchmarks/university.py). On Linux, the same lateness less the time
the loop's thread waited for a CPU meanwhile (runnable, not running: /proc/thread-self/schedstat) goes to
``orion_jupyter_broker_loop_busy_seconds``: a late loop on a starved node is not a busy broker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from ..metrics import LOOP_BUSY, LOOP_LAG

SCHEDSTAT = Path("/proc/thread-self/schedstat")


def cpu_wait() -> float | None:
    """Seconds the calling thread has waited on a run queue so far (None: not known here)."""
    try:
        return int(SCHEDSTAT.read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


class LoopLag:
    """``start()`` on the running loop; ``stop()`` ends the sampling."""

    def __init__(self, interval: float = 0.05, observe: Callable[[float], None] = LOOP_LAG.observe,
                 observe_busy: Callable[[float], None] = LOOP_BUSY.observe):
        self.interval = interval
        self.observe = observe
        self.observe_busy = observe_busy
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._waited: float | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._due = loop.time() + self.interval
        self._waited = cpu_wait()
        self._handle = loop.call_at(self._due, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        lag = max(now - self._due, 0.0)
        self.observe(lag)
        waited = cpu_wait()
        if waited is not None and self._waited is not None:
            self.observe_busy(max(lag - (waited - self._waited), 0.0))
        self._waited = waited
        self._due = now + self.interval
        self._handle = loop.call_at(self._due, self._tick, loop)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


__all__ = ["LoopLag", "cpu_wait"]
