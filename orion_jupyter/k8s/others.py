"""The pods the pool counts beside this namespace's kernel pods: every other workload's, cluster-wide."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from kubernetes import client

from ..names import LABEL_MANAGED_BY, MANAGED_BY
from .pods import trim_foreign_pod
from .watch import SharedWatch


class OtherPods:
    """Every pod but this namespace's kernel pods (the pod watch's), as the pool counts them: two watches, so
    that the API server leaves this namespace's kernel pods out (each of their events was parsed here a second
    time only to be dropped): the other namespaces' pods, and this one's not managed by this project."""

    def __init__(self, core: client.CoreV1Api, namespace: str):
        running = "status.phase!=Succeeded,status.phase!=Failed"
        self.watches = [
            SharedWatch("pods/*", core.list_pod_for_all_namespaces, keep=trim_foreign_pod,
                        field_selector=f"metadata.namespace!={namespace},{running}"),
            SharedWatch(f"pods/{namespace} (not kernels)", core.list_namespaced_pod, namespace=namespace,
                        keep=trim_foreign_pod, field_selector=running,
                        label_selector=f"{LABEL_MANAGED_BY}!={MANAGED_BY}")]

    @property
    def lists(self) -> int:
        """How many times every one of them has listed (0: one has not yet)."""
        return min(watch.lists for watch in self.watches)

    @property
    def version(self) -> tuple[int, ...]:
        return tuple(watch.version for watch in self.watches)

    def items(self) -> list[dict]:
        return [pod for watch in self.watches for pod in watch.items()]

    def subscribe(self, listener: Callable[[str, dict], None], loop: asyncio.AbstractEventLoop | None = None
                  ) -> Callable[[], None]:
        unsubscribes = [watch.subscribe(listener, loop) for watch in self.watches]

        def unsubscribe() -> None:
            for each in unsubscribes:
                each()
        return unsubscribe

    def __len__(self) -> int:
        return sum(len(watch) for watch in self.watches)


__all__ = ["OtherPods"]
