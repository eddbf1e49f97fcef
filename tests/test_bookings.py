"""core/bookings.py, booking_rules.py and booking_fit.py on their own (an injected clock, no cluster): each field
checked and named, windows in the lab's time zone, the overlap arithmetic of the capacity check and its refusal
with the reason, kernels placed node by node, weekly bookings, who may book, what a launch leaves to bookings not
its own, and admission keeping a booking's vGPUs while the queue is long."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from orion_jupyter.core.admission import Admission, Admitted, Queued, Refused
from orion_jupyter.core.booking_fit import NodeRoom, Nodes
from orion_jupyter.core.booking_rules import (
    BookingError,
    BookingForbidden,
    BookingRefused,
    BookingRules,
    parse_booking,
    parse_static,
)
from orion_jupyter.core.bookings import Bookings, Hold
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
    assert bookings.hold(theirs, []) == Hold(((ONE, 1),))  # room for eve's kernel is kept from ann
    assert bookings.hold(stranger, []) == Hold(((ONE, 1), (ONE, 2))) and bookings.hold(stranger, []).vgpus == 3
    assert bookings.hold(kernel("new", "eve", "ML 2"), []) == Hold(((ONE, 2),))
    assert bookings.hold(kernel("new", "ann", "AI_101", vgpus=2), []).vgpus == 3  # not the booked shape
    started = [kernel("k1", "bob", "AI_101")]
    assert bookings.hold(stranger, started) == Hold(((ONE, 1), (ONE, 1)))
    assert bookings.serving(theirs, started) is not None
    assert bookings.serving(theirs, [*started, kernel("k2", "cy", "AI_101")]) is None  # both kernels run
    # two ready warm kernels of the shape stand for AI_101's booking: a stranger of that shape leaves them
    assert bookings.hold(stranger, [], warm_ready=lambda request: 2) == Hold(((ONE, 1),), warm=2)
    # eve's booking (a student's: the more specific) is stood for first: ann leaves that one warm kernel
    assert bookings.hold(theirs, [], warm_ready=lambda request: 2) == Hold(warm=1)
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


# -- node by node -------------------------------------------------------------------------------------------


def nodes(*rooms: tuple[str, int, int], memory: dict[str, int] | None = None,
          devices: dict[str, int] | None = None, unplaced: frozenset[str] = frozenset()) -> Nodes:
    """Nodes (name, vGPUs offered, vGPUs free now); ``memory``: MiB of vGPU memory each offers (counted as a
    resource, as HAMi's is); ``devices``: one device's memory per node."""
    memory, devices = memory or {}, devices or {}

    def room(name: str, offers: int, free: int) -> NodeRoom:
        counted = {"mem": memory[name]} if name in memory else {}
        return NodeRoom(name, {"gpu": offers, **counted}, {"gpu": free, **counted}, devices.get(name))

    def needs(request: VGPURequest) -> dict[str, int]:
        return {"gpu": request.count, **({"mem": request.memory_mib} if memory else {})}

    return Nodes([room(*r) for r in rooms], needs, "gpu", "mem" if memory else None, unplaced)


def test_a_shape_that_fits_the_pool_s_count_but_no_node_is_refused_naming_it_and_what_the_nodes_offer():
    clock = Clock(MONDAY_8 + timedelta(hours=1))  # 09:00
    two = {"vgpus": 2}
    three = nodes(("n1", 4, 3), ("n2", 4, 3), ("n3", 4, 3))  # one vGPU held on each by other workloads
    bookings = Bookings(rules(), clock)
    with pytest.raises(BookingRefused) as caught:  # 8 of the 9 free vGPUs, but a node fits one kernel of two
        bookings.add(book(start="09:00", end="10:00", count=4, **two), 12, [], held_outside=3, nodes=three)
    message = str(caught.value)
    assert caught.value.field == "count" and "cannot book 4 kernels of 2 vGPUs × 4 GiB for ML 2" in message, message
    assert "at Mon 07 Dec 09:00 CET 1 kernel of 2 vGPUs × 4 GiB finds no node (a kernel runs on one node; the " \
           "nodes offer n1: 3 vGPUs, n2: 3 vGPUs, n3: 3 vGPUs then)" in message, message
    assert bookings.items == {}
    assert bookings.add(book(start="09:00", end="10:00", count=4, **two), 12, [], held_outside=3).count == 4, \
        "where the nodes are not visible the pool's count alone decides"
    bookings = Bookings(rules(), clock)
    assert bookings.add(book(start="09:00", end="10:00", count=3, **two), 12, [], 3, three).count == 3
    # a later window: the nodes' whole allocatable (what runs now will have gone), beside the bookings then
    assert bookings.add(book(start="10:00", end="11:00", count=3, vgpus=3), 12, [], 3, three).count == 3
    with pytest.raises(BookingRefused) as caught:  # one vGPU left on each node: no room for a kernel of two
        bookings.add(book("AI_101", start="10:30", end="11:00", **two), 12, [], 3, three)
    assert "1 kernel of 2 vGPUs × 4 GiB finds no node beside 3 other kernels then (a kernel runs on one node; " \
           "the nodes offer n1: 1 vGPU, n2: 1 vGPU, n3: 1 vGPU then)" in str(caught.value), str(caught.value)
    # launches accepted but not on a node yet take room too (a window open now)
    starting = [kernel("k1", "zed", "free", vgpus=3)]
    with pytest.raises(BookingRefused):
        Bookings(rules(), clock).add(book(start="09:00", end="10:00", vgpus=3, count=2), 12, starting, 0,
                                     nodes(("n1", 4, 4), ("n2", 4, 4), unplaced=frozenset({"k1"})))
    assert Bookings(rules(), clock).add(book(start="09:00", end="10:00", vgpus=3, count=2), 12, starting, 0,
                                        nodes(("n1", 4, 4), ("n2", 4, 4))).count == 2  # k1 runs: its node counts it
    # and so does a booking's own launch not on a node yet: three kernels of three on nodes of four, four and two
    ann = [kernel("a1", "ann", "AI_101", vgpus=3)]
    spread = nodes(("n1", 4, 4), ("n2", 4, 4), ("n3", 4, 2), unplaced=frozenset({"a1"}))
    bookings = Bookings(rules(), clock)
    bookings.add(book("AI_101", start="09:00", end="10:00", vgpus=3), 10, ann, 0, spread)
    with pytest.raises(BookingRefused) as caught:
        bookings.add(book(start="09:00", end="10:00", vgpus=3, count=2), 10, ann, 0, spread)
    assert "1 kernel of 3 vGPUs × 4 GiB finds no node beside 1 other kernels then" in str(caught.value), \
        str(caught.value)


def test_memory_per_vgpu_and_counted_memory_are_placed_node_by_node():
    clock = Clock()
    big = {"memory": "40Gi"}
    mixed = nodes(("small", 4, 4), ("large", 2, 2), devices={"small": 16 * 1024, "large": 80 * 1024})
    bookings = Bookings(rules(), clock)
    assert bookings.add(book(count=2, **big), 6, [], nodes=mixed).count == 2  # both on the large node
    with pytest.raises(BookingRefused) as caught:
        bookings.add(book("AI_101", start="10:00", end="12:00", **big), 6, [], nodes=mixed)
    assert "1 kernel of 1 vGPU · 40 GiB finds no node beside 2 other kernels then" in str(caught.value)
    assert "large: 0 vGPUs, small: devices of 16 GiB" in str(caught.value), str(caught.value)
    hami = nodes(("n1", 4, 4), ("n2", 4, 4), memory={"n1": 8 * 1024, "n2": 8 * 1024})
    bookings = Bookings(rules(), clock)
    assert bookings.add(book(count=2, memory="6Gi"), 8, [], nodes=hami).count == 2  # one a node: 6 of 8 GiB
    with pytest.raises(BookingRefused) as caught:  # vGPUs are left, memory is not
        bookings.add(book("AI_101", start="10:00", end="12:00", memory="3Gi"), 8, [], nodes=hami)
    assert "the nodes offer n1: 3 vGPUs · 2 GiB, n2: 3 vGPUs · 2 GiB then" in str(caught.value), str(caught.value)
    assert bookings.add(book("AI_101", start="10:00", end="12:00", memory="2Gi", count=2), 8, [], nodes=hami)



def test_a_launch_not_of_an_open_booking_leaves_its_kernels_a_node_wherever_the_scheduler_puts_it():
    three, big = VGPURequest.parse(3, "4Gi"), VGPURequest.parse(1, "40Gi")
    # five vGPUs free, three kept: by count one more fits, but on n2 it would leave no node with three
    assert not nodes(("n1", 4, 2), ("n2", 4, 3)).leaves_room(ONE, [(three, 1)])
    assert nodes(("n1", 4, 2), ("n2", 4, 4)).leaves_room(ONE, [(three, 1)])  # on either, one node keeps three
    # launches accepted but on no node yet land somewhere too: three of them spread, the fourth breaks it
    starting = [kernel(f"k{i}", "zed", "free") for i in range(3)]
    landing = nodes(("n1", 4, 4), ("n2", 4, 4), unplaced=frozenset({"k0", "k1", "k2"})).landing(starting)
    assert landing == [(ONE, 1)] * 3
    assert not nodes(("n1", 4, 4), ("n2", 4, 4)).leaves_room(ONE, [(three, 1)], landing)
    assert nodes(("n1", 4, 4), ("n2", 4, 4)).leaves_room(ONE, [(three, 1)], landing[:2])
    # memory per vGPU: the one node whose devices hold a booked 40 GiB vGPU is kept
    mixed = {"devices": {"small": 16 * 1024, "large": 80 * 1024}}
    assert not nodes(("small", 4, 4), ("large", 1, 1), **mixed).leaves_room(ONE, [(big, 1)])
    assert nodes(("small", 4, 4), ("large", 2, 2), **mixed).leaves_room(ONE, [(big, 1)])
    # the kernels running now crowd the booking already (one of two finds no node): a launch that takes no room
    # it could use still starts, one that takes more does not
    assert nodes(("small", 4, 4), ("large", 1, 1), **mixed).leaves_room(VGPURequest.parse(4, "4Gi"), [(big, 2)])
    assert not nodes(("small", 4, 4), ("large", 1, 1), **mixed).leaves_room(ONE, [(big, 2)])


async def test_admission_keeps_an_open_booking_s_room_node_by_node_where_the_nodes_are_visible():
    """Five vGPUs free of which three are booked for one kernel (AI_101): by count a 1-vGPU launch of another
    course fits, but node by node it could take the one node with three free: refused, saying why; the booking's
    own launch starts; where the nodes are not visible the count decides."""
    host = FakeClass(free=5)
    ledger = Ledger(Quota(), {"AI_101": Quota(), "free": Quota()})
    host.ledger = ledger
    bookings = Bookings(BookingRules(BERLIN, ledger.per_course, Quota(), {}), Clock(MONDAY_8 + timedelta(hours=1)))
    bookings.add(book("AI_101", start="09:00", end="11:00", vgpus=3), 5, [])
    admission = Admission(host, ledger, [], bookings=bookings)
    host.placed = nodes(("n1", 4, 2), ("n2", 4, 3))
    refused = await decide(admission, launch("z0", "zed", "free", ONE))
    assert isinstance(refused, Refused) and refused.error.reason == "unschedulable", refused
    assert "kept for open bookings' kernels not started yet (1 kernel of 3 vGPUs × 4 GiB)" in str(refused.error)
    assert not ledger.pending  # nothing kept of the refused launch
    host.placed = nodes(("n1", 4, 2), ("n2", 4, 4))  # four free on n2: wherever it runs, one node keeps three
    assert isinstance(await decide(admission, launch("z1", "zed", "free", ONE)), Admitted)
    admission.release("z1")
    host.placed = nodes(("n1", 4, 2), ("n2", 4, 3))
    assert isinstance(await decide(admission, launch("a0", "ann", "AI_101", VGPURequest.parse(3, "4Gi"))), Admitted)
    admission.release("a0")
    host.placed = None  # not visible: the count of five less the three booked
    assert isinstance(await decide(admission, launch("z2", "zed", "free", ONE)), Admitted)


# -- weekly -------------------------------------------------------------------------------------------------

TERM = {"repeat": "weekly", "until": "2027-02-23"}


def weekly(course: str = "ML 2", count: int = 1, start: str = "2026-12-08T14:00", end: str = "2026-12-08T16:00",
           **change) -> object:
    spec = {"course": course, "vgpus": 1, "memory": "4Gi", "count": count, "start": start, "end": end, **TERM,
            **change}
    return parse_booking(spec, by="teacher", zone=BERLIN)


@pytest.mark.parametrize(("change", "field", "says"), [
    ({"repeat": "daily"}, "repeat", 'may be "weekly"'),
    ({"repeat": 7}, "repeat", 'may be "weekly"'),
    ({"repeat": None}, "repeat", 'may be "weekly"'),  # "until" alone
    ({"until": None}, "until", 'like "2027-02-23"'),
    ({"until": "end of term"}, "until", "not 'end of term'"),
    ({"until": 20270223}, "until", "last date"),
    ({"until": "2026-12-01"}, "until", "on or after the start's date (2026-12-08)"),
    ({"until": "2027-12-10"}, "until", "at most 366 days from its start"),
    ({"end": "2026-12-16T16:00"}, "end", "weekly booking's window lasts at most 7 days"),
])
def test_a_weekly_booking_s_fields_are_checked_and_named(change, field, says):
    with pytest.raises(BookingError) as caught:
        weekly(**change)
    assert caught.value.field == field and says in str(caught.value), str(caught.value)
    with pytest.raises(VGPURequestError) as caught:  # the config's too, one line naming the entry
        parse_static([{"course": "ML 2", "vgpus": 1, "memory": "4Gi", "start": "2026-12-08T14:00",
                       "end": "2026-12-08T16:00", **TERM, **change}], rules())
    assert caught.value.field == f"c.Broker.bookings[0].{field}", caught.value.field


def test_a_weekly_booking_is_open_on_each_occurrence_and_not_between():
    lab = weekly(count=2, until="2027-04-06")  # across summer time (28 Mar 2027): still 14:00 in Berlin
    assert len(lab.windows()) == 18 and lab.last_end == datetime(2027, 4, 6, 16, 0, tzinfo=BERLIN)
    at = lambda *moment: datetime(*moment, tzinfo=BERLIN)  # noqa: E731
    assert lab.open_at(at(2026, 12, 15, 14, 30)) and lab.open_at(at(2026, 12, 8, 14, 0))
    assert lab.open_at(at(2027, 4, 6, 14, 0)) and lab.open_at(at(2027, 3, 30, 15, 59))
    assert not lab.open_at(at(2026, 12, 15, 16, 0)) and not lab.open_at(at(2026, 12, 14, 14, 30))
    assert not lab.open_at(at(2026, 12, 1, 14, 30)) and not lab.open_at(at(2027, 4, 13, 14, 30))
    assert lab.window_at(at(2027, 3, 30, 15, 0)) == (at(2027, 3, 30, 14, 0), at(2027, 3, 30, 16, 0))
    assert lab.as_dict()["schedule"] == "every Tue 14:00-16:00 until 2027-04-06"
    assert lab.as_dict()["repeat"] == "weekly" and lab.as_dict()["until"] == "2027-04-06"
    assert lab.describe(BERLIN) == "2 kernels of 1 vGPU · 4 GiB for ML 2, every Tue 14:00-16:00 until 2027-04-06"
    assert "schedule" not in book().as_dict()
    month = once("ML 2", "2026-12-08T09:00", "2027-01-07T09:00")  # once, for 30 days
    assert month.open_at(at(2026, 12, 30, 12, 0)) and not month.open_at(at(2027, 1, 7, 9, 0))

    clock = Clock()
    bookings = Bookings(rules(), clock)
    bookings.add(lab, 4, [])
    stranger = kernel("new", "zed", "free")
    assert bookings.hold(stranger, []) == Hold()  # Monday: no occurrence open
    clock.now = at(2026, 12, 15, 14, 30)
    assert bookings.hold(stranger, []) == Hold(((ONE, 2),)) and bookings.unused([]) == {lab.id: 2}
    clock.now = at(2026, 12, 16, 14, 30)  # Wednesday: kept for nobody, and still booked for next week
    assert bookings.hold(stranger, []) == Hold() and bookings.prune() == [] and lab.id in bookings.items
    clock.now = at(2027, 4, 6, 16, 0)
    assert bookings.prune() == [lab]


def once(course: str, start: str, end: str, count: int = 1) -> object:
    return parse_booking({"course": course, "vgpus": 1, "memory": "4Gi", "count": count, "start": start, "end": end},
                         by="teacher", zone=BERLIN)


def test_a_weekly_booking_is_refused_naming_the_first_occurrence_that_cannot_be_honoured():
    bookings = Bookings(rules(), Clock())
    bookings.add(once("AI_101", "2026-12-22T15:00", "2026-12-22T16:00", count=2), 4, [])  # week 3 of the lab
    with pytest.raises(BookingRefused) as caught:
        bookings.add(weekly(count=3), 4, [])
    message = str(caught.value)
    assert "cannot book 3 kernels of 1 vGPU · 4 GiB for ML 2, every Tue 14:00-16:00 until 2027-02-23: its " \
           "occurrence on Tue 22 Dec 2026 cannot be honoured: it needs 3 vGPUs, but at Tue 22 Dec 15:00 CET only " \
           "2 of the pool's 4 are free (2 booked by AI_101)" in message, message
    assert len(bookings.items) == 1
    lab = bookings.add(weekly(count=2), 4, [])  # two fit beside it
    with pytest.raises(BookingRefused) as caught:  # and the one-off is checked against every occurrence
        bookings.add(once("free", "2027-01-12T13:00", "2027-01-12T14:30", count=3), 4, [])
    assert "at Tue 12 Jan 14:00 CET only 2 of the pool's 4 are free (2 booked by ML 2)" in str(caught.value)
    assert lab.id in bookings.items and len(bookings.items) == 2
    with pytest.raises(BookingError) as caught:  # its last date more than a year ahead of now
        bookings.add(weekly(start="2027-06-01T14:00", end="2027-06-01T16:00", until="2028-01-04"), 4, [])
    assert caught.value.field == "until" and "at most 366 days ahead" in str(caught.value)


def test_a_weekly_booking_survives_a_restart_and_an_old_state_without_repeats_still_loads():
    clock = Clock(datetime(2027, 1, 4, 8, 0, tzinfo=BERLIN))  # the first occurrences have passed, not the last
    lab = weekly(count=2)
    first = Bookings(rules(), clock)
    first.items[lab.id] = lab
    saved = first.state()
    assert saved["bookings"][0]["repeat"] == "weekly" and saved["bookings"][0]["until"] == "2027-02-23"
    again = Bookings(rules(), clock)
    again.restore(saved)
    assert again.items == {lab.id: lab} and again.items[lab.id].open_at(datetime(2027, 1, 5, 15, 0, tzinfo=BERLIN))
    old = {"bookings": [{"id": "b1", "by": "teacher", "course": "ML 2", "count": 1, "vgpus": 1, "memory": "4096Mi",
                         "start": "2027-01-05T09:00:00+01:00", "end": "2027-01-05T10:00:00+01:00"}]}
    older = Bookings(rules(), clock)
    older.restore(old)
    assert list(older.items) == ["b1"] and not older.items["b1"].repeat and older.items["b1"].weeks == 1


def test_a_student_s_booking_does_not_repeat():
    with pytest.raises(BookingForbidden) as caught:
        rules().who_may_book(weekly("AI_101", user="ann", start="2026-12-08T14:00", end="2026-12-08T15:00"), "ann",
                             ["AI_101"], False, "AI_101")
    assert caught.value.field == "repeat" and "does not repeat" in str(caught.value)
    rules().who_may_book(weekly("AI_101"), "teacher", ["AI_101"], True, "")
