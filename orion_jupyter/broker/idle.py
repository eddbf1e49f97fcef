"""Idle vGPU kernels given back in hub mode, decided by the broker from what the kernels themselves say.

Students' servers are not trusted to cull their own kernels, so the broker watches each kernel it
started or handed over: a SUB socket on the kernel's iopub (the broker knows the key; the kernel's
NetworkPolicy admits the broker on that one port), whose ``status`` messages give the execution
state and the last activity, as jupyter_server's kernel manager reads them. The rules are the
core's (``core/idle.py`` ``Culler``: the warning, keeps, exemptions), applied here per course
(``cull_idle_seconds``, ``cull_warning_seconds``, ``cull_max_keeps`` in ``c.Broker.courses``, else
the broker's defaults) to the broker's kernels, a ``CullTarget``; where the kernel can be parked
(``broker/parking.py``: the user's storage is mounted, the broker holds the kernel's connection)
culling parks it and then stops it. A kernel whose iopub the broker
cannot watch (one a previous broker started, or whose follower broke) is judged by its last reported
activity; a reported time is a student's word: it counts only with a zone and never later than now.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..core.idle import Culler, CullRules, KernelActivity, reported_time
from ..k8s.view import pod_course, pod_request, pod_user
from ..names import ANNOTATION_LAST_ACTIVITY, LABEL_KERNEL_ID
from ..progress import ProgressLog
from ..wire import SHELL_REQUESTS, iopub_port
from .parking import BrokerParking, KernelConnection
from .pods import ClassPods

log = logging.getLogger("orion_jupyter.broker")
# a kernel not answering yet is retried at growing intervals up to this (ZeroMQ's default: every 100 ms)
IOPUB_RECONNECT_MAX_MS = 5000
STOPPED_BY_IDLE = "idle culling (broker)"
EXECUTION_STATES = frozenset({"busy", "idle", "starting", "restarting", "autorestarting", "dead"})


@dataclass
class Observed:
    """One kernel as its iopub shows it (the attributes the Culler reads of a kernel manager)."""

    pod: str
    user: str
    course: str
    vgpus: int
    last_activity: datetime = field(default_factory=lambda: datetime.now(UTC))
    execution_state: str = "idle"
    watcher: asyncio.Task | None = None
    connection: KernelConnection | None = None  # known for kernels this broker started or handed over
    parking_session: str = ""  # the session of the broker's park request now: its busy / idle is not activity
    own_storage: bool = True  # its pod mounts its user's storage (not a pool's warm kernel): it can be parked


class BrokerKernels:
    """The class's claimed, running kernel pods as a ``core.idle.CullTarget``."""

    def __init__(self, pods: ClassPods, changed: Callable[[str], None]):
        self.pods = pods
        self.kernels: dict[str, Observed] = {}  # kernel id -> observed state
        self.changed = changed  # a kernel's culling fields may have changed (its owner's watch stream)
        self.parking: BrokerParking | None = None  # set by the broker: culling parks where it can

    # -- what the Culler reads ----------------------------------------------------------------
    def kernel_ids(self) -> list[str]:
        self._sync()
        return list(self.kernels)

    def get_kernel(self, kernel_id: str) -> Observed | None:
        if kernel_id not in self.kernels:  # a kernel of a previous broker: known at once, not at the next round
            self._sync()
        return self.kernels.get(kernel_id)

    def activity(self, kernel_id: str) -> KernelActivity | None:
        kernel = self.get_kernel(kernel_id)
        if kernel is None or not kernel.vgpus:
            return None
        return KernelActivity(kernel.last_activity, kernel.execution_state)

    def owner(self, kernel_id: str) -> str | None:
        kernel = self.kernels.get(kernel_id)
        return kernel.user if kernel else None

    def parks(self, kernel_id: str) -> bool:
        return self.parking is not None and self.parking.parks_when_giving_back(kernel_id)

    async def stop_idle(self, kernel_id: str) -> str | None:
        """Parked (the snapshot's id) where it can be, else stopped with the reason (a failed park's too)."""
        kernel = self.kernels.get(kernel_id)
        if kernel is None:
            return None
        if self.parking is not None:
            return await self.parking.give_back(kernel_id, STOPPED_BY_IDLE, "idle")
        await self.pods.site.stop(kernel.pod, STOPPED_BY_IDLE)
        self.forget(kernel_id)
        return None

    # -- keeping the table ----------------------------------------------------------------------
    def _sync(self) -> None:
        """The live, claimed kernel pods of the broker's cache; activity of unwatched ones from reports."""
        live = {}
        for pod in self.pods.kernel_pods():
            meta = pod["metadata"]
            labels = meta.get("labels") or {}
            if meta.get("deletionTimestamp") or (pod.get("status") or {}).get("phase") != "Running" \
                    or self.pods.is_warm(meta["name"]):
                continue
            kernel_id = labels.get(LABEL_KERNEL_ID, "")
            live[kernel_id] = pod
            kernel = self.kernels.get(kernel_id)
            if kernel is None:
                kernel = self.kernels[kernel_id] = Observed(meta["name"], pod_user(pod), pod_course(pod),
                                                            pod_request(pod).get("vgpus") or 0)
            if kernel.watcher is None:
                reported = (meta.get("annotations") or {}).get(ANNOTATION_LAST_ACTIVITY)
                moment = reported_time(reported) if reported else None
                if moment is not None:
                    kernel.last_activity = max(kernel.last_activity, moment)
        for kernel_id in [k for k in self.kernels if k not in live]:
            self.forget(kernel_id)

    def forget(self, kernel_id: str) -> None:
        kernel = self.kernels.pop(kernel_id, None)
        if kernel is not None and kernel.watcher is not None:
            kernel.watcher.cancel()

    def watch(self, kernel_id: str, pod: str, user: str, course: str, vgpus: int, ip: str, key: str,
              ports: tuple[int, ...], curve_serverkey: str = "", own_storage: bool = True) -> None:
        """Follow a kernel this broker started or handed over: its iopub status messages (over CurveZMQ with
        the kernel's public key when it encrypts); its connection is kept for parking it (``own_storage``:
        its pod mounts its user's storage, where a park writes)."""
        self.forget(kernel_id)
        kernel = self.kernels[kernel_id] = Observed(pod, user, course, vgpus,
                                                    connection=KernelConnection(ip, key, tuple(ports), curve_serverkey),
                                                    own_storage=own_storage)
        kernel.watcher = asyncio.ensure_future(self._follow(kernel_id, kernel, ip, key, iopub_port(ports),
                                                            curve_serverkey))

    @staticmethod
    def _observe(kernel: Observed, message: dict) -> bool:
        """What one signed iopub message says, read as jupyter_server reads it: only the kernel's answers to
        shell requests (a cell, a completion, a comm) are activity and set the execution state; a probe's
        on the control channel (a usage sample, kernel_info) is neither, nor the broker's own park request.
        True: the execution state changed."""
        parent_header = message.get("parent_header") or {}
        if kernel.parking_session and parent_header.get("session") == kernel.parking_session:
            return False
        parent = parent_header.get("msg_type")
        if parent in SHELL_REQUESTS or kernel.execution_state == "busy":
            kernel.last_activity = datetime.now(UTC)
        content = message.get("content")
        if message["header"].get("msg_type") != "status" or parent not in SHELL_REQUESTS \
                or not isinstance(content, dict) or content.get("execution_state") not in EXECUTION_STATES:
            return False
        changed = content["execution_state"] != kernel.execution_state
        kernel.execution_state = content["execution_state"]
        return changed

    async def _follow(self, kernel_id: str, kernel: Observed, ip: str, key: str, port: int,
                      curve_serverkey: str = "") -> None:
        import zmq
        import zmq.asyncio
        from jupyter_client.session import Session

        session = Session(key=key.encode(), signature_scheme="hmac-sha256")
        socket = zmq.asyncio.Context.instance().socket(zmq.SUB)
        socket.linger = 0
        socket.reconnect_ivl_max = IOPUB_RECONNECT_MAX_MS
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
                if self._observe(kernel, message):
                    self.changed(kernel_id)
        except asyncio.CancelledError:
            pass
        except Exception as err:  # noqa: BLE001 - a broken watch: judge by reports from now on
            log.warning("stopped following the activity of kernel %s: %s", kernel_id, err)
        finally:
            socket.close(0)
            kernel.watcher = None
            # judged by reports from now on: a state the follower last saw ("busy") would spare it forever
            kernel.execution_state = "idle"


def course_rules(defaults: CullRules, courses: dict[str, dict[str, Any]], kernels: BrokerKernels):
    """The rules of a kernel's course (its exact hub group), else the broker's defaults."""

    def rules(kernel_id: str) -> CullRules:
        kernel = kernels.kernels.get(kernel_id)
        course = courses.get(kernel.course) if kernel is not None and kernel.course else None
        if not course:
            return defaults
        return CullRules(float(course.get("cull_idle_seconds", defaults.idle_seconds)),
                         float(course.get("cull_warning_seconds", defaults.warning_seconds)),
                         int(course.get("cull_max_keeps", defaults.max_keeps)))

    return rules


def broker_culler(pods: ClassPods, defaults: CullRules, courses: dict[str, dict[str, Any]], interval_seconds: float,
                  changed: Callable[[str], None]) -> Culler:
    """The core's culling rules, per course, over the broker's kernels (``culler.target``)."""
    kernels = BrokerKernels(pods, changed)
    enabled = defaults.idle_seconds > 0 or any(float(q.get("cull_idle_seconds") or 0) > 0 for q in courses.values())
    return Culler(kernels, ProgressLog(), defaults, interval_seconds=interval_seconds,
                  rules=course_rules(defaults, courses, kernels), changed=changed, enabled=enabled, log=log)
