"""A shared list+watch cache (an informer) for one kind of Kubernetes object.

One thread per watched collection per process: it lists once, then follows the watch stream from
the list's resourceVersion, resumes after disconnects from the last version it saw, and lists
again only on 410 Gone. Readers get the cache without any API request; subscribers get every
change on their own event loop. Objects stay plain dicts (no model deserialisation): cheap to
keep thousands.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any, Callable

from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger(__name__)

Listener = Callable[[str, dict], None]
WATCH_SECONDS = 300  # the server ends each watch after this; we resume from the last version


def object_key(obj: dict) -> tuple[str, str]:
    meta = obj.get("metadata", {})
    return meta.get("namespace", ""), meta.get("name", "")


class SharedWatch:
    """list+watch of ``list_fn`` (a CoreV1Api list method) with a cache of its objects."""

    def __init__(self, name: str, list_fn: Callable[..., Any], *, retry_seconds: float = 1.0,
                 keep: Callable[[dict], dict] | None = lambda obj: obj, **selectors: Any):
        """``keep`` maps an object to what the cache holds of it (an object it maps to None is not
        kept); ``keep=None``: keep nothing, only notify."""
        self.name = name
        self._keep = keep
        self.version = 0  # bumped on every change of the cache
        self._list_fn = list_fn
        self._selectors = selectors
        self._retry_seconds = retry_seconds
        self._cache: dict[tuple[str, str], dict] = {}
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
    def start(self) -> "SharedWatch":
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
        self._stopped.set()
        response = self._response
        if response is not None:
            try:
                response.close()
            except Exception:  # noqa: BLE001 - closing a half-dead socket may fail any way
                pass

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
                    self.error = err
                    log.error("%s cannot be watched (%s %s); this view stays empty", self.name, err.status, err.reason)
                    self._synced.set()
                    return
                self._failed(err)
            except Exception as err:  # noqa: BLE001 - connection errors of every kind: resume
                if self._stopped.is_set():
                    break
                self._failed(err)

    def _failed(self, err: Exception) -> None:
        self.error = err
        log.warning("%s watch interrupted (%s); resuming in %.0f s", self.name, err, self._retry_seconds)
        self._stopped.wait(self._retry_seconds)

    def _relist(self) -> None:
        response = self._list_fn(_preload_content=False, _request_timeout=30, **self._selectors)
        self.lists += 1
        body = json.loads(response.data)
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
        try:
            for line in iter_resp_lines(response):
                if self._stopped.is_set():
                    return
                self._apply(json.loads(line))
        finally:
            self._response = None
            response.release_conn()

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
                else:
                    self._cache[key], changed = kept, True
                if changed:
                    self.version += 1
            if kept is None:
                return
            obj = kept
        self._notify(kind, obj)

    def _notify(self, kind: str, obj: dict) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for loop, listener in listeners:
            if loop is None:
                listener(kind, obj)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(listener, kind, obj)
