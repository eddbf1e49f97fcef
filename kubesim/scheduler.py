"""A default-scheduler lookalike: filters nodes by selector/affinity, taints and resources; binds in order."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable
from fractions import Fraction

from .dra import DraPlugin
from .selectors import parse_quantity
from .store import Store, is_terminal, now_iso

COMPONENT = "default-scheduler"


def pod_requests(pod: dict) -> dict[str, Fraction]:
    """Effective requests: the sum over containers, at least the largest init container's."""
    total: dict[str, Fraction] = {}
    spec = pod.get("spec") or {}
    for c in spec.get("containers") or []:
        for name, amount in ((c.get("resources") or {}).get("requests") or {}).items():
            total[name] = total.get(name, Fraction(0)) + parse_quantity(amount)
    for c in spec.get("initContainers") or []:
        for name, amount in ((c.get("resources") or {}).get("requests") or {}).items():
            total[name] = max(total.get(name, Fraction(0)), parse_quantity(amount))
    return total


def tolerates(toleration: dict, taint: dict) -> bool:
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    operator = toleration.get("operator") or "Equal"
    if not toleration.get("key"):
        return operator == "Exists"
    if toleration["key"] != taint.get("key"):
        return False
    return operator == "Exists" or (toleration.get("value") or "") == (taint.get("value") or "")


def _expression_matches(expr: dict, labels: dict) -> bool:
    key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
    if op == "In":
        return labels.get(key) in values
    if op == "NotIn":
        return labels.get(key) not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    if op in ("Gt", "Lt"):
        try:
            have, bound = int(labels[key]), int(values[0])
        except (KeyError, ValueError, IndexError):
            return False
        return have > bound if op == "Gt" else have < bound
    return False


def node_matches_pod(pod: dict, node: dict) -> bool:
    labels = node["metadata"].get("labels") or {}
    spec = pod.get("spec") or {}
    if any(labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
        return False
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = required.get("nodeSelectorTerms")
    if terms:
        fields = {"metadata.name": node["metadata"]["name"]}
        return any(
            all(_expression_matches(e, labels) for e in term.get("matchExpressions") or [])
            and all(_expression_matches(e, fields) for e in term.get("matchFields") or [])
            for term in terms
        )
    return True


def fit_error(node_count: int, reasons: Iterable[str]) -> str:
    if node_count == 0:
        return "no nodes available to schedule pods"
    histogram = Counter(reasons)
    parts = sorted(f"{count} {reason}" for reason, count in histogram.items())
    message = f"0/{node_count} nodes are available:"
    if parts:
        message += " " + ", ".join(parts)
    return message + "."


class Scheduler:
    def __init__(self, store: Store, faults, scheduler_names: Iterable[str] | None = None):
        self.store, self.faults = store, faults
        self.names = set(scheduler_names) if scheduler_names else None
        self._cond = threading.Condition()
        self._dirty = True
        self._retry = True
        self._stop = False
        self._arrival: dict[str, float] = {}
        self._unschedulable: dict[str, str] = {}  # pod uid -> its last FailedScheduling message
        self._requests: dict[str, dict[str, Fraction]] = {}  # pod uid -> pod_requests (specs are immutable)
        self._thread: threading.Thread | None = None
        self.dra = DraPlugin(store)  # resource claims: made from templates, allocated before binding
        store.subscribers.append(self._on_change)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="kubesim-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread:
            self._thread.join(timeout=5)

    def _wake(self, retry: bool = False) -> None:
        with self._cond:
            self._dirty = True
            self._retry = self._retry or retry
            self._cond.notify_all()

    def _on_change(self, plural: str, etype: str, obj: dict, old: dict | None) -> None:
        """Store hook (runs under the store lock): only records and wakes."""
        if plural == "nodes" or self.dra.wakes(plural):
            self._wake(retry=True)
            return
        if plural != "pods":
            return
        uid = obj["metadata"]["uid"]
        bound = bool(obj["spec"].get("nodeName"))
        if etype == "ADDED" and not bound:
            self._arrival[uid] = time.monotonic()
            self._wake()
        elif etype == "DELETED":
            self._arrival.pop(uid, None)
            self._unschedulable.pop(uid, None)
            self._requests.pop(uid, None)
            if bound and not is_terminal(obj):
                self._wake(retry=True)
        elif etype == "MODIFIED" and bound and is_terminal(obj) and not is_terminal(old or {}):
            self._wake(retry=True)

    def _loop(self) -> None:
        timeout: float | None = None
        while True:
            with self._cond:
                if not self._dirty and not self._stop:
                    self._cond.wait(timeout)
                if self._stop:
                    return
                self._dirty = False
                retry, self._retry = self._retry, False
            try:
                next_due = self._cycle(retry)
            except Exception:  # pragma: no cover - keep scheduling whatever happens
                import traceback

                traceback.print_exc()
                next_due = time.monotonic() + 0.5
            timeout = None if next_due is None else max(0.0, next_due - time.monotonic())

    # ------------------------------------------------------------ one scheduling pass

    def _cycle(self, retry: bool) -> float | None:
        with self.store.lock:
            pods = self.store.list("pods")[0]
            nodes = self.store.list("nodes")[0]
        used: dict[str, dict[str, Fraction]] = {n["metadata"]["name"]: {} for n in nodes}
        for pod in pods:
            node = pod["spec"].get("nodeName")
            if node in used and not is_terminal(pod):
                usage = used[node]
                usage["pods"] = usage.get("pods", Fraction(0)) + 1
                for name, amount in self._pod_requests(pod).items():
                    usage[name] = usage.get(name, Fraction(0)) + amount
        allocatable = {
            n["metadata"]["name"]: {k: parse_quantity(v) for k, v in (n["status"].get("allocatable") or {}).items()}
            for n in nodes
        }
        now, delay, next_due = time.monotonic(), float(self.faults.schedule_delay or 0.0), None
        pending = [
            p for p in pods
            if not p["spec"].get("nodeName") and not p["metadata"].get("deletionTimestamp") and not is_terminal(p)
            and (self.names is None or p["spec"].get("schedulerName") in self.names)
        ]
        pending.sort(key=lambda p: (self._arrival.get(p["metadata"]["uid"], 0.0), p["metadata"]["name"]))
        for pod in pending:
            uid = pod["metadata"]["uid"]
            due = self._arrival.get(uid, 0.0) + delay
            if due > now:
                next_due = due if next_due is None else min(next_due, due)
                continue
            if uid in self._unschedulable and not retry:
                continue
            claims = self.dra.claims_for(pod)
            if claims is None:  # a claim is not made yet (its template is missing): wait
                continue
            requests = self._pod_requests(pod)
            reasons: list[str] = []
            feasible = []
            for node in nodes:
                why = self._filter(pod, node, requests, used[node["metadata"]["name"]],
                                   allocatable[node["metadata"]["name"]]) or self.dra.filter(pod, node, claims)
                if why:
                    reasons.extend(why)
                else:
                    feasible.append(node)
            if feasible:
                node = min(feasible, key=lambda n: (used[n["metadata"]["name"]].get("pods", 0), n["metadata"]["name"]))
                name = node["metadata"]["name"]
                if self.dra.reserve(pod, name, claims) and self._bind(pod, name):
                    usage = used[node["metadata"]["name"]]
                    usage["pods"] = usage.get("pods", Fraction(0)) + 1
                    for name, amount in requests.items():
                        usage[name] = usage.get(name, Fraction(0)) + amount
            else:
                self._mark_unschedulable(pod, fit_error(len(nodes), reasons))
        return next_due

    def _pod_requests(self, pod: dict) -> dict[str, Fraction]:
        uid = pod["metadata"]["uid"]
        if uid not in self._requests:
            self._requests[uid] = pod_requests(pod)
        return self._requests[uid]

    @staticmethod
    def _filter(pod: dict, node: dict, requests: dict, used: dict, allocatable: dict) -> list[str]:
        """Why ``node`` cannot take ``pod`` (empty when it can), in the default plugins' order."""
        tolerations = pod["spec"].get("tolerations") or []
        if node["spec"].get("unschedulable") and not any(
            tolerates(t, {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}) for t in tolerations
        ):
            return ["node(s) were unschedulable"]
        for taint in node["spec"].get("taints") or []:
            if taint.get("effect") in ("NoSchedule", "NoExecute") and not any(tolerates(t, taint) for t in tolerations):
                return [f"node(s) had untolerated taint {{{taint.get('key')}: {taint.get('value') or ''}}}"]
        if not node_matches_pod(pod, node):
            return ["node(s) didn't match Pod's node affinity/selector"]
        reasons = []
        if used.get("pods", 0) + 1 > allocatable.get("pods", Fraction(110)):
            reasons.append("Too many pods")
        for name, amount in sorted(requests.items()):
            if amount > 0 and used.get(name, 0) + amount > allocatable.get(name, Fraction(0)):
                reasons.append(f"Insufficient {name}")
        return reasons

    def _bind(self, pod: dict, node: str) -> bool:
        meta = pod["metadata"]

        def bind(p: dict) -> bool | None:
            if p["spec"].get("nodeName") or p["metadata"].get("deletionTimestamp"):
                return False
            p["spec"]["nodeName"] = node
            _set_condition(p, {"type": "PodScheduled", "status": "True"})
            return None

        bound = self.store.update("pods", meta["namespace"], meta["name"], bind, uid=meta["uid"])
        if bound is None or bound["spec"].get("nodeName") != node:
            return False
        self._unschedulable.pop(meta["uid"], None)
        self.store.record_event(
            bound, "Normal", "Scheduled", f"Successfully assigned {meta['namespace']}/{meta['name']} to {node}",
            COMPONENT, aggregate_key=(),
        )
        return True

    def _mark_unschedulable(self, pod: dict, message: str) -> None:
        meta = pod["metadata"]
        if self._unschedulable.get(meta["uid"]) != message:

            def mark(p: dict) -> None:
                _set_condition(p, {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                   "message": message})

            if self.store.update("pods", meta["namespace"], meta["name"], mark, uid=meta["uid"]) is None:
                return
            self._unschedulable[meta["uid"]] = message
        current = self.store.get("pods", meta["namespace"], meta["name"]) or pod
        self.store.record_event(current, "Warning", "FailedScheduling", message, COMPONENT, aggregate_key=())


def _set_condition(pod: dict, condition: dict) -> None:
    """Sets a pod condition, keeping lastTransitionTime when the status does not change."""
    conditions = pod.setdefault("status", {}).setdefault("conditions", [])
    condition = {"lastProbeTime": None, **condition}
    for i, existing in enumerate(conditions):
        if existing.get("type") == condition["type"]:
            same = existing.get("status") == condition["status"]
            condition["lastTransitionTime"] = existing.get("lastTransitionTime") if same else now_iso()
            conditions[i] = condition
            return
    condition["lastTransitionTime"] = now_iso()
    conditions.append(condition)


set_condition = _set_condition
