"""The quota engine's holdings index: found by user and by course, and the same decisions as a plain list."""

import pytest

from orion_jupyter.core.ledger import CourseFull, Held, Holding, Ledger, Quota
from orion_jupyter.vgpu import VGPURequestError


def test_held_finds_by_user_and_course_after_puts_moves_and_pops():
    held = Held([("p1", Holding("k1", "ann", "ai101", 1, 1024)), ("p2", Holding("k2", "ben", "ai101", 2, 0))])
    held.put("p1", Holding("k1", "ann", "cs50", 1, 1024))  # the same key again: moved, never in both
    assert [h.kernel_id for h in held.of_course("ai101")] == ["k2"]
    assert [h.kernel_id for h in held.of_course("cs50")] == ["k1"]
    assert held.pop("p2").user == "ben" and held.pop("p2") is None
    assert list(held.of_user("ben")) == [] and list(held.of_course("ai101")) == []
    assert len(held) == 1 and "p1" in held and [h.user for h in held] == ["ann"]


@pytest.mark.parametrize("indexed", [True, False])
def test_quotas_decide_the_same_from_an_index_or_a_list(indexed):
    running = [Holding("k1", "ann", "ai101", 1, 0), Holding("k2", "ben", "ai101", 1, 0),
               Holding("k3", "cat", "cs50", 1, 0)]
    given = Held((h.kernel_id, h) for h in running) if indexed else running
    ledger = Ledger(Quota(vgpus=2), {"ai101": Quota(vgpus=3)})
    ledger.reserve(Holding("k4", "ann", "ai101", 1, 0), given)  # ann 2 of 2, the course 3 of 3
    with pytest.raises(VGPURequestError, match="for you"):  # ann's own, whichever course
        ledger.reserve(Holding("k5", "ann", "", 1, 0), given)
    with pytest.raises(CourseFull, match="course ai101"):
        ledger.reserve(Holding("k6", "dan", "ai101", 1, 0), given)
    ledger.reserve(Holding("k7", "dan", "cs50", 1, 0), given)  # another course: its own count
    ledger.reserve(Holding("k1", "ann", "ai101", 1, 0), given)  # a running kernel again counts once
    ledger.release("k4")
    ledger.reserve(Holding("k6", "dan", "ai101", 1, 0), given)
    assert sorted(k for k, _ in ledger.pending.items()) == ["k1", "k6", "k7"]
