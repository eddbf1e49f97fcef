"""The vGPU pool: per node, per extended resource, how much there is and how much is held.

Computed from caches (the shared watches, or the local slot table), never with an API request.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field

from .names import TERMINAL_PHASES
from .vgpu import format_mib


@dataclass
class ResourceCount:
    allocatable: int = 0
    allocated: int = 0  # by every pod that holds it (this project's kernels and, when visible, others)
    others: int | None = None  # of ``allocated``, what other workloads hold; None: not visible

    @property
    def free(self) -> int:
        return max(self.allocatable - self.allocated, 0)

    def as_dict(self) -> dict[str, int]:
        counts = {"allocatable": self.allocatable, "allocated": self.allocated, "free": self.free}
        return counts if self.others is None else {**counts, "others": self.others}


@dataclass
class DevicePool:
    """One Dynamic Resource Allocation device (a GPU, a MIG instance) and what claims hold of it."""

    name: str
    driver: str
    pool: str
    shared: bool = False  # allowMultipleAllocations: claims get shares of its capacity
    memory_mib: int = 0
    memory_free_mib: int = 0
    cores: int | None = None
    cores_free: int | None = None
    allocations: int = 0
    attributes: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "name": self.name, "driver": self.driver, "pool": self.pool, "shared": self.shared,
            "memory_mib": self.memory_mib, "memory_free_mib": self.memory_free_mib,
            "cores": self.cores, "cores_free": self.cores_free, "allocations": self.allocations,
            "attributes": dict(self.attributes),
        }


# GPU feature discovery's label: memory of each GPU of a node, in MiB.
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"


@dataclass
class NodePool:
    name: str
    resources: dict[str, ResourceCount] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    device_memory_mib: int | None = None  # memory of one device (GPU) of this node, when known
    devices: list[DevicePool] = field(default_factory=list)  # DRA devices (k8s/dra.py dra_pool); else empty

    def fits(self, request: Mapping[str, int]) -> bool:
        return all(self.resources.get(r, ResourceCount()).free >= amount for r, amount in request.items())


@dataclass
class PoolSnapshot:
    nodes: list[NodePool] = field(default_factory=list)
    visible: bool = True  # False: the nodes could not be read (no RBAC); only holdings are known
    others_visible: bool = False  # True: other workloads' pods are counted too (cluster-wide pod read)
    source: str = "kubernetes"
    warnings: list[str] = field(default_factory=list)  # e.g. a watch failing for a while: the counts may be stale
    # hub mode: per warm pool (and roster), its warm kernels ready / starting / reserved (they hold vGPUs unclaimed)
    warm: dict[str, dict[str, int]] = field(default_factory=dict)
    # as_dict() of a snapshot, made once: a cached snapshot (KubeCluster.pool) is answered many times unchanged
    _dict: dict | None = field(default=None, init=False, repr=False, compare=False)

    def totals(self) -> dict[str, ResourceCount]:
        totals: dict[str, ResourceCount] = {}
        for node in self.nodes:
            for resource, count in node.resources.items():
                total = totals.setdefault(resource, ResourceCount(others=0 if self.others_visible else None))
                total.allocatable += count.allocatable
                total.allocated += count.allocated
                if total.others is not None:
                    total.others += count.others or 0
        return totals

    def can_serve(self, request: Mapping[str, int]) -> bool | None:
        """Whether some node could take these resources now (None: the pool is not visible)."""
        if not request:
            return True
        if not self.visible:
            return None
        return any(node.fits(request) for node in self.nodes)

    def shortage_text(self, resource: str, asked: int, unit: str = "vGPU") -> str:
        """'needs 1 vGPU; 0 of 4 are free right now (4 in use)'."""
        total = self.totals().get(resource)
        plural = "s" if asked != 1 and unit == "vGPU" else ""
        need = f"needs {asked} {unit}{plural}"
        if not self.visible or total is None:
            return f"{need}; the pool size is not visible to this server"
        largest = max((n.resources.get(resource, ResourceCount()).free for n in self.nodes), default=0)
        text = f"{need}; {total.free} of {total.allocatable} are free right now ({total.allocated} in use)"
        if total.free >= asked > largest:
            text += f", but at most {largest} on any one node"
        return text

    def short_resource(self, request: Mapping[str, int]) -> str | None:
        """The first requested resource no node has enough of (None: each fits somewhere)."""
        for resource, amount in request.items():
            if max((n.resources.get(resource, ResourceCount()).free for n in self.nodes), default=0) < amount:
                return resource
        return None

    def shortage_message(self, resource: str, asked: int, count_resource: str) -> str:
        """The sentence a user reads when a kernel cannot get ``asked`` of ``resource``."""
        if resource == count_resource:
            return (f"Not enough vGPUs free: this kernel {self.shortage_text(resource, asked)}. "
                    "Stop a kernel you no longer use, ask for fewer vGPUs, or try again later.")
        return (f"Not enough {resource} free: this kernel {self.shortage_text(resource, asked, unit=resource)}. "
                "Ask for less, stop a kernel you no longer use, or try again later.")

    @classmethod
    def from_dict(cls, data: Mapping) -> PoolSnapshot:
        """The snapshot ``as_dict`` wrote (what the broker's pool endpoint answers)."""
        def counts(resources: Mapping) -> dict[str, ResourceCount]:
            return {r: ResourceCount(int(c.get("allocatable", 0)), int(c.get("allocated", 0)), c.get("others"))
                    for r, c in (resources or {}).items()}

        nodes = [NodePool(name=n.get("name", ""), resources=counts(n.get("resources")),
                          device_memory_mib=n.get("device_memory_mib")) for n in data.get("nodes") or []]
        warm = {str(name): {str(k): int(v) for k, v in counts.items() if isinstance(v, int)}
                for name, counts in (data.get("warm") or {}).items() if isinstance(counts, Mapping)}
        return cls(nodes=nodes, visible=bool(data.get("visible", True)),
                   others_visible=bool(data.get("others_visible")), source=str(data.get("source", "kubernetes")),
                   warnings=[str(w) for w in data.get("warnings") or []], warm=warm)

    def hidden_shortage_message(self, resource: str, asked: int, count_resource: str) -> str:
        """The sentence when the scheduler found too little although this project's kernels leave
        some free: other workloads hold the rest, and this server cannot see them."""
        total = self.totals().get(resource, ResourceCount())
        what = "vGPUs" if resource == count_resource else resource
        unit = ("vGPU" + ("s" if asked != 1 else "")) if resource == count_resource else resource
        return (f"Not enough {what} free: this kernel needs {asked} {unit}, and the scheduler found too few free; "
                f"this project's kernels hold {total.allocated} of {total.allocatable}, and other workloads on these "
                "nodes (not visible to this server) hold the rest. "
                "Stop a kernel you no longer use, or try again later.")

    def oversize_message(self, asked_mib: int) -> str | None:
        """The sentence for a slice larger than any device of the pool; None when one is large enough
        (or no device reports its memory)."""
        largest = max((n.device_memory_mib or 0 for n in self.nodes), default=0)
        if not self.visible or not largest or asked_mib <= largest:
            return None
        return (f"Not enough vGPU memory: this kernel asks {format_mib(asked_mib)} per vGPU, "
                f"and the largest device here has {format_mib(largest)}. Ask for less vGPU memory.")

    def memory_shortage_message(self, memory_resource: str, asked_mib: int, count: int) -> str:
        """The sentence when vGPUs are free but no device has ``asked_mib`` of memory left."""
        largest = max((n.resources.get(memory_resource, ResourceCount()).free for n in self.nodes), default=0)
        total = self.totals().get(memory_resource, ResourceCount())
        each = f" on each of {count} GPUs" if count > 1 else ""
        return (f"Not enough vGPU memory free: this kernel needs {format_mib(asked_mib)}{each}; at most "
                f"{format_mib(largest)} is free on any one device ({format_mib(total.allocated)} of "
                f"{format_mib(total.allocatable)} in use). Stop a kernel you no longer use, ask for less vGPU memory, "
                "or try again later.")

    def as_dict(self) -> dict:
        """The snapshot for a JSON answer; made once per snapshot (snapshots are not changed once handed
        out), so treat it as read-only: copy the top level to add keys, as the handlers do."""
        if self._dict is None:
            self._dict = self._make_dict()
        return self._dict

    def _make_dict(self) -> dict:
        return {
            "source": self.source,
            "visible": self.visible,
            "others_visible": self.others_visible,
            "warnings": list(self.warnings),
            "nodes": [
                {"name": n.name, "resources": {r: c.as_dict() for r, c in sorted(n.resources.items())},
                 **({"devices": [d.as_dict() for d in n.devices]} if n.devices else {}),
                 **({"device_memory_mib": n.device_memory_mib} if n.device_memory_mib else {})}
                for n in self.nodes
            ],
            "totals": {r: c.as_dict() for r, c in sorted(self.totals().items())},
            **({"warm": {name: dict(counts) for name, counts in self.warm.items()}} if self.warm else {}),
        }


def _amount(value: object) -> int:
    return 0 if value is None else _quantity(str(value))


@functools.lru_cache(maxsize=4096)
def _quantity(text: str) -> int:
    """A quantity text ("1", "4Gi") as a whole number; remembered: a pool of thousands of pods is summed again
    after every change, from a handful of distinct texts, and parse_quantity (Decimal) is slow."""
    from kubernetes.utils.quantity import parse_quantity

    try:
        return int(parse_quantity(text))
    except (ValueError, TypeError, ArithmeticError):
        return 0


def extended_limits(pod: Mapping) -> dict[str, int]:
    """Extended resources (names with a '/') a pod holds, summed over its containers."""
    held: dict[str, int] = {}
    for container in pod.get("spec", {}).get("containers", []):
        limits = (container.get("resources") or {}).get("limits") or {}
        for resource, value in limits.items():
            if "/" in resource:
                held[resource] = held.get(resource, 0) + _amount(value)
    return held


class HeldByNode:
    """What this project's pods hold on each node (extended resources), kept pod by pod: ``apply`` each watch
    event (from the watch's own thread) and the pool is summed per node, not per pod, after every change
    (20,000 pods: ~35 ms a sum otherwise, after each of a burst's events)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pods: dict[tuple[str, str], tuple[str, str, dict[str, int]]] = {}  # key -> (uid, node, held)
        self._nodes: dict[str, dict[str, int]] = {}
        self._on_node: dict[str, int] = {}  # node -> how many of the pods are on it
        self.version = 0  # bumped after every change of the sums

    def apply(self, kind: str, pod: Mapping) -> None:
        meta = pod.get("metadata") or {}
        key = (meta.get("namespace") or "", meta.get("name") or "")
        node = (pod.get("spec") or {}).get("nodeName") or ""
        counted = bool(kind != "DELETED" and node and (pod.get("status") or {}).get("phase") not in TERMINAL_PHASES)
        held = extended_limits(pod) if counted else {}
        with self._lock:
            old = self._pods.pop(key, None)
            if old is not None and old[1]:
                self._count(old[1], old[2], -1)
            if kind != "DELETED":
                self._pods[key] = (meta.get("uid") or "", node if counted else "", held)
                if counted:
                    self._count(node, held, 1)
            self.version += 1

    def _count(self, node: str, held: Mapping[str, int], sign: int) -> None:
        sums = self._nodes.setdefault(node, {})
        for resource, amount in held.items():
            sums[resource] = sums.get(resource, 0) + sign * amount
        self._on_node[node] = self._on_node.get(node, 0) + sign
        if not self._on_node[node]:
            del self._on_node[node], self._nodes[node]

    def sums(self, uids: bool = False) -> tuple[dict[str, dict[str, int]], frozenset[str]]:
        """Per node, what the pods hold (and, with ``uids``, every pod's uid)."""
        with self._lock:
            return ({node: dict(held) for node, held in self._nodes.items()},
                    frozenset(uid for uid, _, _ in self._pods.values()) if uids else frozenset())


def pool_from_cluster(nodes: Iterable[Mapping] | None, pods: Iterable[Mapping],
                      foreign: Iterable[Mapping] | None = None, not_foreign: Container[str] = ()) -> PoolSnapshot:
    """The pool from node objects, this project's kernel pods and (when visible) every other pod
    bound to a node that holds extended resources (except the uids in ``not_foreign``: this project's
    pods just deleted, which a cluster-wide watch may still hold for a moment)."""
    held = HeldByNode()
    for pod in pods:
        held.apply("ADDED", pod)
    return pool_from_held(nodes, held, foreign, not_foreign)


def pool_from_held(nodes: Iterable[Mapping] | None, held: HeldByNode, foreign: Iterable[Mapping] | None = None,
                   not_foreign: Container[str] = ()) -> PoolSnapshot:
    """``pool_from_cluster`` with this project's pods already summed per node."""
    by_node: dict[str, NodePool] = {}
    for node in nodes or []:
        meta = node.get("metadata", {})
        allocatable = (node.get("status") or {}).get("allocatable") or {}
        labels = dict(meta.get("labels") or {})
        by_node[meta["name"]] = NodePool(
            name=meta["name"],
            labels=labels,
            resources={r: ResourceCount(allocatable=_amount(v)) for r, v in allocatable.items() if "/" in r},
            device_memory_mib=_amount(labels.get(GPU_MEMORY_LABEL)) or None,
        )
    sums, ours = held.sums(uids=foreign is not None)
    for node_name, amounts in sums.items():
        node = by_node.setdefault(node_name, NodePool(name=node_name))
        for resource, amount in amounts.items():
            node.resources.setdefault(resource, ResourceCount()).allocated += amount
    if foreign is not None:
        for node in by_node.values():
            for count in node.resources.values():
                count.others = 0
        for pod in foreign:
            node = by_node.get(pod.get("spec", {}).get("nodeName") or "")
            uid = (pod.get("metadata") or {}).get("uid")
            if node is None or uid in ours or uid in not_foreign \
                    or (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
                continue
            for resource, amount in extended_limits(pod).items():
                count = node.resources.setdefault(resource, ResourceCount(others=0))
                count.allocated += amount
                count.others = (count.others or 0) + amount
    return PoolSnapshot(nodes=sorted(by_node.values(), key=lambda n: n.name), visible=nodes is not None,
                        others_visible=foreign is not None)
