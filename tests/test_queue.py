"""broker/queue.py on its own: first come first served, nobody overtakes the head, one waiting launch
per user, a cancel gives up the place (and a reservation a cancel overtook), the estimate."""

import asyncio

import pytest

from orion_jupyter.core.ledger import Holding
from orion_jupyter.core.queue import LaunchQueue, Waiting
from orion_jupyter.errors import KernelLaunchError
from orion_jupyter.vgpu import VGPURequest


class Room:
    """vGPUs free now; admit takes them (as the broker's ledger and pool do)."""

    def __init__(self, free: int):
        self.free = free
        self.admitted: list[str] = []
        self.given_back: list[str] = []

    async def admit(self, waiting: Waiting) -> bool:
        await asyncio.sleep(0)
        if waiting.holding.vgpus > self.free:
            return False
        self.free -= waiting.holding.vgpus
        self.admitted.append(waiting.kernel_id)
        return True

    def unreserve(self, kernel_id: str) -> None:
        self.given_back.append(kernel_id)


def waiting(user: str, vgpus: int = 1, course: str = "ai101", lines: list | None = None) -> Waiting:
    holding = Holding(f"k-{user}", user, course, vgpus, vgpus * 1024)
    return Waiting(holding, VGPURequest.parse(vgpus, "1Gi"), (lines if lines is not None else []).append)


async def settle():
    for _ in range(10):
        await asyncio.sleep(0)


async def test_first_come_first_served_and_nobody_overtakes_the_head():
    room = Room(0)
    queue = LaunchQueue(room.admit, room.unreserve)
    lines = []
    a, b, c = waiting("a", 2, lines=lines), waiting("b", 1), waiting("c", 1)
    for w in (a, b, c):
        queue.join(w)
    assert [queue.position(w) for w in (a, b, c)] == [1, 2, 3]
    assert lines[-1] == {"queued": queue.describe(a)} and lines[-1]["queued"]["ahead"] == 0
    room.free = 1  # enough for b or c, not for the head a
    queue.released()
    await settle()
    assert room.admitted == [] and not b.turn.done()  # nobody overtakes a
    room.free = 2
    queue.released()
    await settle()
    assert room.admitted == ["k-a"] and a.turn.result() is True
    assert [queue.position(w) for w in (b, c)] == [1, 2]
    room.free = 2
    queue.released()
    await settle()
    assert room.admitted == ["k-a", "k-b", "k-c"] and not queue.waiting()


async def test_one_waiting_launch_per_user_and_a_cancel_gives_up_the_place():
    room = Room(0)
    queue = LaunchQueue(room.admit, room.unreserve)
    a, b = waiting("a"), waiting("b")
    queue.join(a)
    queue.join(b)
    with pytest.raises(KernelLaunchError, match="you already wait for a vGPU \\(position 1"):
        queue.join(Waiting(Holding("k-a2", "a", "ai101", 1, 1024), VGPURequest.parse(1, "1Gi"), lambda line: None))
    assert queue.cancel("k-a", "a") is True and queue.cancel("k-a", "a") is False
    with pytest.raises(KernelLaunchError) as caught:
        a.turn.result()
    assert caught.value.reason == "cancelled"
    assert queue.position(b) == 1 and [w.user for w in queue.waiting()] == ["b"]


async def test_a_cancel_that_overtakes_the_admission_gives_the_reservation_back():
    room = Room(1)
    gate = asyncio.Event()

    async def slow_admit(w):
        await gate.wait()
        return await room.admit(w)

    queue = LaunchQueue(slow_admit, room.unreserve)
    a = waiting("a")
    queue.join(a)
    queue.released()
    await settle()
    queue.cancel("k-a", "a")  # while admit runs
    gate.set()
    await settle()
    assert room.given_back == ["k-a"]


async def test_the_estimate_is_the_position_times_the_time_between_releases():
    queue = LaunchQueue(Room(0).admit, lambda kernel_id: None)
    assert queue.estimate(3) is None  # nothing seen yet
    queue.releases.extend([100.0, 130.0, 160.0])
    assert queue.estimate(3) == 90.0


def test_a_kernel_pod_just_deleted_is_not_counted_as_another_teams():
    """The cluster-wide watch may still hold a kernel pod the kernel watch saw deleted: its vGPU is free."""
    from orion_jupyter.pool import pool_from_cluster

    node = {"metadata": {"name": "gpu-1"}, "status": {"allocatable": {"virtaitech.com/gpu": "1"}}}
    gone = {"metadata": {"name": "orion-a", "uid": "u-1"}, "spec": {"nodeName": "gpu-1", "containers": [
        {"resources": {"limits": {"virtaitech.com/gpu": "1"}}}]}, "status": {"phase": "Running"}}
    held = pool_from_cluster([node], [], [gone]).totals()["virtaitech.com/gpu"]
    assert (held.free, held.others) == (0, 1)  # someone else's pod: it holds the vGPU
    freed = pool_from_cluster([node], [], [gone], not_foreign={"u-1"}).totals()["virtaitech.com/gpu"]
    assert (freed.free, freed.others) == (1, 0)


async def test_a_head_that_cannot_fit_blocks_those_behind_only_for_a_bounded_time():
    """Issue 24: a head asking for more vGPUs than are free idled them for everyone behind it. After
    head_max_wait, those behind that fit start; the head keeps its place and is served first on a release."""
    room, now = Room(0), [1000.0]
    queue = LaunchQueue(room.admit, room.unreserve, head_max_wait=60, clock=lambda: now[0])
    big, b, c = waiting("big", 3), waiting("b", 1), waiting("c", 1)
    for w in (big, b, c):
        queue.join(w)
    room.free = 2
    queue.released()
    await settle()
    assert room.admitted == [] and not b.turn.done()  # within the bound: nobody overtakes the head
    now[0] += 59
    queue.wake()
    await settle()
    assert room.admitted == []
    now[0] += 2  # the head has blocked for longer than head_max_wait
    queue.wake()
    await settle()
    assert room.admitted == ["k-b", "k-c"] and b.turn.result() and c.turn.result()
    assert queue.position(big) == 1 and not big.turn.done()
    room.free = 3
    queue.released()
    await settle()
    assert room.admitted == ["k-b", "k-c", "k-big"] and big.turn.result() is True


async def test_a_burst_of_moves_is_told_once_per_interval_and_a_newcomer_at_once():
    room = Room(0)
    queue = LaunchQueue(room.admit, room.unreserve, tell_every=0.2)
    told: dict[str, list] = {user: [] for user in "abcd"}
    ahead = [waiting(user, lines=told[user]) for user in "abcd"]
    for w in ahead:
        queue.join(w)
    assert [[line["queued"]["position"] for line in told[user]] for user in "abcd"] == [[1], [2], [3], [4]]
    room.free = 3
    queue.released()  # a, b and c start: d moves from 4 to 1 in three steps
    await settle()
    assert room.admitted == ["k-a", "k-b", "k-c"] and told["d"] == [told["d"][0]]  # not yet
    await asyncio.sleep(0.3)
    assert [line["queued"]["position"] for line in told["d"]] == [4, 1]  # once, where it stands now
