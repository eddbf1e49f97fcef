"""The object store: resourceVersions, watch fan-out with a history buffer, events, deletion and GC.

Stored objects are never mutated in place: every change stores a fresh dict, so readers (watch
history, list snapshots) may hold references without copying.
"""

from __future__ import annotations

import collections
import copy
import queue
import random
import secrets as _secrets
import threading
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from . import dra, groups
from .errors import ApiError, not_found
from .selectors import Predicate
from .validation import KINDS, NAMESPACED, PLURALS, check_pod_update, prepare

HISTORY = 5000
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"

Key = tuple  # (plural, namespace or "", name)


def now_iso(offset: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=offset)).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_terminal(pod: dict) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


class Watcher:
    """One open watch: a queue of (type, object) the HTTP handler drains; None ends it."""

    DROP = ("DROP", None)
    ABORT = ("ABORT", None)

    def __init__(self, plural: str, namespace: str | None, labels: Predicate, fields: Predicate):
        self.plural, self.namespace = plural, namespace
        self.labels, self.fields = labels, fields
        self.queue: queue.Queue = queue.Queue()

    def matches(self, obj: dict | None) -> bool:
        if obj is None:
            return False
        if self.namespace and obj["metadata"].get("namespace") != self.namespace:
            return False
        return self.labels(obj) and self.fields(obj)

    def translate(self, etype: str, obj: dict, old: dict | None) -> str | None:
        """The event this watcher sees: objects entering/leaving its selector appear ADDED/DELETED."""
        if etype == "MODIFIED":
            was, now = self.matches(old), self.matches(obj)
            if was and now:
                return "MODIFIED"
            if now:
                return "ADDED"
            return "DELETED" if was else None
        if etype == "DELETED":
            return "DELETED" if self.matches(old if old is not None else obj) else None
        return etype if self.matches(obj) else None


class Store:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)  # notified on every change (for wait_for helpers)
        self.rv = 0
        self.changes = 0  # bumped on every change, with `changed` notified
        self.objects: dict[Key, dict] = {}
        self.history: collections.deque = collections.deque(maxlen=HISTORY)
        self.compacted_rv = 0  # resuming from an rv below this is "too old"
        self.watchers: list[Watcher] = []
        self.subscribers: list[Callable[[str, str, dict, dict | None], None]] = []
        self._event_keys: dict[tuple, tuple] = {}
        self._gc_queue: queue.Queue = queue.Queue()
        self._gc_thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._gc_thread = threading.Thread(target=self._gc_loop, name="kubesim-gc", daemon=True)
        self._gc_thread.start()

    def stop(self) -> None:
        self.close_watches(Watcher.DROP)
        self._gc_queue.put(None)
        if self._gc_thread:
            self._gc_thread.join(timeout=5)

    # ------------------------------------------------------------ internals

    def _next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _emit(self, plural: str, etype: str, obj: dict, old: dict | None) -> None:
        evicted = self.history[0] if len(self.history) == self.history.maxlen else None
        self.history.append((int(obj["metadata"]["resourceVersion"]), plural, etype, obj, old))
        if evicted is not None:
            self.compacted_rv = max(self.compacted_rv, evicted[0])
        for w in self.watchers:
            if w.plural == plural:
                seen = w.translate(etype, obj, old)
                if seen:
                    w.queue.put((seen, obj))
        for fn in self.subscribers:
            fn(plural, etype, obj, old)
        self.changes += 1
        self.changed.notify_all()

    @staticmethod
    def key(plural: str, namespace: str | None, name: str) -> Key:
        return (plural, namespace if plural in NAMESPACED else "", name)

    # ------------------------------------------------------------ reads

    def get(self, plural: str, namespace: str | None, name: str) -> dict | None:
        with self.lock:
            return self.objects.get(self.key(plural, namespace, name))

    def require(self, plural: str, namespace: str | None, name: str) -> dict:
        obj = self.get(plural, namespace, name)
        if obj is None:
            raise not_found(plural, name)
        return obj

    def list(self, plural: str, namespace: str | None = None, *filters: Predicate) -> tuple[list[dict], str]:
        with self.lock:
            items = [
                obj for (p, ns, _), obj in self.objects.items()
                if p == plural and (not namespace or ns == namespace) and all(f(obj) for f in filters)
            ]
            rv = str(self.rv)
        items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        return items, rv

    def find_by_uid(self, uid: str) -> dict | None:
        with self.lock:
            for obj in self.objects.values():
                if obj["metadata"].get("uid") == uid:
                    return obj
        return None

    # ------------------------------------------------------------ writes

    def create(self, plural: str, namespace: str | None, body: dict) -> dict:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(400, "BadRequest", "metadata must be an object")
        if plural in NAMESPACED:
            if meta.get("namespace") and meta["namespace"] != namespace:
                raise ApiError(
                    400, "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(
                    422, "Invalid",
                    f'{KINDS[plural]} "" is invalid: metadata.name: Required value: name or generateName is required',
                )
            meta["name"] = meta["generateName"] + "".join(random.choice(_GENERATE_ALPHABET) for _ in range(5))
        obj["kind"], obj["apiVersion"] = KINDS[plural], groups.api_version(plural)
        for field in ("uid", "resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(field, None)
        prepare(plural, obj, creating=True)
        dra.prepare(plural, obj, None)
        with self.lock:
            key = self.key(plural, namespace, meta["name"])
            if key in self.objects:
                raise ApiError(
                    409, "AlreadyExists", f'{plural} "{meta["name"]}" already exists',
                    {"name": meta["name"], "kind": plural},
                )
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_iso()
            meta["generation"] = 1
            meta["resourceVersion"] = self._next_rv()
            self.objects[key] = obj
            self._emit(plural, "ADDED", obj, None)
        if meta.get("ownerReferences"):
            self._gc_queue.put(("orphan-check", key))
        return obj

    def update(
        self, plural: str, namespace: str | None, name: str, mutate: Callable[[dict], object],
        uid: str | None = None,
    ) -> dict | None:
        """Internal status/spec writes (no validation): ``mutate`` edits a copy; returns the new object,
        or None when the object is gone (or was replaced by one with another uid)."""
        with self.lock:
            key = self.key(plural, namespace, name)
            old = self.objects.get(key)
            if old is None or (uid and old["metadata"]["uid"] != uid):
                return None
            new = copy.deepcopy(old)
            if mutate(new) is False:
                return old
            if new == old:
                return old
            new["metadata"]["resourceVersion"] = self._next_rv()
            self.objects[key] = new
            self._emit(plural, "MODIFIED", new, old)
            return new

    def replace(self, plural: str, namespace: str | None, name: str, body: dict) -> dict:
        """A client update (PUT or PATCH result): validated; status and identity kept from the stored object."""
        with self.lock:
            old = self.require(plural, namespace, name)
            new = copy.deepcopy(body)
            if not isinstance(new.get("metadata"), dict):
                raise ApiError(400, "BadRequest", "metadata must be an object")
            meta, old_meta = new["metadata"], old["metadata"]
            want_rv = meta.get("resourceVersion")
            if want_rv and want_rv != old_meta["resourceVersion"]:
                raise ApiError(
                    409, "Conflict",
                    f'Operation cannot be fulfilled on {plural} "{name}": the object has been modified; '
                    "please apply your changes to the latest version and try again",
                    {"name": name, "kind": plural},
                )
            if meta.get("name", name) != name:
                raise ApiError(400, "BadRequest", f'the name of the object ({meta.get("name")}) '
                                                  f"does not match the name on the URL ({name})")
            for field in ("name", "namespace", "uid", "creationTimestamp", "generation", "deletionTimestamp",
                          "deletionGracePeriodSeconds", "generateName"):
                if field in old_meta:
                    meta[field] = old_meta[field]
                else:
                    meta.pop(field, None)
            new["kind"], new["apiVersion"] = KINDS[plural], groups.api_version(plural)
            if plural == "pods":
                check_pod_update(old, new)
                new["status"] = copy.deepcopy(old.get("status") or {})
                if new["spec"] != old["spec"]:
                    meta["generation"] = old_meta.get("generation", 1) + 1
            elif plural == "nodes":
                new["status"] = copy.deepcopy(old.get("status") or {})
            prepare(plural, new, creating=False)
            dra.prepare(plural, new, old)
            meta["resourceVersion"] = old_meta["resourceVersion"]
            if new == old:
                return old
            meta["resourceVersion"] = self._next_rv()
            self.objects[self.key(plural, namespace, name)] = new
            self._emit(plural, "MODIFIED", new, old)
        if meta.get("ownerReferences"):
            self._gc_queue.put(("orphan-check", self.key(plural, namespace, name)))
        return new

    def remove(self, plural: str, namespace: str | None, name: str, uid: str | None = None) -> dict | None:
        """Removes the object now (DELETED event) and lets the garbage collector find its dependents."""
        with self.lock:
            key = self.key(plural, namespace, name)
            old = self.objects.get(key)
            if old is None or (uid and old["metadata"]["uid"] != uid):
                return None
            del self.objects[key]
            gone = copy.deepcopy(old)
            gone["metadata"]["resourceVersion"] = self._next_rv()
            self._emit(plural, "DELETED", gone, old)
        self._gc_queue.put(("owner-gone", old["metadata"]["uid"]))
        return gone

    def delete(self, plural: str, namespace: str | None, name: str, grace: int | None = None) -> dict:
        """A client delete. Pods bound to a node terminate gracefully through the kubelet."""
        with self.lock:
            obj = self.require(plural, namespace, name)
            if plural != "pods":
                return self.remove(plural, namespace, name) or obj
            if grace is None:
                grace = obj["spec"].get("terminationGracePeriodSeconds", 30)
            grace = max(int(grace), 0)
            meta = obj["metadata"]
            if not obj["spec"].get("nodeName") or is_terminal(obj) or grace == 0:
                return self.remove(plural, namespace, name) or obj
            if meta.get("deletionTimestamp") and meta.get("deletionGracePeriodSeconds", 0) <= grace:
                return obj

            def mark(pod: dict) -> None:
                pod["metadata"]["deletionTimestamp"] = now_iso(grace)
                pod["metadata"]["deletionGracePeriodSeconds"] = grace

            return self.update(plural, namespace, name, mark) or obj

    # ------------------------------------------------------------ watches

    def watch(
        self, plural: str, namespace: str | None, labels: Predicate, fields: Predicate, since: str | None,
    ) -> tuple[Watcher, list[tuple[str, dict]], str]:
        """Registers a watcher; returns it, the events to send first, and the rv they reach."""
        w = Watcher(plural, namespace, labels, fields)
        with self.lock:
            if not since or since == "0":
                initial = [("ADDED", obj) for obj in self.list(plural, namespace, w.matches)[0]]
            else:
                try:
                    start = int(since)
                except ValueError:
                    raise ApiError(400, "BadRequest", f"invalid resource version: {since!r}") from None
                if start < self.compacted_rv:
                    raise ApiError(410, "Expired", f"too old resource version: {start} ({self.compacted_rv + 1})")
                initial = []
                for rv, p, etype, obj, old in self.history:
                    if rv > start and p == plural:
                        seen = w.translate(etype, obj, old)
                        if seen:
                            initial.append((seen, obj))
            self.watchers.append(w)
            return w, initial, str(self.rv)

    def unwatch(self, w: Watcher) -> None:
        with self.lock:
            if w in self.watchers:
                self.watchers.remove(w)

    def close_watches(self, how: tuple = Watcher.DROP) -> int:
        with self.lock:
            watchers, self.watchers = self.watchers, []
        for w in watchers:
            w.queue.put(how)
        return len(watchers)

    def expire_history(self) -> None:
        with self.lock:
            self.history.clear()
            self.compacted_rv = self.rv

    # ------------------------------------------------------------ events

    def record_event(
        self, obj: dict, etype: str, reason: str, message: str, component: str, host: str | None = None,
        field_path: str | None = None, aggregate_key: Iterable | None = None,
    ) -> dict | None:
        """Creates a core v1 Event about ``obj``, or bumps count/lastTimestamp of the same one."""
        meta = obj["metadata"]
        namespace = meta.get("namespace") or "default"
        key = (meta["uid"], etype, reason, component, *(aggregate_key if aggregate_key is not None else (message,)))
        with self.lock:
            existing = self._event_keys.get(key)
            if existing:

                def bump(event: dict) -> None:
                    event["count"] = event.get("count", 1) + 1
                    event["lastTimestamp"] = now_iso()
                    event["message"] = message

                updated = self.update("events", existing[0], existing[1], bump)
                if updated is not None:
                    return updated
            stamp = now_iso()
            involved = {
                "kind": obj.get("kind"), "namespace": meta.get("namespace"), "name": meta["name"],
                "uid": meta["uid"], "apiVersion": obj.get("apiVersion", "v1"),
                "resourceVersion": meta.get("resourceVersion"),
            }
            if field_path:
                involved["fieldPath"] = field_path
            source = {"component": component}
            if host:
                source["host"] = host
            event = {
                "metadata": {"name": f"{meta['name']}.{_secrets.token_hex(8)}", "namespace": namespace},
                "involvedObject": {k: v for k, v in involved.items() if v is not None},
                "reason": reason, "message": message, "type": etype, "source": source,
                "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
                "reportingComponent": component, "reportingInstance": host or "",
            }
            created = self.create("events", namespace, event)
            self._event_keys[key] = (namespace, created["metadata"]["name"])
            return created

    # ------------------------------------------------------------ garbage collection

    def _gc_loop(self) -> None:
        while True:
            item = self._gc_queue.get()
            if item is None:
                return
            try:
                what, arg = item
                if what == "owner-gone":
                    self._delete_dependents(arg)
                else:
                    self._check_orphan(arg)
            except Exception:  # pragma: no cover - the collector must survive anything
                import traceback

                traceback.print_exc()

    def _delete_dependents(self, uid: str) -> None:
        with self.lock:
            dependents = [
                (p, ns, name) for (p, ns, name), obj in self.objects.items()
                if any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])
            ]
        for p, ns, name in dependents:
            self._check_orphan((p, ns, name))

    def _check_orphan(self, key: Key) -> None:
        """Deletes an object when every owner it names is of a kind we serve and none exists."""
        plural, namespace, name = key
        with self.lock:
            obj = self.objects.get(key)
            if obj is None:
                return
            refs = obj["metadata"].get("ownerReferences") or []
            if not refs:
                return
            for ref in refs:
                owner_plural = PLURALS.get(ref.get("kind"))
                if owner_plural is None or ref.get("apiVersion", "v1") != "v1":
                    return  # an owner kind this simulator does not serve: assume it exists
                owner = self.get(owner_plural, namespace, ref.get("name", ""))
                if owner is not None and owner["metadata"]["uid"] == ref.get("uid"):
                    return
        try:
            self.delete(plural, namespace, name)
        except ApiError:
            pass
