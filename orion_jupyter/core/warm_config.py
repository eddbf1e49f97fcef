"""What warm kernels are configured as: lab hours, shapes, pools and rosters, checked before anything starts.

A pod's GPU and volumes are fixed when it starts, so warm kernels come in shapes:

* a **pool**: N kernels of one request and image during its hours, with the pool's own volumes (none
  by default; a class-shared volume, never a student's own);
* a **roster** (hub mode): at a course's window start, one kernel per student of its hub group, with
  that student's storage; those not claimed within the grace period are stopped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import time as clock
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..names import slug
from ..vgpu import VGPURequest, VGPURequestError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


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


@dataclass(frozen=True)
class WarmConfig:
    pools: tuple[Pool, ...] = ()
    rosters: tuple[Roster, ...] = ()
    zone: ZoneInfo | None = None  # the lab hours' time zone; None: local time

    @property
    def enabled(self) -> bool:
        return bool(self.pools or self.rosters)

    def now(self) -> datetime:
        return datetime.now(self.zone) if self.zone else datetime.now().astimezone()

    @classmethod
    def parse(cls, warm_pools: list[Any], rosters: Mapping[str, Any], default_image: str,
              lab_timezone: str = "", where: str = "c.Broker") -> WarmConfig:
        """``warm_pools`` / ``rosters`` as configured (``where`` names the setting in errors)."""
        for i, entry in enumerate(warm_pools):
            check_keys(entry, POOL_KEYS, f"{where}.warm_pools[{i}]")
            if not isinstance(entry.get("size", 0), int) or entry.get("size", 0) < 0:
                raise VGPURequestError("size", entry.get("size"), f"{where}.warm_pools[{i}].size must be a whole "
                                                                  "number of kernels (0 or more)")
        for course, entry in rosters.items():
            check_keys(entry, ROSTER_KEYS, f"{where}.rosters[{course!r}]")
        try:
            zone = ZoneInfo(lab_timezone) if lab_timezone else None
        except (ZoneInfoNotFoundError, ValueError):
            raise VGPURequestError("lab_timezone", lab_timezone, f"{where}.lab_timezone must be an IANA time zone "
                                                                 'such as "Europe/Berlin"') from None
        pools = tuple(Pool(str(p.get("name") or f"pool-{i + 1}"),
                           WarmShape(_request(p), p.get("image") or default_image),
                           int(p.get("size", 0)), Window.parse(p.get("hours"), f"warm_pools[{i}].hours"),
                           tuple(p.get("volumes") or ()), tuple(p.get("volume_mounts") or ()), p.get("workdir", ""))
                      for i, p in enumerate(warm_pools))
        for pool in pools:
            if slug(pool.name, 40) != pool.name:
                raise VGPURequestError("warm_pools.name", pool.name, "a warm pool's name must be a short DNS label")
            if "{username}" in json.dumps([pool.volumes, pool.volume_mounts]):
                raise VGPURequestError("warm_pools.volumes", pool.name,
                                       f"warm pool {pool.name}: a pool's kernels start before anyone claims them, so "
                                       "their volumes cannot name the user; use c.Broker.rosters for students' own "
                                       "storage")
        parsed_rosters = tuple(Roster(course, WarmShape(_request(r), r.get("image") or default_image),
                                      Window.parse(r.get("hours"), f"rosters[{course}].hours"),
                                      float(r.get("grace", 1200)))
                               for course, r in rosters.items())
        return cls(pools, parsed_rosters, zone)


def roster_label(course: str) -> str:
    """The warm-label value of a course's roster kernels (a slug of the exact group)."""
    return f"roster-{slug(course, 40)}"
