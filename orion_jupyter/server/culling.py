"""Idle vGPU kernels given back, with a warning first.

A vGPU kernel (a ``VGPUProvisioner`` kernel holding at least one vGPU; CPU-only kernels are never
touched) that has been idle for ``idle_seconds`` is shut down through the kernel manager's public
API (``shutdown_kernel``: its provisioner deletes the pod and frees the vGPU). Idleness is the kernel
manager's own: ``execution_state`` and ``last_activity``, which jupyter_server keeps from the
kernel's iopub messages (the usage probe is untracked), never page traffic. A kernel whose
execution state is ``busy`` (or restarting) is not idle, whatever its last activity.

``warning_seconds`` before that time the owner is told (a progress event of the kernel, the server
log, ``cull_warning`` in the allocations row). The owner (or an instructor) may *keep* the kernel:
its idle clock starts again, at most ``max_keeps`` times in one idle stretch (activity of the kernel
after a keep gives the keeps back). An instructor may exempt a kernel altogether.

Everything is computed from the kernel manager's attributes and this object's dictionaries: one
``run_once`` per ``interval_seconds`` (a tornado PeriodicCallback), nothing blocking.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any

from jupyter_server.utils import ensure_async
from tornado.ioloop import PeriodicCallback

NOT_IDLE = frozenset({"busy", "restarting", "autorestarting"})
MAX_CULLED = 500  # culled kernels remembered (for their owner's events)


class NotCullable(Exception):
    """A keep refused: the kernel is never stopped for idleness, or its keeps are used up (409)."""


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def duration(seconds: float) -> str:
    """``45 s``, ``30 min``, ``2 h``, ``1 h 30 min``."""
    seconds = max(int(round(seconds)), 0)
    if seconds < 120:
        return f"{seconds} s"
    minutes = int(round(seconds / 60))
    if minutes < 120:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


class Culler:
    """Stops this server's idle vGPU kernels; ``fields(kernel_id)`` for the allocations rows."""

    def __init__(self, kernels: Any, progress: Any, *, idle_seconds: float = 1800.0, warning_seconds: float = 300.0,
                 max_keeps: int = 3, interval_seconds: float = 30.0, log: logging.Logger | None = None):
        self.kernels = kernels  # VGPUKernels: provisioner(kernel_id), kernel_user(kernel_id)
        self.kernel_manager = kernels.kernel_manager
        self.progress = progress
        self.idle_seconds = float(idle_seconds)
        self.warning_seconds = float(warning_seconds)
        self.max_keeps = int(max_keeps)
        self.interval_seconds = float(interval_seconds)
        self.log = log or logging.getLogger(__name__)
        self._kept: dict[str, tuple[datetime, int]] = {}  # kernel id -> (last keep, keeps used since activity)
        self._exempt: set[str] = set()
        self._warned: dict[str, datetime] = {}  # kernel id -> the cull time its owner was warned of
        self._culling: set[str] = set()
        self.culled: OrderedDict[str, str] = OrderedDict()  # kernel id -> owner, of kernels this culler stopped
        self._timer: PeriodicCallback | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return self.idle_seconds > 0

    def start(self) -> None:
        if self._timer is None and self.enabled and self.interval_seconds > 0:
            self._timer = PeriodicCallback(self._tick, self.interval_seconds * 1000)
            self._timer.start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    async def _tick(self) -> None:
        try:
            await self.run_once()
        except Exception:  # noqa: BLE001 - one bad round must not stop the timer
            self.log.exception("idle vGPU kernel check failed")

    # -- the rules, per kernel (the broker's differ by course) ------------------------------------
    def idle_seconds_of(self, kernel_id: str) -> float:
        return self.idle_seconds

    def warning_seconds_of(self, kernel_id: str) -> float:
        return self.warning_seconds

    def max_keeps_of(self, kernel_id: str) -> int:
        return self.max_keeps

    # -- reading --------------------------------------------------------------------------------
    def _km(self, kernel_id: str) -> Any:
        """The kernel's manager when it is a vGPU kernel of this server holding vGPUs, else None."""
        provisioner = self.kernels.provisioner(kernel_id)
        request = getattr(provisioner, "request", None)
        if provisioner is None or request is None or not request.count:
            return None
        return self.kernel_manager.get_kernel(kernel_id)

    def is_exempt(self, kernel_id: str) -> bool:
        return kernel_id in self._exempt

    def keeps_left(self, kernel_id: str) -> int | None:
        """Keeps the owner still has in this idle stretch (None: the kernel is never stopped for idleness)."""
        km = self._km(kernel_id) if self.enabled and self.idle_seconds_of(kernel_id) > 0 else None
        if km is None:
            return None
        return max(self.max_keeps_of(kernel_id) - self._keeps_used(kernel_id, km), 0)

    def _keeps_used(self, kernel_id: str, km: Any) -> int:
        kept = self._kept.get(kernel_id)
        if kept is None:
            return 0
        activity = getattr(km, "last_activity", None)
        if activity is not None and activity > kept[0]:
            return 0  # the kernel did something after the last keep: a new idle stretch
        return kept[1]

    def idle_since(self, kernel_id: str) -> datetime | None:
        """When the kernel's idle clock started (its last activity, or a later keep); None: not idle."""
        km = self._km(kernel_id)
        if km is None:
            return None
        ready = getattr(km, "ready", None)
        if ready is not None and not ready.done():
            return None  # still launching
        activity = getattr(km, "last_activity", None)
        if activity is None or getattr(km, "execution_state", None) in NOT_IDLE:
            return None
        kept = self._kept.get(kernel_id)
        return max(activity, kept[0]) if kept else activity

    def cull_at(self, kernel_id: str) -> datetime | None:
        """When the kernel will be stopped if it stays idle; None when it is busy, exempt or never culled."""
        idle = self.idle_seconds_of(kernel_id)
        if not self.enabled or idle <= 0 or kernel_id in self._exempt:
            return None
        since = self.idle_since(kernel_id)
        return since + timedelta(seconds=idle) if since is not None else None

    def fields(self, kernel_id: str, now: datetime | None = None) -> dict[str, Any]:
        """What an allocations row shows: ``cull_at`` (ISO-8601 UTC or None), ``cull_warning``,
        ``keeps_left`` and ``exempt``."""
        at = self.cull_at(kernel_id)
        now = now or datetime.now(UTC)
        return {"cull_at": iso(at),
                "cull_warning": at is not None and now >= at - timedelta(seconds=self.warning_seconds_of(kernel_id)),
                "keeps_left": self.keeps_left(kernel_id), "exempt": self.is_exempt(kernel_id)}

    # -- acting ---------------------------------------------------------------------------------
    def keep(self, kernel_id: str, now: datetime | None = None) -> dict[str, Any]:
        """Start the kernel's idle clock again; NotCullable when it is never culled or its keeps are used up."""
        km = self._km(kernel_id) if self.enabled and self.idle_seconds_of(kernel_id) > 0 else None
        if km is None:
            raise NotCullable(f'kernel "{kernel_id}" is never stopped for being idle; there is nothing to keep')
        now = now or datetime.now(UTC)
        if kernel_id not in self._exempt:
            used, limit = self._keeps_used(kernel_id, km), self.max_keeps_of(kernel_id)
            if used >= limit:
                raise NotCullable(
                    f'kernel "{kernel_id}" was kept {used} times already (the limit is {limit}); '
                    f"run something in it to keep it, or it stops at {iso(self.cull_at(kernel_id))} "
                    "to free its vGPU")
            self._kept[kernel_id] = (now, used + 1)
            self._warned.pop(kernel_id, None)
            self.log.info("kernel %s kept by its owner: idle clock restarted (%d of %d keeps used)",
                          kernel_id, used + 1, limit)
        return {"kernel_id": kernel_id, **self.fields(kernel_id, now)}

    def exempt(self, kernel_id: str, flag: bool) -> dict[str, Any]:
        """Never (``flag``) or again (not ``flag``) stop this kernel for being idle."""
        if flag:
            self._exempt.add(kernel_id)
        else:
            self._exempt.discard(kernel_id)
        self._warned.pop(kernel_id, None)
        self.log.info("kernel %s %s idle culling", kernel_id, "exempted from" if flag else "subject again to")
        return {"kernel_id": kernel_id, **self.fields(kernel_id)}

    def owner_of_culled(self, kernel_id: str) -> str | None:
        return self.culled.get(kernel_id)

    async def run_once(self, now: datetime | None = None) -> list[str]:
        """Warn the owners of kernels about to be stopped and stop those whose time has come; the stopped ids."""
        now = now or datetime.now(UTC)
        live = set(self.kernel_manager.list_kernel_ids())
        for table in (self._kept, self._warned):
            for kernel_id in [k for k in table if k not in live]:
                table.pop(kernel_id, None)
        self._exempt &= live
        due = []
        for kernel_id in sorted(live - self._culling):
            at = self.cull_at(kernel_id)
            if at is None:
                self._warned.pop(kernel_id, None)
            elif now >= at:
                due.append(kernel_id)
            elif self._warned.get(kernel_id) != at and now >= at - timedelta(
                    seconds=self.warning_seconds_of(kernel_id)):
                self._warned[kernel_id] = at
                self._warn(kernel_id, at, now)
        await asyncio.gather(*(self._cull(kernel_id, now) for kernel_id in due))
        return due

    def _warn(self, kernel_id: str, at: datetime, now: datetime) -> None:
        since = self.idle_since(kernel_id) or now
        left = self.keeps_left(kernel_id)
        idle, stops_in = duration((now - since).total_seconds()), duration((at - now).total_seconds())
        message = (f"idle for {idle}: stops in {stops_in} ({iso(at)}) to free its vGPU unless kept "
                   f"({left} keep{'' if left == 1 else 's'} left)")
        self.progress.record(kernel_id, message, stage="cull", level="warning", cull_at=iso(at))
        self.log.warning("vGPU kernel %s of %s %s", kernel_id, self.kernels.kernel_user(kernel_id), message)

    async def _cull(self, kernel_id: str, now: datetime) -> None:
        km = self.kernel_manager.get_kernel(kernel_id)
        owner = self.kernels.kernel_user(kernel_id) or ""
        activity = getattr(km, "last_activity", None) or now
        message = f"stopped after {duration((now - activity).total_seconds())} idle, its vGPU is free again"
        self._culling.add(kernel_id)
        self.log.info("stopping vGPU kernel %s of %s: idle since %s", kernel_id, owner, iso(activity))
        try:
            await ensure_async(self.kernel_manager.shutdown_kernel(kernel_id))
        except Exception as err:  # noqa: BLE001 - the next round tries again
            self.log.exception("idle vGPU kernel %s could not be stopped", kernel_id)
            self.progress.record(kernel_id, f"could not be stopped after being idle: {err}", stage="cull",
                                 level="error")
            return
        finally:
            self._culling.discard(kernel_id)
        for table in (self._kept, self._warned):
            table.pop(kernel_id, None)
        self._exempt.discard(kernel_id)
        self.culled[kernel_id] = owner
        while len(self.culled) > MAX_CULLED:
            self.culled.popitem(last=False)
        self.progress.record(kernel_id, message, stage="cull", level="info", culled=True)
        self.log.info("vGPU kernel %s of %s %s", kernel_id, owner, message)


class BackendCulling:
    """Hub mode: the broker stops idle kernels (students' servers are not trusted to); this server shows
    its fields and passes Keep and Exempt on. The same face as ``Culler`` for the handlers."""

    enabled = True

    def __init__(self, view: Any):
        self.view = view

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None

    def fields(self, kernel_id: str) -> dict[str, Any]:
        return self.view.cull_fields(kernel_id)

    def owner_of_culled(self, kernel_id: str) -> str | None:
        return None  # the kernel's owner reads why it stopped from its own server's kernel record

    async def keep(self, kernel_id: str) -> dict[str, Any]:
        return await self._ask(self.view.keep(kernel_id))

    async def exempt(self, kernel_id: str, flag: bool) -> dict[str, Any]:
        return await self._ask(self.view.set_exempt(kernel_id, flag))

    @staticmethod
    async def _ask(request: Any) -> dict[str, Any]:
        """The backend's answer; its refusals as NotCullable (409) or PermissionError with ``status``."""
        try:
            return await request
        except Exception as err:
            status = getattr(err, "status", None)
            if status == 409:
                raise NotCullable(str(err)) from None
            if status in (403, 404):
                refusal = PermissionError(str(err))
                refusal.status = status  # type: ignore[attr-defined]
                raise refusal from None
            raise
