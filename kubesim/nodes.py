"""Node lifecycle, as kube-controller-manager runs it: the pod garbage collector's clean-up after a
node is deleted, the node lifecycle controller's marks when a node stops being Ready, and the taint
manager's NoExecute evictions.

* A deleted node: every pod bound to it gets phase Failed and a ``DisruptionTarget`` condition
  (``DeletionByPodGC``, "PodGC: node no longer exists") and is deleted at once (grace 0), as the pod
  GC does (without its 40 s quarantine).
* ``set_ready(node, False)``: the node's kubelet stops posting (unreachable: its status writes are
  held back) or posts NotReady (``unreachable=False``). After ``monitor_grace`` seconds (Kubernetes:
  ``--node-monitor-grace-period``, 40-50 s) the node's Ready condition turns Unknown
  (``NodeStatusUnknown``) or False, the node is tainted ``node.kubernetes.io/unreachable`` (or
  ``not-ready``) NoSchedule and NoExecute, each pod on it gets Ready=False and a ``NodeNotReady``
  event, and the taint manager evicts each pod when its toleration of the NoExecute taint runs out
  (``tolerationSeconds``; pods are given 300 s by default): ``DisruptionTarget``
  (``DeletionByTaintManager``) and a graceful delete, which an unreachable kubelet cannot finish,
  so the pod stays Terminating until the node is back or deleted (or a client force-deletes it).
* ``set_ready(node, True)``: conditions and taints as before, held status writes replayed, pending
  deletions carried out.
"""

from __future__ import annotations

import queue
import threading
import traceback

from .scheduler import set_condition
from .store import Store, is_terminal, now_iso

COMPONENT = "node-controller"
UNREACHABLE = "node.kubernetes.io/unreachable"
NOT_READY = "node.kubernetes.io/not-ready"
NODE_MONITOR_GRACE = 0.5  # seconds; Kubernetes waits 40 s (50 s from 1.32) before it marks a silent node


class NodeController:
    def __init__(self, store: Store, kubelets):
        self.store, self.kubelets = store, kubelets
        self.monitor_grace = NODE_MONITOR_GRACE
        self._queue: queue.Queue = queue.Queue()
        self._timers: dict[str, list[threading.Timer]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        store.subscribers.append(self._on_change)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="kubesim-node-controller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            timers = [t for ts in self._timers.values() for t in ts]
            self._timers.clear()
        for timer in timers:
            timer.cancel()
        self._queue.put(None)
        if self._thread:
            self._thread.join(timeout=5)

    def _on_change(self, plural: str, etype: str, obj: dict, old: dict | None) -> None:
        """Store hook (under the store lock): only queues."""
        if plural == "nodes" and etype == "DELETED":
            self._queue.put((self._node_gone, (obj["metadata"]["name"],)))

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, args = item
            try:
                fn(*args)
            except Exception:  # pragma: no cover - the controller must survive anything
                traceback.print_exc()

    def _later(self, node: str, seconds: float, fn, *args) -> None:
        timer = threading.Timer(seconds, lambda: self._queue.put((fn, args)))
        timer.daemon = True
        with self._lock:
            self._timers.setdefault(node, []).append(timer)
        timer.start()

    def _cancel(self, node: str) -> None:
        with self._lock:
            timers = self._timers.pop(node, [])
        for timer in timers:
            timer.cancel()

    def _pods_on(self, node: str) -> list[dict]:
        return [p for p in self.store.list("pods")[0] if p["spec"].get("nodeName") == node]

    # ------------------------------------------------------------ pod GC: the node is gone

    def _node_gone(self, node: str) -> None:
        self._cancel(node)
        self.kubelets.remove_node(node)
        for pod in self._pods_on(node):
            meta = pod["metadata"]

            def mark(p: dict) -> None:
                if not is_terminal(p):
                    p["status"]["phase"] = "Failed"
                set_condition(p, {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByPodGC",
                                  "message": "PodGC: node no longer exists"})

            self.store.update("pods", meta["namespace"], meta["name"], mark, uid=meta["uid"])
            self.store.remove("pods", meta["namespace"], meta["name"], uid=meta["uid"])

    # ------------------------------------------------------------ node lifecycle and taint manager

    def set_ready(self, node: str, ready: bool, unreachable: bool = True, message: str = "") -> None:
        if self.store.get("nodes", None, node) is None:
            raise KeyError(f"no node {node!r}")
        self._cancel(node)
        if ready:
            self.kubelets.set_down(node, False)
            self._queue.put((self._mark_ready, (node,)))
            return
        if unreachable:
            self.kubelets.set_down(node, True)
        self._later(node, self.monitor_grace, self._mark_not_ready, node, unreachable, message)

    def _mark_not_ready(self, node: str, unreachable: bool, message: str) -> None:
        key = UNREACHABLE if unreachable else NOT_READY
        condition = ({"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                      "message": message or "Kubelet stopped posting node status."} if unreachable else
                     {"type": "Ready", "status": "False", "reason": "KubeletNotReady",
                      "message": message or "container runtime network not ready: NetworkReady=false"})
        stamp = now_iso()

        def mark(n: dict) -> None:
            for c in n["status"].setdefault("conditions", []):
                if c["type"] == "Ready":
                    c.update(condition, lastTransitionTime=stamp)
            taints = [t for t in n["spec"].get("taints") or [] if t.get("key") not in (UNREACHABLE, NOT_READY)]
            taints += [{"key": key, "effect": "NoSchedule", "timeAdded": stamp},
                       {"key": key, "effect": "NoExecute", "timeAdded": stamp}]
            n["spec"]["taints"] = taints

        if self.store.update("nodes", None, node, mark) is None:
            return
        for pod in self._pods_on(node):
            if is_terminal(pod):
                continue
            meta = pod["metadata"]

            def not_ready(p: dict) -> None:
                set_condition(p, {"type": "Ready", "status": "False"})

            current = self.store.update("pods", meta["namespace"], meta["name"], not_ready, uid=meta["uid"])
            if current is None:
                continue
            self.store.record_event(current, "Warning", "NodeNotReady", "Node is not ready", COMPONENT)
            seconds = _toleration_seconds(current, key)
            if seconds is None:
                continue
            if seconds <= 0:
                self._evict(node, meta["namespace"], meta["name"], meta["uid"])
            else:
                self._later(node, seconds, self._evict, node, meta["namespace"], meta["name"], meta["uid"])

    def _evict(self, node: str, namespace: str, name: str, uid: str) -> None:
        pod = self.store.get("pods", namespace, name)
        if pod is None or pod["metadata"]["uid"] != uid or pod["metadata"].get("deletionTimestamp"):
            return

        def mark(p: dict) -> None:
            set_condition(p, {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager",
                              "message": "Taint manager: deleting due to NoExecute taint"})

        current = self.store.update("pods", namespace, name, mark, uid=uid)
        if current is None:
            return
        self.store.record_event(current, "Normal", "TaintManagerEviction",
                                f"Marking for deletion Pod {namespace}/{name}", "taint-eviction-controller")
        try:
            self.store.delete("pods", namespace, name)
        except Exception:  # noqa: BLE001 - gone meanwhile
            pass

    def _mark_ready(self, node: str) -> None:
        stamp = now_iso()

        def mark(n: dict) -> None:
            for c in n["status"].setdefault("conditions", []):
                if c["type"] == "Ready" and c.get("status") != "True":
                    c.update({"status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status",
                              "lastHeartbeatTime": stamp, "lastTransitionTime": stamp})
            taints = [t for t in n["spec"].get("taints") or [] if t.get("key") not in (UNREACHABLE, NOT_READY)]
            if taints:
                n["spec"]["taints"] = taints
            else:
                n["spec"].pop("taints", None)

        self.store.update("nodes", None, node, mark)
        self.kubelets.resume(node)


def _toleration_seconds(pod: dict, key: str) -> float | None:
    """Seconds the pod tolerates the NoExecute taint ``key`` (0: not at all; None: forever)."""
    best: float | None = 0.0
    for t in pod["spec"].get("tolerations") or []:
        if t.get("effect") not in (None, "", "NoExecute"):
            continue
        if t.get("key") not in (None, "", key) or (not t.get("key") and t.get("operator") != "Exists"):
            continue
        if t.get("tolerationSeconds") is None:
            return None
        best = max(best or 0.0, float(t["tolerationSeconds"]))
    return best
