"""Kernels parked by the broker (hub mode): their variables saved to their user's own storage, then stopped.

The broker holds each kernel's connection (it started or handed it over); a park is one silent
execute request on the kernel's shell port (``kernel_calls.call_snapshot``; the kernel's
NetworkPolicy admits the broker's pod on shell and iopub) that runs ``snapshot.park`` into
``<c.Broker.home_mount_path>/.orion-snapshots/<user>/<id>``: the user's server root as the kernel
pod mounts it, where the user's server finds it (``<root>/.orion-snapshots/<user>/<id>``). The owner
is the pod's exact user (its annotation). Only a park the kernel answered complete stops the pod
(no grace: nothing is left to lose, and its vGPU goes to the head of the queue at once).

The kernel is the student's, and its ``orion_jupyter.snapshot`` may be theirs too: its answer is
data (checked, size-capped, time-limited), and a kernel that lies about it loses only its own
state. The broker cannot see users' storage, so it counts what it parked (per student, kept in its
state ConfigMap) rather than what is still there.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from jupyter_client.asynchronous import AsyncKernelClient
from traitlets import Unicode

from .. import snapshot
from ..k8s.view import pod_course, pod_request, pod_user
from ..kernel_calls import call_snapshot
from ..metrics import BROKER_PARK_SECONDS, BROKER_PARKED_BYTES, BROKER_PARKS
from ..names import ANNOTATION_KERNEL_SPEC, ANNOTATION_PARKED, LABEL_KERNEL_ID
from ..snapshot import SnapshotError
from ..wire import SIGNATURE_SCHEME, connection_info

log = logging.getLogger("orion_jupyter.broker")
MAX_ANSWER_BYTES = 4 << 20  # a kernel's answer larger than this drops the connection (then: timeout)
MAX_NAMES = 10_000  # names a park report may list
MAX_TEXT = 1_000  # characters of one name or reason
PARALLEL = 8  # parks at once when many kernels park (a course, maintenance)
# A park's refusals as metrics name them (a kernel's own word beyond these counts as "kernel": low cardinality).
REASONS = frozenset({"busy", "timeout", "kernel", "too_big", "disk", "location", "bad_id", "unsupported"})


@dataclass(frozen=True)
class KernelConnection:
    """How the broker reaches a kernel it started or handed over (its pod's IP, key and ports)."""

    ip: str
    key: str
    ports: tuple[int, ...]  # wire.PORT_NAMES order
    curve_serverkey: str = ""  # the kernel's CurveZMQ public key (Z85) when it encrypts


@dataclass(frozen=True)
class ParkLimits:
    home: str  # c.Broker.home_mount_path: the user's storage in kernel pods; empty: none, the broker only stops
    max_snapshot_bytes: int
    max_user_bytes: int
    timeout_seconds: float
    when_giving_back: bool = True  # idle culling and a used-up budget park (instructors park either way)


class ShellClient(AsyncKernelClient):
    """A client of one kernel's shell port with a key pair of its own (the kernel's public key as the server
    key when it encrypts) and a cap on what the kernel may send back."""

    curve_serverkey = Unicode("")

    def _create_connected_socket(self, channel: str, identity: bytes | None = None) -> Any:
        import zmq
        from jupyter_client.connect import channel_socket_types

        sock = self.context.socket(channel_socket_types[channel])
        sock.linger = 0
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_ANSWER_BYTES)
        if identity:
            sock.identity = identity
        if self.curve_serverkey:
            sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
            sock.curve_serverkey = self.curve_serverkey.encode()
        sock.connect(self._make_url(channel))
        return sock


async def ask_kernel(connection: KernelConnection, session_id: str, arguments: dict[str, Any],
                     timeout: float) -> dict[str, Any]:
    """``snapshot.park(**arguments)`` in the kernel, over its shell port alone; ``session_id`` names the
    request (the broker's iopub follower does not count its busy / idle as the user's activity)."""
    import zmq.asyncio

    info = connection_info(connection.ports, connection.key, ip=connection.ip)
    client = ShellClient(**{k: v for k, v in info.items() if k != "kernel_name"},
                         curve_serverkey=connection.curve_serverkey, context=zmq.asyncio.Context.instance())
    client.session.key = connection.key.encode()
    client.session.signature_scheme = SIGNATURE_SCHEME
    client.session.session = session_id
    client.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=False)
    try:
        return await call_snapshot(client, "park", arguments, timeout)
    finally:
        client.stop_channels()


def checked_report(answer: Any, snapshot_id: str) -> dict[str, Any]:
    """The kernel's park answer as the broker passes it on: the snapshot it was asked for, names and
    reasons as short texts, a byte count; anything else is no report (the kernel keeps running)."""
    answer = answer if isinstance(answer, dict) else {}
    saved, not_saved, size = answer.get("saved"), answer.get("not_saved"), answer.get("bytes")
    if answer.get("snapshot") != snapshot_id or not isinstance(saved, list) or not isinstance(not_saved, dict) \
            or len(saved) + len(not_saved) > MAX_NAMES or not all(isinstance(name, str) for name in saved) \
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in not_saved.items()) \
            or isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise SnapshotError("kernel", f"the kernel's answer is not a report of snapshot {snapshot_id}; "
                                      "nothing counts as parked and the kernel keeps running")
    return {"snapshot": snapshot_id, "saved": [name[:MAX_TEXT] for name in saved],
            "not_saved": {name[:MAX_TEXT]: reason[:MAX_TEXT] for name, reason in not_saved.items()}, "bytes": size}


Ask = Callable[[KernelConnection, str, dict[str, Any], float], Awaitable[dict[str, Any]]]


class BrokerParking:
    """Park one kernel, many, or give one back (park where it can, else stop with the reason).

    ``kernels`` is the culling target (``broker.idle.BrokerKernels``): who the broker follows, their
    connection and execution state; ``store`` a state section (``load()`` / ``save(state)``) for the
    per-student counts; ``ask`` the call into the kernel (tests: a fake kernel)."""

    def __init__(self, pods: Any, kernels: Any, limits: ParkLimits, store: Any | None = None,
                 ask: Ask = ask_kernel):
        self.pods = pods
        self.kernels = kernels
        self.limits = limits
        self.store = store
        self.ask = ask
        self.parking: dict[str, asyncio.Future] = {}  # kernel id -> its park under way (a second asker joins it)
        self.students: dict[str, dict[str, Any]] = {}  # user -> what the broker parked of theirs
        self._saving: asyncio.Lock | None = None

    # -- whether a kernel can be parked ----------------------------------------------------------
    def why_not(self, kernel_id: str) -> str | None:
        """Why the broker cannot park this kernel (None: it can)."""
        if not self.limits.home:
            return ("no user storage is mounted in kernel pods (c.Broker.home_mount_path), so the broker has "
                    "nowhere to park a kernel; it can only stop it")
        kernel = self.kernels.kernels.get(kernel_id)  # no resync: asked for every row of every view
        if kernel is None:
            return f'the broker follows no running kernel "{kernel_id[:80]}"'
        if kernel.connection is None:
            return ("the broker holds no connection to this kernel (a broker before a restart started it); "
                    "it can only be stopped")
        if not kernel.own_storage:
            return ("this kernel came from a warm pool: its pod started before anyone claimed it and mounts no "
                    "storage of its user's, so the broker has nowhere to park it; it can only be stopped")
        pod = self.pods.pod(kernel.pod)
        if pod is None or not pod_user(pod):
            return "the kernel's pod names no user"
        return None

    def parks_when_giving_back(self, kernel_id: str) -> bool:
        """Idle culling and a used-up budget park this kernel (rather than only stopping it)."""
        return self.limits.when_giving_back and self.why_not(kernel_id) is None

    # -- parking --------------------------------------------------------------------------------
    async def park(self, kernel_id: str, trigger: str, by: str) -> dict[str, Any]:
        """Save the kernel's variables into its user's storage, then stop it (``by``: who, as its stopped-by
        says); a SnapshotError (the kernel keeps running) says why not. A park of a kernel being parked
        already answers that park's outcome. ``trigger``: idle, budget, owner, instructor, course, maintenance."""
        running = self.parking.get(kernel_id)
        if running is None:
            running = self.parking[kernel_id] = asyncio.ensure_future(self._park(kernel_id, trigger, by))
            running.add_done_callback(lambda done: self._parked(kernel_id, done))
        return await asyncio.shield(running)

    def _parked(self, kernel_id: str, done: asyncio.Future) -> None:
        self.parking.pop(kernel_id, None)
        if not done.cancelled():
            done.exception()  # retrieved: every asker may have gone (a closed request)

    async def _park(self, kernel_id: str, trigger: str, by: str) -> dict[str, Any]:
        why = self.why_not(kernel_id)
        if why is not None:
            raise SnapshotError("unsupported", why)
        kernel = self.kernels.kernels[kernel_id]
        if kernel.execution_state == "busy":
            raise SnapshotError("busy", f"kernel {kernel_id} is running a cell; park it once it is idle "
                                        "(or interrupt it first)")
        pod = self.pods.pod(kernel.pod)
        owner, course = pod_user(pod), pod_course(pod)
        snapshot_id = snapshot.new_id()
        folder = "/".join([self.limits.home.rstrip("/"), snapshot.HOME_FOLDER, snapshot.user_part(owner), snapshot_id])
        info = {"kernel_id": kernel_id, "spec": (pod["metadata"].get("annotations") or {}).get(ANNOTATION_KERNEL_SPEC),
                "path": None, "vgpu": pod_request(pod), "parked_by": trigger}
        arguments = {"folder": folder, "owner": owner, "limit_bytes": self.limits.max_snapshot_bytes,
                     "user_limit_bytes": self.limits.max_user_bytes, "info": info}
        session_id = f"orion-broker-park-{uuid.uuid4()}"
        kernel.parking_session = session_id
        started, outcome = time.monotonic(), "error"
        try:
            report = checked_report(await self.ask(kernel.connection, session_id, arguments,
                                                   self.limits.timeout_seconds), snapshot_id)
            outcome = "ok"
        except SnapshotError as err:
            outcome = err.reason if err.reason in REASONS else "kernel"
            raise
        except Exception as err:  # noqa: BLE001 - the kernel unreachable or its answer unreadable: it keeps running
            outcome = "kernel"
            raise SnapshotError("kernel", f"the kernel could not be asked to park ({type(err).__name__}: "
                                          f"{str(err)[:200]}); it keeps running") from None
        finally:
            kernel.parking_session = ""
            BROKER_PARKS.labels(trigger, outcome).inc()
            BROKER_PARK_SECONDS.labels(outcome).observe(time.monotonic() - started)
        report["bytes"] = min(report["bytes"], self.limits.max_snapshot_bytes)  # more was never allowed: not believed
        BROKER_PARKED_BYTES.inc(report["bytes"])
        log.info("kernel %s of %s parked (%s) as snapshot %s: %d bytes, %d names saved, %d not", kernel_id, owner,
                 trigger, snapshot_id, report["bytes"], len(report["saved"]), len(report["not_saved"]))
        await self.pods.site.stop(kernel.pod, f"{by}, parked as snapshot {snapshot_id}: resume it "
                                              "to get its variables back", grace_seconds=0,
                                  annotations={ANNOTATION_PARKED: snapshot_id})
        self.kernels.forget(kernel_id)
        await self._count(owner, course, report)
        return {**report, "kernel_id": kernel_id, "user": owner, "course": course, "pod": kernel.pod,
                "stopped": True}

    async def park_many(self, kernel_ids: list[str], trigger: str, by: str) -> dict[str, Any]:
        """Park each (a few at once); what was parked and, for the others (still running), why not."""
        gate = asyncio.Semaphore(PARALLEL)

        async def one(kernel_id: str) -> dict[str, Any]:
            async with gate:
                try:
                    return await self.park(kernel_id, trigger, by)
                except SnapshotError as err:
                    kernel = self.kernels.kernels.get(kernel_id)
                    return {"kernel_id": kernel_id, "user": kernel.user if kernel else None, "reason": err.reason,
                            "message": str(err)}

        results = await asyncio.gather(*(one(kernel_id) for kernel_id in kernel_ids))
        return {"parked": [r for r in results if "snapshot" in r], "not_parked": [r for r in results if "reason" in r]}

    async def give_back(self, kernel_id: str, stopped_by: str, trigger: str) -> str | None:
        """Free a kernel's vGPUs for idle culling or a used-up budget: parked where it can be (the snapshot's
        id), else stopped with the reason, a failed park's included (None)."""
        if self.parks_when_giving_back(kernel_id):
            try:
                return (await self.park(kernel_id, trigger, stopped_by))["snapshot"]
            except SnapshotError as err:
                log.warning("kernel %s could not be parked (%s); stopping it instead", kernel_id, err)
                stopped_by = f"{stopped_by}; it could not be parked ({err})"
        await stop_kernel_pods(self.pods, kernel_id, stopped_by)
        self.kernels.forget(kernel_id)
        return None

    # -- what the class view counts ---------------------------------------------------------------
    async def _count(self, user: str, course: str, report: dict[str, Any]) -> None:
        row = self.students.setdefault(user, {"course": course, "snapshots": 0, "bytes": 0})
        row.update(course=course, snapshots=row["snapshots"] + 1, bytes=row["bytes"] + report["bytes"],
                   last=datetime.now(UTC).isoformat(timespec="seconds"), last_snapshot=report["snapshot"])
        await self.save()

    def rows(self) -> list[dict[str, Any]]:
        """Per student, what the broker parked of theirs: ``snapshots`` (count), ``bytes`` (the kernels' own
        count), ``last`` (when) and ``last_snapshot`` (its id). The broker cannot see users' storage: a
        snapshot since resumed or deleted still counts here."""
        return [{"user": user, **row} for user, row in sorted(self.students.items())]

    async def start(self) -> None:
        """Continue the counts an earlier broker kept."""
        state = await self.store.load() if self.store is not None else None
        students = (state or {}).get("students")
        if isinstance(students, dict):
            self.students = {user: row for user, row in students.items() if isinstance(row, dict)
                             and isinstance(row.get("snapshots"), int) and isinstance(row.get("bytes"), int)}

    async def save(self) -> None:
        if self.store is None:
            return
        if self._saving is None:
            self._saving = asyncio.Lock()
        async with self._saving:  # many parks at once: one write after another, never three conflicts
            await self.store.save({"students": self.students})


async def stop_kernel_pods(pods: Any, kernel_id: str, stopped_by: str) -> list[str]:
    """Stop every pod of a kernel id (the broker's normal stop path: it stays stopped, with the reason)."""
    names = [p["metadata"]["name"] for p in pods.cluster.kernel_pods()
             if (p["metadata"].get("labels") or {}).get(LABEL_KERNEL_ID) == kernel_id]
    for name in names:
        await pods.site.stop(name, stopped_by)
    return names


__all__ = ["BrokerParking", "KernelConnection", "ParkLimits", "ask_kernel", "checked_report",
           "stop_kernel_pods"]
