"""Hub mode against a hostile student (issue 24), shown without a hub where a unit shows it: a claimed
kernel's NetworkPolicy still selects its pod, reports cannot switch culling off, a cap on kernels,
bodies refused before they are read."""

from __future__ import annotations

import pytest

from kubesim.fixtures import sim_cluster  # noqa: F401 - the fixture
from orion_jupyter.backends import get_backend
from orion_jupyter.k8s.client import api_client
from orion_jupyter.k8s.cluster import KubeCluster
from orion_jupyter.k8s.launcher import KernelPolicies, PodSite, selects
from orion_jupyter.names import LABEL_KERNEL_ID, LABEL_MANAGED_BY, MANAGED_BY
from orion_jupyter.protocols import ClaimRequest

NS = "default"
WARM_ID = "warm-0123456789abcdef"
NEW_ID = "0b5e8c2e-5d1f-4a57-9d6e-1e2f3a4b5c6d"


def test_a_selector_is_read_as_kubernetes_reads_it():
    labels = {LABEL_KERNEL_ID: "a", "x": "1"}
    assert selects({"matchLabels": {LABEL_KERNEL_ID: "a"}}, labels)
    assert selects({"matchExpressions": [{"key": LABEL_KERNEL_ID, "operator": "In", "values": ["a", "b"]}]}, labels)
    # what a merge patch left behind: the old matchLabels ANDed with the new expressions selects nothing
    assert not selects({"matchLabels": {LABEL_KERNEL_ID: "b"},
                        "matchExpressions": [{"key": LABEL_KERNEL_ID, "operator": "In", "values": ["a", "b"]}]},
                       labels)
    assert not selects({"matchExpressions": [{"key": "y", "operator": "Exists"}]}, labels)
    assert selects({"matchExpressions": [{"key": "y", "operator": "DoesNotExist"}]}, labels)
    assert not selects({"matchExpressions": [{"key": "x", "operator": "Bogus"}]}, labels)


@pytest.mark.parametrize("user", ["", "roster-student"], ids=["pool", "roster"])
async def test_a_claimed_kernels_policy_selects_its_pod(sim_cluster, user):  # noqa: F811
    """Pool (a warm kernel nobody owns) and roster (one pre-started for a student): after the claim the
    stored policy selects the relabelled pod, and admits the claimer's server."""
    cluster = KubeCluster(api_client(sim_cluster.kubeconfig_path), NS, watch_nodes=False)
    policies = KernelPolicies(cluster, {"app": "jupyterhub", "component": "hub"})
    site = PodSite(cluster, get_backend("orion"), pod_settings=lambda image: None, policies=policies)
    name = "orion-kernel-warm"
    ports = (50000, 50001, 50002, 50003, 50004)
    await policies.create(policies.build(name, WARM_ID, user, ports))
    await cluster.request(cluster.core.create_namespaced_pod, NS, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {LABEL_KERNEL_ID: WARM_ID, LABEL_MANAGED_BY: MANAGED_BY,
                                               "orion-jupyter.io/warm": "gpu"}},
        "spec": {"containers": [{"name": "kernel", "image": "python"}]}})
    await site.hand_over(name, WARM_ID, ClaimRequest(NEW_ID, "", "", ""), "alice", "AI_101", ports)
    pod = sim_cluster.get("pods", NS, name)
    policy = sim_cluster.get("networkpolicies", NS, name)
    assert pod["metadata"]["labels"][LABEL_KERNEL_ID] == NEW_ID
    assert selects(policy["spec"]["podSelector"], pod["metadata"]["labels"]), policy["spec"]["podSelector"]
    peers = [peer["podSelector"]["matchLabels"] for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    assert {"hub.jupyter.org/username": "alice", "component": "singleuser-server"} in peers
