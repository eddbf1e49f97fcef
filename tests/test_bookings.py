"""core/bookings.py on its own (an injected clock, no cluster): each field checked and named, windows in the lab's
time zone, the overlap arithmetic of the capacity check and its refusal with the reason, who may book, what a
launch leaves to bookings not its own, and admission keeping a booking's vGPUs while the queue is long."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from orion_jupyter.core.admission import Admission, Admitted, Queued
from orion_jupyter.core.bookings import (
    BookingError,
    BookingForbidden,
    BookingRefused,
    BookingRules,
    Bookings,
    Hold,
    parse_booking,
    parse_static,
)
from orion_jupyter.core.ledger import Holding, Ledger, Quota
from orion_jupyter.core.warm import WarmKernels
from orion_jupyter.core.warm_config import WarmConfig
from orion_jupyter.vgpu import VGPURequest, VGPURequestError
from tests.test_admission import FakeClass, decide, launch

BERLIN = ZoneInfo("Europe/Berlin")
MONDAY_8 = datetime(2026, 12, 7, 8, 0, tzinfo=BERLIN)  # Monday 08:00 in the lab's time zone
ONE = VGPURequest.parse(1, "4Gi")
COURSES = {"AI_101": Quota(vgpus=3), "ML 2": Quota(), "free": Quota()}


class Clock:
    def __init__(self, now: datetime = MONDAY_8):
        self.now = now

    def __call__(self) -> float:
        return self.now.timestamp()


def rules(**student_hours: float) -> BookingRules:
    return BookingRules(BERLIN, COURSES, Quota(vgpus=2), {"AI_101": 2.0, **student_hours})


def book(course: str = "ML 2", start: str = "09:00", end: str = "11:00", count: int = 1, user: str | None = None,
         by: str = "teacher", **shape) -> object:
    spec = {"course": course, "count": count, "vgpus": 1, "memory": "4Gi", "start": f"2026-12-07T{start}",
            "end": f"2026-12-07T{end}", **shape}
    if user is not None:
        spec["user"] = user
    return parse_booking(spec, by=by, zone=BERLIN)


def kernel(kernel_id: str, user: str, course: str, vgpus: int = 1, memory_gib: int = 4) -> Holding:
    return Holding(kernel_id, user, course, vgpus, vgpus * memory_gib * 1024)


@pytest.mark.parametrize(("change", "field", "says"), [
    ({"colour": "red"}, "colour", 'no field "colour"'),
    ({"course": ""}, "course", "hub group"),
    ({"course": 7}, "course", "hub group"),
    ({"user": ["ann"]}, "user", "user name"),
    ({"vgpus": 0}, "vgpus", "1 or more"),
    ({"vgpus": "two"}, "vgpus", ""),
    ({"memory": "lots"}, "memory", ""),
    ({"count": 0}, "count", "from 1 to 1000"),
    ({"count": True}, "count", "whole number"),
    ({"count": 1001}, "count", "from 1 to 1000"),
    ({"start": "tuesday"}, "start", 'like "2026-12-08T09:00"'),
    ({"start": 900}, "start", "date and time"),
    ({"end": "2026-12-07T08:00"}, "end", "after the start"),
    ({"end": "2027-01-20T09:00"}, "end", "at most 31 days"),
])
def test_each_field_is_checked_and_named(change, field, says):
    spec = {"course": "ML 2", "vgpus": 1, "memory": "4Gi", "count": 2, "start": "2026-12-07T09:00",
            "end": "2026-12-07T11:00", **change}
    with pytest.raises(BookingError) as caught:
        parse_booking(spec, by="teacher", zone=BERLIN)
    assert caught.value.field == field and says in str(caught.value), str(caught.value)


def test_a_missing_window_is_named_and_local_times_are_in_the_lab_time_zone():
    with pytest.raises(BookingError) as caught:
        parse_booking({"course": "ML 2", "vgpus": 1, "memory": "4Gi", "start": "2026-12-07T09:00"}, by="t",
                      zone=BERLIN)
    assert caught.value.field == "end"
    local = book()
    assert local.start == datetime(2026, 12, 7, 8, 0, tzinfo=ZoneInfo("UTC"))  # 09:00 in Berlin (CET)
    offset = parse_booking({"course": "ML 2", "vgpus": 1, "memory": "4Gi", "start": "2026-12-07T09:00+00:00",
                            "end": "2026-12-07T10:00+00:00"}, by="t", zone=BERLIN)
    assert offset.start - local.start == timedelta(hours=1)
    assert local.describe(BERLIN) == "1 kernel of 1 vGPU · 4 GiB for ML 2, Mon 07 Dec 09:00 CET – Mon 07 Dec 11:00 CET"


def test_overlapping_bookings_fit_the_pool_and_one_too_many_is_refused_with_the_moment_and_what_is_free():
    bookings = Bookings(rules(), Clock())
    bookings.add(book(start="09:00", end="11:00", count=2), 4, [])
    bookings.add(book("AI_101", start="10:00", end="12:00", count=2), 4, [])  # 4 of 4 from 10:00 to 11:00
    bookings.add(book(start="11:00", end="12:00", count=2), 4, [])  # the first ended at 11:00: 4 of 4 again
    with pytest.raises(BookingRefused) as caught:
        bookings.add(book(start="08:30", end="10:30"), 4, [])  # fits at 08:30 and 09:00, not from 10:00
    message = str(caught.value)
    assert caught.value.field == "count" and "at Mon 07 Dec 10:00 CET only 0 of the pool's 4 are free" in message
    assert "(4 booked by AI_101, ML 2)" in message and "1 kernel of 1 vGPU · 4 GiB for ML 2" in message, message
    bookings.add(book(start="08:30", end="09:59"), 4, [])  # three of four until the second starts
    assert len(bookings.items) == 4
    with pytest.raises(BookingRefused):
        bookings.add(book(start="12:00", end="13:00", vgpus=5), 4, [])  # five of a free pool of four
    assert bookings.add(book(start="12:00", end="13:00", count=4), 4, []).vgpus == 4


def test_a_window_open_now_counts_the_kernels_running_now_and_a_later_one_does_not():
    clock = Clock(MONDAY_8 + timedelta(hours=1))  # 09:00
    bookings = Bookings(rules(), clock)
    running = [kernel("k1", "ann", "ML 2"), kernel("k2", "bob", "ML 2"), kernel("k3", "cy", "free")]
    with pytest.raises(BookingRefused) as caught:
        bookings.add(book("AI_101", start="09:00", end="10:00", count=2), 4, running)
    assert "only 1 of the pool's 4 are free (0 booked, 3 held by kernels running now)" in str(caught.value)
    # ML 2's own running kernels count toward its booking: one more vGPU is enough
    bookings.add(book("ML 2", start="08:00", end="10:00", count=3), 4, running)
    with pytest.raises(BookingRefused) as caught:
        bookings.add(book("AI_101", start="09:00", end="10:00"), 4, running)
    assert "only 0 of the pool's 4 are free (3 booked by ML 2, 1 held by kernels running now)" in str(caught.value)
    with pytest.raises(BookingRefused) as caught:  # other workloads on the nodes are not taken back either
        bookings.add(book("free", start="09:00", end="10:00"), 4, running, held_outside=1)
    assert "1 held by kernels running now" in str(caught.value)
    bookings.add(book("free", start="09:00", end="10:00"), 4, running)  # cy's kernel is the booking's own
    # a later window: the kernels of now will have been freed by then, or the booking takes them as they go
    assert bookings.add(book("AI_101", start="10:00", end="11:00", count=3), 4, running).count == 3
    with pytest.raises(BookingError) as caught:
        bookings.add(book(start="07:00", end="08:30"), 4, [])
    assert caught.value.field == "end" and "ended already" in str(caught.value)


def test_what_a_launch_leaves_to_bookings_not_its_own_and_the_warm_kernels_that_stand_for_them():
    clock = Clock(MONDAY_8 + timedelta(hours=1, minutes=30))
    bookings = Bookings(rules(), clock)
    bookings.add(book("AI_101", start="09:00", end="11:00", count=2), 8, [])
    bookings.add(book("ML 2", start="09:00", end="11:00", count=1, user="eve"), 8, [])
    theirs, stranger = kernel("new", "ann", "AI_101"), kernel("new", "zed", "free")
    assert bookings.hold(theirs, []) == Hold(vgpus=1)  # eve's kernel is held back from ann
    assert bookings.hold(stranger, []) == Hold(vgpus=3)
    assert bookings.hold(kernel("new", "eve", "ML 2"), []) == Hold(vgpus=2)
    assert bookings.hold(kernel("new", "ann", "AI_101", vgpus=2), []) == Hold(vgpus=3)  # not the booked shape
    started = [kernel("k1", "bob", "AI_101")]
    assert bookings.hold(stranger, started) == Hold(vgpus=2)
    assert bookings.serving(theirs, started) is not None
    assert bookings.serving(theirs, [*started, kernel("k2", "cy", "AI_101")]) is None  # both kernels run
    # two ready warm kernels of the shape stand for AI_101's booking: a stranger of that shape leaves them
    assert bookings.hold(stranger, [], warm_ready=lambda request: 2) == Hold(vgpus=1, warm=2)
    # eve's booking (a student's: the more specific) is stood for first: ann leaves that one warm kernel
    assert bookings.hold(theirs, [], warm_ready=lambda request: 2) == Hold(vgpus=0, warm=1)
    assert bookings.warm_wanted(ONE, started) == 2  # AI_101's second kernel and eve's
    clock.now += timedelta(hours=2)  # the windows closed
    assert bookings.hold(stranger, []) == Hold() and bookings.prune() and bookings.items == {}


def test_who_may_book_instructors_for_their_courses_students_for_themselves_where_allowed():
    allowed = rules()
    allowed.who_may_book(book("AI_101"), "teacher", ["AI_101", "instructors"], True, "")
    with pytest.raises(BookingForbidden) as caught:
        allowed.who_may_book(book("ML 2"), "teacher", ["AI_101", "instructors"], True, "")
    assert caught.value.field == "course" and "your own courses" in str(caught.value)
    with pytest.raises(BookingError) as caught:
        allowed.who_may_book(book("Nope"), "teacher", ["Nope", "instructors"], True, "")
    assert caught.value.field == "course" and "not a course of this class" in str(caught.value)

    allowed.who_may_book(book("AI_101", user="ann", start="09:00", end="11:00"), "ann", ["AI_101"], False, "AI_101")
    with pytest.raises(BookingForbidden) as caught:  # for another student
        allowed.who_may_book(book("AI_101", user="bob"), "ann", ["AI_101"], False, "AI_101")
    assert caught.value.field == "user" and "only for themself" in str(caught.value)
    with pytest.raises(BookingForbidden) as caught:  # the whole course
        allowed.who_may_book(book("AI_101"), "ann", ["AI_101"], False, "AI_101")
    assert caught.value.field == "user"
    with pytest.raises(BookingForbidden) as caught:  # "Ann" is not "ann"
        allowed.who_may_book(book("AI_101", user="Ann"), "ann", ["AI_101"], False, "AI_101")
    with pytest.raises(BookingForbidden) as caught:
        allowed.who_may_book(book("ML 2", user="ann"), "ann", ["ML 2"], False, "ML 2")
    assert caught.value.field == "course" and "does not let students book" in str(caught.value)
    with pytest.raises(BookingForbidden):
        allowed.who_may_book(book("AI_101", user="ann"), "ann", ["AI_101"], False, "ML 2")
    with pytest.raises(BookingError) as caught:
        allowed.who_may_book(book("AI_101", user="ann", end="11:30"), "ann", ["AI_101"], False, "AI_101")
    assert caught.value.field == "end" and "at most 2 hours" in str(caught.value)

    bookings = Bookings(allowed, Clock())
    bookings.add(book("AI_101", user="ann", by="ann"), 4, [])
    with pytest.raises(BookingRefused) as caught:
        bookings.add(book("AI_101", user="ann", by="ann", start="12:00", end="13:00"), 4, [])
    assert caught.value.field == "user" and "one at a time" in str(caught.value)


def test_what_the_quotas_can_never_honour_is_refused():
    assert rules().never_fits(book("AI_101", count=3), 4) is None
    too_many = rules().never_fits(book("AI_101", count=4), 4)
    assert too_many.field == "count" and "more than course AI_101 may hold at once (3 vGPUs)" in str(too_many)
    student = rules().never_fits(book("AI_101", user="ann", count=3), 4)
    assert "one student (ann)" in str(student)
    assert rules().never_fits(book(vgpus=4), 2).field == "vgpus"


def test_static_bookings_are_checked_at_start_and_the_api_ones_survive_a_restart():
    with pytest.raises(VGPURequestError) as caught:
        parse_static([{"course": "ML 2", "vgpus": 1, "memory": "4Gi", "start": "2026-12-07T09:00",
                       "end": "2026-12-07T10:00", "cout": 2}], rules())
    assert caught.value.field == "c.Broker.bookings[0].cout"
    with pytest.raises(VGPURequestError) as caught:
        parse_static([{"course": "AI_101", "vgpus": 1, "memory": "4Gi", "count": 9, "start": "2026-12-07T09:00",
                       "end": "2026-12-07T10:00"}], rules())
    assert caught.value.field == "c.Broker.bookings[0].count" and "may hold at once" in str(caught.value)
    with pytest.raises(VGPURequestError) as caught:
        parse_static([{"course": "Other", "vgpus": 1, "memory": "4Gi", "start": "2026-12-07T09:00",
                       "end": "2026-12-07T10:00"}], rules())
    assert caught.value.field == "c.Broker.bookings[0].course"
    static = parse_static([{"course": "ML 2", "vgpus": 1, "memory": "4Gi", "start": "2026-12-07T09:00",
                            "end": "2026-12-07T10:00"}], rules())
    assert static[0].id == "config-1" and static[0].static

    clock = Clock()
    first = Bookings(rules(), clock)
    first.items[static[0].id] = static[0]
    kept = first.add(book("AI_101", count=2, start="10:00", end="12:00"), 4, [])
    again = Bookings(rules(), clock)
    again.restore(first.state())
    assert list(again.items) == [kept.id] and again.items[kept.id] == kept  # the static one comes from the config
    clock.now += timedelta(hours=5)  # ended meanwhile: not brought back
    later = Bookings(rules(), clock)
    later.restore({**first.state(), "bookings": [*first.state()["bookings"], {"id": "x", "course": 3}]})
    assert later.items == {}


async def test_a_booking_is_honoured_while_the_queue_is_long():
    """Four vGPUs; AI_101 booked two 1-vGPU kernels for now. ML 2's students fill the rest and queue; AI_101's
    launches start at once (they overtake the line: the capacity was kept for them), a third waits."""
    host = FakeClass(free=4)
    ledger = Ledger(Quota(), {"AI_101": Quota(), "ML 2": Quota()})
    host.ledger = ledger
    clock = Clock(MONDAY_8 + timedelta(hours=1, minutes=5))
    bookings = Bookings(BookingRules(BERLIN, ledger.per_course, Quota(), {}), clock)
    bookings.add(book("AI_101", start="09:00", end="11:00", count=2), 4, [])
    admission = Admission(host, ledger, ["AI_101", "ML 2"], bookings=bookings)

    async def started(kernel_id: str, user: str, group: str):
        decision = await decide(admission, launch(kernel_id, user, group, ONE))
        if isinstance(decision, Admitted):
            host.started(admission, decision.holding)
        return decision

    ml = [await started(f"m{i}", f"ml{i}", "ML 2") for i in range(6)]
    assert [type(d) for d in ml] == [Admitted, Admitted, Queued, Queued, Queued, Queued]
    dan = await decide(admission, launch("d0", "dan", "AI_101", VGPURequest.parse(2, "4Gi")))  # not the booked shape
    assert isinstance(dan, Queued)
    assert isinstance(await started("a0", "ann", "AI_101"), Admitted)  # past dan: the booking's capacity is ann's
    assert isinstance(await started("a1", "bob", "AI_101"), Admitted)
    cy = await started("a2", "cy", "AI_101")  # the booking's two run; cy waits in line behind dan
    assert isinstance(cy, Queued) and sum(h.vgpus for h in host.running) == 4
    host.gone(admission, "a0")  # a booked kernel ends: its vGPU goes back to the booking, not to ML 2's line
    assert await asyncio.wait_for(cy.waiting.turn, 5) is True
    host.started(admission, cy.waiting.holding)
    assert not any(d.waiting.turn.done() for d in ml[2:])
    clock.now += timedelta(hours=2)  # the window closed: what it kept is everyone's again
    host.gone(admission, "a1")
    assert await asyncio.wait_for(ml[2].waiting.turn, 5) is True
    assert not ml[3].waiting.turn.done()


class WarmHost:
    """A WarmHost whose kernels start at once (pod name, IP) and stay running."""

    user_volumes, user_volume_mounts, home_mount_path = (), (), ""

    def __init__(self):
        self.names: list[str] = []

    def pod(self, name):
        return {"metadata": {"name": name}, "status": {"phase": "Running"}} if name in self.names else None

    def kernel_pods(self):
        return [self.pod(name) for name in self.names]

    async def has_room(self, request):
        return True

    async def roster_members(self, course):
        return []

    async def start_pod(self, plan):
        self.names.append(f"warm-{len(self.names)}")
        return self.names[-1], "10.0.0.1"

    async def delete_kernel(self, name):
        self.names.remove(name)


class Line:
    def __init__(self, waiting):
        self.items = waiting

    def waiting(self, user=None):
        return self.items

    def wake(self):
        pass


async def test_a_warm_pool_of_the_booked_shape_keeps_the_booking_s_kernels_ready_even_while_others_wait():
    config = WarmConfig.parse([{"name": "one", "vgpus": 1, "memory": "4Gi", "size": 1,
                                "hours": {"start": "13:00", "end": "14:00"}}], {}, "img:1", "Europe/Berlin")
    other = type("W", (), {"request": VGPURequest.parse(2, "4Gi"), "image": "img:1"})()  # waits for another shape
    host, wanted = WarmHost(), {ONE: 2}
    warm = WarmKernels(host, config, Line([other]))
    warm.booked = lambda request: wanted.get(request, 0)
    await warm.tick(MONDAY_8)  # outside the pool's hours, a launch waiting: only the booking's two
    await asyncio.gather(*warm._starting)
    assert len(host.names) == 2 and warm.ready_of(ONE) == 2
    assert warm.reserve("k-stranger", "zed", ONE, "img:1", "", keep=2) is None  # they stand for the booking
    assert warm.reserve("k-booked", "ann", ONE, "img:1", "", keep=0) in host.names
    wanted[ONE] = 0  # the window closed: the unclaimed one is stopped
    await warm.tick(MONDAY_8)
    assert len(host.names) == 1 and warm.ready_of(ONE) == 0


@pytest.mark.parametrize("value", ["yes", True, 0, -1, 10_000, float("nan")])
def test_a_course_s_student_bookings_setting_is_checked(value):
    with pytest.raises(VGPURequestError) as caught:
        BookingRules.parse({"AI_101": {"student_bookings": value}}, COURSES, Quota(), BERLIN)
    assert caught.value.field == "c.Broker.courses['AI_101'].student_bookings" and "most hours" in str(caught.value)
    assert BookingRules.parse({"AI_101": {"student_bookings": 1.5}, "ML 2": {"student_bookings": False}}, COURSES,
                              Quota(), BERLIN).student_hours == {"AI_101": 1.5}
