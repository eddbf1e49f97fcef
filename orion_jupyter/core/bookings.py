"""Bookings: a vGPU shape kept for a course (or for one of its students) during a time window.

A booking names a course (its exact hub group), optionally one student of it, a shape (``vgpus``,
``memory``, ``compute`` as launches and warm pools parse them), a ``count`` of kernels of that shape and
a window (``start`` / ``end``; a time without an offset is in the lab's time zone). An instructor's booking
may repeat (``repeat: "weekly"`` until the date ``until``: the same weekday and wall-clock times in the lab's
time zone each week, one booking with one id). An instructor books
for the courses whose hub group they are in; a student books only for themself, only in their own
course, and only where the course allows it (``student_bookings``: the most hours one booking of theirs
may last; one booking of theirs at a time).

A booking is accepted only if it can be honoured: at every moment of its window, it and the other
bookings then, plus what cannot be taken back (for a window open now: the kernels running now, and
other workloads on the nodes), fit the pool; a weekly booking, at every moment of each occurrence. Where the
nodes are visible they must also fit node by node: each kernel runs on one node, so the kernels booked then
are packed onto the nodes (first fit, largest first; for a window open now, onto what is free now). Where the
nodes are not visible (and for backends whose kernels no node counts: dra, kai, Orion's remote mode), the
pool-wide count alone decides. Kernels are never stopped for a booking: one started
before a window opens keeps running, so a later window is honoured from the vGPUs freed by then,
which go to the booking before anyone else. During the window, the booked vGPUs not yet used by the
booking's own launches are held back from everyone else's (the queue waits), and the booking's
launches go first; where a warm pool of the shape exists, it keeps that many kernels ready for them.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from ..vgpu import VGPURequest, VGPURequestError, format_mib, short
from .ledger import Holding, Quota

log = logging.getLogger("orion_jupyter.bookings")
BOOKING_KEYS = {"course", "user", "vgpus", "memory", "compute", "count", "start", "end", "repeat", "until"}
MAX_COUNT = 1000
MAX_WINDOW = timedelta(days=31)
MAX_AHEAD = timedelta(days=366)
WEEK = timedelta(days=7)
REPEATS = ("weekly",)


class BookingError(VGPURequestError):
    """A booking given wrong (400, naming the field)."""


class BookingForbidden(VGPURequestError):
    """A booking the caller may not make or remove (403): for another student, or a course not theirs."""


class BookingRefused(VGPURequestError):
    """A well-formed booking that cannot be honoured (409): the pool is booked or held then."""


@dataclass(frozen=True)
class Booking:
    id: str
    course: str  # the exact hub group
    user: str  # "" for the whole course, else the one student it is for
    request: VGPURequest  # the shape of each kernel
    count: int
    start: datetime  # time-zone aware (a weekly booking's: in the lab's time zone); its first window
    end: datetime
    by: str  # who booked it ("c.Broker.bookings" for the static ones)
    static: bool = False  # from the config: not removed through the API
    repeat: str = ""  # "weekly": the window again each week, its last start on ``until``; "": once
    until: date | None = None

    @property
    def vgpus(self) -> int:
        return self.request.count * self.count

    def _week(self, weeks: int) -> tuple[datetime, datetime]:
        """The window ``weeks`` weeks after the first (same wall-clock times: aware arithmetic keeps the zone)."""
        return self.start + weeks * WEEK, self.end + weeks * WEEK

    @property
    def weeks(self) -> int:
        """How many windows it has."""
        return (self.until - self.start.date()).days // 7 + 1 if self.repeat and self.until else 1

    @property
    def last_end(self) -> datetime:
        return self._week(self.weeks - 1)[1]

    def windows(self, after: datetime | None = None, before: datetime | None = None) -> list[tuple[datetime, datetime]]:
        """Its windows (a weekly booking's occurrences) that end after ``after`` and start before ``before``."""
        return [(start, end) for start, end in map(self._week, range(self.weeks))
                if (after is None or end > after) and (before is None or start < before)]

    def window_at(self, now: datetime) -> tuple[datetime, datetime] | None:
        """The window open at ``now`` (None: none is); O(1): a weekly booking's window lasts at most a week."""
        if not self.repeat:
            return (self.start, self.end) if self.start <= now < self.end else None
        weeks = (now.astimezone(self.start.tzinfo).date() - self.start.date()).days // 7
        for week in (weeks, weeks - 1):
            if 0 <= week < self.weeks:
                start, end = self._week(week)
                if start <= now < end:
                    return start, end
        return None

    def open_at(self, now: datetime) -> bool:
        return self.window_at(now) is not None

    def fits(self, holding: Holding) -> bool:
        """``holding`` is a kernel of this booking's course (and student) and shape."""
        return holding.course == self.course and (not self.user or holding.user == self.user) \
            and same_shape(self.request, holding)

    def whom(self) -> str:
        return f"{self.user} in {self.course}" if self.user else self.course

    def schedule(self, zone: ZoneInfo | None = None) -> str:
        """'Tue 08 Dec 09:00 CET – Tue 08 Dec 11:00 CET', or 'every Tue 14:00-16:00 until 2027-02-23'."""
        start, end = (moment.astimezone(zone) if zone else moment for moment in (self.start, self.end))
        if not self.repeat:
            return f"{when(start)} – {when(end)}"
        hours = f"{start:%H:%M}-{end:%H:%M}" if end.date() == start.date() else f"{start:%H:%M} – {end:%a %H:%M}"
        return f"every {start:%a} {hours} until {self.until}"

    def describe(self, zone: ZoneInfo | None = None) -> str:
        """'2 kernels of 1 vGPU · 4 GiB for AI_101, Tue 08 Dec 09:00 – Tue 08 Dec 11:00 CET'."""
        kernels = f"{self.count} kernel{'s' if self.count != 1 else ''}"
        return f"{kernels} of {self.request.describe()} for {self.whom()}, {self.schedule(zone)}"

    def as_dict(self, zone: ZoneInfo | None = None) -> dict[str, Any]:
        return {"id": self.id, "course": self.course, "user": self.user, "vgpus": self.request.count,
                "memory": format_mib(self.request.memory_mib), "compute": self.request.compute_percent,
                "count": self.count, "start": self.start.isoformat(), "end": self.end.isoformat(), "by": self.by,
                "static": self.static,
                **({"repeat": self.repeat, "until": self.until.isoformat(), "schedule": self.schedule(zone)}
                   if self.repeat and self.until else {})}


def when(moment: datetime) -> str:
    return f"{moment:%a %d %b %H:%M} {moment.tzname() or ''}".rstrip()


def same_shape(request: VGPURequest, holding: Holding) -> bool:
    return holding.vgpus == request.count and holding.memory_mib == request.total_memory_mib


def _moment(value: Any, zone: ZoneInfo | None, where: str) -> datetime:
    hint = (f'{where} must be a date and time like "2026-12-08T09:00" (in the lab time zone) or with an offset '
            'like "2026-12-08T09:00+01:00"')
    if not isinstance(value, str) or len(value) > 40:
        raise BookingError(where, None, hint)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BookingError(where, value, f"{hint}, not {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone) if zone else moment.astimezone()
    return moment


def _name(value: Any, where: str, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 255:
        raise BookingError(where, value if isinstance(value, str) else None, f"{where} must be {what}")
    return value


def parse_booking(spec: Any, *, by: str, zone: ZoneInfo | None, where: str = "", booking_id: str = "",
                  static: bool = False) -> Booking:
    """One booking as given (the API's body or a c.Broker.bookings entry), each field checked; errors name
    the field (``where`` prefixes it: ``c.Broker.bookings[0].count``)."""
    field = (lambda key: f"{where}.{key}") if where else (lambda key: key)
    if not isinstance(spec, Mapping):
        raise BookingError(where or "booking", None, f"{where or 'a booking'} must be a JSON object (a dict)")
    unknown = sorted(str(k) for k in set(spec) - BOOKING_KEYS)
    if unknown:
        raise BookingError(field(unknown[0])[:300], None, f'a booking has no field "{unknown[0][:80]}"; use '
                                                          f"{', '.join(sorted(BOOKING_KEYS))}")
    course = _name(spec.get("course"), field("course"), "the course's hub group (its exact name)")
    user = _name(spec["user"], field("user"), "a user name") if spec.get("user") is not None else ""
    try:
        request = VGPURequest.from_mapping({k: spec[k] for k in ("vgpus", "memory", "compute") if k in spec})
    except VGPURequestError as err:
        raise BookingError(field(err.field), err.value, str(err)) from None
    if request.count == 0:
        raise BookingError(field("vgpus"), 0, "a booking keeps vGPUs: vgpus must be 1 or more")
    count = spec.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
        raise BookingError(field("count"), count if isinstance(count, int) else None,
                           f"{field('count')} must be a whole number of kernels from 1 to {MAX_COUNT}")
    if "start" not in spec or "end" not in spec:
        missing = "start" if "start" not in spec else "end"
        raise BookingError(field(missing), None, f"{field(missing)} is missing: a booking needs a window, like "
                                                 '"start": "2026-12-08T09:00", "end": "2026-12-08T11:00"')
    start, end = _moment(spec["start"], zone, field("start")), _moment(spec["end"], zone, field("end"))
    if end <= start:
        raise BookingError(field("end"), spec["end"], f"{field('end')} must be after the start ({spec['start']})")
    if end - start > MAX_WINDOW:
        raise BookingError(field("end"), spec["end"], f"a booking's window lasts at most {MAX_WINDOW.days} days")
    repeat, until = _repeat(spec, start, end, field)
    if repeat and zone is not None:  # each week at the same wall-clock time of the lab, across summer time
        start, end = start.astimezone(zone), end.astimezone(zone)
    return Booking(booking_id or uuid.uuid4().hex[:12], course, user, request, count, start, end, by, static,
                   repeat, until)


def _repeat(spec: Mapping[str, Any], start: datetime, end: datetime,
            field: Callable[[str], str]) -> tuple[str, date | None]:
    """``repeat`` and ``until`` checked: both or neither; "weekly"; the last date from the start's on, within
    MAX_AHEAD of it; a window of at most a week (occurrences never overlap)."""
    repeat, until = spec.get("repeat"), spec.get("until")
    if repeat is None and until is None:
        return "", None
    if repeat not in REPEATS:
        raise BookingError(field("repeat"), short(repeat) if isinstance(repeat, str) else None,
                           f"{field('repeat')} may be " + " or ".join(f'"{r}"' for r in REPEATS)
                           + f' (with "until": the last date, like "2027-02-23"), not {short(repeat)!r}')
    hint = f'{field("until")} must be the last date of a weekly booking, like "2027-02-23"'
    if not isinstance(until, str) or len(until) > 40:
        raise BookingError(field("until"), None, hint + ("" if until is None else f", not {short(until)!r}"))
    try:
        last = date.fromisoformat(until)
    except ValueError:
        raise BookingError(field("until"), short(until), f"{hint}, not {until!r}") from None
    if last < start.date():
        raise BookingError(field("until"), until, f"{field('until')} must be on or after the start's date "
                                                  f"({start.date()})")
    if last - start.date() > MAX_AHEAD:
        raise BookingError(field("until"), until, f"a weekly booking lasts at most {MAX_AHEAD.days} days from its "
                                                  f"start ({start.date()})")
    if end - start > WEEK:
        raise BookingError(field("end"), spec["end"], "a weekly booking's window lasts at most 7 days")
    return repeat, last


@dataclass(frozen=True)
class BookingRules:
    """What bookings may be: the lab's time zone, the courses (their quotas), students' allowance per course."""

    zone: ZoneInfo | None
    courses: Mapping[str, Quota]  # by hub group: the course's quota (0: none)
    per_user: Quota
    student_hours: Mapping[str, float]  # course -> most hours one student booking lasts (absent: none)

    @classmethod
    def parse(cls, courses: Mapping[str, Mapping[str, Any]], quotas: Mapping[str, Quota], per_user: Quota,
              zone: ZoneInfo | None, where: str = "c.Broker") -> BookingRules:
        hours = {}
        for group, entry in courses.items():
            value = entry.get("student_bookings")
            if value is None or value is False:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                    or not 0 < value <= 24 * 31:
                raise VGPURequestError(f"{where}.courses[{group!r}].student_bookings", value,
                                       f"{where}.courses[{group!r}].student_bookings must be the most hours one "
                                       f"student's booking may last (more than 0, at most {24 * 31}), or False")
            hours[group] = float(value)
        return cls(zone, dict(quotas), per_user, hours)

    def never_fits(self, booking: Booking, largest_node: int | None) -> BookingError | None:
        """Why ``booking`` can never be honoured whatever else runs (None: it might be)."""
        if largest_node is not None and booking.request.count > largest_node:
            return BookingError("vgpus", booking.request.count,
                                f"a kernel of {booking.request.count} vGPUs is larger than the largest node "
                                f"({largest_node} vGPUs)")
        quota, whose = (self.per_user, f"one student ({booking.user})") if booking.user else (
            self.courses.get(booking.course, Quota()), f"course {booking.course}")
        if quota.vgpus and booking.vgpus > quota.vgpus:
            return BookingError("count", booking.count, f"{booking.count} × {booking.request.count} vGPUs is more than "
                                                        f"{whose} may hold at once ({quota.vgpus} vGPUs)")
        if quota.memory_mib and booking.count * booking.request.total_memory_mib > quota.memory_mib:
            each = format_mib(booking.request.total_memory_mib)
            return BookingError("count", booking.count, f"{booking.count} × {each} is more vGPU memory than {whose} "
                                                        f"may hold at once ({format_mib(quota.memory_mib)})")
        if quota.kernels and booking.count > quota.kernels:
            return BookingError("count", booking.count, f"{booking.count} kernels are more than {whose} may run at "
                                                        f"once ({quota.kernels})")
        return None

    def who_may_book(self, booking: Booking, caller: str, groups: Sequence[str], instructor: bool,
                     own_course: str) -> None:
        """Raises BookingForbidden unless ``caller`` may make (or remove) ``booking``: an instructor for a
        course whose hub group they are in; a student only for themself, in their own course, where it allows it."""
        if booking.course not in self.courses:
            raise BookingError("course", booking.course, f'"{booking.course[:80]}" is not a course of this class; '
                                                         f"courses: {', '.join(sorted(self.courses)) or 'none'}")
        if instructor:
            if booking.course not in groups:
                raise BookingForbidden("course", booking.course,
                                       f"you may book only for your own courses (the hub groups you are in: "
                                       f"{', '.join(sorted(groups)) or 'none'})")
            return
        if booking.user != caller:
            raise BookingForbidden("user", None, "a student books only for themself")
        if booking.repeat:
            raise BookingForbidden("repeat", booking.repeat, "a student's booking does not repeat: book one window "
                                                             "at a time, or ask an instructor for a weekly booking")
        if booking.course != own_course:
            raise BookingForbidden("course", booking.course, f"you may book only in your own course "
                                                             f"({own_course or 'none'})")
        hours = self.student_hours.get(booking.course)
        if hours is None:
            raise BookingForbidden("course", booking.course, f"course {booking.course} does not let students book "
                                                             "vGPUs; ask an instructor")
        if booking.end - booking.start > timedelta(hours=hours):
            raise BookingError("end", booking.end.isoformat(),
                               f"a student's booking in {booking.course} lasts at most {hours:g} hours")


@dataclass(frozen=True)
class NodeRoom:
    """One node as the booking check counts it, in the backend's resources (``Nodes.needs``)."""

    name: str
    offers: Mapping[str, int]  # allocatable: what a later window may use
    free_now: Mapping[str, int]  # free now, with what the broker takes back (its ready warm kernels)
    device_memory_mib: int | None = None  # one device's memory: a vGPU on this node asks at most this


@dataclass(frozen=True)
class Nodes:
    """The pool's nodes, to place booked kernels on as the scheduler does: each kernel on one node."""

    rooms: Sequence[NodeRoom]
    needs: Callable[[VGPURequest], Mapping[str, int]]  # what one kernel takes of a node (empty: no node counts it)
    count_resource: str  # the vGPU count among the resources (the rest are named as they are)
    memory_resource: str | None = None  # MiB of vGPU memory, where the backend counts it
    unplaced: frozenset[str] = frozenset()  # kernels running or starting that no node holds yet

    def idle(self) -> Nodes:
        """The nodes as if nothing ran on them (the config's bookings at start are checked as written)."""
        return replace(self, rooms=[replace(room, free_now=room.offers) for room in self.rooms], unplaced=frozenset())

    def pack(self, kernels: Iterable[tuple[VGPURequest, int]],
             spaces: list[dict[str, int]]) -> list[tuple[VGPURequest, int]]:
        """First fit, largest shape first: ``kernels`` (shape, how many) onto ``spaces`` (per room, what is left;
        taken from); the shapes and how many of each found no node. O(shapes × nodes)."""
        missing = []
        for request, left in sorted(kernels, key=lambda kernel: (kernel[0].count, kernel[0].memory_mib), reverse=True):
            need = {resource: amount for resource, amount in self.needs(request).items() if amount}
            for room, space in zip(self.rooms, spaces, strict=True):
                if not left:
                    break
                if room.device_memory_mib and request.memory_mib > room.device_memory_mib:
                    continue
                taken = min([left, *(space.get(resource, 0) // amount for resource, amount in need.items())])
                for resource, amount in need.items():
                    space[resource] -= taken * amount
                left -= taken
            if left:
                missing.append((request, left))
        return missing

    def offered(self, spaces: list[dict[str, int]], request: VGPURequest, most: int = 6) -> str:
        """'gpu-1: 3 vGPUs, gpu-2: 3 vGPUs' (the roomiest first), or that a device's memory is too small."""
        def too_small(room: NodeRoom) -> bool:
            return bool(room.device_memory_mib) and request.memory_mib > (room.device_memory_mib or 0)

        rows = sorted(zip(self.rooms, spaces, strict=True),
                      key=lambda row: (too_small(row[0]), -row[1].get(self.count_resource, 0), row[0].name))
        parts = []
        for room, space in rows[:most]:
            if too_small(room):
                parts.append(f"{room.name}: devices of {format_mib(room.device_memory_mib)}")
                continue
            vgpus = space.get(self.count_resource, 0)
            memory = space.get(self.memory_resource, 0) if self.memory_resource else None
            parts.append(f"{room.name}: {vgpus} vGPU{'s' if vgpus != 1 else ''}"
                         + (f" · {format_mib(memory)}" if memory is not None else ""))
        return ", ".join(parts) + (f" and {len(rows) - most} more" if len(rows) > most else "")


@dataclass(frozen=True)
class Hold:
    """What a launch must leave to bookings it is not one of: free vGPUs, and ready warm kernels of its shape."""

    vgpus: int = 0
    warm: int = 0


class Bookings:
    """The class's bookings; ``running`` arguments are every kernel held or being started (holdings)."""

    def __init__(self, rules: BookingRules, clock: Callable[[], float] = time.time):
        self.rules = rules
        self.clock = clock
        self.items: dict[str, Booking] = {}

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), self.rules.zone) if self.rules.zone \
            else datetime.fromtimestamp(self.clock()).astimezone()

    def open(self, now: datetime | None = None) -> list[Booking]:
        """The bookings whose window is open now, student bookings first (they are the more specific)."""
        now = now or self.now()
        return sorted((b for b in self.items.values() if b.open_at(now)), key=lambda b: (not b.user, b.start, b.id))

    def listed(self) -> list[Booking]:
        return sorted(self.items.values(), key=lambda b: (b.start, b.course, b.id))

    # -- what the open bookings use -----------------------------------------------------------------
    def assign(self, bookings: Iterable[Booking], running: Iterable[Holding]) -> dict[str, list[str]]:
        """Which kernels count toward which booking (each kernel at most one, each booking at most its count)."""
        by_shape: dict[tuple[str, int, int], list[Holding]] = {}  # one pass over the class's kernels
        for holding in running:
            by_shape.setdefault((holding.course, holding.vgpus, holding.memory_mib), []).append(holding)
        taken: set[str] = set()
        out: dict[str, list[str]] = {}
        for booking in bookings:
            shape = by_shape.get((booking.course, booking.request.count, booking.request.total_memory_mib), [])
            mine = []
            for holding in shape:
                if len(mine) == booking.count:
                    break
                if holding.kernel_id not in taken and (not booking.user or holding.user == booking.user):
                    mine.append(holding.kernel_id)
                    taken.add(holding.kernel_id)
            out[booking.id] = mine
        return out

    def unused(self, running: Iterable[Holding], now: datetime | None = None) -> dict[str, int]:
        """Per open booking, how many of its kernels are not running or starting."""
        bookings = self.open(now)
        used = self.assign(bookings, running)
        return {b.id: b.count - len(used[b.id]) for b in bookings}

    def serving(self, holding: Holding, running: Iterable[Holding]) -> Booking | None:
        """The open booking with a kernel left that ``holding`` (a launch, not in ``running``) is one of."""
        unused = self.unused(running)
        return next((b for b in self.open() if unused[b.id] and b.fits(holding)), None)

    def booked(self, waiting: Iterable[Any], running: Iterable[Holding]) -> set[str]:
        """The kernel ids of those ``waiting`` (each with a ``holding``, in line order) the open bookings'
        unused kernels serve."""
        unused, bookings = self.unused(running), self.open()
        out = set()
        for item in waiting:
            booking = next((b for b in bookings if unused[b.id] and b.fits(item.holding)), None)
            if booking is not None:
                unused[booking.id] -= 1
                out.add(item.holding.kernel_id)
        return out

    def hold(self, holding: Holding, running: Iterable[Holding],
             warm_ready: Callable[[VGPURequest], int] = lambda request: 0) -> Hold:
        """What the launch ``holding`` must leave to the open bookings it is not one of. Warm kernels of a
        booked shape (``warm_ready``: how many a pool has, ready or starting) stand for the booking first:
        their vGPUs are taken already, so only the rest is held back as free vGPUs."""
        running = [h for h in running if h.kernel_id != holding.kernel_id]
        unused = self.unused(running)
        vgpus = warm = 0
        standing: dict[VGPURequest, int] = {}
        for booking in self.open():
            left = unused[booking.id]
            if not left:
                continue
            pre = min(left, max(warm_ready(booking.request) - standing.get(booking.request, 0), 0))
            standing[booking.request] = standing.get(booking.request, 0) + pre
            if booking.fits(holding):
                continue
            vgpus += (left - pre) * booking.request.count
            if same_shape(booking.request, holding):
                warm += pre
        return Hold(vgpus, warm)

    def warm_wanted(self, request: VGPURequest, running: Iterable[Holding]) -> int:
        """Warm kernels of ``request``'s shape the open bookings want ready (their kernels not yet started)."""
        unused = self.unused(running)
        return sum(unused[b.id] for b in self.open() if b.request == request)

    # -- taking and giving back ---------------------------------------------------------------------
    def check(self, booking: Booking, pool_vgpus: int, running: Iterable[Holding], held_outside: int = 0,
              nodes: Nodes | None = None) -> None:
        """Raises BookingRefused when ``booking`` cannot be honoured beside the other bookings: at some moment
        of one of its windows it and they (and, for a window open now, the kernels running now that are no
        booking's and ``held_outside``: other workloads) need more than ``pool_vgpus``, or (given ``nodes``)
        their kernels cannot be placed on the nodes. Without ``nodes`` (not visible) the count alone decides."""
        now = self.now()
        if booking.last_end <= now:
            raise BookingError("end", booking.end.isoformat(), f"the window ended already ({when(booking.last_end)})")
        if booking.start - now > MAX_AHEAD:
            raise BookingError("start", booking.start.isoformat(), f"a booking starts at most {MAX_AHEAD.days} days "
                                                                   "ahead")
        if booking.until is not None and booking.until - now.date() > MAX_AHEAD:
            raise BookingError("until", booking.until.isoformat(), f"a weekly booking ends at most {MAX_AHEAD.days} "
                                                                   "days ahead")
        running = list(running)
        for start, end in booking.windows(after=now):
            reason = self._refusal(booking, max(start, now), end, now, pool_vgpus, running, held_outside, nodes)
            if reason is not None:
                zone = self.rules.zone
                occurrence = f"its occurrence on {start.astimezone(zone):%a %d %b %Y} cannot be honoured: " \
                    if booking.repeat else ""
                raise BookingRefused("count", booking.count, f"cannot book {booking.describe(zone)}: {occurrence}"
                                                             f"{reason}; book fewer, or another time")

    def _refusal(self, booking: Booking, first: datetime, end: datetime, now: datetime, pool_vgpus: int,
                 running: list[Holding], held_outside: int, nodes: Nodes | None) -> str | None:
        """Why ``booking`` cannot be honoured from ``first`` to ``end`` (one of its windows); None: it can."""
        others = [(b, start, stop) for b in self.items.values() if b.id != booking.id
                  for start, stop in b.windows(first, end)]
        zone = self.rules.zone
        for moment in sorted({first} | {start for _, start, _ in others if first < start}):
            then = [b for b, start, stop in others if start <= moment < stop]
            booked = sum(b.vgpus for b in then)
            held, used = 0, None
            if moment == now:  # the window is open: kernels running now are not taken back
                used = self.assign(sorted([*then, booking], key=lambda b: (not b.user, b.start, b.id)), running)
                counted = {k for ids in used.values() for k in ids}
                held = held_outside + sum(h.vgpus for h in running if h.kernel_id not in counted)
            free = pool_vgpus - booked - held
            if free < booking.vgpus:
                return (f"it needs {booking.vgpus} vGPU{'s' if booking.vgpus != 1 else ''}, but at "
                        f"{when(moment.astimezone(zone))} only {max(free, 0)} of the pool's {pool_vgpus} are free "
                        f"({booked} booked" + (f" by {', '.join(sorted({b.whom() for b in then}))}" if then else "")
                        + (f", {held} held by kernels running now" if held else "") + ")")
            homeless = self._no_node(booking, then, used, running, nodes) if nodes is not None else None
            if homeless is not None:
                return f"at {when(moment.astimezone(zone))} {homeless}"
        return None

    @staticmethod
    def _no_node(booking: Booking, then: list[Booking], used: dict[str, list[str]] | None,
                  running: list[Holding], nodes: Nodes) -> str | None:
        """Whether ``booking``'s kernels and those of ``then`` (the other bookings open at a moment) can be
        placed on ``nodes``: for a window open now (``used``: the kernels counted toward them) their kernels
        not running yet and the unplaced launches no booking counts, onto what is free now; later, all of
        them onto what the nodes offer. None: they can; else what does not fit and what the nodes offer."""
        def wanted(b: Booking) -> int:
            return b.count - len(used.get(b.id, ())) if used is not None else b.count

        others = [(b.request, wanted(b)) for b in then if wanted(b)]
        if used is not None:
            counted = {k for ids in used.values() for k in ids}
            others += [(VGPURequest(h.vgpus, h.memory_mib // h.vgpus), 1) for h in running
                       if h.vgpus and h.kernel_id in nodes.unplaced and h.kernel_id not in counted]
        mine = (booking.request, wanted(booking))
        spaces = [dict(room.free_now if used is not None else room.offers) for room in nodes.rooms]
        left = [dict(space) for space in spaces]
        missing = nodes.pack(others, left) or nodes.pack([mine], [dict(space) for space in left])
        if not missing or not nodes.pack([*others, mine], [dict(space) for space in spaces]):
            return None
        shape, count = missing[0]
        beside = f" beside {sum(n for _, n in others)} other kernels then" if others else ""
        kernels = f"{count} kernel of" if count == 1 else f"{count} kernels of"
        return (f"{kernels} {shape.describe()} find{'s' if count == 1 else ''} no node{beside} (a kernel runs on one "
                f"node; the nodes offer {nodes.offered(left, booking.request)} then)")

    def add(self, booking: Booking, pool_vgpus: int, running: Iterable[Holding], held_outside: int = 0,
            nodes: Nodes | None = None) -> Booking:
        if booking.user and booking.by == booking.user:  # a student's own: one at a time
            mine = [b for b in self.items.values() if b.by == booking.user and b.last_end > self.now()]
            if mine:
                raise BookingRefused("user", booking.user, f"you have a booking already ({mine[0].describe()}); "
                                                           "a student holds one at a time: remove it first")
        self.check(booking, pool_vgpus, running, held_outside, nodes)
        self.items[booking.id] = booking
        return booking

    def remove(self, booking_id: str) -> Booking | None:
        return self.items.pop(booking_id, None)

    def prune(self) -> list[Booking]:
        """Forget the bookings whose window ended; those forgotten."""
        now = self.now()
        ended = [b for b in self.items.values() if b.last_end <= now]
        for booking in ended:
            del self.items[booking.id]
        return ended

    # -- what survives a restart --------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The bookings made through the API (the static ones come from the config again)."""
        return {"bookings": [{"id": b.id, "by": b.by, "course": b.course, "count": b.count, "vgpus": b.request.count,
                              "memory": f"{b.request.memory_mib}Mi", "start": b.start.isoformat(),
                              "end": b.end.isoformat(), **({"user": b.user} if b.user else {}),
                              **({"compute": b.request.compute_percent} if b.request.compute_percent else {}),
                              **({"repeat": b.repeat, "until": b.until.isoformat()} if b.repeat and b.until else {})}
                             for b in self.items.values() if not b.static]}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue the API's bookings from ``state()`` of an earlier broker (ended or unreadable ones dropped)."""
        now = self.now()
        for entry in list(state.get("bookings") or []):
            try:
                booking = parse_booking({k: v for k, v in dict(entry).items() if k in BOOKING_KEYS},
                                        by=str(entry["by"]), zone=self.rules.zone, booking_id=str(entry["id"]))
            except (VGPURequestError, KeyError, TypeError, ValueError) as err:
                log.warning("a kept booking cannot be read back (%s); dropped", err)
                continue
            if booking.course not in self.rules.courses:
                log.warning("a kept booking of %s is dropped: no such course in c.Broker.courses", booking.course)
            elif booking.last_end > now and booking.id not in self.items:
                self.items[booking.id] = booking


def parse_static(entries: Any, rules: BookingRules, where: str = "c.Broker.bookings") -> list[Booking]:
    """``c.Broker.bookings`` checked before the broker reaches the cluster: each entry's fields, its course,
    what the quotas can never honour (the pool is checked once the broker sees it)."""
    if not isinstance(entries, list | tuple):
        raise BookingError(where, None, f"{where} must be a list of bookings")
    out = []
    for i, entry in enumerate(entries):
        booking = parse_booking(entry, by=where, zone=rules.zone, where=f"{where}[{i}]", booking_id=f"config-{i + 1}",
                                static=True)
        if booking.course not in rules.courses:
            raise BookingError(f"{where}[{i}].course", booking.course,
                               f"{where}[{i}].course {booking.course!r} is not in c.Broker.courses")
        refusal = rules.never_fits(booking, None)
        if refusal is not None:
            raise BookingError(f"{where}[{i}].{refusal.field}", refusal.value, f"{where}[{i}]: {refusal}")
        out.append(booking)
    return out


__all__ = ["Booking", "BookingError", "BookingForbidden", "BookingRefused", "BookingRules", "Bookings", "Hold",
           "NodeRoom", "Nodes", "parse_booking", "parse_static"]
