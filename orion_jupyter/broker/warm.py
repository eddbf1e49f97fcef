"""Warm kernels: kernel pods the broker starts before anyone asks, handed over on a launch.

A pod's GPU and volumes are fixed when it starts, so warm kernels come in shapes:

* a **pool** (``c.Broker.warm_pools``): N kernels of one request and image during its hours, with
  the pool's own volumes (none by default; a class-shared volume, never a student's own);
* a **roster** (``c.Broker.rosters``): at a course's window start, one kernel per student of its
  hub group, with that student's storage; those not claimed within the grace period are stopped.

A warm kernel is an ordinary kernel pod (ipykernel listening, its key in its Secret), labelled
``orion-jupyter.io/warm`` and reachable only from the broker. A claim hands it over: the broker
tells the kernel who claimed it (one silent ``execute_request``: ``ORION_JUPYTER_USER``,
``ORION_JUPYTER_KERNEL_ID`` and the notebook's folder), points its NetworkPolicy at that user's
server, relabels the pod to the user and kernel, and answers the kernel manager with the kernel's
key and ports (jupyter_client takes the provisioner's connection info as the truth). Pools refill
in the background, but not while a launch waits in a queue: a freed vGPU goes to the queue first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import time as clock
from typing import Any
from zoneinfo import ZoneInfo

from kubernetes.client.exceptions import ApiException
from prometheus_client import Counter

from ..allocation import ENV_NAMES
from ..errors import KernelLaunchError
from ..k8s.manifests import slug
from ..names import (
    ANNOTATION_KERNEL_SPEC,
    ANNOTATION_SERVER,
    ANNOTATION_USER,
    LABEL_COURSE,
    LABEL_KERNEL_ID,
    LABEL_USER,
    TERMINAL_PHASES,
)
from ..vgpu import VGPURequest, VGPURequestError
from .handlers import REGISTRY
from .launcher import ANNOTATION_WARM_SHAPE, LABEL_WARM, PORT_NAMES, PodPlan, kernel_policy, start_kernel_pod

log = logging.getLogger("orion_jupyter.broker")
CLAIMS = Counter("orion_jupyter_broker_warm_claims", "Launches served by a warm kernel, by kind (pool, roster).",
                 ["kind"], registry=REGISTRY)
MISSES = Counter("orion_jupyter_broker_warm_misses",
                 "Launches of a warm pool's shape that found no warm kernel ready (a pod started cold).",
                 registry=REGISTRY)
IDLE = Counter("orion_jupyter_broker_warm_idle_seconds",
               "Seconds warm kernels held a vGPU unclaimed (their cost), counted when claimed or stopped.",
               registry=REGISTRY)
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ANNOTATION_CLAIMED = "orion-jupyter.io/claimed-at"
CLAIM_CODE = (
    "def _orion_jupyter_claim(env, folder):\n"
    "    import os\n"
    "    os.environ.update(env)\n"
    "    if folder and os.path.isdir(folder):\n"
    "        os.chdir(folder)\n"
    "_orion_jupyter_claim({env!r}, {folder!r})\n"
    "del _orion_jupyter_claim\n"
)


def _clock(text: Any, where: str) -> clock:
    try:
        return clock.fromisoformat(str(text))
    except ValueError:
        raise VGPURequestError(where, text, f'{where} must be a time of day like "09:00", not {text!r}') from None


@dataclass(frozen=True)
class Window:
    """Lab hours: the days (0 = Monday) and a start and end time of day; no hours: always open."""

    days: frozenset[int] = frozenset(range(7))
    start: clock = clock(0)
    end: clock | None = None  # None: midnight

    @classmethod
    def parse(cls, spec: Mapping[str, Any] | None, where: str) -> Window:
        if not spec:
            return cls()
        days = spec.get("days", "mon-sun")
        if isinstance(days, str):
            first, _, last = days.lower().partition("-")
            if first[:3] not in DAYS or (last and last[:3] not in DAYS):
                raise VGPURequestError(f"{where}.days", days, f'{where}.days must be like "mon-fri" or ["mon", "wed"]')
            a, b = DAYS.index(first[:3]), DAYS.index((last or first)[:3])
            picked = frozenset(range(a, b + 1)) if a <= b else frozenset([*range(a, 7), *range(0, b + 1)])
        else:
            if not all(str(d).lower()[:3] in DAYS for d in days):
                raise VGPURequestError(f"{where}.days", days, f'{where}.days must name days like "mon"')
            picked = frozenset(DAYS.index(str(d).lower()[:3]) for d in days)
        end = _clock(spec["end"], f"{where}.end") if spec.get("end") else None
        return cls(picked, _clock(spec.get("start", "00:00"), f"{where}.start"), end)

    def opened_at(self, now: datetime) -> datetime | None:
        """When the window that ``now`` is in opened (None: closed now)."""
        start = now.replace(hour=self.start.hour, minute=self.start.minute, second=self.start.second, microsecond=0)
        end = start.replace(hour=self.end.hour, minute=self.end.minute, second=self.end.second) if self.end else \
            start.replace(hour=0, minute=0, second=0) + timedelta(days=1)
        if now.weekday() in self.days and start <= now < end:
            return start
        return None


@dataclass(frozen=True)
class WarmShape:
    """What a warm kernel is: its request and image (a launch of the same takes it)."""

    request: VGPURequest
    image: str

    @property
    def key(self) -> str:
        return json.dumps([self.request.as_dict(), self.image], sort_keys=True)


@dataclass(frozen=True)
class Pool:
    name: str
    shape: WarmShape
    size: int
    window: Window
    volumes: tuple = ()
    volume_mounts: tuple = ()
    workdir: str = ""  # where a claimed kernel starts: {username} templated, then the notebook's folder


@dataclass(frozen=True)
class Roster:
    course: str  # the hub group
    shape: WarmShape
    window: Window
    grace: float  # seconds after the window opens that unclaimed kernels are kept


@dataclass
class WarmKernel:
    """A warm pod this broker started (it knows the key); ``ready`` once the kernel listens."""

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


@dataclass(frozen=True)
class ClaimRequest:
    """What a claim needs of the launch it serves (the broker's LaunchBody has the same fields)."""

    kernel_id: str
    cwd: str = ""
    server_name: str | None = None
    kernel_spec_name: str = ""


def _request(spec: Mapping[str, Any]) -> VGPURequest:
    return VGPURequest.from_mapping({k: spec[k] for k in ("vgpus", "memory", "compute") if k in spec})


POOL_KEYS = {"name", "vgpus", "memory", "compute", "size", "image", "hours", "volumes", "volume_mounts", "workdir"}
ROSTER_KEYS = {"vgpus", "memory", "compute", "image", "hours", "grace"}


def check_keys(entry: Any, known: set[str], where: str) -> None:
    """A config entry is a dict of known keys: a typo is an error, not a silently ignored setting."""
    if not isinstance(entry, Mapping):
        raise VGPURequestError(where, type(entry).__name__, f"{where} must be a dict")
    unknown = sorted(set(entry) - known)
    if unknown:
        raise VGPURequestError(where, unknown[0],
                               f'{where} has no setting "{unknown[0]}"; use {", ".join(sorted(known))}')


class WarmKernels:
    def __init__(self, broker: Any):
        self.broker = broker
        default_image = broker.settings.image
        for i, entry in enumerate(broker.warm_pools):
            check_keys(entry, POOL_KEYS, f"c.Broker.warm_pools[{i}]")
            if not isinstance(entry.get("size", 0), int) or entry.get("size", 0) < 0:
                raise VGPURequestError("size", entry.get("size"), f"c.Broker.warm_pools[{i}].size must be a whole "
                                                                  "number of kernels (0 or more)")
        for course, entry in broker.rosters.items():
            check_keys(entry, ROSTER_KEYS, f"c.Broker.rosters[{course!r}]")
        self.zone = ZoneInfo(broker.lab_timezone) if broker.lab_timezone else None
        self.pools = [Pool(str(p.get("name") or f"pool-{i + 1}"),
                           WarmShape(_request(p), p.get("image") or default_image),
                           int(p.get("size", 0)), Window.parse(p.get("hours"), f"warm_pools[{i}].hours"),
                           tuple(p.get("volumes") or ()), tuple(p.get("volume_mounts") or ()), p.get("workdir", ""))
                      for i, p in enumerate(broker.warm_pools)]
        for pool in self.pools:
            if slug(pool.name, 40) != pool.name:
                raise VGPURequestError("warm_pools.name", pool.name, "a warm pool's name must be a short DNS label")
            if "{username}" in json.dumps([pool.volumes, pool.volume_mounts]):
                raise VGPURequestError("warm_pools.volumes", pool.name,
                                       f"warm pool {pool.name}: a pool's kernels start before anyone claims them, so "
                                       "their volumes cannot name the user; use c.Broker.rosters for students' own "
                                       "storage")
        self.rosters = [Roster(course, WarmShape(_request(r), r.get("image") or default_image),
                               Window.parse(r.get("hours"), f"rosters[{course}].hours"), float(r.get("grace", 1200)))
                        for course, r in broker.rosters.items()]
        self.kernels: dict[str, WarmKernel] = {}  # pod name -> what this broker started
        self.reserved: dict[str, str] = {}  # launch kernel id -> the warm pod it will claim
        self.prewarmed: set[tuple[str, datetime]] = set()  # (course, window start) already pre-warmed
        self._starting: set[asyncio.Task] = set()
        self._ticking = False

    @property
    def enabled(self) -> bool:
        return bool(self.pools or self.rosters)

    def now(self) -> datetime:
        return datetime.now(self.zone) if self.zone else datetime.now().astimezone()

    # -- reserving one for a launch -------------------------------------------------------------
    def reserve(self, kernel_id: str, user: str, request: VGPURequest, image: str, server_name: str,
                own_only: bool = False) -> str | None:
        """Take a ready warm kernel of this shape for the launch ``kernel_id``: the user's roster kernel
        first (default server only: it holds that server's storage), else (unless ``own_only``) a pool's;
        None: none ready."""
        key = WarmShape(request, image).key
        free = [k for k in self.kernels.values() if k.ready and not k.taken_by and k.shape_key == key]
        mine = [k for k in free if k.user and k.user == user and not server_name]
        pooled = [] if own_only else [k for k in free if not k.user]
        chosen = (mine or pooled or [None])[0]
        if chosen is None:
            if not own_only and any(p.shape.key == key and p.size for p in self.pools):
                MISSES.inc()
            return None
        chosen.taken_by = kernel_id
        self.reserved[kernel_id] = chosen.name
        return chosen.name

    def unreserve(self, kernel_id: str) -> None:
        name = self.reserved.pop(kernel_id, None)
        if name and name in self.kernels:
            self.kernels[name].taken_by = ""

    # -- handing one over -----------------------------------------------------------------------
    async def claim(self, ask: Any, user: str, course: str) -> dict[str, Any]:
        """Hand the reserved warm kernel to ``user``'s launch ``ask``; the ready line's fields."""
        broker = self.broker
        name = self.reserved.pop(ask.kernel_id)
        kernel = self.kernels.pop(name)
        IDLE.inc(time.monotonic() - kernel.created)
        CLAIMS.labels("roster" if kernel.user else "pool").inc()
        pool = next((p for p in self.pools if p.name == kernel.pool), None)
        # {username} as in the volumes' templates (a DNS-safe slug: a name cannot walk out of the folder)
        base = pool.workdir.format(username=slug(user, 63)) if pool and pool.workdir else broker.home_mount_path
        folder = f"{base.rstrip('/')}/{ask.cwd}".rstrip("/") if base else ""
        env = {ENV_NAMES["user"]: user, ENV_NAMES["kernel_id"]: ask.kernel_id}
        try:
            await self._tell(kernel, env, folder)
            kernel_label = slug(ask.kernel_id, 63)
            if broker.network_policies:  # first the policy (it selects both ids), then the pod's new labels
                policy = kernel_policy(broker, name, kernel_label, user, kernel.ports,
                                       also_kernel_label=slug(kernel.kernel_id, 63))
                await broker.cluster.request(broker.networking.patch_namespaced_network_policy, name,
                                             broker.namespace, {"spec": policy["spec"]})
            labels = {LABEL_WARM: None, LABEL_KERNEL_ID: kernel_label, LABEL_USER: slug(user, 63),
                      LABEL_COURSE: slug(course, 63) if course else None}
            annotations = {ANNOTATION_USER: user, ANNOTATION_SERVER: ask.server_name,
                           ANNOTATION_KERNEL_SPEC: ask.kernel_spec_name or None,
                           ANNOTATION_CLAIMED: datetime.now().astimezone().isoformat(timespec="seconds")}
            await broker.cluster.request(broker.cluster.core.patch_namespaced_pod, name, broker.namespace,
                                         {"metadata": {"labels": labels, "annotations": annotations}})
        except (ApiException, OSError, RuntimeError, TimeoutError) as err:
            await broker.delete_kernel(name)
            raise KernelLaunchError("api", f"the warm kernel {name} could not be handed over ({err}); "
                                           "try again") from None
        finally:
            self.wake()
        pod = broker.cluster.pod(name) or {}
        return {"pod_name": name, "ip": kernel.ip, "namespace": broker.namespace,
                "node": (pod.get("spec") or {}).get("nodeName"), "claimed": True, "key": kernel.key,
                "ports": dict(zip(PORT_NAMES, kernel.ports, strict=True))}

    async def _tell(self, kernel: WarmKernel, env: dict[str, str], folder: str) -> None:
        """One silent execute_request on the kernel's shell channel: who claimed it, and where it works."""
        import zmq.asyncio
        from jupyter_client.asynchronous import AsyncKernelClient

        client = AsyncKernelClient(context=zmq.asyncio.Context.instance())
        client.load_connection_info({"transport": "tcp", "ip": kernel.ip, "key": kernel.key,
                                     "signature_scheme": "hmac-sha256",
                                     **dict(zip(PORT_NAMES, kernel.ports, strict=True))})
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
            queued = self.broker.queue.waiting()
            waiting = bool(queued)
            wanted_shapes = {WarmShape(w.request, w.image).key for w in queued}
            for pool in self.pools:
                have = [k for k in self.kernels.values() if k.pool == pool.name and not k.taken_by]
                want = pool.size if pool.window.opened_at(now) else 0
                if waiting and pool.shape.key not in wanted_shapes:
                    want = 0  # launches wait: a warm kernel none of them can use gives its vGPU to the queue
                if len(have) > want:
                    for kernel in sorted(have, key=lambda k: k.ready)[:len(have) - want]:
                        await self.stop_kernel(kernel)
                elif len(have) < want and not waiting:
                    for _ in range(want - len(have)):
                        if not await self.broker.has_room(pool.shape.request, ""):
                            break
                        self._start(PodPlan(**self._plan(pool.shape, "", pool.name), volumes=pool.volumes,
                                            volume_mounts=pool.volume_mounts))
            for roster in self.rosters:
                await self._roster_tick(roster, now)
        finally:
            self._ticking = False

    async def _roster_tick(self, roster: Roster, now: datetime) -> None:
        opened = roster.window.opened_at(now)
        label = f"roster-{slug(roster.course, 40)}"
        if opened is None or now >= opened + timedelta(seconds=roster.grace):
            for kernel in [k for k in self.kernels.values() if k.pool == label and not k.taken_by]:
                log.info("stopping the unclaimed roster kernel %s of %s", kernel.name, kernel.user)
                await self.stop_kernel(kernel)
            return
        if (roster.course, opened) in self.prewarmed:
            return
        self.prewarmed.add((roster.course, opened))
        try:
            members = await self.broker.hub.members(roster.course)
        except Exception as err:  # noqa: BLE001 - the hub down: no pre-warm this window, launches start cold
            log.warning("cannot read group %s from the hub (%s); no roster pre-warm", roster.course, err)
            return
        started = 0
        for user in members:
            if self.broker.is_instructor(user, []) or any(k.user == user for k in self.kernels.values()):
                continue
            if not await self.broker.has_room(roster.shape.request, ""):
                log.warning("no room to pre-warm more kernels for course %s: %d of %d students get one; the "
                            "others start theirs when they launch", roster.course, started, len(members))
                break
            started += 1
            self._start(PodPlan(**self._plan(roster.shape, user, label), course=roster.course,
                                volumes=self.broker.volumes, volume_mounts=self.broker.volume_mounts,
                                working_dir=self.broker.home_mount_path or None))
        log.info("pre-warming %d kernels for course %s", started, roster.course)

    def _plan(self, shape: WarmShape, user: str, pool: str) -> dict[str, Any]:
        ports = tuple(secrets.SystemRandom().sample(range(40000, 60000), 5))
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
            name, pod_kernel = await start_kernel_pod(self.broker, plan)
        except KernelLaunchError as err:
            log.warning("a warm kernel of %s did not start: %s", plan.warm, err)
            return
        finally:
            self.kernels.pop(placeholder.name, None)
        placeholder.name, placeholder.ip, placeholder.ready = name, pod_kernel.ip, True
        self.kernels[name] = placeholder
        self.broker.queue.wake()  # a waiting launch of this shape may take it now
        log.info("warm kernel %s ready (%s%s)", name, plan.warm, f", for {plan.user}" if plan.user else "")

    async def stop_kernel(self, kernel: WarmKernel) -> None:
        """Stop an unclaimed warm kernel (one reserved or claimed meanwhile is left alone)."""
        if kernel.taken_by or self.kernels.get(kernel.name) is not kernel:
            return
        self.kernels.pop(kernel.name, None)
        if kernel.ready:
            IDLE.inc(time.monotonic() - kernel.created)
            await self.broker.delete_kernel(kernel.name)

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
            pod = self.broker.cluster.pod(name)
            if pod is None or (pod.get("status") or {}).get("phase") in TERMINAL_PHASES \
                    or pod["metadata"].get("deletionTimestamp"):
                self.kernels.pop(name, None)

    async def adopt_or_clean(self) -> None:
        """At start: warm pods of these pools a previous process left are stopped (their keys went
        with it); the pools refill."""
        mine = {p.name for p in self.pools} | {f"roster-{slug(r.course, 40)}" for r in self.rosters}
        for pod in self.broker.cluster.kernel_pods():
            if (pod["metadata"].get("labels") or {}).get(LABEL_WARM) in mine:
                await self.broker.delete_kernel(pod["metadata"]["name"])

    def summary(self) -> dict[str, Any]:
        """What the pool view shows apart: per pool (and roster), ready and starting warm kernels."""
        out: dict[str, Any] = {}
        for kernel in self.kernels.values():
            entry = out.setdefault(kernel.pool, {"ready": 0, "starting": 0, "reserved": 0})
            entry["reserved" if kernel.taken_by else "ready" if kernel.ready else "starting"] += 1
        for pool in self.pools:
            out.setdefault(pool.name, {"ready": 0, "starting": 0, "reserved": 0})["size"] = pool.size
        return out
