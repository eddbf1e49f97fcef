"""The class's kernel pods as admission reads them, kept up to date from the pod watch's events.

Every decision (a launch, each queue head tried on a release) asks what every live kernel pod holds, whether
a kernel id has a pod, and which are placed. Read from the watch cache, that is a scan of every pod (and a
JSON parse of each one's request) per question: with thousands of pods in the namespace, most of the broker's
CPU. Here each pod is read once per event instead. The broker hears of pod events through the index
(:meth:`KernelPodIndex.follow`), after the index has applied them: a release wakes the queue, and the queue's
head must then see the pod gone, whatever order the watch thread's callbacks reach the loop in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import NamedTuple

from ..core.ledger import Held, Holding
from ..k8s.cluster import KubeCluster
from ..k8s.view import pod_course, pod_request, pod_user
from ..k8s.watch import deliver
from ..names import LABEL_KERNEL_ID, LABEL_WARM, TERMINAL_PHASES

log = logging.getLogger("orion_jupyter.broker")


class Entry(NamedTuple):
    kernel_id: str
    holding: Holding | None  # None: ended, or warm (nobody's until claimed)
    placed: bool  # bound to a node


def entry_of(pod: dict) -> Entry:
    meta = pod["metadata"]
    labels = meta.get("labels") or {}
    kernel_id = labels.get(LABEL_KERNEL_ID, "")
    placed = bool((pod.get("spec") or {}).get("nodeName"))
    if (pod.get("status") or {}).get("phase") in TERMINAL_PHASES or LABEL_WARM in labels:
        return Entry(kernel_id, None, placed)
    request = pod_request(pod)
    vgpus = request.get("vgpus") or 0
    return Entry(kernel_id, Holding(kernel_id, pod_user(pod), pod_course(pod), vgpus,
                                    vgpus * (request.get("memory_mib") or 0)), placed)


class KernelPodIndex:
    """Pod name -> what it holds; kernel id -> its pods. Built on first use (on the running loop)."""

    def __init__(self, cluster: KubeCluster):
        self.cluster = cluster
        self.pods: dict[str, Entry] = {}
        self.kernels: dict[str, set[str]] = {}
        self.live = Held()  # by pod name: what every live, claimed kernel pod holds
        self._following = False
        self._then: list[Callable[[str, dict], None]] = []

    def follow(self, *then: Callable[[str, dict], None]) -> Callable[[], None]:
        """Follow the pod watch (on the running loop); each of ``then`` hears every later event after the index
        has applied it. Returns what stops ``then`` hearing."""
        self._follow()
        self._then.extend(then)

        def unfollow() -> None:
            for listener in then:
                if listener in self._then:
                    self._then.remove(listener)
        return unfollow

    def _follow(self) -> None:
        if self._following:
            return
        self._following = True
        # subscribed first, then read: an event between the two is applied again, to the same result
        self.cluster.pods.subscribe(self._on_event, asyncio.get_running_loop())
        for pod in self.cluster.kernel_pods():
            self.on_pod("ADDED", pod)

    def _on_event(self, kind: str, pod: dict) -> None:
        self.on_pod(kind, pod)
        deliver(list(self._then), kind, pod)  # one listener's fault neither stops the index nor the others

    def on_pod(self, kind: str, pod: dict) -> None:
        name = pod["metadata"]["name"]
        old = self.pods.pop(name, None)
        if old is not None:
            self.live.pop(name)
            names = self.kernels.get(old.kernel_id)
            if names is not None:
                names.discard(name)
                if not names:
                    del self.kernels[old.kernel_id]
        if kind == "DELETED":
            return
        entry = self.pods[name] = entry_of(pod)
        self.kernels.setdefault(entry.kernel_id, set()).add(name)
        if entry.holding is not None:
            self.live.put(name, entry.holding)

    # -- what admission asks -------------------------------------------------------------------------
    def holdings(self) -> Held:
        """The live index itself (read it on the loop, between awaits)."""
        self._follow()
        return self.live

    def pod_names(self, kernel_id: str) -> list[str]:
        self._follow()
        return sorted(self.kernels.get(kernel_id, ()))

    def placed(self, kernel_id: str) -> bool:
        self._follow()
        return any(self.pods[name].placed for name in self.kernels.get(kernel_id, ()))


__all__ = ["KernelPodIndex"]
