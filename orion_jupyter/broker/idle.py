"""Idle vGPU kernels given back in hub mode, decided by the broker from what the kernels themselves say.

Students' servers are not trusted to cull their own kernels, so the broker watches each kernel it
started or handed over: a SUB socket on the kernel's iopub (the broker knows the key; the kernel's
NetworkPolicy admits the broker on that one port), whose ``status`` messages give the execution
state and the last activity, as jupyter_server's kernel manager reads them. The rules are the
server's (``server/culling.py`` ``Culler``: the warning, keeps, exemptions), applied here per course
(``cull_idle_seconds``, ``cull_warning_seconds``, ``cull_max_keeps`` in ``c.Broker.courses``, else
the broker's defaults) to the broker's kernels through a small kernel-manager-shaped adapter. A
kernel whose iopub the broker cannot watch (one a previous broker started) is judged by its
last reported activity.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..k8s.view import pod_request, pod_user
from ..names import ANNOTATION_LAST_ACTIVITY, ANNOTATION_STOPPED_BY, LABEL_COURSE, LABEL_KERNEL_ID
from ..progress import ProgressLog
from ..server.culling import Culler
from .launcher import PORT_NAMES

log = logging.getLogger("orion_jupyter.broker")
STOPPED_BY_IDLE = "idle culling (broker)"


@dataclass
class Observed:
    """One kernel as its iopub shows it (the attributes the Culler reads of a kernel manager)."""

    pod: str
    user: str
    course: str
    vgpus: int
    last_activity: datetime = field(default_factory=lambda: datetime.now(UTC))
    execution_state: str = "idle"
    ready: Any = None  # the Culler treats None as "started"
    watcher: asyncio.Task | None = None


class _Request:
    def __init__(self, count: int):
        self.count = count


class _Provisioner:
    def __init__(self, count: int):
        self.request = _Request(count)


class BrokerKernels:
    """The broker's kernels shaped as the Culler expects ``VGPUKernels`` and its kernel manager."""

    def __init__(self, broker: Any, changed: Callable[[str], None]):
        self.broker = broker
        self.kernel_manager = self
        self.kernels: dict[str, Observed] = {}  # kernel id -> observed state
        self.changed = changed  # a kernel's culling fields may have changed (its owner's watch stream)

    # -- what the Culler reads ----------------------------------------------------------------
    def list_kernel_ids(self) -> list[str]:
        self._sync()
        return list(self.kernels)

    def get_kernel(self, kernel_id: str) -> Observed | None:
        return self.kernels.get(kernel_id)

    def provisioner(self, kernel_id: str) -> _Provisioner | None:
        kernel = self.kernels.get(kernel_id)
        return _Provisioner(kernel.vgpus) if kernel else None

    def kernel_user(self, kernel_id: str) -> str | None:
        kernel = self.kernels.get(kernel_id)
        return kernel.user if kernel else None

    async def shutdown_kernel(self, kernel_id: str) -> None:
        kernel = self.kernels.get(kernel_id)
        if kernel is None:
            return
        await self.broker.cluster.annotate_pod(kernel.pod, {ANNOTATION_STOPPED_BY: STOPPED_BY_IDLE})
        await self.broker.delete_kernel(kernel.pod, grace_seconds=5)
        self._forget(kernel_id)

    # -- keeping the table ----------------------------------------------------------------------
    def _sync(self) -> None:
        """The live, claimed kernel pods of the broker's cache; activity of unwatched ones from reports."""
        live = {}
        for pod in self.broker.cluster.kernel_pods():
            meta = pod["metadata"]
            labels = meta.get("labels") or {}
            if meta.get("deletionTimestamp") or (pod.get("status") or {}).get("phase") != "Running" \
                    or meta["name"] in self.broker.warm.kernels:
                continue
            kernel_id = labels.get(LABEL_KERNEL_ID, "")
            live[kernel_id] = pod
            kernel = self.kernels.get(kernel_id)
            if kernel is None:
                kernel = self.kernels[kernel_id] = Observed(meta["name"], pod_user(pod), labels.get(LABEL_COURSE, ""),
                                                            pod_request(pod).get("vgpus") or 0)
            if kernel.watcher is None:
                reported = (meta.get("annotations") or {}).get(ANNOTATION_LAST_ACTIVITY)
                if reported:
                    try:
                        kernel.last_activity = max(kernel.last_activity, datetime.fromisoformat(
                            reported.replace("Z", "+00:00")))
                    except ValueError:
                        pass
        for kernel_id in [k for k in self.kernels if k not in live]:
            self._forget(kernel_id)

    def _forget(self, kernel_id: str) -> None:
        kernel = self.kernels.pop(kernel_id, None)
        if kernel is not None and kernel.watcher is not None:
            kernel.watcher.cancel()

    def watch(self, kernel_id: str, pod: str, user: str, course: str, vgpus: int, ip: str, key: str,
              ports: tuple[int, ...], curve_serverkey: str = "") -> None:
        """Follow a kernel this broker started or handed over: its iopub status messages (over CurveZMQ with
        the kernel's public key when it encrypts)."""
        self._forget(kernel_id)
        kernel = self.kernels[kernel_id] = Observed(pod, user, course, vgpus)
        kernel.watcher = asyncio.ensure_future(self._follow(kernel_id, kernel, ip, key,
                                                            dict(zip(PORT_NAMES, ports, strict=True))["iopub_port"],
                                                            curve_serverkey))

    async def _follow(self, kernel_id: str, kernel: Observed, ip: str, key: str, port: int,
                      curve_serverkey: str = "") -> None:
        import zmq
        import zmq.asyncio
        from jupyter_client.session import Session

        session = Session(key=key.encode(), signature_scheme="hmac-sha256")
        socket = zmq.asyncio.Context.instance().socket(zmq.SUB)
        socket.linger = 0
        socket.setsockopt(zmq.SUBSCRIBE, b"")
        if curve_serverkey:
            socket.curve_publickey, socket.curve_secretkey = zmq.curve_keypair()
            socket.curve_serverkey = curve_serverkey.encode()
        socket.connect(f"tcp://{ip}:{port}")
        try:
            while True:
                frames = await socket.recv_multipart()
                try:
                    _, parts = session.feed_identities(frames)
                    message = session.deserialize(parts)
                except ValueError:
                    continue  # not signed with the kernel's key: not the kernel speaking
                kernel.last_activity = datetime.now(UTC)
                if message["header"]["msg_type"] == "status":
                    state = message["content"].get("execution_state", "")
                    if state and state != kernel.execution_state:
                        kernel.execution_state = state
                        self.changed(kernel_id)
        except asyncio.CancelledError:
            pass
        except Exception as err:  # noqa: BLE001 - a broken watch: judge by reports from now on
            log.warning("stopped following the activity of kernel %s: %s", kernel_id, err)
        finally:
            socket.close(0)
            kernel.watcher = None


class BrokerCuller(Culler):
    """The server's culling rules, per course, over the broker's kernels."""

    def __init__(self, broker: Any, changed: Callable[[str], None]):
        self.broker = broker
        self.changed = changed
        super().__init__(BrokerKernels(broker, changed), ProgressLog(), idle_seconds=broker.cull_idle_seconds,
                         warning_seconds=broker.cull_warning_seconds, max_keeps=broker.cull_max_keeps,
                         interval_seconds=broker.cull_interval_seconds, log=log)

    def _course(self, kernel_id: str) -> dict[str, Any]:
        kernel = self.kernels.kernels.get(kernel_id)
        if kernel is None:
            return {}
        return next((q for group, q in self.broker.courses.items() if kernel.course and
                     self.broker.course_label(group) == kernel.course), {})

    @property
    def enabled(self) -> bool:
        return self.idle_seconds > 0 or any(float(q.get("cull_idle_seconds") or 0) > 0
                                            for q in self.broker.courses.values())

    def idle_seconds_of(self, kernel_id: str) -> float:
        return float(self._course(kernel_id).get("cull_idle_seconds", self.idle_seconds))

    def warning_seconds_of(self, kernel_id: str) -> float:
        return float(self._course(kernel_id).get("cull_warning_seconds", self.warning_seconds))

    def max_keeps_of(self, kernel_id: str) -> int:
        return int(self._course(kernel_id).get("cull_max_keeps", self.max_keeps))

    def keep(self, kernel_id: str, now: datetime | None = None) -> dict[str, Any]:
        fields = super().keep(kernel_id, now)
        self.changed(kernel_id)
        return fields

    def exempt(self, kernel_id: str, flag: bool) -> dict[str, Any]:
        fields = super().exempt(kernel_id, flag)
        self.changed(kernel_id)
        return fields

    def _warn(self, kernel_id: str, at: datetime, now: datetime) -> None:
        super()._warn(kernel_id, at, now)
        self.changed(kernel_id)
