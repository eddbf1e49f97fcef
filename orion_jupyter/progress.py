"""What a pending kernel (or a headless demo run) is doing, for the events endpoint and the log."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from typing import Any

MAX_KEYS = 500
MAX_EVENTS_PER_KEY = 200


class ProgressLog:
    """Recent progress messages per kernel id; bounded in keys and in messages per key."""

    def __init__(self) -> None:
        self._events: OrderedDict[str, deque[dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()
        self._seq = 0

    def record(self, key: str, message: str, *, stage: str = "launch", level: str = "info", **extra: Any) -> None:
        with self._lock:
            self._seq += 1
            events = self._events.get(key)
            if events is None:
                events = self._events[key] = deque(maxlen=MAX_EVENTS_PER_KEY)
                while len(self._events) > MAX_KEYS:
                    self._events.popitem(last=False)
            events.append({"seq": self._seq, "time": time.time(), "stage": stage, "level": level, "message": message,
                           **extra})

    def events(self, key: str, after: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self._events.get(key, ()) if e["seq"] > after]


PROGRESS = ProgressLog()
