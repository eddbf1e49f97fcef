"""core/admission.py on its own (no hub, no cluster): quotas per user and per course under interleaved
launches, courses whose hub group is not its own slug, the line ahead, a student's own roster kernel,
launches that never fit, kernels that stay stopped, duplicate ids."""

from __future__ import annotations

import asyncio

import pytest

from orion_jupyter.core.admission import Admission, Admitted, KernelExists, Launch, Queued, Refused
from orion_jupyter.core.booking_fit import Nodes
from orion_jupyter.core.ledger import CourseFull, Holding, Ledger, Quota
from orion_jupyter.errors import KernelLaunchError
from orion_jupyter.vgpu import VGPURequest, VGPURequestError

ONE = VGPURequest.parse(1, "1Gi")
TWO = VGPURequest.parse(2, "1Gi")


class FakeClass:
    """An AdmissionHost: pods that run (``running``), a pool of ``free`` vGPUs, the largest node."""

    def __init__(self, free: int = 8, largest: int | None = 4):
        self.running: list[Holding] = []
        self.free = free
        self.largest = largest
        self.stopped: dict[str, str] = {}
        self.ledger: Ledger | None = None
        self.placed: Nodes | None = None  # the nodes, where a test shows them (free room per node)

    def holdings(self) -> list[Holding]:
        return list(self.running)

    def kernel_exists(self, kernel_id: str) -> bool:
        return any(h.kernel_id == kernel_id for h in self.running)

    def stopped_by(self, kernel_id: str) -> str | None:
        return self.stopped.get(kernel_id)

    async def has_room(self, request: VGPURequest, kernel_id: str = "", held_back: int = 0) -> bool:
        await asyncio.sleep(0)  # another launch may run meanwhile, as on the broker's loop
        held = sum(h.vgpus for h in self.running)
        pending = sum(h.vgpus for k, h in self.ledger.pending.items() if k != kernel_id and not self.kernel_exists(k))
        return self.free - held - pending - held_back >= request.count

    async def largest_node(self) -> int | None:
        return self.largest

    def nodes(self) -> Nodes | None:
        return self.placed

    async def shortage(self, request: VGPURequest) -> str:
        return f"no vGPU free: {sum(h.vgpus for h in self.running)} of {self.free} in use"

    def started(self, admission: Admission, holding: Holding) -> None:
        """The admitted launch's pod runs: it now holds what it reserved."""
        self.running.append(holding)
        admission.release(holding.kernel_id)

    def gone(self, admission: Admission, kernel_id: str) -> None:
        self.running = [h for h in self.running if h.kernel_id != kernel_id]
        admission.queue.released()


class OwnRoster:
    """WarmClaims with one ready roster kernel per student in ``own``."""

    def __init__(self, own: dict[str, str]):
        self.own = dict(own)
        self.reserved: dict[str, str] = {}

    def reserve(self, kernel_id, user, request, image, server_name, own_only=False, keep=0):
        name = self.own.pop(user, None)
        if name is None:
            return None
        self.reserved[kernel_id] = name
        return name

    def ready_of(self, request):
        return 0

    def reserved_for(self, kernel_id):
        return self.reserved.get(kernel_id)

    def unreserve(self, kernel_id):
        self.reserved.pop(kernel_id, None)

    async def claim(self, ask, user, course):
        raise AssertionError("admission never claims")


def make(courses: dict[str, Quota], queue: tuple[str, ...] = (), per_user: Quota | None = None, **host) -> tuple:
    cls = FakeClass(**host)
    ledger = Ledger(per_user or Quota(), courses)
    cls.ledger = ledger
    return Admission(cls, ledger, queue), cls


def launch(kernel_id: str, user: str, group: str, request: VGPURequest = ONE, own_storage: bool = False) -> Launch:
    return Launch(kernel_id, user, (group, "students"), request, "image:1", own_storage=own_storage)


async def decide(admission: Admission, item: Launch, lines: list | None = None):
    return await admission.decide(item, (lines if lines is not None else []).append)


@pytest.mark.parametrize("group", ["AI_101", "Physics 2", "ai101"])
async def test_a_course_quota_holds_whatever_its_group_is_called(group):
    admission, cls = make({group: Quota(vgpus=1)})
    first = await decide(admission, launch("k1", "ann", group))
    assert isinstance(first, Admitted) and first.holding.course == group  # the exact group, never its slug
    cls.started(admission, first.holding)
    second = await decide(admission, launch("k2", "ben", group))
    assert isinstance(second, Refused) and isinstance(second.error, CourseFull), second
    assert f"course {group}" in str(second.error) and second.error.field == "vgpus"


async def test_two_courses_count_apart():
    admission, cls = make({"AI_101": Quota(vgpus=1), "Physics 2": Quota(vgpus=1)})
    for kernel_id, user, group in (("k1", "ann", "AI_101"), ("k2", "cem", "Physics 2")):
        decision = await decide(admission, launch(kernel_id, user, group))
        assert isinstance(decision, Admitted), decision
        cls.started(admission, decision.holding)
    for kernel_id, user, group in (("k3", "ben", "AI_101"), ("k4", "dan", "Physics 2")):
        decision = await decide(admission, launch(kernel_id, user, group))
        assert isinstance(decision, Refused) and f"course {group}" in str(decision.error)


async def test_interleaved_launches_cannot_all_pass_a_quota():
    admission, _ = make({"AI_101": Quota(vgpus=3)}, per_user=Quota(vgpus=1))
    same_user = await asyncio.gather(*(decide(admission, launch(f"a{i}", "ann", "AI_101")) for i in range(5)))
    assert sum(isinstance(d, Admitted) for d in same_user) == 1
    assert all(isinstance(d.error, VGPURequestError) and "for you" in str(d.error)
               for d in same_user if isinstance(d, Refused))
    others = await asyncio.gather(*(decide(admission, launch(f"b{i}", f"s{i}", "AI_101")) for i in range(6)))
    assert sum(isinstance(d, Admitted) for d in others) == 2  # 3 in the course, ann holds one
    assert all(isinstance(d.error, CourseFull) for d in others if isinstance(d, Refused))


async def test_the_pool_decides_when_no_quota_does():
    admission, cls = make({}, free=2)
    decisions = await asyncio.gather(*(decide(admission, launch(f"k{i}", f"s{i}", "AI_101")) for i in range(4)))
    assert sum(isinstance(d, Admitted) for d in decisions) == 2
    refused = [d for d in decisions if isinstance(d, Refused)]
    assert all(isinstance(d.error, KernelLaunchError) and d.error.reason == "unschedulable" for d in refused)


async def test_a_queued_course_lines_up_and_nobody_overtakes():
    admission, cls = make({"Physics 2": Quota(vgpus=1)}, queue=("Physics 2",))
    first = await decide(admission, launch("k1", "ann", "Physics 2"))
    assert isinstance(first, Admitted)
    cls.started(admission, first.holding)
    ben_lines: list = []
    ben = await decide(admission, launch("k2", "ben", "Physics 2"), ben_lines)
    assert isinstance(ben, Queued) and ben_lines[-1]["queued"]["position"] == 1
    assert ben_lines[-1]["queued"]["course"] == "Physics 2"
    cem = await decide(admission, launch("k3", "cem", "Physics 2"))
    assert isinstance(cem, Queued) and admission.queue.position(cem.waiting) == 2
    again = await decide(admission, launch("k4", "ben", "Physics 2"))
    assert isinstance(again, Refused) and "one launch may wait at a time" in str(again.error)
    cls.gone(admission, "k1")  # ann's kernel stops: the head's turn
    assert await asyncio.wait_for(ben.waiting.turn, 5) is True
    assert not cem.waiting.turn.done() and admission.queue.position(cem.waiting) == 1


async def test_while_others_wait_a_newcomer_with_room_still_waits_behind_them():
    admission, cls = make({"AI_101": Quota(vgpus=2)}, queue=("AI_101",))
    big = await decide(admission, launch("k1", "ann", "AI_101", TWO))
    cls.started(admission, big.holding)
    ben = await decide(admission, launch("k2", "ben", "AI_101"))
    assert isinstance(ben, Queued)
    cls.running = []  # room for both now, but ben is first in line
    cem = await decide(admission, launch("k3", "cem", "AI_101"))
    assert isinstance(cem, Queued) and admission.queue.position(cem.waiting) == 2


async def test_the_own_roster_kernel_is_theirs_at_once_even_while_others_wait():
    admission, cls = make({"AI_101": Quota(vgpus=1)}, queue=("AI_101",))
    admission.warm = OwnRoster({"dan": "roster-pod-dan"})
    held = await decide(admission, launch("k1", "ann", "AI_101"))
    cls.started(admission, held.holding)
    assert isinstance(await decide(admission, launch("k2", "ben", "AI_101")), Queued)
    dan = await decide(admission, launch("k3", "dan", "AI_101"))
    assert isinstance(dan, Admitted) and dan.warm == "roster-pod-dan"  # the course's quota does not apply


async def test_the_own_roster_kernel_still_counts_against_the_users_own_quota():
    admission, cls = make({"AI_101": Quota(vgpus=4)}, per_user=Quota(vgpus=1))
    admission.warm = OwnRoster({"dan": "roster-pod-dan"})
    first = await decide(admission, launch("k1", "dan", "AI_101"))
    cls.started(admission, first.holding)
    assert admission.warm.own == {}  # the roster kernel went to the first launch
    admission.warm.own["dan"] = "another"
    second = await decide(admission, launch("k2", "dan", "AI_101"))
    assert isinstance(second, Refused) and "for you" in str(second.error)
    assert admission.warm.reserved_for("k2") is None  # given back


class RosterAndPool(OwnRoster):
    """Each student's roster kernel (their storage mounted) and a pool's kernels (nobody's storage)."""

    def __init__(self, own: dict[str, str], pool: list[str]):
        super().__init__(own)
        self.pool = list(pool)

    def reserve(self, kernel_id, user, request, image, server_name, own_only=False, keep=0):
        name = self.own.pop(user, None) or (self.pool.pop(0) if self.pool and not own_only else None)
        if name is not None:
            self.reserved[kernel_id] = name
        return name


async def test_a_resume_never_gets_a_pool_kernel_which_would_not_see_the_students_storage():
    admission, cls = make({"AI_101": Quota(vgpus=1)}, queue=("AI_101",))
    admission.warm = RosterAndPool({"dan": "roster-pod-dan"}, ["pool-1", "pool-2"])
    resume = await decide(admission, launch("k1", "ann", "AI_101", own_storage=True))
    assert isinstance(resume, Admitted) and resume.warm is None and admission.warm.pool == ["pool-1", "pool-2"]
    cls.started(admission, resume.holding)
    # waiting in line, then its turn: still a fresh pod, the pool's kernels left for the others
    waiting = await decide(admission, launch("k2", "ben", "AI_101", own_storage=True))
    assert isinstance(waiting, Queued) and waiting.waiting.own_storage
    cls.gone(admission, "k1")
    assert await asyncio.wait_for(waiting.waiting.turn, 5) is True
    assert admission.warm.reserved_for("k2") is None and admission.warm.pool == ["pool-1", "pool-2"]
    # the student's own roster kernel mounts their storage: a resume may take it; a plain launch takes the pool's
    dan = await decide(admission, launch("k3", "dan", "AI_101", own_storage=True))
    assert isinstance(dan, Admitted) and dan.warm == "roster-pod-dan"
    plain, _ = make({}, queue=())
    plain.warm = RosterAndPool({}, ["pool-1"])
    assert (await decide(plain, launch("k4", "eve", "ML", own_storage=False))).warm == "pool-1"


async def test_a_launch_larger_than_the_course_or_any_node_never_waits():
    admission, _ = make({"AI_101": Quota(vgpus=1)}, queue=("AI_101",), largest=1)
    too_big = await decide(admission, launch("k1", "ann", "AI_101", TWO))
    assert isinstance(too_big, Refused) and too_big.error.field == "vgpus" and not admission.queue.waiting()
    admission, _ = make({"AI_101": Quota(vgpus=8)}, queue=("AI_101",), largest=1, free=1)
    no_node = await decide(admission, launch("k1", "ann", "AI_101", TWO))
    assert isinstance(no_node, Refused) and no_node.error.reason == "unschedulable"
    assert not admission.queue.waiting()


async def test_a_stopped_kernel_stays_stopped_and_ids_are_unique():
    admission, cls = make({"AI_101": Quota(vgpus=4)}, queue=("AI_101",))
    cls.stopped["k1"] = "teacher"
    stopped = await decide(admission, launch("k1", "ann", "AI_101"))
    assert isinstance(stopped, Refused) and stopped.error.reason == "deleted" and "teacher" in str(stopped.error)
    first = await decide(admission, launch("k2", "ann", "AI_101"))
    assert isinstance(first, Admitted)
    twin = await decide(admission, launch("k2", "ben", "AI_101"))  # still starting
    assert isinstance(twin, Refused) and isinstance(twin.error, KernelExists)
    cls.started(admission, first.holding)
    assert isinstance((await decide(admission, launch("k2", "ann", "AI_101"))).error, KernelExists)  # running


async def test_a_student_in_no_course_has_only_the_user_quota():
    admission, cls = make({"AI_101": Quota(vgpus=1)}, per_user=Quota(vgpus=2))
    assert admission.course_of(["students", "Physics 2"]) == ""
    assert admission.course_of(["students", "AI_101"]) == "AI_101"
    decision = await decide(admission, Launch("k1", "eve", ("students",), TWO, "image:1"))
    assert isinstance(decision, Admitted) and decision.holding.course == ""


async def test_cpu_only_launches_stop_at_the_kernel_cap_and_others_still_launch():
    """A CPU-only kernel holds no vGPU but is a pod on a node: a student's stop at the per-user cap with a
    clear refusal, a course's at its own; classmates still launch (issue 24: 108 pods filled a node)."""
    cpu = VGPURequest.parse(0, None)
    admission, cls = make({"AI_101": Quota(kernels=5)}, per_user=Quota(kernels=3), free=1)
    decisions = await asyncio.gather(*(decide(admission, launch(f"c{i}", "eve", "AI_101", cpu)) for i in range(20)))
    admitted = [d for d in decisions if isinstance(d, Admitted)]
    assert len(admitted) == 3, decisions
    for decision in admitted:
        cls.started(admission, decision.holding)
    refused = [d for d in decisions if isinstance(d, Refused)]
    assert all(d.error.field == "kernels" and "4 for you at once, CPU-only ones included" in str(d.error)
               and "allows 3 per user" in str(d.error) for d in refused), refused[0]
    vgpu = await decide(admission, launch("v1", "ann", "AI_101"))  # the vGPU is still free for a classmate
    assert isinstance(vgpu, Admitted), vgpu
    cls.started(admission, vgpu.holding)
    assert isinstance(await decide(admission, launch("c-ben", "ben", "AI_101", cpu)), Admitted)
    course_full = await decide(admission, launch("c-cem", "cem", "AI_101", cpu))  # 5 in the course already
    assert isinstance(course_full, Refused) and isinstance(course_full.error, CourseFull)
    assert "course AI_101" in str(course_full.error) and course_full.error.field == "kernels"
