"""core/places.py: a waiting launch whose stream broke keeps its place for the grace (its user and ticket
bring it back, nobody else's), loses it after; the queue's places are saved and a restarted broker restores
their order (with the simulated cluster's ConfigMap in tests/test_state_store.py)."""

import asyncio

import pytest

from orion_jupyter.core.places import KeptPlaces, new_ticket
from orion_jupyter.core.queue import LaunchQueue
from orion_jupyter.errors import KernelLaunchError
from orion_jupyter.vgpu import VGPURequest, VGPURequestError
from tests.test_queue import Room, settle, waiting


class MemoryStore:
    def __init__(self):
        self.state = None
        self.saves = 0

    async def load(self):
        return self.state

    async def save(self, state):
        self.saves += 1
        self.state = state


def stream():
    return asyncio.get_running_loop().create_future()


def kept(room, store=None, grace=60.0):
    queue = LaunchQueue(room.admit, room.unreserve, tell_every=0)  # moves told at once
    released = []

    def release(kernel_id):
        released.append(kernel_id)
        room.free += 1

    places = KeptPlaces(queue, release, store, grace=grace, save_delay=0.01)
    return queue, places, released


async def test_a_broken_stream_comes_back_with_its_ticket_as_its_own_user_only():
    room = Room(0)
    queue, places, _ = kept(room)
    tickets, streams = {}, {}
    for user in ("a", "b", "c"):
        w = waiting(user)
        queue.join(w)
        tickets[user], streams[user] = new_ticket(), stream()
        places.hold(w, streams[user], tickets[user])
    b = queue.find("k-b")
    places.let_go("k-b", streams["b"])
    assert not places.follows("k-b", streams["b"]) and queue.position(b) == 2  # the place is kept
    one_gb = VGPURequest.parse(1, "1Gi")
    # another user with b's ticket, b with a wrong ticket or someone else's: nothing
    assert places.resume("k-b", "c", tickets["b"], one_gb, stream(), print) is None
    assert places.resume("k-b", "B", tickets["b"], one_gb, stream(), print) is None  # names compared exactly
    assert places.resume("k-b", "b", tickets["c"], one_gb, stream(), print) is None
    assert places.resume("k-b", "b", new_ticket(), one_gb, stream(), print) is None
    with pytest.raises(VGPURequestError) as caught:  # the same place for a larger launch: no
        places.resume("k-b", "b", tickets["b"], VGPURequest.parse(2, "1Gi"), stream(), print)
    assert caught.value.field == "vgpus"
    lines, again = [], stream()
    assert places.resume("k-b", "b", tickets["b"], one_gb, again, lines.append) is b
    assert places.follows("k-b", again) and queue.position(b) == 2
    queue.changed()  # the place's lines go to the stream that came back
    queue.leave(queue.find("k-a"))
    assert lines and lines[-1]["queued"]["position"] == 1
    # a second comeback supersedes the first: the stream that followed it lets go
    newest = stream()
    assert places.resume("k-b", "b", tickets["b"], one_gb, newest, print) is b
    assert again.done() and not places.follows("k-b", again) and places.follows("k-b", newest)


async def test_nobody_back_within_the_grace_loses_the_place_and_a_turn_it_had_is_given_back():
    room = Room(0)
    queue, places, released = kept(room, grace=0.05)
    a, b, c = waiting("a"), waiting("b"), waiting("c")
    streams = {}
    for w in (a, b, c):
        queue.join(w)
        streams[w.user] = stream()
        places.hold(w, streams[w.user], new_ticket())
    places.let_go("k-b", streams["b"])
    await asyncio.sleep(0.1)
    with pytest.raises(KernelLaunchError) as caught:
        b.turn.result()
    assert caught.value.reason == "cancelled" and "within 0.05 s" in str(caught.value)
    assert [w.user for w in queue.waiting()] == ["a", "c"] and "k-b" not in places.places
    # a's stream breaks, then its turn comes: the vGPU stays reserved for a until the grace ends
    places.let_go("k-a", streams["a"])
    room.free = 1
    queue.released()
    await settle()
    assert a.turn.result() is True and room.free == 0 and not c.turn.done()
    await asyncio.sleep(0.1)
    assert released == ["k-a"]  # given back; c gets it
    await settle()
    assert c.turn.result() is True and list(places.places) == ["k-c"]  # until its stream takes the turn
    places.taken("k-c")
    assert not places.places


async def test_grace_zero_gives_the_place_up_at_once_and_a_cancel_drops_it():
    room = Room(0)
    queue, places, _ = kept(room, grace=0)
    a, b = waiting("a"), waiting("b")
    for w in (a, b):
        queue.join(w)
    sa, sb = stream(), stream()
    places.hold(a, sa, new_ticket())
    places.hold(b, sb, new_ticket())
    places.let_go("k-a", sa)
    assert a.turn.done() and queue.find("k-a") is None
    queue.cancel("k-b", "b")
    await settle()
    assert not places.places


async def test_the_order_is_saved_and_a_restarted_broker_restores_it():
    room, store = Room(0), MemoryStore()
    queue, places, _ = kept(room, store)
    tickets = {}
    joined = [waiting(user) for user in ("carol", "alice", "bob")]
    for i, w in enumerate(joined):
        w.since = 1000.0 + i
        w.details["kernel_spec_name"] = "orion-1x1gi"
        w.own_storage = w.user == "alice"  # a resume: never a pool's warm kernel, after a restart too
        queue.join(w)
        tickets[w.user] = new_ticket()
        places.hold(w, stream(), tickets[w.user])
    await asyncio.sleep(0.05)
    assert store.saves == 1  # many changes, one write
    assert [p["user"] for p in store.state["places"]] == ["carol", "alice", "bob"]
    assert all(tickets[p["user"]] not in str(p) for p in store.state["places"])  # only the ticket's hash

    # the broker restarts: a new queue from the store; bob's kernel started meanwhile, so his place is not back
    room2 = Room(0)
    queue2, places2, _ = kept(room2, MemoryStore())
    places2.store.state = store.state
    assert await places2.restore(exists=lambda kernel_id: kernel_id == "k-bob") == 2
    assert [(w.user, w.since, w.details) for w in queue2.waiting()] == [
        ("carol", 1000.0, {"kernel_spec_name": "orion-1x1gi"}), ("alice", 1001.0, {"kernel_spec_name": "orion-1x1gi"})]
    assert [w.own_storage for w in queue2.waiting()] == [False, True]
    carol = queue2.find("k-carol")
    back = stream()
    assert places2.resume("k-carol", "carol", tickets["carol"], VGPURequest.parse(1, "1Gi"), back, print) is carol
    room2.free = 1
    queue2.released()
    await settle()
    assert room2.admitted == ["k-carol"] and carol.turn.result() is True
