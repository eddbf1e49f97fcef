"""Idle vGPU kernels given back, with a warning first: the rules, for a direct-mode server and the broker alike.

A vGPU kernel (one holding at least one vGPU; CPU-only kernels are never touched) that has been idle
for its ``idle_seconds`` is stopped by its :class:`CullTarget` (a server: through the kernel manager,
whose provisioner deletes the pod and frees the vGPU; the broker: the pod, annotated with why).
Idleness is the kernel's own, from its iopub messages: ``execution_state`` and ``last_activity``
(never page traffic). A kernel whose execution state is ``busy`` (or restarting) is not idle,
whatever its last activity.

``warning_seconds`` before that time the owner is told (a progress event of the kernel, the server
log, ``cull_warning`` in the allocations row). The owner (or an instructor) may *keep* the kernel:
its idle clock starts again, at most ``max_keeps`` times in one idle stretch (activity of the kernel
after a keep gives the keeps back). An instructor may exempt a kernel altogether.

Everything is computed from the target's answers and this object's dictionaries: one ``run_once``
per ``interval_seconds`` (a tornado PeriodicCallback), nothing blocking; a kernel whose check fails is
logged and skipped, the others are judged all the same. The rules may differ per kernel (the
broker's by course): ``rules(kernel_id)``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from tornado.ioloop import PeriodicCallback

from ..progress import ProgressLog

NOT_IDLE = frozenset({"busy", "restarting", "autorestarting"})
MAX_CULLED = 500  # culled kernels remembered (for their owner's events)


class NotCullable(Exception):
    """A keep refused: the kernel is never stopped for idleness, or its keeps are used up (409)."""


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def reported_time(text: str, now: datetime | None = None) -> datetime | None:
    """A time someone else reports (a student's server: a kernel's last activity), as the culler may use it:
    ISO-8601 with a zone only (a naive time cannot be compared), never later than ``now`` (a time in the
    future would keep a kernel forever, or overflow the cull time); None when it is no such time."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except (ValueError, TypeError, AttributeError):
        return None
    if moment.tzinfo is None or moment.utcoffset() is None:
        return None
    return min(moment.astimezone(UTC), now or datetime.now(UTC))


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


@dataclass(frozen=True)
class CullRules:
    idle_seconds: float = 1800.0  # 0: never
    warning_seconds: float = 300.0
    max_keeps: int = 3


@dataclass(frozen=True)
class KernelActivity:
    """What a kernel's own messages say: when it last did something, and what it does now."""

    last_activity: datetime | None
    execution_state: str = "idle"
    started: bool = True  # False while it is still launching


class CullTarget(Protocol):
    """The kernels a culler judges and gives back (a server's kernel manager, or the broker's followed pods).

    ``parks(kernel_id)``: an idle kernel is parked (its namespace saved to its owner's storage) rather than
    stopped; ``stop_idle`` then answers the snapshot's id (None: the kernel was stopped)."""

    def kernel_ids(self) -> list[str]: ...  # every live kernel the target knows
    def activity(self, kernel_id: str) -> KernelActivity | None: ...  # None: not a kernel holding vGPUs
    def owner(self, kernel_id: str) -> str | None: ...
    def parks(self, kernel_id: str) -> bool: ...
    async def stop_idle(self, kernel_id: str) -> str | None: ...


class Culler:
    """Stops a target's idle vGPU kernels; ``fields(kernel_id)`` for the allocations rows."""

    def __init__(self, target: CullTarget, progress: ProgressLog, defaults: CullRules, *,
                 interval_seconds: float = 30.0, rules: Callable[[str], CullRules] | None = None,
                 changed: Callable[[str], None] = lambda k: None, enabled: bool | None = None,
                 log: logging.Logger | None = None):
        self.target = target
        self.progress = progress
        self.idle_seconds = float(defaults.idle_seconds)  # the defaults; a kernel's own: rules(kernel_id)
        self.warning_seconds = float(defaults.warning_seconds)
        self.max_keeps = int(defaults.max_keeps)
        self.rules = rules or (lambda kernel_id: CullRules(self.idle_seconds, self.warning_seconds, self.max_keeps))
        self.changed = changed  # a kernel's culling fields changed (a warning, a keep, an exemption)
        self.interval_seconds = float(interval_seconds)
        self.log = log or logging.getLogger(__name__)
        self._kept: dict[str, tuple[datetime, int]] = {}  # kernel id -> (last keep, keeps used since activity)
        self._exempt: set[str] = set()
        self._warned: dict[str, datetime] = {}  # kernel id -> the cull time its owner was warned of
        self._culling: set[str] = set()
        self.culled: OrderedDict[str, str] = OrderedDict()  # kernel id -> owner, of kernels this culler stopped
        self._timer: PeriodicCallback | None = None
        self._rounds: set[asyncio.Task] = set()  # rounds still culling (a park may take its whole time limit)
        self._enabled = enabled  # None: on when the default rule culls

    @property
    def enabled(self) -> bool:
        """Off when no rule culls (the broker's courses may cull where its default does not)."""
        return self.idle_seconds > 0 if self._enabled is None else self._enabled

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        if self._timer is None and self.enabled and self.interval_seconds > 0:
            self._timer = PeriodicCallback(self._tick, self.interval_seconds * 1000)
            self._timer.start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    def _tick(self) -> None:
        """One round, not awaited by the timer: a kernel slow to park (up to the park's time limit) must not
        hold back the warnings and culls of the next rounds (a kernel being culled is not judged again)."""
        task = asyncio.ensure_future(self._round())
        self._rounds.add(task)
        task.add_done_callback(self._rounds.discard)

    async def _round(self) -> None:
        try:
            await self.run_once()
        except Exception:  # noqa: BLE001 - one bad round must not stop the timer
            self.log.exception("idle vGPU kernel check failed")

    # -- reading --------------------------------------------------------------------------------
    def _activity(self, kernel_id: str) -> KernelActivity | None:
        """The kernel's activity when it is culled at all (a vGPU kernel under a rule that culls)."""
        if not self.enabled or self.rules(kernel_id).idle_seconds <= 0:
            return None
        return self.target.activity(kernel_id)

    def is_exempt(self, kernel_id: str) -> bool:
        return kernel_id in self._exempt

    def keeps_left(self, kernel_id: str) -> int | None:
        """Keeps the owner still has in this idle stretch (None: the kernel is never stopped for idleness)."""
        activity = self._activity(kernel_id)
        if activity is None:
            return None
        return max(self.rules(kernel_id).max_keeps - self._keeps_used(kernel_id, activity), 0)

    def _keeps_used(self, kernel_id: str, activity: KernelActivity) -> int:
        kept = self._kept.get(kernel_id)
        if kept is None:
            return 0
        if activity.last_activity is not None and activity.last_activity > kept[0]:
            return 0  # the kernel did something after the last keep: a new idle stretch
        return kept[1]

    def idle_since(self, kernel_id: str) -> datetime | None:
        """When the kernel's idle clock started (its last activity, or a later keep); None: not idle."""
        activity = self.target.activity(kernel_id)
        if activity is None or not activity.started or activity.last_activity is None \
                or activity.execution_state in NOT_IDLE:
            return None
        kept = self._kept.get(kernel_id)
        since = max(activity.last_activity, kept[0]) if kept else activity.last_activity
        return min(since, datetime.now(UTC))  # a target's clock ahead of ours must not postpone the cull

    def cull_at(self, kernel_id: str) -> datetime | None:
        """When the kernel will be stopped if it stays idle; None when it is busy, exempt or never culled."""
        idle = self.rules(kernel_id).idle_seconds
        if not self.enabled or idle <= 0 or kernel_id in self._exempt:
            return None
        since = self.idle_since(kernel_id)
        return since + timedelta(seconds=idle) if since is not None else None

    def fields(self, kernel_id: str, now: datetime | None = None) -> dict[str, Any]:
        """What an allocations row shows: ``cull_at`` (ISO-8601 UTC or None), ``cull_warning``,
        ``keeps_left``, ``exempt`` and ``cull_parks`` (culling parks it rather than only stopping it). A kernel
        whose fields cannot be computed shows none (logged): one bad kernel must not break a view of many."""
        try:
            at = self.cull_at(kernel_id)
            now = now or datetime.now(UTC)
            warning = timedelta(seconds=self.rules(kernel_id).warning_seconds)
            return {"cull_at": iso(at), "cull_warning": at is not None and now >= at - warning,  # wire.CULL_FIELDS
                    "keeps_left": self.keeps_left(kernel_id), "exempt": self.is_exempt(kernel_id),
                    "cull_parks": self.target.parks(kernel_id)}
        except Exception:  # noqa: BLE001 - see above
            self.log.exception("could not compute the idle fields of kernel %s", kernel_id)
            return {"cull_at": None, "cull_warning": False, "keeps_left": None, "exempt": self.is_exempt(kernel_id),
                    "cull_parks": False}

    # -- acting ---------------------------------------------------------------------------------
    def keep(self, kernel_id: str, now: datetime | None = None) -> dict[str, Any]:
        """Start the kernel's idle clock again; NotCullable when it is never culled or its keeps are used up."""
        activity = self._activity(kernel_id)
        if activity is None:
            raise NotCullable(f'kernel "{kernel_id}" is never stopped for being idle; there is nothing to keep')
        now = now or datetime.now(UTC)
        if kernel_id not in self._exempt:
            used, limit = self._keeps_used(kernel_id, activity), self.rules(kernel_id).max_keeps
            if used >= limit:
                raise NotCullable(
                    f'kernel "{kernel_id}" was kept {used} times already (the limit is {limit}); '
                    f"run something in it to keep it, or it stops at {iso(self.cull_at(kernel_id))} "
                    "to free its vGPU")
            self._kept[kernel_id] = (now, used + 1)
            self._warned.pop(kernel_id, None)
            self.log.info("kernel %s kept by its owner: idle clock restarted (%d of %d keeps used)",
                          kernel_id, used + 1, limit)
        self.changed(kernel_id)
        return {"kernel_id": kernel_id, **self.fields(kernel_id, now)}

    def exempt(self, kernel_id: str, flag: bool) -> dict[str, Any]:
        """Never (``flag``) or again (not ``flag``) stop this kernel for being idle."""
        if flag:
            self._exempt.add(kernel_id)
        else:
            self._exempt.discard(kernel_id)
        self._warned.pop(kernel_id, None)
        self.log.info("kernel %s %s idle culling", kernel_id, "exempted from" if flag else "subject again to")
        self.changed(kernel_id)
        return {"kernel_id": kernel_id, **self.fields(kernel_id)}

    def owner_of_culled(self, kernel_id: str) -> str | None:
        return self.culled.get(kernel_id)

    async def run_once(self, now: datetime | None = None) -> list[str]:
        """Warn the owners of kernels about to be stopped and stop those whose time has come; the stopped ids.
        One kernel whose check fails is logged and skipped: the others are judged all the same."""
        now = now or datetime.now(UTC)
        live = set(self.target.kernel_ids())
        for table in (self._kept, self._warned):
            for kernel_id in [k for k in table if k not in live]:
                table.pop(kernel_id, None)
        self._exempt &= live
        due = []
        for kernel_id in sorted(live - self._culling):
            try:
                at = self.cull_at(kernel_id)
                if at is None:
                    self._warned.pop(kernel_id, None)
                elif now >= at:
                    due.append(kernel_id)
                elif self._warned.get(kernel_id) != at and now >= at - timedelta(
                        seconds=self.rules(kernel_id).warning_seconds):
                    self._warned[kernel_id] = at
                    self._warn(kernel_id, at, now)
            except Exception:  # noqa: BLE001 - one bad kernel must not stop the round for the others
                self.log.exception("could not judge whether kernel %s is idle", kernel_id)
        await asyncio.gather(*(self._cull(kernel_id, now) for kernel_id in due))
        return due

    def _warn(self, kernel_id: str, at: datetime, now: datetime) -> None:
        since = self.idle_since(kernel_id) or now
        left = self.keeps_left(kernel_id)
        idle, stops_in = duration((now - since).total_seconds()), duration((at - now).total_seconds())
        verb = "parks" if self.target.parks(kernel_id) else "stops"
        message = (f"idle for {idle}: {verb} in {stops_in} ({iso(at)}) to free its vGPU unless kept "
                   f"({left} keep{'' if left == 1 else 's'} left)")
        self.progress.record(kernel_id, message, stage="cull", level="warning", cull_at=iso(at))
        self.log.warning("vGPU kernel %s of %s %s", kernel_id, self.target.owner(kernel_id), message)
        self.changed(kernel_id)

    async def _cull(self, kernel_id: str, now: datetime) -> None:
        activity = self.target.activity(kernel_id)
        owner = self.target.owner(kernel_id) or ""
        last = (activity.last_activity if activity else None) or now
        idle = duration((now - last).total_seconds())
        self._culling.add(kernel_id)
        self.log.info("giving back vGPU kernel %s of %s: idle since %s", kernel_id, owner, iso(last))
        try:
            snapshot = await self.target.stop_idle(kernel_id)
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
        if snapshot:
            message = (f"parked after {idle} idle, its vGPU is free again: resume snapshot {snapshot} to get its "
                       "variables back")
            self.progress.record(kernel_id, message, stage="cull", level="info", culled=True, snapshot=snapshot)
        else:
            message = f"stopped after {idle} idle, its vGPU is free again"
            self.progress.record(kernel_id, message, stage="cull", level="info", culled=True)
        self.log.info("vGPU kernel %s of %s %s", kernel_id, owner, message)
