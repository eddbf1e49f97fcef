"""The broker's state in a ConfigMap of the simulated cluster: written with resourceVersion checks (a stale
writer re-reads and keeps the other sections), too-large data refused by the API server as Kubernetes does,
and a restarted broker's budget meter, fair share and queue order continue from it."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import uuid

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from orion_jupyter.broker.budgets import BudgetMeter
from orion_jupyter.core.budgets import Budgets
from orion_jupyter.core.fairshare import FairShare
from orion_jupyter.core.places import KeptPlaces, new_ticket
from orion_jupyter.core.queue import LaunchQueue
from orion_jupyter.k8s.cluster import KubeCluster
from orion_jupyter.k8s.state_store import ConfigMapStore, Section
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
