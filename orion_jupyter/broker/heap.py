"""The broker's heap: what starting made set aside from garbage collection, collections rarer than
Python's defaults, and on glibc few malloc arenas and free pages given back.

A full collection walks every object with the event loop stopped: the modules and the Kubernetes
client's models made at start (frozen, so never walked again) and whatever a burst of launches keeps
alive a while (connections, streams, cached pods), 100-500 ms each at a thousand launches. The
broker's threads (the Kubernetes client's pool, the watches) parse JSON all day; glibc gives each
thread an arena of its own that keeps its peak, so after a burst the process stays much larger than
what it holds: two arenas and a periodic ``malloc_trim`` keep its resident memory near its live
data. Elsewhere (not glibc) those two do nothing.
"""

from __future__ import annotations

import ctypes
import gc
import logging

log = logging.getLogger("orion_jupyter.broker")
M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)
ARENAS = 2
GC_THRESHOLDS = (10_000, 20, 50)  # Python's: (700, 10, 10)


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def limit_arenas() -> None:
    """Before the threads start: they share ``ARENAS`` arenas."""
    libc = _libc()
    if libc is not None and not libc.mallopt(M_ARENA_MAX, ARENAS):
        log.debug("mallopt(M_ARENA_MAX) refused; the heap keeps glibc's arenas")


def started() -> None:
    """Once started, before serving: what exists now is kept for good; collections from now on are rarer."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def give_back() -> None:
    """Return the heap's free pages to the system (a timer's work, a few ms)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


__all__ = ["give_back", "limit_arenas", "started"]
