"""What a booking is and may be: a vGPU shape kept for a course (or for one of its students) during a time
window, each field parsed and checked (errors name the field), and who may book what.

A booking names a course (its exact hub group), optionally one student of it, a shape (``vgpus``,
``memory``, ``compute`` as launches and warm pools parse them), a ``count`` of kernels of that shape and
a window (``start`` / ``end``; a time without an offset is in the lab's time zone). An instructor's booking
may repeat (``repeat: "weekly"`` until the date ``until``: the same weekday and wall-clock times in the lab's
time zone each week, one booking with one id). An instructor books
for the courses whose hub group they are in; a student books only for themself, only in their own
course, and only where the course allows it (``student_bookings``: the most hours one booking of theirs
may last; one booking of theirs at a time). Whether a booking can be honoured is ``core.bookings``'.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from ..vgpu import VGPURequest, VGPURequestError, format_mib, short
from .ledger import Holding, Quota

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



__all__ = ["BOOKING_KEYS", "MAX_AHEAD", "Booking", "BookingError", "BookingForbidden", "BookingRefused",
           "BookingRules", "parse_booking", "parse_static", "same_shape", "when"]
