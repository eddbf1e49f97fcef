"""SimCluster: the store, scheduler, kubelets and HTTP API server put together."""

from __future__ import annotations

import atexit
import copy
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .api import ApiServer
from .faults import Faults
from .kubelet import Kubelets, mount_namespaces_work
from .nodes import NodeController
from .scheduler import Scheduler
from .store import Store

DEFAULT_ALLOCATABLE = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "100Gi"}


@dataclass(frozen=True)
class RequestRecord:
    verb: str  # get, list, watch, create, update, patch, delete, deletecollection
    resource: str  # pods, secrets, events, nodes, namespaces, pods/log, or a path such as /version
    namespace: str | None
    name: str | None
    watch: bool
    status: int


@dataclass
class SimNode:
    name: str
    allocatable: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)
    taints: list = field(default_factory=list)  # dicts {key, value, effect} or "key=value:Effect"
    kubelet: str = "process"  # or "fake"
    unschedulable: bool = False

    def to_object(self) -> dict:
        allocatable = {**DEFAULT_ALLOCATABLE, **{k: str(v) for k, v in self.allocatable.items()}}
        labels = {"kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                  **self.labels}
        stamp = "2024-01-01T00:00:00Z"
        spec: dict = {"taints": [_taint(t) for t in self.taints]} if self.taints else {}
        if self.unschedulable:
            spec["unschedulable"] = True
        return {
            "metadata": {"name": self.name, "labels": labels},
            "spec": spec,
            "status": {
                "capacity": dict(allocatable),
                "allocatable": allocatable,
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                "message": "kubelet is posting ready status", "lastHeartbeatTime": stamp,
                                "lastTransitionTime": stamp}],
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                              {"type": "Hostname", "address": self.name}],
                "nodeInfo": {
                    "architecture": "amd64", "bootID": "kubesim", "containerRuntimeVersion": "kubesim://1.0",
                    "kernelVersion": os.uname().release, "kubeProxyVersion": "v1.31.0", "kubeletVersion": "v1.31.0",
                    "machineID": "kubesim", "operatingSystem": "linux", "osImage": f"kubesim ({self.kubelet} kubelet)",
                    "systemUUID": "kubesim",
                },
            },
        }


def _taint(taint) -> dict:
    if isinstance(taint, dict):
        return dict(taint)
    head, _, effect = str(taint).rpartition(":")
    key, _, value = head.partition("=")
    return {"key": key, "value": value, "effect": effect} if value else {"key": key, "effect": effect}


class SimCluster:
    """A Kubernetes API server on 127.0.0.1 with a scheduler and kubelets; see kubesim/README.md."""

    def __init__(
        self, nodes: list[SimNode] | None = None, python: str = sys.executable,
        scheduler_names: list[str] | None = None, bookmark_interval: float = 5.0,
        mount_namespaces: bool | None = None,
    ):
        self.store = Store()
        self.faults = Faults(self.store)
        self.scheduler = Scheduler(self.store, self.faults, scheduler_names)
        self.tmpdir = tempfile.mkdtemp(prefix="kubesim-")
        os.mkdir(os.path.join(self.tmpdir, "pods"))
        self.mount_namespaces = mount_namespaces_work() if mount_namespaces is None else mount_namespaces
        self.kubelets = Kubelets(self.store, self.faults, os.path.abspath(python),
                                 os.path.join(self.tmpdir, "pods"), self.mount_namespaces)
        self.node_controller = NodeController(self.store, self.kubelets)
        self.bookmark_interval = bookmark_interval
        self.namespaces: set[str] = set()
        # who the kubeconfig's token is: None authorizes everything; a user makes RBAC decide (kubesim/rbac.py)
        self.rbac_user: str | None = None
        self.requests: list[RequestRecord] = []
        self._requests_lock = threading.Lock()
        self._nodes = list(nodes or [])
        self._server: ApiServer | None = None
        self._server_thread: threading.Thread | None = None
        self.url = ""
        self.kubeconfig_path = os.path.join(self.tmpdir, "kubeconfig")
        self._stopped = False

    # ------------------------------------------------------------ lifecycle

    def start(self) -> SimCluster:
        self.store.start()
        self.scheduler.start()
        self.kubelets.start()
        self.node_controller.start()
        for node in self._nodes:
            self.add_node(node)
        self._server = ApiServer(self)
        self._server_thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                               name="kubesim-api", daemon=True)
        self._server_thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        config = {
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": "kubesim", "cluster": {"server": self.url}}],
            "users": [{"name": "kubesim", "user": {"token": "kubesim"}}],
            "contexts": [{"name": "kubesim",
                          "context": {"cluster": "kubesim", "user": "kubesim", "namespace": "default"}}],
            "current-context": "kubesim",
        }
        with open(self.kubeconfig_path, "w") as f:
            json.dump(config, f, indent=2)
        atexit.register(self.stop)  # pod processes live in their own sessions: never leave them behind
        return self

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        self.scheduler.stop()
        self.node_controller.stop()
        self.kubelets.stop()
        if self._server is not None:
            self._server.closing.set()
        self.store.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.close_connections()
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def __enter__(self) -> SimCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------ clients

    def api_client(self):
        import kubernetes.client

        configuration = kubernetes.client.Configuration()
        configuration.host = self.url
        return kubernetes.client.ApiClient(configuration)

    # ------------------------------------------------------------ objects, without HTTP

    def add_node(self, node: SimNode) -> dict:
        self.kubelets.add_node(node.name, node.kubelet)
        if node not in self._nodes:
            self._nodes.append(node)
        return copy.deepcopy(self.store.create("nodes", None, node.to_object()))

    def delete_node(self, name: str) -> dict:
        """Deletes a node (as ``kubectl delete node`` does); the pod GC then deletes its pods."""
        self._nodes = [n for n in self._nodes if n.name != name]
        return self.delete_object("nodes", None, name)

    def set_node_ready(self, name: str, ready: bool, *, unreachable: bool = True, message: str = "") -> None:
        """A node's kubelet stops posting (``unreachable``) or posts NotReady, or is back; see kubesim/nodes.py.
        The node and its pods are marked ``node_controller.monitor_grace`` seconds (0.5) later."""
        self.node_controller.set_ready(name, ready, unreachable, message)

    def objects(self, plural: str, namespace: str | None = None) -> list[dict]:
        return copy.deepcopy(self.store.list(plural, namespace)[0])

    def get(self, plural: str, namespace: str | None, name: str) -> dict | None:
        return copy.deepcopy(self.store.get(plural, namespace, name))

    def create_object(self, plural: str, namespace: str | None, body: dict) -> dict:
        return copy.deepcopy(self.store.create(plural, namespace, body))

    def delete_object(self, plural: str, namespace: str | None, name: str,
                      grace_period_seconds: int | None = None) -> dict:
        return copy.deepcopy(self.store.delete(plural, namespace, name, grace_period_seconds))

    def wait_for(
        self, plural: str, namespace: str | None, name: str, predicate: Callable[[dict | None], bool],
        timeout: float = 10.0,
    ) -> dict | None:
        """Blocks until predicate(object or None) holds; returns the object (a copy). TimeoutError after timeout."""
        last: list = []

        def check() -> bool:
            last[:] = [self.get(plural, namespace, name)]
            return bool(predicate(last[0]))

        try:
            self.wait_until(check, timeout)
        except TimeoutError:
            raise TimeoutError(f"{plural} {namespace}/{name} did not reach the expected state: {last[0]}") from None
        return last[0]

    def wait_until(self, condition: Callable[[], object], timeout: float = 10.0) -> object:
        """Blocks until condition() is truthy, re-checking after every change in the cluster (the
        condition runs without the store lock, so it may call the API); returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.store.changes
            value = condition()
            if value:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("condition not reached")
            with self.store.changed:
                if self.store.changes == seen:
                    self.store.changed.wait(remaining)

    def events(self, namespace: str, involved_name: str | None = None, reason: str | None = None) -> list[dict]:
        return [
            e for e in self.objects("events", namespace)
            if (involved_name is None or e["involvedObject"]["name"] == involved_name)
            and (reason is None or e["reason"] == reason)
        ]

    def pod_log(self, namespace: str, name: str) -> str:
        pod = self.store.get("pods", namespace, name)
        path = pod and self.kubelets.logs.get(pod["metadata"]["uid"])
        if not path or not os.path.exists(path):
            return ""
        with open(path, errors="replace") as f:
            return f.read()

    # ------------------------------------------------------------ kubelet controls

    def kill_pod_process(self, namespace: str, name: str, sig: int = signal.SIGKILL) -> bool:
        worker = self.kubelets.worker(namespace, name)
        return worker is not None and worker.kill(sig)

    def oom_kill(self, namespace: str, name: str) -> bool:
        """Kills a running pod's process as the kernel's OOM killer would (terminated: OOMKilled, 137)."""
        worker = self.kubelets.worker(namespace, name)
        return worker is not None and worker.oom_kill()

    def evict(self, namespace: str, name: str, message: str = "The node was low on resource: memory.") -> bool:
        return self.kubelets.evict(namespace, name, message)

    def running_processes(self) -> list[int]:
        """Process groups of pod processes that still have a live (non-zombie) member."""
        return self.kubelets.live_process_groups()

    # ------------------------------------------------------------ request log

    def _record(self, verb: str, resource: str, namespace: str | None, name: str | None, watch: bool,
                status: int) -> None:
        with self._requests_lock:
            self.requests.append(RequestRecord(verb, resource, namespace, name, watch, status))

    def count_requests(self, verb: str | None = None, resource: str | None = None, watch: bool | None = None) -> int:
        with self._requests_lock:
            return sum(
                1 for r in self.requests
                if (verb is None or r.verb == verb) and (resource is None or r.resource == resource)
                and (watch is None or r.watch == watch)
            )

    def reset_requests(self) -> None:
        with self._requests_lock:
            self.requests.clear()
