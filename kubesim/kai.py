"""A stand-in for KAI Scheduler (NVIDIA): GPU fractions and queues, in KAI's own words.

It binds pods with ``schedulerName: kai-scheduler``. A pod asks for a share of a GPU with the
annotation ``gpu-fraction: "0.5"`` or ``gpu-memory: "<MiB>"`` (turned into a fraction of the node's
GPU memory, label ``nvidia.com/gpu.memory``, rounded up to hundredths), on
``gpu-fraction-num-devices`` GPUs (default 1), or for whole GPUs with ``nvidia.com/gpu`` limits. A
node has ``nvidia.com/gpu.count`` GPUs (label, else its ``nvidia.com/gpu`` allocatable). The
queue is the pod's ``kai.scheduler/queue`` label (else ``default_queue``); queues are configured
here, as :class:`KaiQueue` (a GPU ``quota`` and ``limit``; -1 is unlimited). Pods of a
non-preemptible priority class (``build``) stay within the quota.

When it cannot place a pod it writes what KAI writes: ``PodScheduled=False``, reason
``Unschedulable``, with KAI's message ("no nodes with enough resources were found: 1 node(s)
didn't have enough resources: GPUs.", "OverLimit: ai101 quota has reached the allowable limit of
GPUs. ...", "QueueDoesNotExist: Queue 'x' does not exist."), and a Warning event with reason
``Unschedulable``. A bound shared pod gets KAI's ``runai-gpu-group`` label naming its GPU. Memory
is not isolated (KAI enforces none). Use it with ``SimCluster(scheduler_names=["default-scheduler"])``
so that the default scheduler leaves these pods alone::

    with SimCluster(nodes=[...], scheduler_names=["default-scheduler"]) as cluster, \\
            KaiScheduler(cluster, queues={"ai101": KaiQueue(quota=1, limit=1)}):
        ...
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from .scheduler import node_matches_pod, set_condition, tolerates
from .selectors import parse_quantity
from .store import Store, is_terminal

NAME = "kai-scheduler"
QUEUE_LABEL = "kai.scheduler/queue"
GPU_FRACTION = "gpu-fraction"
GPU_MEMORY = "gpu-memory"
NUM_DEVICES = "gpu-fraction-num-devices"
GPU_GROUP = "runai-gpu-group"
GPU_COUNT_LABEL = "nvidia.com/gpu.count"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"  # MiB per GPU
NO_NODES = "no nodes with enough resources were found"
TOLERANCE = 1e-6


@dataclass
class KaiQueue:
    """A KAI queue's GPU resources (scheduling.run.ai/v2 Queue spec.resources.gpu); -1: unlimited."""

    quota: float = -1
    limit: float = -1


def _number(value: float) -> str:
    return f"{round(value, 4):g}"


class KaiScheduler:
    """Binds ``schedulerName: kai-scheduler`` pods to GPUs by fraction, per queue; see the module doc."""

    def __init__(self, cluster, queues: Mapping[str, KaiQueue | Mapping] | None = None,
                 default_queue: str = "default-queue", non_preemptible: tuple[str, ...] = ("build",),
                 detailed_fit_errors: bool = False, node_pool: str = "default"):
        self.cluster = cluster if not isinstance(cluster, Store) else None
        self.store: Store = cluster if isinstance(cluster, Store) else cluster.store
        self.queues = {name: q if isinstance(q, KaiQueue) else KaiQueue(**dict(q))
                       for name, q in (queues or {}).items()}
        self.default_queue = default_queue
        self.non_preemptible = set(non_preemptible)
        self.detailed_fit_errors = detailed_fit_errors
        self.node_pool = node_pool
        self._cond = threading.Condition()
        self._dirty = True
        self._stop = False
        self._messages: dict[str, str] = {}  # pod uid -> the last Unschedulable message written
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> KaiScheduler:
        scheduler = getattr(self.cluster, "scheduler", None)
        if scheduler is not None and (scheduler.names is None or NAME in scheduler.names):
            raise ValueError("the default scheduler would bind kai-scheduler pods too: "
                             "start the cluster with SimCluster(scheduler_names=['default-scheduler'])")
        self.store.subscribers.append(self._on_change)
        self._thread = threading.Thread(target=self._loop, name="kubesim-kai-scheduler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread:
            self._thread.join(timeout=5)
        if self._on_change in self.store.subscribers:
            self.store.subscribers.remove(self._on_change)

    def __enter__(self) -> KaiScheduler:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def set_queue(self, name: str, queue: KaiQueue | None) -> None:
        """Adds, changes or (None) removes a queue, and retries pending pods."""
        if queue is None:
            self.queues.pop(name, None)
        else:
            self.queues[name] = queue
        self._wake()

    # ------------------------------------------------------------ loop

    def _wake(self) -> None:
        with self._cond:
            self._dirty = True
            self._cond.notify_all()

    def _on_change(self, plural: str, etype: str, obj: dict, old: dict | None) -> None:
        if plural == "nodes":
            self._wake()
        elif plural == "pods":
            bound = bool(obj["spec"].get("nodeName"))
            if (etype == "ADDED" and not bound and obj["spec"].get("schedulerName") == NAME) or etype == "DELETED" \
                    or (etype == "MODIFIED" and bound and is_terminal(obj) and not is_terminal(old or {})):
                self._wake()

    def _loop(self) -> None:
        while True:
            with self._cond:
                if not self._dirty and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                self._dirty = False
            try:
                self._cycle()
            except Exception:  # pragma: no cover - keep scheduling whatever happens
                import traceback

                traceback.print_exc()
                time.sleep(0.2)

    # ------------------------------------------------------------ one pass

    def _cycle(self) -> None:
        with self.store.lock:
            pods = self.store.list("pods")[0]
            nodes = self.store.list("nodes")[0]
        used: dict[str, list[float]] = {n["metadata"]["name"]: [0.0] * self._gpu_count(n) for n in nodes}
        queue_used: Counter = Counter()
        queue_used_np: Counter = Counter()
        for pod in pods:
            node = pod["spec"].get("nodeName")
            if not node or is_terminal(pod) or pod["spec"].get("schedulerName") != NAME:
                continue
            devices, fraction = self._share(pod, next((n for n in nodes if n["metadata"]["name"] == node), None))
            for group, value in (pod["metadata"].get("labels") or {}).items():
                if group == GPU_GROUP or group.startswith(GPU_GROUP + "/"):
                    index = self._gpu_index(value, node)
                    if index is not None and index < len(used.get(node, [])):
                        used[node][index] += fraction
            queue = self._queue(pod)
            queue_used[queue] += devices * fraction
            if pod["spec"].get("priorityClassName") in self.non_preemptible:
                queue_used_np[queue] += devices * fraction
        pending = [p for p in pods if p["spec"].get("schedulerName") == NAME and not p["spec"].get("nodeName")
                   and not p["metadata"].get("deletionTimestamp") and not is_terminal(p)]
        pending.sort(key=lambda p: (p["metadata"].get("creationTimestamp", ""), p["metadata"]["name"]))
        for pod in pending:
            message = self._queue_error(pod, queue_used, queue_used_np, nodes)
            if message is None:
                placement, message = self._place(pod, nodes, used)
                if placement is not None:
                    node_name, indices, devices, fraction = placement
                    if self._bind(pod, node_name, indices):
                        for i in indices:
                            used[node_name][i] += fraction
                        queue_used[self._queue(pod)] += devices * fraction
                        if pod["spec"].get("priorityClassName") in self.non_preemptible:
                            queue_used_np[self._queue(pod)] += devices * fraction
                    continue
            self._mark_unschedulable(pod, message)

    @staticmethod
    def _gpu_count(node: dict) -> int:
        labels = node["metadata"].get("labels") or {}
        try:
            return int(labels.get(GPU_COUNT_LABEL) or parse_quantity((node["status"].get("allocatable") or {})
                                                                      .get("nvidia.com/gpu", 0)))
        except ValueError:
            return 0

    @staticmethod
    def _gpu_memory(node: dict | None) -> int:
        try:
            return int(((node or {}).get("metadata", {}).get("labels") or {}).get(GPU_MEMORY_LABEL) or 0)
        except ValueError:
            return 0

    @staticmethod
    def _group(node: str, index: int) -> str:
        return f"{node}-gpu{index}"[-63:].lstrip("-_.")

    def _gpu_index(self, group: str, node: str) -> int | None:
        head, _, index = group.rpartition("-gpu")
        return int(index) if index.isdigit() and self._group(node, int(index)) == group else None

    def _queue(self, pod: dict) -> str:
        return (pod["metadata"].get("labels") or {}).get(QUEUE_LABEL) or self.default_queue

    def _share(self, pod: dict, node: dict | None) -> tuple[int, float]:
        """(devices, fraction of each) a pod asks for; whole GPUs are a fraction of 1."""
        annotations = pod["metadata"].get("annotations") or {}
        devices = int(annotations.get(NUM_DEVICES) or 1)
        if annotations.get(GPU_FRACTION):
            return devices, float(annotations[GPU_FRACTION])
        if annotations.get(GPU_MEMORY):
            memory = self._gpu_memory(node)
            if not memory:
                return devices, float("inf")
            share = int(annotations[GPU_MEMORY]) / memory
            return devices, -(-round(share * 10000) // 100) / 100  # up to hundredths
        whole = 0
        for c in pod["spec"].get("containers") or []:
            whole += int(parse_quantity(((c.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu", 0)))
        return whole, 1.0 if whole else 0.0

    def _queue_error(self, pod: dict, used: Counter, used_np: Counter, nodes: list[dict]) -> str | None:
        name = self._queue(pod)
        queue = self.queues.get(name)
        if queue is None:
            return f"QueueDoesNotExist: Queue '{name}' does not exist."
        # gpu-memory as a fraction of the (first) GPU node's memory: the simulated GPUs are alike
        devices, fraction = self._share(pod, next((n for n in nodes if self._gpu_memory(n)), None))
        if fraction == float("inf"):
            return None  # no GPU memory known: the node filter says so
        asked = devices * fraction
        if queue.limit >= 0 and used[name] + asked > queue.limit + TOLERANCE:
            return (f"OverLimit: {name} quota has reached the allowable limit of GPUs. "
                    f"Limit is {_number(queue.limit)} GPUs, currently {_number(used[name])} GPUs allocated "
                    f"and workload requested {_number(asked)} GPUs.")
        if (pod["spec"].get("priorityClassName") in self.non_preemptible and queue.quota >= 0
                and used_np[name] + asked > queue.quota + TOLERANCE):
            return (f"NonPreemptibleOverQuota: Non-preemptible workload is over quota. Workload requested "
                    f"{_number(asked)} GPUs, but {name} quota is {_number(queue.quota)} GPUs, while "
                    f"{_number(used_np[name])} GPUs are already allocated for non-preemptible pods. "
                    "Use a preemptible workload to go over quota.")
        return None

    def _place(self, pod: dict, nodes: list[dict], used: dict[str, list[float]]):
        """((node, GPU indices, devices, fraction), None) or (None, KAI's message)."""
        reasons: list[str] = []
        details: list[str] = []
        tolerations = pod["spec"].get("tolerations") or []
        for node in sorted(nodes, key=lambda n: n["metadata"]["name"]):
            name = node["metadata"]["name"]
            if node["spec"].get("unschedulable") or not node_matches_pod(pod, node) or any(
                    t.get("effect") in ("NoSchedule", "NoExecute") and not any(tolerates(x, t) for x in tolerations)
                    for t in node["spec"].get("taints") or []):
                reasons.append("node(s) didn't match Pod's node affinity/selector")
                continue
            devices, fraction = self._share(pod, node)
            capacity = self._gpu_memory(node)
            asked_memory = int((pod["metadata"].get("annotations") or {}).get(GPU_MEMORY) or 0)
            if asked_memory and (not capacity or asked_memory > capacity):
                reasons.append("node(s) didn't have enough resources: GPU memory")
                details.append(f"<{name}>: Node didn't have enough resources: Each gpu on the node has a gpu memory "
                               f"capacity of {capacity} Mib. {asked_memory} Mib of gpu memory has been requested.")
                continue
            if devices == 0:
                return (name, [], 0, 0.0), None
            free = [(1.0 - u, i) for i, u in enumerate(used.get(name, [])) if 1.0 - u + TOLERANCE >= fraction]
            if len(free) < devices:
                gpus = used.get(name, [])
                reasons.append("node(s) didn't have enough resources: GPUs")
                details.append(f"<{name}>: Node didn't have enough resources: GPUs, requested: "
                               f"{_number(devices * fraction)}, used: {_number(sum(gpus))}, capacity: {len(gpus)}")
                continue
            chosen = [i for _, i in sorted(free)[:devices]]  # bin-packing: the fullest GPUs that fit
            return (name, chosen, devices, fraction), None
        counts = Counter(reasons)
        message = NO_NODES
        if counts:
            message += ": " + ". \n".join(sorted(f"{n} {r}" for r, n in counts.items())) + "."
        if self.detailed_fit_errors and details:
            message = "\n".join(["", NO_NODES + ".", *sorted(d + "." for d in details)])
        return None, message

    def _bind(self, pod: dict, node: str, indices: list[int]) -> bool:
        meta = pod["metadata"]

        def bind(p: dict) -> bool | None:
            if p["spec"].get("nodeName") or p["metadata"].get("deletionTimestamp"):
                return False
            p["spec"]["nodeName"] = node
            labels = p["metadata"].setdefault("labels", {})
            if len(indices) == 1:
                labels[GPU_GROUP] = self._group(node, indices[0])
            for i in indices if len(indices) > 1 else []:
                labels[f"{GPU_GROUP}/{self._group(node, i)}"] = self._group(node, i)
            set_condition(p, {"type": "PodScheduled", "status": "True"})
            return None

        bound = self.store.update("pods", meta["namespace"], meta["name"], bind, uid=meta["uid"])
        if bound is None or bound["spec"].get("nodeName") != node:
            return False
        self._messages.pop(meta["uid"], None)
        self.store.record_event(
            bound, "Normal", "Scheduled",
            f"Successfully assigned pod {meta['namespace']}/{meta['name']} to node {node} "
            f"at node-pool {self.node_pool}",
            NAME, aggregate_key=(),
        )
        return True

    def _mark_unschedulable(self, pod: dict, message: str) -> None:
        meta = pod["metadata"]
        if self._messages.get(meta["uid"]) == message:
            return
        self._messages[meta["uid"]] = message

        def mark(p: dict) -> None:
            set_condition(p, {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message})

        current = self.store.update("pods", meta["namespace"], meta["name"], mark, uid=meta["uid"])
        if current is not None:
            self.store.record_event(current, "Warning", "Unschedulable", message, NAME, aggregate_key=())
