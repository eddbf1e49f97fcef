"""The broker's event-loop lag, sampled: a timer due every ``interval`` seconds records how late it ran
(``orion_jupyter_broker_loop_lag_seconds``), so an operator sees a loop kept busy by other work, and a
benchmark reads it from GET metrics (benchmarks/university.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..metrics import LOOP_LAG


class LoopLag:
    """``start()`` on the running loop; ``stop()`` ends the sampling."""

    def __init__(self, interval: float = 0.05, observe: Callable[[float], None] = LOOP_LAG.observe):
        self.interval = interval
        self.observe = observe
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._due = loop.time() + self.interval
        self._handle = loop.call_at(self._due, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        self.observe(max(now - self._due, 0.0))
        self._due = now + self.interval
        self._handle = loop.call_at(self._due, self._tick, loop)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


__all__ = ["LoopLag"]
