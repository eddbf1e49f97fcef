"""The broker's state in ConfigMaps of the simulated cluster, one (or a head and its parts) per section:
written with resourceVersion checks (a stale writer re-reads and warns), too-large data refused by the API
server as Kubernetes does, a university-sized queue kept whole, a reader never mixing two writes, the old
one-ConfigMap layout migrated, and a restarted broker's budget meter, fair share and queue order continuing."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import secrets
import uuid

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from orion_jupyter.broker.budgets import BudgetMeter
from orion_jupyter.core.budgets import Budgets
from orion_jupyter.core.fairshare import FairShare
from orion_jupyter.core.ledger import Holding
from orion_jupyter.core.places import KeptPlaces, new_ticket
from orion_jupyter.core.queue import LaunchQueue, Waiting
from orion_jupyter.k8s.cluster import KubeCluster
from orion_jupyter.k8s.state_store import ConfigMapStore, Section, StateUnreadable, decode
from orion_jupyter.vgpu import VGPURequest
from tests.test_budgets import Clock, FakePods, config, kernel
from tests.test_queue import Room, waiting

NS = "default"
LABELS = {"app.kubernetes.io/managed-by": "orion-jupyter-broker"}


@pytest.fixture
def kube(sim_cluster):
    cluster = KubeCluster(sim_cluster.api_client(), NS, watch_nodes=False)
    try:
        yield cluster
    finally:
        cluster.close()


async def test_each_section_has_its_own_configmap_written_with_resource_version_checks(kube, sim_cluster, caplog):
    first, second = (ConfigMapStore(kube, NS, "orion-broker-state", LABELS),
                     ConfigMapStore(kube, NS, "orion-broker-state", LABELS))
    assert await first.load("budgets") is None
    await first.save("budgets", {"used": {"user:ann": 1.5}})
    assert await second.load("budgets") == {"used": {"user:ann": 1.5}}
    await first.save("fairshare", {"use": {"course:ai101": [10.0, 1.0]}})  # its own ConfigMap: nobody's is stale
    await first.save("budgets", {"used": {"user:ann": 1.75}})  # second's budgets are stale now
    await second.save("budgets", {"used": {"user:ann": 2.0}})
    assert (first.conflicts, second.conflicts) == (0, 1)
    assert "written or deleted by another writer" in caplog.text  # not silently
    third = ConfigMapStore(kube, NS, "orion-broker-state")
    assert await third.load("budgets") == {"used": {"user:ann": 2.0}}
    assert await third.load("fairshare") == {"use": {"course:ai101": [10.0, 1.0]}}
    assert {c["metadata"]["name"]: c["metadata"]["labels"] for c in sim_cluster.objects("configmaps", NS)} == {
        "orion-broker-state-budgets": LABELS, "orion-broker-state-fairshare": LABELS}
    api = client.CoreV1Api(sim_cluster.api_client())
    stale = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="orion-broker-state-budgets", resource_version="1"),
                               data={"budgets": "{}"})
    with pytest.raises(ApiException) as caught:  # kubesim refuses a stale replace as the API server does
        api.replace_namespaced_config_map("orion-broker-state-budgets", NS, stale)
    assert caught.value.status == 409
    with pytest.raises(ApiException) as caught:  # and a stale delete
        api.delete_namespaced_config_map("orion-broker-state-budgets", NS, body=client.V1DeleteOptions(
            preconditions=client.V1Preconditions(resource_version="1")))
    assert caught.value.status == 409 and await third.load("budgets") == {"used": {"user:ann": 2.0}}
    for data, binary in (({"x": "0" * 1_048_577}, None), (None, {"x": base64.b64encode(b"0" * 1_048_577).decode()}),
                         ({"x": ""}, {"x": ""}), (None, {"x": "not base64!"})):
        with pytest.raises(ApiException) as caught:  # too big (binaryData decoded), a key twice, not base64
            api.create_namespaced_config_map(NS, client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name="refused"), data=data, binary_data=binary))
        assert caught.value.status == 422


async def test_a_restarted_broker_continues_budgets_and_fair_share_from_the_configmap(kube):
    clock = Clock()
    pods = FakePods([kernel("ann", 1, "k-ann")])
    meter = BudgetMeter(Budgets(config(), clock), pods, Section(ConfigMapStore(kube, NS, "state"), "budgets"))
    await meter.start()
    await meter.meter()
    clock.now += 3600
    await meter.meter()
    meter.budgets.topup("ann", 2)
    await meter.save()
    fair = FairShare({}, half_life=3600, bound=0, running=pods.holdings, clock=clock)
    fair.meter()
    clock.now += 3600
    fair.meter()
    store = ConfigMapStore(kube, NS, "state")
    await store.save("fairshare", fair.state())

    again = BudgetMeter(Budgets(config(), clock), pods, Section(ConfigMapStore(kube, NS, "state"), "budgets"))
    await again.start()
    assert again.budgets.summary("ann", "ai101")["text"].startswith("11.0 of 12 vGPU-hours left")
    later = FairShare({}, half_life=3600, bound=0, clock=clock)
    later.restore(await ConfigMapStore(kube, NS, "state").load("fairshare"))
    assert later.decayed("user:ann") == pytest.approx(3600)


async def test_a_restarted_broker_restores_the_queue_order_from_the_configmap(kube):
    room = Room(0)
    queue = LaunchQueue(room.admit, room.unreserve)
    places = KeptPlaces(queue, lambda kernel_id: None, Section(ConfigMapStore(kube, NS, "state"), "queue"))
    await ConfigMapStore(kube, NS, "state").save("budgets", {"used": {"user:ann": 1.0}})
    for user in ("carol", "alice", "bob"):
        w = waiting(user)
        queue.join(w)
        places.hold(w, asyncio.get_running_loop().create_future(), new_ticket())
    await places.save()

    room2 = Room(0)  # the broker restarted
    queue2 = LaunchQueue(room2.admit, room2.unreserve)
    again = KeptPlaces(queue2, lambda kernel_id: None, Section(ConfigMapStore(kube, NS, "state"), "queue"))
    assert await again.restore(exists=lambda kernel_id: False) == 3
    assert [w.user for w in queue2.waiting()] == ["carol", "alice", "bob"]
    assert await ConfigMapStore(kube, NS, "state").load("budgets") == {"used": {"user:ann": 1.0}}  # kept beside it
    room2.free = 1
    queue2.released()
    for _ in range(10):
        await asyncio.sleep(0)
    assert room2.admitted == ["k-carol"]


COURSES = [f"course{c:02d}" for c in range(20)]


def university_queue(count: int) -> list[Waiting]:
    """``count`` launches waiting as a university's line holds them: kernel ids of uuids, 20 courses, 16 GiB."""
    return [Waiting(Holding(str(uuid.uuid4()), f"student{i:05d}", COURSES[i % 20], 1, 16384),
                    VGPURequest.parse(1, "16Gi"), lambda line: None,
                    image="quay.io/jupyter/pytorch-notebook:cuda-2024-12-02", since=1.79e9 + i * 0.37,
                    details={"memory": "16 GiB", "kernel_spec_name": "orion-pytorch-1vgpu"}) for i in range(count)]


def university_budgets(students: int) -> dict:
    """``Budgets.state()`` of a term with ``students`` students who used some, a tenth topped up, 300 running."""
    rng = random.Random(students)
    users = [f"user:student{i:05d}" for i in range(students)]
    return {"window": "2026-09-01T09:00:00+00:00", "used": {u: rng.uniform(0, 40) for u in users},
            "topups": {u: float(rng.choice([2, 5, 10])) for u in users[::10]},
            "warned": {u: rng.choice([0.5, 0.8, 0.9]) for u in users[::3]},
            "metered": {str(uuid.uuid4()): 1.79e9 + rng.uniform(0, 3600) for _ in range(300)},
            "courses": {u.removeprefix("user:"): COURSES[i % 20] for i, u in enumerate(users)}}


def configmaps(sim_cluster) -> dict[str, dict]:
    return {c["metadata"]["name"]: c for c in sim_cluster.objects("configmaps", NS)}


class Interleaving:
    """The store's cluster, running a test's step just before a given request (``(call, ConfigMap name)``:
    each step once, in order), to put another writer in between."""

    def __init__(self, cluster: KubeCluster):
        self.cluster, self.core = cluster, cluster.core
        self.steps: dict[tuple[str, str], list] = {}
        self.lost_answers: set[tuple[str, str]] = set()

    def before(self, call: str, name: str, step) -> None:
        self.steps.setdefault((call, name), []).append(step)

    def lose_answer(self, call: str, name: str) -> None:
        """The next such request is done, but its answer is a gateway timeout."""
        self.lost_answers.add((call, name))

    async def request(self, fn, *args, **kwargs):
        name = args[1]["metadata"]["name"] if fn.__name__.startswith("create") else args[0]
        steps = self.steps.get((fn.__name__, name))
        if steps:
            await steps.pop(0)()
        answer = await self.cluster.request(fn, *args, **kwargs)
        if (fn.__name__, name) in self.lost_answers:
            self.lost_answers.discard((fn.__name__, name))
            raise ApiException(status=504, reason="Gateway Timeout")
        return answer


async def test_a_university_queue_of_3000_waiting_is_saved_and_restored_whole(kube, sim_cluster):
    room = Room(0)
    queue = LaunchQueue(room.admit, room.unreserve)
    places = KeptPlaces(queue, lambda kernel_id: None, Section(ConfigMapStore(kube, NS, "state", LABELS), "queue"),
                        save_delay=3600)  # saved below, once
    for w in university_queue(3000):
        queue.join(w)
        places.hold(w, asyncio.get_running_loop().create_future(), new_ticket())
    assert len(json.dumps(places.state())) > 900_000  # what the one ConfigMap of before logged and did not save
    await places.save()
    assert set(configmaps(sim_cluster)) == {"state-queue"}  # gzipped, it fits one ConfigMap

    queue2 = LaunchQueue(Room(0).admit, room.unreserve)  # the broker restarted
    again = KeptPlaces(queue2, lambda kernel_id: None, Section(ConfigMapStore(kube, NS, "state"), "queue"),
                       save_delay=3600)
    assert await again.restore(exists=lambda kernel_id: False) == 3000
    assert [w.kernel_id for w in queue2.waiting()] == [w.kernel_id for w in queue.waiting()]
    assert again.state() == places.state()
    for _ in range(100):  # the queues' pumps end (nothing is admitted: no room)
        await asyncio.sleep(0)


async def test_a_big_section_is_split_into_parts_read_back_whole_and_old_parts_deleted(kube, sim_cluster):
    store = ConfigMapStore(kube, NS, "state", LABELS)  # the API server's real limits: 1 MiB per ConfigMap
    big = {"blob": secrets.token_urlsafe(1_500_000)}  # 2 MB random: gzip leaves it ~1.5 MB
    await store.save("queue", big)
    first = store.heads["queue"]
    assert first.parts == 2 and await ConfigMapStore(kube, NS, "state").load("queue") == big
    assert {n: c["metadata"]["labels"] for n, c in configmaps(sim_cluster).items()} == {
        "state-queue": LABELS, f"state-queue-{first.generation}-0": LABELS, f"state-queue-{first.generation}-1": LABELS}

    small_parts = ConfigMapStore(kube, NS, "state", LABELS, part_bytes=4096)
    other = {"blob": secrets.token_hex(20_000)}
    await small_parts.save("queue", other)  # over the first broker's head: its parts go
    second = small_parts.heads["queue"]
    assert second.parts > 3 and second.generation != first.generation
    assert set(configmaps(sim_cluster)) == {"state-queue", *(f"state-queue-{second.generation}-{i}"
                                                             for i in range(second.parts))}
    assert await ConfigMapStore(kube, NS, "state").load("queue") == other
    await small_parts.save("queue", {"places": []})  # small again: in the head, no parts left
    assert set(configmaps(sim_cluster)) == {"state-queue"}
    assert await ConfigMapStore(kube, NS, "state").load("queue") == {"places": []}


async def test_a_reader_during_a_rewrite_never_assembles_two_writes(kube, sim_cluster):
    writer = ConfigMapStore(kube, NS, "state", part_bytes=1024)
    old, new = {"blob": secrets.token_hex(4000)}, {"blob": secrets.token_hex(4000)}
    await writer.save("queue", old)
    generation = writer.heads["queue"].generation
    old_parts = [configmaps(sim_cluster)[f"state-queue-{generation}-{i}"] for i in range(writer.heads["queue"].parts)]
    cluster = Interleaving(kube)
    reader = ConfigMapStore(cluster, NS, "state")
    # the reader has the old head and its first part when the writer replaces them
    cluster.before("read_namespaced_config_map", f"state-queue-{generation}-1", lambda: writer.save("queue", new))
    assert await reader.load("queue") == new and not any(cluster.steps.values())  # it followed the new head
    head = configmaps(sim_cluster)["state-queue"]
    with pytest.raises(StateUnreadable):  # the new head with the old write's parts is refused, never mixed
        decode(head, old_parts)
    forged = [{**part, "data": {**part["data"], "generation": head["data"]["generation"]}} for part in old_parts]
    with pytest.raises(StateUnreadable, match="sha256"):
        decode(head, forged)


async def test_a_broker_upgraded_from_the_one_configmap_layout_loads_it_then_writes_its_own(kube, sim_cluster):
    old = {"budgets": {"used": {"user:ann": 1.5}}, "queue": {"places": [{"user": "bob"}]},
           "fairshare": {"use": {"user:ann": [10.0, 1.0]}}}
    sim_cluster.create_object("configmaps", NS, {"metadata": {"name": "orion-broker-state", "labels": LABELS},
                                                 "data": {k: json.dumps(v) for k, v in old.items()}})
    store = ConfigMapStore(kube, NS, "orion-broker-state", LABELS)
    assert {section: await store.load(section) for section in old} == old
    assert await store.load("bookings") is None
    await store.save("budgets", {"used": {"user:ann": 2.0}})
    legacy = configmaps(sim_cluster)["orion-broker-state"]
    assert set(legacy["data"]) == {"queue", "fairshare"}  # moved out once written in its own ConfigMap
    again = ConfigMapStore(kube, NS, "orion-broker-state")  # a restart in between
    assert await again.load("budgets") == {"used": {"user:ann": 2.0}} and await again.load("queue") == old["queue"]
    await again.save("queue", old["queue"])
    await store.save("fairshare", old["fairshare"])
    assert set(configmaps(sim_cluster)) == {"orion-broker-state-budgets", "orion-broker-state-queue",
                                            "orion-broker-state-fairshare"}  # the old one went once empty
    fresh = ConfigMapStore(kube, NS, "orion-broker-state")
    assert {section: await fresh.load(section) for section in old} == {**old, "budgets": {"used": {"user:ann": 2.0}}}


async def test_conflicting_writers_and_failed_writes_never_lose_the_last_good_state(kube, sim_cluster, caplog):
    cluster = Interleaving(kube)
    mine, theirs = ConfigMapStore(cluster, NS, "state", part_bytes=1024), ConfigMapStore(kube, NS, "state",
                                                                                         part_bytes=1024)
    await mine.load("queue")
    await theirs.save("queue", {"blob": secrets.token_hex(1500)})  # an old broker still running writes it
    ours = {"blob": secrets.token_hex(1500)}
    await mine.save("queue", ours)
    assert mine.conflicts == 1 and "written or deleted by another writer" in caplog.text
    assert set(configmaps(sim_cluster)) == {"state-queue", *(f"state-queue-{mine.heads['queue'].generation}-{i}"
                                                             for i in range(mine.heads["queue"].parts))}

    latest = {}
    for _ in range(3):  # the other writes before each of this one's head writes
        async def step():
            latest["state"] = {"blob": secrets.token_hex(1500)}
            await theirs.save("queue", latest["state"])
        cluster.before("replace_namespaced_config_map", "state-queue", step)
    await mine.save("queue", {"blob": secrets.token_hex(1500)})
    assert mine.conflicts == 4 and "not saved after 3 conflicting writes" in caplog.text
    assert await ConfigMapStore(kube, NS, "state").load("queue") == latest["state"]  # the newer state, whole
    assert theirs.heads["queue"].parts >= 2
    kept = {"state-queue", *(f"state-queue-{theirs.heads['queue'].generation}-{i}"
                             for i in range(theirs.heads["queue"].parts))}
    assert set(configmaps(sim_cluster)) == kept  # the parts of the save given up went

    await mine.load("queue")
    for verb in ("update", "create"):  # the head's replace fails; a part's create fails
        sim_cluster.faults.fail(verb, "configmaps", 500)
        with pytest.raises(ApiException):
            await mine.save("queue", {"blob": secrets.token_hex(1500)})
        assert set(configmaps(sim_cluster)) == kept
        assert await ConfigMapStore(kube, NS, "state").load("queue") == latest["state"]

    cluster.lose_answer("replace_namespaced_config_map", "state-queue")  # written, but the answer is lost
    lost = {"blob": secrets.token_hex(1500)}
    with pytest.raises(ApiException):
        await mine.save("queue", lost)
    assert await ConfigMapStore(kube, NS, "state").load("queue") == lost  # its parts were kept, the old ones went
    assert set(configmaps(sim_cluster)) == {"state-queue", *(f"state-queue-{mine.heads['queue'].generation}-{i}"
                                                             for i in range(mine.heads["queue"].parts))}
