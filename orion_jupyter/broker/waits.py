"""The broker's wait estimates (``core.estimates``) from what it knows: its kernel pods (how long each has
run), their idle cull times, their budgets running out, and the lifetimes of the kernels that ended, per
course and shape. A queue place then shows ``wait_p50_seconds``, ``wait_p80_seconds`` and ``wait``
("about 6 min, 80 % within 11 min", or "unknown"), scaled by how the course's earlier waits compared with
what they were told (``core.estimates.Calibration``)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from ..core.budgets import Budgets
from ..core.estimates import Calibration, Draws, Running, WaitEstimator, needed, wait_text
from ..core.ledger import Holding
from ..core.queue import Waiting
from ..k8s.view import pod_course, pod_request
from ..names import LABEL_KERNEL_ID, LABEL_WARM, TERMINAL_PHASES
from .pods import ClassPods

REFRESH_SECONDS = 5.0  # the releases ahead are drawn again at most this often (per course)


def _started(pod: dict) -> float | None:
    stamp = (pod.get("status") or {}).get("startTime")
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp() if stamp else None
    except ValueError:
        return None


def shape_of(pod: dict) -> str:
    request = pod_request(pod)
    return f"{request.get('vgpus') or 0}x{request.get('memory_mib') or 0}"


class BrokerWaits:
    """Feeds a :class:`WaitEstimator` from the pod cache; ``describe_more`` is the queue's hook."""

    def __init__(self, pods: ClassPods, cull_at: Callable[[str], datetime | None], budgets: Budgets | None,
                 course_quota: Callable[[str], bool], estimator: WaitEstimator | None = None,
                 clock: Callable[[], float] = time.time, weight: Callable[[str], float] = lambda course: 1.0,
                 waiting_courses: Callable[[], Iterable[str]] = tuple):
        self.pods = pods
        self.cull_at = cull_at
        self.budgets = budgets
        self.course_quota = course_quota  # a course with a vGPU quota waits for its own releases
        self.estimator = estimator or WaitEstimator()
        self.clock = clock
        self.weight = weight  # a course's fair-share weight (1 without fair share: the lines take turns)
        self.waiting_courses = waiting_courses  # the courses with launches waiting now
        self._drawn: dict[str, tuple[float, Draws]] = {}  # per scope (a course, or "" for the pool)
        self._ended: OrderedDict[str, None] = OrderedDict()  # uids already observed (DELETED follows Succeeded)
        self.calibration = Calibration()
        # kernel id -> (course, joined at, the model's p50 then): compared with the real wait once its pod exists
        self._told: OrderedDict[str, tuple[str, float, float | None]] = OrderedDict()

    def on_pod(self, kind: str, pod: dict) -> None:
        """A waiting launch's pod exists: its real wait, for the calibration. A claimed kernel pod ended: one
        more observed lifetime of its course and shape."""
        meta = pod["metadata"]
        told = self._told.pop((meta.get("labels") or {}).get(LABEL_KERNEL_ID, ""), None)
        if told is not None and kind != "DELETED":
            course, joined, p50 = told
            self.calibration.observe(course, p50, max(self.clock() - joined, 0.0))
        ended = kind == "DELETED" or (pod.get("status") or {}).get("phase") in TERMINAL_PHASES
        started = _started(pod)
        if not ended or started is None or LABEL_WARM in (meta.get("labels") or {}) or meta.get("uid") in self._ended:
            return
        self._ended[meta.get("uid")] = None
        while len(self._ended) > 1000:
            self._ended.popitem(last=False)
        self.estimator.observe(pod_course(pod), shape_of(pod), max(self.clock() - started, 0.0))

    def running(self, course: str) -> list[Running]:
        now, out = self.clock(), []
        for pod in self.pods.cluster.kernel_pods():
            meta = pod["metadata"]
            started = _started(pod)
            if started is None or (pod.get("status") or {}).get("phase") in TERMINAL_PHASES \
                    or LABEL_WARM in (meta.get("labels") or {}) or (course and pod_course(pod) != course):
                continue
            kernel_id = (meta.get("labels") or {}).get(LABEL_KERNEL_ID, "")
            request = pod_request(pod)
            vgpus = request.get("vgpus") or 0
            ends = [(at.timestamp() - now) for at in [self.cull_at(kernel_id)] if at is not None]
            if self.budgets is not None:
                holding = Holding(kernel_id, "", pod_course(pod), vgpus, vgpus * (request.get("memory_mib") or 0))
                out_in = self.budgets.runs_out_in(holding)
                ends += [out_in] if out_in is not None else []
            out.append(Running(vgpus, now - started, pod_course(pod), shape_of(pod), max(min(ends), 0.0)
                               if ends else None))
        return out

    def describe_more(self, waiting: Waiting, ahead: list[Waiting]) -> dict[str, Any]:
        """The estimate of ``waiting``, with ``ahead`` (itself included) before it in its line."""
        scope = waiting.course if self.course_quota(waiting.course) else ""
        now = self.clock()
        drawn_at, draws = self._drawn.get(scope, (0.0, None))
        if draws is None or now - drawn_at > REFRESH_SECONDS:
            draws = self.estimator.draw(self.running(scope))
            self._drawn[scope] = (now, draws)
        vgpus = sum(w.holding.vgpus for w in ahead)
        if not scope:  # on a shared pool, the other courses waiting take their share of the releases
            vgpus = needed(vgpus, self.weight(waiting.course),
                           [self.weight(c) for c in {*self.waiting_courses(), waiting.course}])
        estimate = draws.estimate(vgpus)
        if waiting.kernel_id not in self._told:  # what it was told when it joined
            self._told[waiting.kernel_id] = (waiting.course, self.clock(), estimate["p50"])
            while len(self._told) > 1000:  # launches cancelled while waiting never get a pod
                self._told.popitem(last=False)
        estimate = self.calibration.adjust(waiting.course, estimate)
        return {"wait_p50_seconds": estimate["p50"], "wait_p80_seconds": estimate["p80"], "wait": wait_text(estimate)}


__all__ = ["BrokerWaits"]
