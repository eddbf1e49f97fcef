"""Warm kernels: kernel pods started before anyone asks, handed over on a launch of their shape.

The mechanism is the same for a direct-mode server (``c.OrionJupyter.warm_kernels``) and the broker
(``c.Broker.warm_pools`` and ``rosters``); each is a :class:`WarmHost`. A warm kernel is an ordinary
kernel pod (ipykernel listening, its key in its Secret), labelled ``orion-jupyter.io/warm``. A claim
hands it over: the kernel is told who claimed it (one silent ``execute_request``:
``ORION_JUPYTER_USER``, ``ORION_JUPYTER_KERNEL_ID`` and the notebook's folder), the host points it at
its user (NetworkPolicy, labels), and the kernel manager gets the kernel's key and ports
(jupyter_client takes the provisioner's connection info as the truth). Pools refill in the
background, but not while a launch waits in a queue: a freed vGPU goes to the queue first (save the
kernels an open booking keeps ready for its launches, ``booked``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from ..allocation import ENV_NAMES
from ..errors import KernelLaunchError
from ..launch import PodPlan
from ..metrics import WARM_CLAIMS, WARM_IDLE, WARM_MISSES
from ..names import ANNOTATION_CLAIMED, ANNOTATION_USER, ANNOTATION_WARM_SHAPE, LABEL_WARM, TERMINAL_PHASES, slug
from ..protocols import ClaimRequest
from ..vgpu import VGPURequest
from ..wire import PORT_NAMES, connection_info, fresh_ports
from .warm_config import Roster, WarmConfig, WarmShape, roster_label

log = logging.getLogger("orion_jupyter.warm")
CLAIM_CODE = (
    "def _orion_jupyter_claim(env, folder):\n"
    "    import os\n"
    "    os.environ.update(env)\n"
    "    if folder and os.path.isdir(folder):\n"
    "        os.chdir(folder)\n"
    "_orion_jupyter_claim({env!r}, {folder!r})\n"
    "del _orion_jupyter_claim\n"
)


class WarmHost(Protocol):
    """What warm kernels ask of the process that keeps them (a direct-mode server, or the broker).

    ``user_volumes`` / ``user_volume_mounts`` / ``home_mount_path``: the user's own storage, which a
    roster kernel starts with (KubeSpawner's templates; none in direct mode). ``start_pod`` answers
    (pod name, IP) once the kernel listens; ``hand_over`` makes the claimed pod the user's (its
    NetworkPolicy first, where the host has them, then its labels and annotations).
    """

    user_volumes: Sequence[Mapping[str, Any]]
    user_volume_mounts: Sequence[Mapping[str, Any]]
    home_mount_path: str

    def pod(self, name: str) -> dict | None: ...
    def kernel_pods(self) -> list[dict]: ...
    async def has_room(self, request: VGPURequest) -> bool: ...
    async def roster_members(self, course: str) -> list[str]: ...  # students of a hub group, instructors left out
    async def start_pod(self, plan: PodPlan) -> tuple[str, str]: ...
    async def hand_over(self, name: str, warm_kernel_id: str, ask: ClaimRequest, user: str, course: str,
                        ports: tuple[int, ...]) -> None: ...
    async def delete_kernel(self, name: str) -> None: ...


class LaunchLine(Protocol):
    """The launches waiting for a vGPU (``core.queue.LaunchQueue``): a warm kernel none of them can use
    gives its vGPU to them; a warm kernel ready may serve the head."""

    def waiting(self, user: str | None = None) -> list[Any]: ...
    def wake(self) -> None: ...


@dataclass
class WarmKernel:
    """A warm pod this process started (it knows the key); ``ready`` once the kernel listens."""

    name: str
    pool: str  # the LABEL_WARM value
    shape_key: str
    user: str  # "" for a pool's; the student for a roster's
    key: str
    ports: tuple[int, ...]
    kernel_id: str  # the warm id its pod carries until a claim
    vgpus: int = 0
    created: float = field(default_factory=time.monotonic)
    ip: str = ""
    ready: bool = False
    taken_by: str = ""  # the kernel id of the launch that reserved it


class WarmKernels:
    def __init__(self, host: WarmHost, config: WarmConfig, queue: LaunchLine | None = None):
        self.host = host
        self.config = config
        self.queue = queue  # None: launches never wait (direct mode)
        self.pools = config.pools
        self.rosters = config.rosters
        self.kernels: dict[str, WarmKernel] = {}  # pod name -> what this process started
        self.reserved: dict[str, str] = {}  # launch kernel id -> the warm pod it will claim
        self.prewarmed: set[tuple[str, datetime]] = set()  # (course, window start) already pre-warmed
        # kernels of a shape that open bookings want ready (core.bookings), started even while launches wait
        self.booked: Callable[[VGPURequest], int] = lambda request: 0
        self._starting: set[asyncio.Task] = set()
        self._ticking = False

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    def now(self) -> datetime:
        return self.config.now()

    # -- reserving one for a launch -------------------------------------------------------------
    def reserve(self, kernel_id: str, user: str, request: VGPURequest, image: str, server_name: str,
                own_only: bool = False, keep: int = 0) -> str | None:
        """Take a ready warm kernel of this shape for the launch ``kernel_id``: the user's roster kernel
        first (default server only: it holds that server's storage), else (unless ``own_only``) a pool's
        beyond the ``keep`` that stand for bookings; None: none ready."""
        key = WarmShape(request, image).key
        free = [k for k in self.kernels.values() if k.ready and not k.taken_by and k.shape_key == key]
        mine = [k for k in free if k.user and k.user == user and not server_name]
        pooled = [] if own_only else [k for k in free if not k.user][keep:]
        chosen = (mine or pooled or [None])[0]
        if chosen is None:
            if not own_only and any(p.shape.key == key and p.size for p in self.pools):
                WARM_MISSES.inc()
            return None
        chosen.taken_by = kernel_id
        self.reserved[kernel_id] = chosen.name
        return chosen.name

    def ready_of(self, request: VGPURequest) -> int:
        """A pool's unclaimed kernels of ``request``'s shape, ready or starting (any image)."""
        shapes = {pool.name for pool in self.pools if pool.shape.request == request}
        return sum(1 for k in self.kernels.values() if k.pool in shapes and not k.taken_by)

    def reserved_for(self, kernel_id: str) -> str | None:
        return self.reserved.get(kernel_id)

    def unreserve(self, kernel_id: str) -> None:
        name = self.reserved.pop(kernel_id, None)
        if name and name in self.kernels:
            self.kernels[name].taken_by = ""

    # -- handing one over -----------------------------------------------------------------------
    async def claim(self, ask: ClaimRequest, user: str, course: str) -> dict[str, Any]:
        """Hand the reserved warm kernel to ``user``'s launch ``ask``; the ready line's fields."""
        name = self.reserved.pop(ask.kernel_id)
        kernel = self.kernels.pop(name)
        WARM_IDLE.inc(time.monotonic() - kernel.created)
        WARM_CLAIMS.labels("roster" if kernel.user else "pool").inc()
        pool = next((p for p in self.pools if p.name == kernel.pool), None)
        # {username} as in the volumes' templates (a DNS-safe slug: a name cannot walk out of the folder)
        base = pool.workdir.format(username=slug(user, 63)) if pool and pool.workdir else self.host.home_mount_path
        folder = f"{base.rstrip('/')}/{ask.cwd}".rstrip("/") if base else ""
        env = {ENV_NAMES["user"]: user, ENV_NAMES["kernel_id"]: ask.kernel_id}
        try:
            await self._tell(kernel, env, folder)
            await self.host.hand_over(name, kernel.kernel_id, ask, user, course, kernel.ports)
        except (OSError, RuntimeError, TimeoutError, KernelLaunchError) as err:
            await self.host.delete_kernel(name)
            raise KernelLaunchError("api", f"the warm kernel {name} could not be handed over ({err}); "
                                           "try again") from None
        finally:
            self.wake()
        pod = self.host.pod(name) or {}
        return {"pod_name": name, "ip": kernel.ip, "namespace": (pod.get("metadata") or {}).get("namespace"),
                "node": (pod.get("spec") or {}).get("nodeName"), "claimed": True, "key": kernel.key,
                "ports": dict(zip(PORT_NAMES, kernel.ports, strict=True)),
                "own_storage": bool(kernel.user)}  # a roster kernel mounts its student's storage, a pool's nobody's

    async def _tell(self, kernel: WarmKernel, env: dict[str, str], folder: str) -> None:
        """One silent execute_request on the kernel's shell channel: who claimed it, and where it works."""
        import zmq.asyncio
        from jupyter_client.asynchronous import AsyncKernelClient

        client = AsyncKernelClient(context=zmq.asyncio.Context.instance())
        client.load_connection_info(connection_info(kernel.ports, kernel.key, ip=kernel.ip))
        client.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=False)
        try:
            reply = await client.execute(CLAIM_CODE.format(env=env, folder=folder), silent=True,
                                         store_history=False, reply=True, timeout=15)
        finally:
            client.stop_channels()
        if reply["content"].get("status") != "ok":
            raise RuntimeError(f"the kernel answered {reply['content'].get('ename', 'an error')}")

    # -- keeping the pools filled ---------------------------------------------------------------
    def wake(self) -> None:
        if self.enabled:
            asyncio.ensure_future(self.tick())

    async def tick(self, now: datetime | None = None) -> None:
        """Fill each pool to its size while its hours last, pre-warm rosters at their window's start,
        stop what is no longer wanted."""
        if self._ticking:
            return
        self._ticking = True
        try:
            now = now or self.now()
            self._forget_gone()
            queued = self.queue.waiting() if self.queue is not None else []
            waiting = bool(queued)
            wanted_shapes = {WarmShape(w.request, w.image).key for w in queued}
            booked_shapes: set[VGPURequest] = set()
            for pool in self.pools:
                have = [k for k in self.kernels.values() if k.pool == pool.name and not k.taken_by]
                booked = 0 if pool.shape.request in booked_shapes else self.booked(pool.shape.request)
                booked_shapes.add(pool.shape.request)  # the first pool of a shape keeps the bookings' kernels
                want = (pool.size if pool.window.opened_at(now) else 0) + booked
                if waiting and pool.shape.key not in wanted_shapes:
                    want = booked  # launches wait: a warm kernel none of them can use gives its vGPU to the queue
                if len(have) > want:
                    for kernel in sorted(have, key=lambda k: k.ready)[:len(have) - want]:
                        await self.stop_kernel(kernel)
                elif len(have) < (booked if waiting else want):  # bookings' capacity is theirs, queue or not
                    for _ in range((booked if waiting else want) - len(have)):
                        if not await self.host.has_room(pool.shape.request):
                            break
                        self._start(PodPlan(**self._plan(pool.shape, "", pool.name), volumes=pool.volumes,
                                            volume_mounts=pool.volume_mounts))
            for roster in self.rosters:
                await self._roster_tick(roster, now)
        finally:
            self._ticking = False

    async def _roster_tick(self, roster: Roster, now: datetime) -> None:
        opened = roster.window.opened_at(now)
        label = roster_label(roster.course)
        if opened is None or now >= opened + timedelta(seconds=roster.grace):
            for kernel in [k for k in self.kernels.values() if k.pool == label and not k.taken_by]:
                log.info("stopping the unclaimed roster kernel %s of %s", kernel.name, kernel.user)
                await self.stop_kernel(kernel)
            return
        if (roster.course, opened) in self.prewarmed:
            return
        self.prewarmed.add((roster.course, opened))
        try:
            members = await self.host.roster_members(roster.course)
        except Exception as err:  # noqa: BLE001 - the hub down: no pre-warm this window, launches start cold
            log.warning("cannot read group %s from the hub (%s); no roster pre-warm", roster.course, err)
            return
        started, served = 0, self._served_since(opened)
        for user in members:
            if user in served or any(k.user == user for k in self.kernels.values()):
                continue
            if not await self.host.has_room(roster.shape.request):
                log.warning("no room to pre-warm more kernels for course %s: %d of %d students get one; the "
                            "others start theirs when they launch", roster.course, started, len(members))
                break
            started += 1
            self._start(PodPlan(**self._plan(roster.shape, user, label), course=roster.course,
                                volumes=self.host.user_volumes, volume_mounts=self.host.user_volume_mounts,
                                working_dir=self.host.home_mount_path or None))
        log.info("pre-warming %d kernels for course %s", started, roster.course)

    def _served_since(self, opened: datetime) -> set[str]:
        """Users with a live kernel started or claimed since the window opened: a restarted process (whose
        ``prewarmed`` is empty) must not pre-warm a second kernel for them."""
        served = set()
        for pod in self.host.kernel_pods():
            meta = pod["metadata"]
            annotations = meta.get("annotations") or {}
            if LABEL_WARM in (meta.get("labels") or {}) or meta.get("deletionTimestamp") \
                    or (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
                continue
            since = annotations.get(ANNOTATION_CLAIMED) or meta.get("creationTimestamp") or ""
            try:
                moment = datetime.fromisoformat(str(since).replace("Z", "+00:00"))
            except ValueError:
                continue
            if moment.tzinfo is not None and moment >= opened:
                served.add(annotations.get(ANNOTATION_USER, ""))
        return served

    def _plan(self, shape: WarmShape, user: str, pool: str) -> dict[str, Any]:
        ports = fresh_ports()
        return {"kernel_id": str(uuid.uuid4()), "user": user, "request": shape.request, "image": shape.image,
                "key": secrets.token_hex(16), "ports": ports, "warm": pool,
                "annotations": {ANNOTATION_WARM_SHAPE: shape.key}}

    def _start(self, plan: PodPlan) -> None:
        placeholder = WarmKernel(f"starting-{plan.kernel_id}", plan.warm or "", plan.annotations[ANNOTATION_WARM_SHAPE],
                                 plan.user, plan.key, plan.ports, plan.kernel_id, vgpus=plan.request.count)
        self.kernels[placeholder.name] = placeholder  # counts toward the pool, and against the room, while it starts
        task = asyncio.ensure_future(self._run_start(plan, placeholder))
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    def starting_vgpus(self) -> int:
        """vGPUs of warm kernels being started (not yet placed: the pool does not count them yet)."""
        return sum(k.vgpus for k in self.kernels.values() if not k.ready)

    async def _run_start(self, plan: PodPlan, placeholder: WarmKernel) -> None:
        try:
            name, ip = await self.host.start_pod(plan)
        except KernelLaunchError as err:
            log.warning("a warm kernel of %s did not start: %s", plan.warm, err)
            return
        finally:
            self.kernels.pop(placeholder.name, None)
        placeholder.name, placeholder.ip, placeholder.ready = name, ip, True
        self.kernels[name] = placeholder
        if self.queue is not None:
            self.queue.wake()  # a waiting launch of this shape may take it now
        log.info("warm kernel %s ready (%s%s)", name, plan.warm, f", for {plan.user}" if plan.user else "")

    async def stop_kernel(self, kernel: WarmKernel) -> None:
        """Stop an unclaimed warm kernel (one reserved or claimed meanwhile is left alone)."""
        if kernel.taken_by or self.kernels.get(kernel.name) is not kernel:
            return
        self.kernels.pop(kernel.name, None)
        if kernel.ready:
            WARM_IDLE.inc(time.monotonic() - kernel.created)
            await self.host.delete_kernel(kernel.name)

    async def close(self) -> None:
        """Stop starting warm kernels and the unclaimed ready ones (the pool's owner goes away)."""
        for task in list(self._starting):
            task.cancel()  # the launch deletes what it created
        for task in list(self._starting):
            try:
                await task
            except BaseException:  # noqa: BLE001, S110 - cancelled on purpose
                pass
        for kernel in list(self.kernels.values()):
            if not kernel.taken_by:
                await self.stop_kernel(kernel)

    def _forget_gone(self) -> None:
        """Warm pods that went (deleted by someone, evicted, the node lost) are no longer offered."""
        for name, kernel in list(self.kernels.items()):
            if not kernel.ready:
                continue
            pod = self.host.pod(name)
            if pod is None or (pod.get("status") or {}).get("phase") in TERMINAL_PHASES \
                    or pod["metadata"].get("deletionTimestamp"):
                self.kernels.pop(name, None)

    async def adopt_or_clean(self) -> None:
        """At start: warm pods of these pools a previous process left are stopped (their keys went
        with it); the pools refill."""
        mine = {p.name for p in self.pools} | {roster_label(r.course) for r in self.rosters}
        for pod in self.host.kernel_pods():
            if (pod["metadata"].get("labels") or {}).get(LABEL_WARM) in mine:
                await self.host.delete_kernel(pod["metadata"]["name"])

    def summary(self) -> dict[str, Any]:
        """What the pool view shows apart: per pool (and roster), ready and starting warm kernels."""
        out: dict[str, Any] = {}
        for kernel in self.kernels.values():
            entry = out.setdefault(kernel.pool, {"ready": 0, "starting": 0, "reserved": 0})
            entry["reserved" if kernel.taken_by else "ready" if kernel.ready else "starting"] += 1
        for pool in self.pools:
            out.setdefault(pool.name, {"ready": 0, "starting": 0, "reserved": 0})["size"] = pool.size
        return out
