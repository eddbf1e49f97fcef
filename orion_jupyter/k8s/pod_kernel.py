"""A running kernel pod, Popen-like, answered from the shared watch cache of its KubeCluster."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from ..names import LABEL_KERNEL_ID, TERMINAL_PHASES
from .pods import container_exit_code, disruption_condition, end_reason, node_trouble

log = logging.getLogger("orion_jupyter.k8s")


class PodKernel:
    """A running kernel pod, Popen-like; every state question is answered from the watch cache."""

    def __init__(self, cluster: Any, name: str, ip: str):
        self.cluster = cluster
        self.name = name
        self.ip = ip
        self._exit_code: int | None = None
        self.reason = ""  # why the kernel ended, when it did so without being stopped (end_reason)
        self._stopping = False

    @property
    def namespace(self) -> str:
        return self.cluster.namespace

    def _node(self, pod: dict) -> dict | None:
        nodes = self.cluster.nodes
        node_name = (pod.get("spec") or {}).get("nodeName")
        return nodes.get("", node_name) if nodes is not None and node_name and nodes.lists else None

    def poll(self) -> int | None:
        if self._exit_code is not None:
            return self._exit_code
        pod = self.cluster.pod(self.name)
        if pod is None:  # deleted (by us, an operator, the pod GC): the kernel is gone
            last = self.cluster.pods.last_state(self.namespace, self.name)
            code = container_exit_code(last) if last is not None else None
            self._ended(1 if code is None else code, end_reason(last, None))
        elif (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
            code = container_exit_code(pod)
            self._ended(1 if code is None else code, end_reason(pod, self._node(pod)))
        else:  # still there, but Kubernetes is taking it away, or its node stopped answering
            node = self._node(pod)
            if disruption_condition(pod) is not None or node_trouble(node):
                self._ended(1, end_reason(pod, node))
        return self._exit_code

    def _ended(self, code: int, reason: str) -> None:
        self._exit_code = code
        if self._stopping or code == 0:  # stopped by us, or a kernel that was asked to shut down
            return
        self.reason = reason
        log.warning("kernel pod %s ended: %s", self.name, reason)
        pod = self.cluster.pod(self.name) or self.cluster.pods.last_state(self.namespace, self.name) or {}
        kernel_id = ((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_KERNEL_ID)
        if kernel_id:
            from ..progress import PROGRESS

            PROGRESS.record(kernel_id, f"the kernel died: {reason}", stage="ended", level="error")

    async def wait(self) -> int:
        if self.poll() is not None:
            return self._exit_code  # type: ignore[return-value]
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def on_change(kind: str, obj: dict) -> None:
            if not done.done() and self.poll() is not None:
                done.set_result(None)

        unsubscribe = [self.cluster.pods.subscribe(on_change, loop)]
        if self.cluster.nodes is not None:  # a node that stops being Ready ends its kernels
            unsubscribe.append(self.cluster.nodes.subscribe(on_change, loop))
        try:
            if self.poll() is None:
                await done
        finally:
            for stop in unsubscribe:
                stop()
        return self._exit_code  # type: ignore[return-value]

    async def send_signal(self, signum: int) -> None:
        if signum == 0:
            if self.poll() is not None:
                raise ProcessLookupError(f"kernel pod {self.name} is gone")
        elif signum == signal.SIGKILL:
            await self.kill()
        elif signum == signal.SIGTERM:
            await self.terminate(grace_seconds=5)
        else:
            log.warning("signal %s is not delivered to kernel pod %s (interrupts go by message)", signum, self.name)

    async def terminate(self, grace_seconds: int) -> None:
        self._stopping = True
        await self.cluster.delete_pod(self.name, grace_seconds)

    async def kill(self) -> None:
        self._stopping = True
        await self.cluster.delete_pod(self.name, 0)

    async def cleanup(self, restart: bool = False) -> None:
        await self.cluster.delete_kernel_objects(self.name)

    def info(self) -> dict[str, str]:
        return {"pod_name": self.name, "namespace": self.namespace, "pod_ip": self.ip}
