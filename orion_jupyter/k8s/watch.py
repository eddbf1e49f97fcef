"""A shared list+watch cache (an informer) for one kind of Kubernetes object.

One thread per watched collection per process: it lists once, then follows the watch stream from
the list's resourceVersion, resumes after disconnects from the last version it saw, and lists
again only on 410 Gone. Readers get the cache without any API request; subscribers get every
change on their own event loop. Objects stay plain dicts (no model deserialisation): cheap to
keep thousands.

Failures are retried with capped exponential backoff and jitter (0.2 s doubling to 30 s, reset by a
list or a stream that delivered something); a watch that has failed ``FAILURES_TO_REPORT`` times in
a row is logged once as an error and reports itself in ``warning()`` (the pool view shows it) until
it recovers.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import random
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger(__name__)

Listener = Callable[[str, dict], None]
WATCH_SECONDS = 300  # the server ends each watch after this; we resume from the last version
BACKOFF_INITIAL_SECONDS = 0.2
BACKOFF_MAX_SECONDS = 30.0
BACKOFF_JITTER = 0.2  # each delay is its nominal value times a random factor in [0.8, 1.2], then capped
FAILURES_TO_REPORT = 5  # consecutive failures that make a lasting failure (logged once, shown in the pool)
STREAM_SUCCESS_SECONDS = 10.0  # a watch stream that lived this long counts as a success even if it was quiet
TOMBSTONES = 256  # the last state of this many deleted objects is kept (why a kernel pod went)
STOP_WAIT_SECONDS = 5.0  # how long stopping waits for watch threads (a request in flight ends at its timeout)


class Backoff:
    """Capped exponential backoff with jitter: ``next()`` is the next delay, ``reset()`` after a success."""

    def __init__(self, initial: float | None = None, cap: float | None = None, jitter: float | None = None,
                 rng: Callable[[], float] = random.random):
        """Defaults: the module's BACKOFF_* settings at the time the backoff is made."""
        self.initial = BACKOFF_INITIAL_SECONDS if initial is None else initial
        self.cap = BACKOFF_MAX_SECONDS if cap is None else cap
        self.jitter = BACKOFF_JITTER if jitter is None else jitter
        self._rng = rng
        self.attempts = 0

    def next(self) -> float:
        nominal = min(self.cap, self.initial * 2 ** min(self.attempts, 32))
        self.attempts += 1
        return min(self.cap, nominal * (1.0 - self.jitter + 2.0 * self.jitter * self._rng()))

    def reset(self) -> None:
        self.attempts = 0


def object_key(obj: dict) -> tuple[str, str]:
    meta = obj.get("metadata", {})
    return meta.get("namespace", ""), meta.get("name", "")


class SharedWatch:
    """list+watch of ``list_fn`` (a CoreV1Api list method) with a cache of its objects."""

    def __init__(self, name: str, list_fn: Callable[..., Any], *, backoff: Backoff | None = None,
                 keep: Callable[[dict], dict] | None = lambda obj: obj, **selectors: Any):
        """``keep`` maps an object to what the cache holds of it (an object it maps to None is not
        kept); ``keep=None``: keep nothing, only notify."""
        self.name = name
        self._keep = keep
        self.version = 0  # bumped on every change of the cache
        self._list_fn = list_fn
        self._selectors = selectors
        self.backoff = backoff or Backoff()
        self.failures = 0  # consecutive failures (lists or streams); 0 once one succeeds
        self.failing_since: float | None = None  # time.time() of the first of those failures
        self.forbidden = False  # 401/403: not retried, the view stays empty
        self._reported = False
        self._cache: dict[tuple[str, str], dict] = {}
        self._gone: OrderedDict[tuple[str, str], dict] = OrderedDict()
        self._lock = threading.Lock()
        self._listeners: list[tuple[asyncio.AbstractEventLoop | None, Listener]] = []
        self._synced = threading.Event()
        self._stopped = threading.Event()
        self._response: Any = None
        self._resource_version: str | None = None
        self.error: Exception | None = None  # the last error; cleared by a successful list
        self.lists = 0
        self._thread = threading.Thread(target=self._run, name=f"orion-watch-{name}", daemon=True)

    # -- reading -----------------------------------------------------------------------------
    def start(self) -> SharedWatch:
        _started.add(self)
        self._thread.start()
        return self

    def wait_synced(self, timeout: float | None = None) -> bool:
        return self._synced.wait(timeout)

    def get(self, namespace: str, name: str) -> dict | None:
        with self._lock:
            return self._cache.get((namespace, name))

    def items(self) -> list[dict]:
        with self._lock:
            return list(self._cache.values())

    def last_state(self, namespace: str, name: str) -> dict | None:
        """What the cache held of a recently deleted object when it went (the DELETED event's state);
        None when it was not deleted recently, or its deletion was missed (seen only by a relist)."""
        with self._lock:
            return self._gone.get((namespace, name))

    @property
    def failing(self) -> bool:
        """A lasting failure: ``FAILURES_TO_REPORT`` or more failures in a row."""
        return self.failures >= FAILURES_TO_REPORT

    def warning(self) -> str | None:
        """One sentence for the pool view while the watch is failing; None while it works."""
        since, error = self.failing_since, self.error
        if not self.failing or since is None:
            return None
        stamp = datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        what = _short(error) if error is not None else "unknown error"
        return (f"{self.name} watch failing since {stamp} ({self.failures} attempts; last error: {what}); "
                "what this server shows may be out of date")

    def __len__(self) -> int:
        return len(self._cache)

    def subscribe(self, listener: Listener, loop: asyncio.AbstractEventLoop | None = None) -> Callable[[], None]:
        """Call ``listener(event_type, obj)`` for every change (on ``loop`` when given)."""
        entry = (loop, listener)
        with self._lock:
            self._listeners.append(entry)

        def unsubscribe() -> None:
            with self._lock:
                if entry in self._listeners:
                    self._listeners.remove(entry)

        return unsubscribe

    def stop(self) -> None:
        """Ask the thread to end (it does at once, or after its request in flight; ``join`` waits for it)."""
        self._stopped.set()
        response = self._response
        if response is not None:
            try:
                # shutdown() wakes the thread blocked reading the stream; close() would wait until that read
                # returned (the next event or bookmark); urllib3 before 2.3 has only close()
                getattr(response, "shutdown", response.close)()
            except Exception:  # noqa: BLE001 - closing a half-dead socket may fail any way
                pass

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a stopped watch's thread to end; True when it has (or never ran)."""
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the watch thread --------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                if self._resource_version is None:
                    self._relist()
                self._follow()
            except ApiException as err:
                if err.status == 410:
                    log.info("%s watch expired (410 Gone); listing again", self.name)
                    self._resource_version = None
                    continue
                if err.status in (401, 403):
                    self.error, self.forbidden = err, True
                    log.error("%s cannot be watched (%s %s); this view stays empty", self.name, err.status, err.reason)
                    self._synced.set()
                    return
                self._failed(err)
            except Exception as err:  # noqa: BLE001 - connection errors of every kind: resume
                if self._stopped.is_set():
                    break
                self._failed(err)

    def _succeeded(self) -> None:
        if self.failures and self._reported:
            log.warning("%s watch works again after %d failed attempts", self.name, self.failures)
        self.failures, self.failing_since, self._reported = 0, None, False
        self.backoff.reset()

    def _failed(self, err: Exception) -> None:
        self.error = err
        self.failures += 1
        if self.failing_since is None:
            self.failing_since = time.time()
        delay = self.backoff.next()
        if self.failing and not self._reported:
            self._reported = True
            log.error("%s watch failing since %s (%d attempts; last error: %s); retrying, at most every %.0f s",
                      self.name, datetime.fromtimestamp(self.failing_since, UTC).strftime("%H:%M:%S UTC"),
                      self.failures, _short(err), self.backoff.cap)
        elif not self._reported:
            log.warning("%s watch interrupted (%s); resuming in %.1f s", self.name, _short(err), delay)
        else:
            log.debug("%s watch still failing (%s); next attempt in %.1f s", self.name, _short(err), delay)
        self._stopped.wait(delay)

    def _relist(self) -> None:
        response = self._list_fn(_preload_content=False, _request_timeout=30, **self._selectors)
        self.lists += 1
        body = orjson.loads(response.data)
        keep = self._keep or (lambda obj: obj)
        fresh = {object_key(obj): kept for obj in body.get("items", []) if (kept := keep(obj)) is not None}
        with self._lock:
            old = self._cache
            self._cache = fresh if self._keep else {}
            self.version += 1
        # Tell listeners what changed while we were not watching.
        for key, obj in fresh.items():
            if key not in old:
                self._notify("ADDED", obj)
            elif old[key].get("metadata", {}).get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                self._notify("MODIFIED", obj)
        for key, obj in old.items():
            if key not in fresh:
                self._notify("DELETED", obj)
        self._resource_version = body.get("metadata", {}).get("resourceVersion")
        self.error = None
        self._succeeded()
        self._synced.set()

    def _follow(self) -> None:
        response = self._list_fn(
            watch=True,
            resource_version=self._resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS,
            _preload_content=False,
            _request_timeout=(10, WATCH_SECONDS + 30),
            **self._selectors,
        )
        self._response = response
        opened, delivered = time.monotonic(), False
        try:
            if self._stopped.is_set():  # stopped while the request was under way: stop() saw no response to close
                return
            for line in iter_resp_lines(response):
                if self._stopped.is_set():
                    return
                self._apply(orjson.loads(line))
                if not delivered:
                    delivered = True
                    self._succeeded()
        finally:
            self._response = None
            response.release_conn()
            if not delivered and time.monotonic() - opened >= STREAM_SUCCESS_SECONDS:
                self._succeeded()

    def _apply(self, event: dict) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            raise ApiException(status=obj.get("code", 500), reason=obj.get("message", "watch error"))
        version = obj.get("metadata", {}).get("resourceVersion")
        if version:
            self._resource_version = version
        if kind == "BOOKMARK":
            return
        if self._keep is not None:
            kept = self._keep(obj)
            key = object_key(obj)
            with self._lock:
                if kind == "DELETED" or kept is None:
                    changed = self._cache.pop(key, None) is not None or kept is not None
                    if kind == "DELETED" and kept is not None:
                        self._bury(key, kept)
                else:
                    self._cache[key], changed = kept, True
                if changed:
                    self.version += 1
            if kept is None:
                return
            obj = kept
        self._notify(kind, obj)

    def _bury(self, key: tuple[str, str], obj: dict) -> None:
        """Remember a deleted object's last state (under the lock)."""
        self._gone[key] = obj
        self._gone.move_to_end(key)
        while len(self._gone) > TOMBSTONES:
            self._gone.popitem(last=False)

    def _notify(self, kind: str, obj: dict) -> None:
        with self._lock:
            listeners = list(self._listeners)
        on_loops: dict[asyncio.AbstractEventLoop, list[Listener]] = {}
        for loop, listener in listeners:
            if loop is None:
                listener(kind, obj)
            else:
                on_loops.setdefault(loop, []).append(listener)
        # one wake-up per loop and event, its listeners in the order they subscribed (a broker has one per
        # launch in progress: a call_soon_threadsafe each was most of its watch thread's CPU)
        for loop, group in on_loops.items():
            if not loop.is_closed():
                loop.call_soon_threadsafe(deliver, group, kind, obj)


def deliver(listeners: list[Listener], kind: str, obj: dict) -> None:
    for listener in listeners:
        try:
            listener(kind, obj)
        except Exception:  # one listener's fault reaches neither the others nor the watch
            log.exception("a watch listener failed on %s %s", kind, (obj.get("metadata") or {}).get("name"))


def stop_watches(watches: list[SharedWatch], wait_seconds: float = STOP_WAIT_SECONDS) -> None:
    """Stop ``watches`` and wait, ``wait_seconds`` in all at most, until their threads have ended."""
    for watch in watches:
        watch.stop()
    deadline = time.monotonic() + wait_seconds
    for watch in watches:
        if not watch.join(max(0.0, deadline - time.monotonic())):
            log.warning("%s watch still running %.0f s after it was stopped", watch.name, wait_seconds)


# Every started watch while it runs or is referenced (a running thread holds its watch).
_started: weakref.WeakSet[SharedWatch] = weakref.WeakSet()


@atexit.register
def _stop_at_exit() -> None:
    """Stop every watch before the interpreter finalizes: a daemon thread still inside a client call then is
    ended by pthread_exit, whose forced unwind through pydantic-core's Rust frames (the Kubernetes client
    validates every call) aborts the process ("Fatal Python error: Aborted")."""
    stop_watches(list(_started))


def _short(err: BaseException, limit: int = 200) -> str:
    """An error in one line: '500 Internal Server Error: simulated failure (500)'."""
    if isinstance(err, ApiException):
        message = ""
        try:
            message = json.loads(err.body or "{}").get("message", "") if err.body else ""
        except (ValueError, AttributeError):
            message = ""
        text = f"{err.status} {err.reason or ''}".strip() + (f": {message}" if message else "")
    else:
        text = f"{type(err).__name__}: {err}"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
