"""`orion-jupyter check` on the simulated cluster (RBAC evaluated from the stored Roles and bindings):
all ✔ on a ready one (‼ for NetworkPolicy, which kubesim does not enforce), ✘ with the right hint for
each way a cluster is not ready, JSON output, exit codes, and nothing left behind, interrupted or not."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import kubernetes
import pytest

from kubesim.cluster import SimCluster, SimNode
from kubesim.fixtures import running_cluster
from kubesim.orion_controller import FakeOrionController
from orion_jupyter.cli import main
from orion_jupyter.k8s.hub_manifests import broker_manifests
from orion_jupyter.k8s.rbac import rbac_manifests

NS = "class-ai101"
IMAGE = "quay.io/jupyter/base-notebook:python-3.11"
SERVER_SA = f"system:serviceaccount:{NS}:jupyter"
ADMIN = "system:serviceaccount:kube-system:admin"


@pytest.fixture
def cluster(sim_cluster):
    """kubesim's one GPU node gpu-1 (4 virtaitech.com/gpu)."""
    return sim_cluster


def apply(cluster: SimCluster, docs: list[dict]) -> None:
    for doc in docs:
        kubernetes.utils.create_from_dict(cluster.api_client(), doc)


def ready_direct(cluster: SimCluster) -> None:
    apply(cluster, rbac_manifests(NS, read_all_pods=True))
    cluster.rbac_user = SERVER_SA


def left(cluster: SimCluster) -> list[str]:
    return [f"{kind}/{o['metadata']['name']}" for kind in ("pods", "secrets", "networkpolicies")
            for o in cluster.objects(kind, NS)]


def check(capsys, *extra: str) -> tuple[int, str]:
    code = main(["check", "--namespace", NS, "--image", IMAGE, "--timeout", "60", *extra])
    return code, capsys.readouterr().out


def test_a_ready_cluster_passes_every_check(cluster, capsys):
    """As an operator runs it: an admin's kubeconfig, asking about the server's service account."""
    apply(cluster, rbac_manifests(NS, read_all_pods=True))
    make_admin(cluster)
    code, out = check(capsys, "--service-account", "jupyter")
    assert code == 0, out
    assert out.startswith(f"orion-jupyter check: direct mode (the Jupyter server), namespace {NS}, backend orion\n")
    for line in ("✔ the API server answers (v1.31.0-kubesim)",
                 f"✔ namespace {NS} exists",
                 f"✔ service account jupyter may do all 12 things the Jupyter server needs in namespace {NS}",
                 "✔ service account jupyter may do all 6 things the Jupyter server needs cluster-wide",
                 "✔ 1 node advertises virtaitech.com/gpu (gpu-1: 4)",
                 f"✔ image {IMAGE} pulled and the kernel pod ready in ",
                 "✔ kernel_info answered: Python 3.",
                 "✔ the kernel sees ORION_VGPU=1, ORION_GMEM=4096"):
        assert line in out, out
    assert "✘" not in out and "‼" not in out
    assert out.rstrip().endswith("Status check results are ✔")
    assert left(cluster) == []


def test_json_output(cluster, capsys):
    ready_direct(cluster)
    code, out = check(capsys, "--output", "json", "--no-canary")
    report = json.loads(out)
    assert code == 0 and report["success"] is True
    names = [c["categoryName"] for c in report["categories"]]
    assert names == ["Kubernetes API", "Access (RBAC)", "vGPU capacity"]
    capacity = report["categories"][2]["checks"][0]
    assert capacity["result"] == "success" and capacity["details"] == {"nodes": {"gpu-1": "4"}}


def test_a_missing_rbac_verb_fails_with_the_manifests_command(cluster, capsys):
    docs = rbac_manifests(NS, read_all_pods=True)
    role = next(d for d in docs if d["kind"] == "Role")
    role["rules"][0]["verbs"].remove("delete")  # pods: no delete
    apply(cluster, docs)
    cluster.rbac_user = SERVER_SA
    code, out = check(capsys)  # as the server's own account, which may not look at namespaces
    assert code == 1
    assert f"‼ namespace {NS} could not be looked at (no right to get namespaces)" in out
    assert f"✘ this identity may not delete pods in namespace {NS}\n" in out
    assert (f"    hint: apply the RBAC: orion-jupyter manifests --namespace {NS} --read-all-pods | kubectl apply -f -"
            in out)
    assert "‼ no canary kernel was started" in out and "Status check results are ✘" in out
    assert left(cluster) == []


def test_no_node_with_the_resource(monkeypatch, capsys):
    cpu_only = SimNode("cpu-1", allocatable={"cpu": "8", "memory": "32Gi", "pods": 110})
    with running_cluster(monkeypatch, [cpu_only]) as sim:
        ready_direct(sim)
        code, out = check(capsys)
        assert code == 1
        assert "✘ no node advertises virtaitech.com/gpu (1 nodes)" in out
        assert ("    hint: deploy the Orion stack: orion-jupyter manifests --orion-stack --namespace orion-system "
                "--gpu-node-selector KEY=VALUE | kubectl apply -f -") in out
        code, out = check(capsys, "--backend", "hami")
        assert "✘ no node advertises nvidia.com/gpu (1 nodes)" in out
        assert "hint: install the device plugin that advertises nvidia.com/gpu on the GPU nodes" in out
        assert left(sim) == []


def test_an_image_that_cannot_be_pulled(cluster, capsys):
    ready_direct(cluster)
    cluster.faults.image_pull_error("registry.example/missing:*")
    code, out = check(capsys, "--image", "registry.example/missing:1.0")
    assert code == 1
    assert "✘ the canary kernel pod from registry.example/missing:1.0 did not start (image)" in out
    assert "the kernel image registry.example/missing:1.0 cannot be pulled (" in out
    assert ("hint: check the image name and tag, and the registry's pull secret; or set c.VGPUProvisioner.image"
            in out)
    assert left(cluster) == []


def test_an_image_without_ipykernel(cluster, capsys):
    ready_direct(cluster)
    cluster.faults.bare_python_image("python:3.12-slim")
    code, out = check(capsys, "--image", "python:3.12-slim")
    assert code == 1
    assert "✘ the canary kernel pod from python:3.12-slim did not start (exited)" in out
    assert "ImportError: No module named ipykernel_launcher" in out
    assert "hint: the image has no ipykernel: add `pip install ipykernel` to it (see docker/kernel.Dockerfile)" in out
    assert left(cluster) == []


def test_the_orion_controller(cluster, capsys):
    ready_direct(cluster)
    controller = FakeOrionController(total=8, free=6)
    try:
        code, out = check(capsys, "--orion-controller", controller.address, "--remote", "--no-canary")
        assert code == 0, out
        assert "✔ remote Orion vGPUs: kernel pods ask Kubernetes for no GPU (the controller is the pool)" in out
        assert f"✔ the Orion controller at {controller.address} answers: 6 of 8 vGPUs free" in out
        controller.garbage = True
        code, out = check(capsys, "--orion-controller", controller.address, "--no-canary")
        assert code == 1 and f"✘ the Orion controller at {controller.address} does not answer as Orion's does" in out
        assert "answered /info with '<html>" in out
    finally:
        controller.stop()
    code, out = check(capsys, "--orion-controller", controller.address, "--remote")
    assert code == 1
    assert f"✘ the Orion controller at {controller.address} does not answer as Orion's does" in out
    assert f"    Orion controller {controller.address} does not answer (" in out
    assert "hint: deploy or fix the Orion stack (orion-jupyter manifests --orion-stack)" in out
    assert left(cluster) == []


def hub_cluster(cluster: SimCluster) -> None:
    """The broker's RBAC, and the check run by an admin on the broker's behalf."""
    apply(cluster, broker_manifests(NS, read_all_pods=True))
    make_admin(cluster)


def make_admin(cluster: SimCluster) -> None:
    """The kubeconfig's token is a cluster admin's (an operator's)."""
    apply(cluster, [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "admin-all"},
         "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "admin"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin-all"},
         "subjects": [{"kind": "ServiceAccount", "name": "admin", "namespace": "kube-system"}]},
    ])
    cluster.rbac_user = ADMIN


def test_hub_mode(cluster, capsys):
    hub_cluster(cluster)
    code, out = check(capsys, "--hub", "--service-account", "orion-broker")
    assert code == 0, out
    assert f"✔ service account orion-broker may do all 29 things the broker needs in namespace {NS}" in out
    assert "✔ single-user servers (service account default) can neither create pods nor read Secrets" in out
    # kubesim stores NetworkPolicies but does not enforce them: the probe says so
    assert "‼ NetworkPolicy is not enforced: a pod outside the policy reached a fenced port" in out
    assert "hint: kernel ports are then guarded by the connection key alone" in out
    assert "✔ the kernel sees ORION_VGPU=1, ORION_GMEM=4096" in out
    assert left(cluster) == []

    # a binding that gives students' servers pod rights breaks hub mode's promise
    apply(cluster, [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "oops", "namespace": NS},
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "oops", "namespace": NS},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "oops"},
         "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": NS}]},
    ])
    code, out = check(capsys, "--hub", "--service-account", "orion-broker", "--no-canary")
    assert code == 1
    assert (f'✘ single-user servers (service account default) may create pods (RBAC: allowed by RoleBinding "oops" '
            f'of namespace "{NS}")') in out
    assert "hint: remove that binding: in hub mode students' servers must hold no cluster rights" in out
    assert left(cluster) == []


def test_an_unreachable_api_server_and_bad_options(cluster, capsys, tmp_path):
    with open(cluster.kubeconfig_path) as f:
        config = re.sub(r"http://127\.0\.0\.1:\d+", "http://127.0.0.1:9", f.read())  # the discard port: closed
    (tmp_path / "kubeconfig").write_text(config)
    code, out = check(capsys, "--no-canary", "--kubeconfig", str(tmp_path / "kubeconfig"))
    assert code == 1 and "✘ the API server answers\n" in out and "hint: check the kubeconfig" in out
    assert main(["check", "--timeout", "0"]) == 2
    assert "--timeout must be more than 0 seconds" in capsys.readouterr().err
    assert main(["check", "--config", str(tmp_path / "nope.py")]) == 2
    assert "is not a file" in capsys.readouterr().err


def test_an_interrupted_check_leaves_nothing(cluster):
    ready_direct(cluster)
    cluster.faults.schedule_delay = 60.0  # the canary waits to be scheduled until it is interrupted
    env = {**os.environ, "KUBECONFIG": cluster.kubeconfig_path}
    command = [sys.executable, "-m", "orion_jupyter.cli", "check", "--namespace", NS, "--image", IMAGE]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        cluster.wait_until(lambda: cluster.objects("pods", NS), timeout=60)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, out + err
    assert "interrupted; what it had created is deleted" in err
    deadline = time.monotonic() + 10
    while left(cluster) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left(cluster) == []
