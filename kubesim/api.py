"""The HTTP face: core/v1 REST paths, JSON bodies, chunked watch streams, pod logs, patches."""

from __future__ import annotations

import base64
import copy
import json
import os
import queue
import select
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from . import groups, rbac
from .errors import ApiError, status_object
from .selectors import parse_field_selector, parse_label_selector
from .store import Watcher
from .validation import KINDS, NAMESPACED

if TYPE_CHECKING:  # pragma: no cover
    from .cluster import SimCluster

RESOURCES = {"pods", "secrets", "configmaps", "events", "nodes", "namespaces", "serviceaccounts"}
BUILTIN_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
LIVENESS_CHECK = 2.0  # seconds between checks that a quiet watch's client is still there


# ---------------------------------------------------------------- patches


def merge_patch(target: object, patch: object) -> object:
    """RFC 7386 JSON merge patch (strategic merge patches are applied this way too)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: object, parts: list[str]) -> object:
    for part in parts:
        if isinstance(doc, list):
            doc = doc[int(part)]
        elif isinstance(doc, dict):
            doc = doc[part]
        else:
            raise KeyError(part)
    return doc


def json_patch(doc: dict, ops: list) -> dict:
    """RFC 6902 JSON patch: add, remove, replace, move, copy, test."""
    doc = copy.deepcopy(doc)
    for op in ops:
        try:
            kind, parts = op["op"], _pointer(op["path"])
            if kind in ("move", "copy"):
                from_parts = _pointer(op["from"])
                value = copy.deepcopy(_walk(doc, from_parts))
                if kind == "move":
                    doc = _remove(doc, from_parts)
                doc = _add(doc, parts, value)
            elif kind == "add":
                doc = _add(doc, parts, copy.deepcopy(op["value"]))
            elif kind == "remove":
                doc = _remove(doc, parts)
            elif kind == "replace":
                _walk(doc, parts)
                doc = _add(_remove(doc, parts), parts, copy.deepcopy(op["value"]))
            elif kind == "test":
                if _walk(doc, parts) != op["value"]:
                    raise ApiError(422, "Invalid", "the server rejected our request due to an error in our request: "
                                                   f"test failed at {op['path']}")
            else:
                raise ApiError(422, "Invalid", f"unexpected op {kind!r}")
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ApiError(422, "Invalid", "the server rejected our request due to an error in our request: "
                                           f"{op} ({exc!r})") from exc
    return doc


def _add(doc: object, parts: list[str], value: object) -> object:
    if not parts:
        return value
    parent = _walk(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, list):
        parent.insert(len(parent) if last == "-" else int(last), value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise KeyError(last)
    return doc


def _remove(doc: object, parts: list[str]) -> object:
    parent = _walk(doc, parts[:-1])
    if isinstance(parent, list):
        del parent[int(parts[-1])]
    else:
        del parent[parts[-1]]
    return doc


# ---------------------------------------------------------------- server


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, cluster: SimCluster):
        super().__init__(("127.0.0.1", 0), Handler)
        self.cluster = cluster
        self.closing = threading.Event()
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def handle_error(self, request, client_address) -> None:
        """A client that went away mid-request (a stopped watch, a closed pool) is normal here."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        """Cuts every open client connection (idle keep-alive ones included)."""
        with self.connections_lock:
            connections = list(self.connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ApiServer

    def log_message(self, *args) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    # ------------------------------------------------------------ plumbing

    def _send(self, code: int, body: object, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else (
            body.encode() if isinstance(body, str) else json.dumps(body, separators=(",", ":")).encode()
        )
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self._sent(code)
        self.wfile.write(data)

    def _start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._sent(200)

    def _sent(self, code: int) -> None:
        """Records the request once its status is known (a watch counts as soon as it starts)."""
        self.status_sent = code
        self.server.cluster._record(*self.record, code)

    def _chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _body(self, raw: bytes) -> object:
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, "BadRequest", f"couldn't get version/kind; json parse error: {exc}") from exc

    def _handle(self, method: str) -> None:
        self.status_sent = 0
        cluster = self.server.cluster
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        parts = [p for p in url.path.split("/") if p]
        self.record = (method.lower(), url.path, None, None, False)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            verb, resource, namespace, name, watch, action = self._route(method, parts)
            self.record = (verb, resource, namespace, name, watch)
            failure = cluster.faults.take_failure(verb, resource, namespace, name)
            if failure is not None:
                raise ApiError(failure.status, None, failure.message)
            refusal = cluster.faults.forbidden(verb, resource, namespace)
            if refusal is not None:
                raise ApiError(403, "Forbidden", refusal, {"kind": resource.split("/")[0]})
            rbac.authorize(cluster, verb, (groups.group_of(parts) or ("",))[0], resource, namespace, name)
            if cluster.faults.latency and not watch:
                time.sleep(cluster.faults.latency)
            action(self._body(raw))
        except ApiError as exc:
            if not self.status_sent:
                self._send(exc.code, exc.status())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # pragma: no cover - answer 500 rather than hang the client
            import traceback

            traceback.print_exc()
            if not self.status_sent:
                self._send(500, status_object(500, "InternalError", f"kubesim: {exc!r}"))

    def _route(self, method: str, parts: list[str]):
        """-> (verb, resource, namespace, name, watch, action(body))."""
        q = self.query
        watching = q.get("watch", "").lower() in ("true", "1")
        group = groups.group_of(parts)  # resource.k8s.io, networking.k8s.io, coordination.k8s.io (groups.py)
        discovery = (["version"], ["api"], ["apis"], ["api", "v1"])
        if method == "GET" and (parts in discovery or (len(parts) == 2 and parts[0] == "apis")
                                or (group is not None and len(parts) == 3)
                                or parts[:1] in (["healthz"], ["livez"], ["readyz"])):
            return "get", "/" + "/".join(parts), None, None, False, lambda _: self._non_resource(parts)
        if (parts[:2] != ["api", "v1"] and not group) or len(parts) < 3 + bool(group):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        rest = parts[2 + bool(group):]
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
            if rest[0] not in NAMESPACED:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
        plural = rest[0]
        if plural not in (groups.kinds(group) if group else RESOURCES):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if plural == "namespaces":
            return self._namespace_route(method, rest)
        if plural in NAMESPACED and namespace is None and (len(rest) > 1 or method != "GET"):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if len(rest) == 1:
            if method == "GET":
                if watching:
                    return "watch", plural, namespace, None, True, lambda _: self._watch(plural, namespace)
                return "list", plural, namespace, None, False, lambda _: self._list(plural, namespace)
            if method == "POST" and plural in rbac.REVIEW_KINDS:
                return "create", plural, None, None, False, lambda body: self._send(
                    201, rbac.review(self.server.cluster, plural, body))
            if method == "POST":
                return "create", plural, namespace, None, False, lambda body: self._create(plural, namespace, body)
            if method == "DELETE":
                return ("deletecollection", plural, namespace, None, False,
                        lambda body: self._delete_collection(plural, namespace))
        elif len(rest) == 2:
            name = rest[1]
            actions = {
                "GET": ("get", lambda _: self._send(200, self.store.require(plural, namespace, name))),
                "PUT": ("update", lambda body: self._send(200, self._put(plural, namespace, name, body))),
                "PATCH": ("patch", lambda body: self._send(200, self._patch(plural, namespace, name, body))),
                "DELETE": ("delete", lambda body: self._delete(plural, namespace, name, body)),
            }
            if method in actions:
                verb, action = actions[method]
                return verb, plural, namespace, name, False, action
        elif len(rest) == 3 and plural == "pods" and rest[2] == "log" and method == "GET":
            return "get", "pods/log", namespace, rest[1], False, lambda _: self._log(namespace, rest[1])
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    @property
    def store(self):
        return self.server.cluster.store

    # ------------------------------------------------------------ discovery

    def _non_resource(self, parts: list[str]) -> None:
        port = self.server.server_address[1]
        if parts == ["version"]:
            self._send(200, {
                "major": "1", "minor": "31", "gitVersion": "v1.31.0-kubesim", "gitCommit": "kubesim",
                "gitTreeState": "clean", "buildDate": "2024-08-13T00:00:00Z", "goVersion": "go1.22.5",
                "compiler": "gc", "platform": "linux/amd64",
            })
        elif parts == ["api"]:
            self._send(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{port}"}]})
        elif parts == ["api", "v1"]:
            self._send(200, self._resource_list())
        elif parts == ["apis"]:
            self._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups.api_group_list()})
        elif len(parts) == 2 and parts[0] == "apis" and any(g == parts[1] for g, _ in groups.GROUPS):
            self._send(200, {"kind": "APIGroup", "apiVersion": "v1", **groups.api_group(parts[1])})
        elif groups.group_of(parts) is not None and len(parts) == 3:
            self._send(200, groups.api_resource_list(groups.group_of(parts)))
        elif parts and parts[0] in ("healthz", "livez", "readyz"):
            self._send(200, "ok", "text/plain")
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")

    @staticmethod
    def _resource_list() -> dict:
        verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
        resources = [
            {"name": plural, "singularName": KINDS[plural].lower(), "namespaced": plural in NAMESPACED,
             "kind": KINDS[plural], "verbs": verbs}
            for plural in sorted(RESOURCES)
        ]
        resources.append({"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod", "verbs": ["get"]})
        return {"kind": "APIResourceList", "groupVersion": "v1", "resources": resources}

    # ------------------------------------------------------------ namespaces (all exist implicitly)

    def _namespace_object(self, name: str) -> dict:
        return {
            "kind": "Namespace", "apiVersion": "v1",
            "metadata": {"name": name, "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, name + ".kubesim")),
                         "resourceVersion": "1", "creationTimestamp": "2024-01-01T00:00:00Z",
                         "labels": {"kubernetes.io/metadata.name": name}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"},
        }

    def _namespace_route(self, method: str, rest: list[str]):
        if len(rest) == 1 and method == "GET":
            def list_namespaces(_):
                names = set(BUILTIN_NAMESPACES) | self.server.cluster.namespaces
                with self.store.lock:
                    names |= {ns for (_, ns, _) in self.store.objects if ns}
                labels = parse_label_selector(self.query.get("labelSelector"))
                fields = parse_field_selector(self.query.get("fieldSelector"), "namespaces")
                items = [o for o in map(self._namespace_object, sorted(names)) if labels(o) and fields(o)]
                self._send(200, {"kind": "NamespaceList", "apiVersion": "v1",
                                 "metadata": {"resourceVersion": str(self.store.rv)}, "items": items})
            return "list", "namespaces", None, None, False, list_namespaces
        if len(rest) == 1 and method == "POST":
            def create_namespace(body):
                name = ((body or {}).get("metadata") or {}).get("name")
                if not name:
                    raise ApiError(422, "Invalid", 'Namespace "" is invalid: metadata.name: Required value: '
                                                   'name or generateName is required')
                self.server.cluster.namespaces.add(name)
                self._send(201, self._namespace_object(name))
            return "create", "namespaces", None, None, False, create_namespace
        if len(rest) == 2 and method == "GET":
            return "get", "namespaces", None, rest[1], False, lambda _: self._send(200, self._namespace_object(rest[1]))
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    # ------------------------------------------------------------ verbs

    def _list(self, plural: str, namespace: str | None) -> None:
        labels = parse_label_selector(self.query.get("labelSelector"))
        fields = parse_field_selector(self.query.get("fieldSelector"), plural)
        items, rv = self.store.list(plural, namespace, labels, fields)
        meta: dict = {"resourceVersion": rv}
        start = self.query.get("continue")
        if start:
            try:
                after = tuple(json.loads(base64.urlsafe_b64decode(start.encode())))
            except ValueError:
                raise ApiError(400, "BadRequest", "continue key is not valid") from None
            items = [o for o in items if (o["metadata"].get("namespace", ""), o["metadata"]["name"]) > after]
        limit = int(self.query.get("limit") or 0)
        if limit and len(items) > limit:
            last = items[limit - 1]["metadata"]
            token = json.dumps([last.get("namespace", ""), last["name"]]).encode()
            meta["continue"] = base64.urlsafe_b64encode(token).decode()
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        self._send(200, {"kind": KINDS[plural] + "List", "apiVersion": groups.api_version(plural), "metadata": meta,
                         "items": items})

    def _create(self, plural: str, namespace: str | None, body: object) -> None:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the request body must be a JSON object")
        if body.get("kind") not in (None, KINDS[plural]):
            raise ApiError(400, "BadRequest",
                           f"the body kind {body.get('kind')!r} does not match the URL ({KINDS[plural]})")
        if self.query.get("dryRun") == "All":
            raise ApiError(400, "BadRequest", "dryRun is not supported by kubesim")
        self._send(201, self.store.create(plural, namespace, body))

    def _put(self, plural: str, namespace: str | None, name: str, body: object) -> dict:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the request body must be a JSON object")
        return self.store.replace(plural, namespace, name, body)

    def _patch(self, plural: str, namespace: str | None, name: str, body: object) -> dict:
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        with self.store.lock:
            old = self.store.require(plural, namespace, name)
            if content_type == "application/json-patch+json":
                if not isinstance(body, list):
                    raise ApiError(400, "BadRequest", "json patch must be a list of operations")
                new = json_patch(old, body)
            elif content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "merge patch must be a JSON object")
                new = merge_patch(old, body)
            else:
                raise ApiError(
                    415, "UnsupportedMediaType",
                    f"the body of the request was in an unknown format ({content_type}) - accepted media types "
                    "include: application/json-patch+json, application/merge-patch+json, "
                    "application/strategic-merge-patch+json",
                )
            if not isinstance(new, dict):
                raise ApiError(422, "Invalid", "the patched object is not an object")
            new.setdefault("metadata", {})
            return self.store.replace(plural, namespace, name, new)

    def _grace(self, body: object) -> int | None:
        grace = self.query.get("gracePeriodSeconds")
        if isinstance(body, dict) and body.get("gracePeriodSeconds") is not None:
            grace = body["gracePeriodSeconds"]
        try:
            return None if grace in (None, "") else int(grace)
        except ValueError:
            raise ApiError(400, "BadRequest", f"invalid gracePeriodSeconds {grace!r}") from None

    def _delete(self, plural: str, namespace: str | None, name: str, body: object) -> None:
        preconditions = (body.get("preconditions") or {}) if isinstance(body, dict) else {}
        with self.store.lock:  # the preconditions hold for the object deleted
            current = self.store.require(plural, namespace, name)["metadata"]
            for field, words in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
                if preconditions.get(field) and preconditions[field] != current[field]:
                    raise ApiError(409, "Conflict", f"Precondition failed: {words} in precondition: "
                                                    f"{preconditions[field]}, {words} in object meta: {current[field]}")
            obj = self.store.delete(plural, namespace, name, self._grace(body))
        if plural == "pods":
            self._send(200, obj)
        else:
            self._send(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                             "details": {"name": name, "kind": plural, "uid": obj["metadata"]["uid"]}})

    def _delete_collection(self, plural: str, namespace: str | None) -> None:
        labels = parse_label_selector(self.query.get("labelSelector"))
        fields = parse_field_selector(self.query.get("fieldSelector"), plural)
        grace = self._grace(None)
        items, _ = self.store.list(plural, namespace, labels, fields)
        for obj in items:
            try:
                self.store.delete(plural, obj["metadata"].get("namespace"), obj["metadata"]["name"], grace)
            except ApiError:
                pass
        self._send(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})

    # ------------------------------------------------------------ watch

    def _watch(self, plural: str, namespace: str | None) -> None:
        q = self.query
        labels = parse_label_selector(q.get("labelSelector"))
        fields = parse_field_selector(q.get("fieldSelector"), plural)
        timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else None
        bookmarks = q.get("allowWatchBookmarks", "").lower() in ("true", "1")
        interval = self.server.cluster.bookmark_interval
        try:
            watcher, initial, _ = self.store.watch(plural, namespace, labels, fields, q.get("resourceVersion"))
        except ApiError as exc:
            if exc.code != 410:
                raise
            self._start_stream("application/json")
            self._chunk(self._line("ERROR", exc.status()))
            self._end_stream()
            return
        self._start_stream("application/json")
        deadline = time.monotonic() + timeout if timeout else None
        last_bookmark = time.monotonic()
        try:
            for etype, obj in initial:
                self._chunk(self._line(etype, obj))
            while not self.server.closing.is_set():
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    if bookmarks:
                        self._bookmark(plural, watcher)
                    break
                wait = LIVENESS_CHECK
                if deadline is not None:
                    wait = min(wait, deadline - now)
                if bookmarks:
                    wait = min(wait, max(0.0, last_bookmark + interval - now))
                try:
                    etype, obj = watcher.queue.get(timeout=max(wait, 0.001))
                except queue.Empty:
                    if self._client_gone():
                        self.close_connection = True
                        return
                    if bookmarks and time.monotonic() - last_bookmark >= interval:
                        self._bookmark(plural, watcher)
                        last_bookmark = time.monotonic()
                    continue
                if (etype, obj) == Watcher.DROP:
                    break
                if (etype, obj) == Watcher.ABORT:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self._chunk(self._line(etype, obj))
            self._end_stream()
        except OSError:
            self.close_connection = True
        finally:
            self.store.unwatch(watcher)

    @staticmethod
    def _line(etype: str, obj: dict) -> bytes:
        return json.dumps({"type": etype, "object": obj}, separators=(",", ":")).encode() + b"\n"

    def _bookmark(self, plural: str, watcher: Watcher) -> None:
        with self.store.lock:  # an rv this watcher has seen everything up to
            if not watcher.queue.empty():
                return
            rv = str(self.store.rv)
        self._chunk(self._line("BOOKMARK", {"kind": KINDS[plural], "apiVersion": groups.api_version(plural),
                                            "metadata": {"resourceVersion": rv}}))

    # ------------------------------------------------------------ logs

    def _log(self, namespace: str, name: str) -> None:
        q = self.query
        pod = self.store.require("pods", namespace, name)
        containers = [c["name"] for c in pod["spec"]["containers"]]
        container = q.get("container") or containers[0]
        if container not in containers:
            raise ApiError(400, "BadRequest", f"container {container} is not valid for pod {name}")
        if q.get("previous", "").lower() in ("true", "1"):
            raise ApiError(400, "BadRequest", f'previous terminated container "{container}" in pod "{name}" not found')
        statuses = {s["name"]: s for s in pod.get("status", {}).get("containerStatuses") or []}
        state = statuses.get(container, {}).get("state") or {}
        if "running" not in state and "terminated" not in state and not statuses.get(container, {}).get("lastState"):
            reason = (state.get("waiting") or {}).get("reason", "ContainerCreating")
            if reason in ("ErrImagePull", "ImagePullBackOff"):
                reason = "trying and failing to pull image"
            raise ApiError(400, "BadRequest", f'container "{container}" in pod "{name}" is waiting to start: {reason}')
        path = self.server.cluster.kubelets.logs.get(pod["metadata"]["uid"]) if container == containers[0] else None
        if q.get("follow", "").lower() in ("true", "1") and path:
            self._follow(path, namespace, name, pod["metadata"]["uid"])
            return
        data = b""
        if path and os.path.exists(path):
            with open(path, "rb") as f:
                data = f.read()
        data = _tail(data, q.get("tailLines"), q.get("limitBytes"))
        self._send(200, data, "text/plain")

    def _follow(self, path: str, namespace: str, name: str, uid: str) -> None:
        self._start_stream("text/plain")
        tail = self.query.get("tailLines")
        with open(path, "rb") as f:
            data = f.read()
            self._chunk(_tail(data, tail, None))
            try:
                while not self.server.closing.is_set():
                    pod = self.store.get("pods", namespace, name)
                    done = pod is None or pod["metadata"]["uid"] != uid or not any(
                        "running" in (s.get("state") or {}) for s in pod["status"].get("containerStatuses") or []
                    )
                    chunk = f.read()
                    if chunk:
                        self._chunk(chunk)
                    elif done:
                        break
                    elif self._client_gone():
                        self.close_connection = True
                        return
                    else:
                        time.sleep(0.1)
                self._end_stream()
            except OSError:
                self.close_connection = True


def _tail(data: bytes, tail_lines: str | None, limit_bytes: str | None) -> bytes:
    if tail_lines not in (None, ""):
        n = int(tail_lines)
        lines = data.splitlines(keepends=True)
        data = b"".join(lines[-n:]) if n > 0 else b""
    if limit_bytes not in (None, ""):
        data = data[: int(limit_bytes)]
    return data
