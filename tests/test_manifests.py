"""The pure pod builder: golden manifests per backend, lossless round trip, no secret in the Pod."""

import base64
import json
import os
from pathlib import Path

import pytest
from kubernetes.client import ApiClient

from orion_jupyter.backends import BACKENDS, get_backend
from orion_jupyter.k8s.manifests import (
    CONNECTION_DIR,
    KernelPodOptions,
    build_kernel_manifests,
    kernel_object_name,
    slug,
)
from orion_jupyter.k8s.rbac import rbac_manifests
from orion_jupyter.vgpu import VGPURequest, VGPURequestError

GOLDEN = Path(__file__).parent / "golden"
KEY = "d6c0e7d5-4f0b-4d55-9b0a-secret-hmac-key"
CONNECTION = {"transport": "tcp", "ip": "0.0.0.0", "key": KEY, "signature_scheme": "hmac-sha256",
              "shell_port": 52011, "iopub_port": 52012, "stdin_port": 52013, "control_port": 52014, "hb_port": 52015}


def options(backend: str, vgpus: int, memory: str, **extra) -> KernelPodOptions:
    values = dict(
        kernel_id="3f2a9c1d-7b8e-4c1a-9d2e-5f6a7b8c9d0e",
        user="Alice.Smith@example.org",
        request=VGPURequest.parse(vgpus, memory),
        backend=get_backend(backend),
        image="quay.io/jupyter/pytorch-notebook:cuda12-python-3.11",
        namespace="class-ai101",
        connection_info=CONNECTION,
        name_suffix="a1b2c3",
        kernel_spec_name="orion-1x4gi",
        course="ai101",
        node_selector={"gpu": "true"},
        tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        cpu_request="500m", memory_limit="8Gi",
        extra_env={"JPY_SESSION_NAME": "lab1.ipynb"},
        owner={"name": "jupyter-alice", "uid": "0b9c0a6e-1111-2222-3333-444455556666"},
    )
    values.update(extra)
    return KernelPodOptions(**values)


CASES = [(b, n, m) for b in sorted(BACKENDS) for n, m in ((1, "4Gi"), (2, "8Gi"))]


@pytest.mark.parametrize("backend, vgpus, memory", CASES)
def test_pod_matches_golden_manifest(backend, vgpus, memory):
    manifests = build_kernel_manifests(options(backend, vgpus, memory))
    golden = GOLDEN / f"{backend}-{vgpus}x{memory}.json"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(
            json.dumps({"pod": manifests.pod, "secret": manifests.secret}, indent=1, sort_keys=True) + "\n")
    expected = json.loads(golden.read_text())
    assert manifests.pod == expected["pod"]
    assert manifests.secret == expected["secret"]


@pytest.mark.parametrize("backend, vgpus, memory", CASES)
def test_manifests_round_trip_through_client_models(backend, vgpus, memory):
    api = ApiClient()
    manifests = build_kernel_manifests(
        options(backend, vgpus, memory, host_ipc=True, orion_controller="orion-controller:9123"))
    for manifest, model in ((manifests.pod, "V1Pod"), (manifests.secret, "V1Secret")):
        deserialised = api._ApiClient__deserialize(json.loads(json.dumps(manifest)), model)
        assert api.sanitize_for_serialization(deserialised) == manifest


@pytest.mark.parametrize("backend, vgpus, memory", CASES)
def test_no_secret_value_in_the_pod(backend, vgpus, memory):
    manifests = build_kernel_manifests(options(backend, vgpus, memory))
    pod_text = json.dumps(manifests.pod)
    encoded = manifests.secret["data"]["connection.json"]
    assert json.loads(base64.b64decode(encoded))["key"] == KEY
    for needle in (KEY, encoded, base64.b64encode(KEY.encode()).decode()):
        assert needle not in pod_text
    volume = manifests.pod["spec"]["volumes"][0]["secret"]
    mount = manifests.pod["spec"]["containers"][0]["volumeMounts"][0]
    assert volume["secretName"] == manifests.secret["metadata"]["name"]
    assert mount == {"name": "connection", "mountPath": CONNECTION_DIR, "readOnly": True}


def test_contract_details():
    pod = build_kernel_manifests(options("orion", 2, "8Gi", host_ipc=True)).pod
    spec, container = pod["spec"], pod["spec"]["containers"][0]
    resources = container["resources"]
    assert resources["limits"]["virtaitech.com/gpu"] == resources["requests"]["virtaitech.com/gpu"] == "2"
    env = {e["name"]: e for e in container["env"]}
    assert env["ORION_GMEM"]["value"] == "8192" and env["ORION_VGPU"]["value"] == "2"
    assert env["ORION_JUPYTER_POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False
    assert spec["hostIPC"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert "PATH" not in env and "HOME" not in env  # nothing of the server's environment
    assert pod["metadata"]["ownerReferences"][0]["name"] == "jupyter-alice"
    # hostIPC is an Orion-only, operator-chosen option
    assert "hostIPC" not in build_kernel_manifests(options("hami", 1, "4Gi", host_ipc=True)).pod["spec"]
    assert "hostIPC" not in build_kernel_manifests(options("orion", 1, "4Gi")).pod["spec"]


def test_cpu_only_kernel_requests_no_extended_resource():
    pod = build_kernel_manifests(options("orion", 0, "4Gi")).pod
    limits = pod["spec"]["containers"][0]["resources"]["limits"]
    assert not any("/" in name for name in limits)


@pytest.mark.parametrize("user", ["Alice.Smith@example.org", "ALICE", "a" * 200, "学生", "--", "x_y"])
def test_names_and_labels_are_valid_kubernetes_names(user):
    manifests = build_kernel_manifests(options("orion", 1, "4Gi", user=user))
    name = manifests.name
    assert len(name) <= 63 and name == name.lower() and name[0].isalnum() and name[-1].isalnum()
    for value in manifests.pod["metadata"]["labels"].values():
        assert len(value) <= 63
    assert manifests.pod["metadata"]["annotations"]["orion-jupyter.io/user"] == user


def test_distinct_users_get_distinct_slugs():
    assert slug("alice", 20) == "alice"
    assert slug("Alice", 20) != slug("alice", 20)
    assert kernel_object_name("bob", "3f2a9c1d-xxxx", "abc") == "orion-bob-3f2a9c1d-abc"


def test_bad_namespace_is_rejected():
    with pytest.raises(VGPURequestError, match='namespace "Class_1" is not a valid Kubernetes name'):
        build_kernel_manifests(options("orion", 1, "4Gi", namespace="Class_1"))


def test_rbac_is_least_privilege():
    docs = rbac_manifests("class-ai101")
    role = next(d for d in docs if d["kind"] == "Role")
    rules = {tuple(r["resources"]): set(r["verbs"]) for r in role["rules"]}
    assert rules[("secrets",)] == {"create", "delete", "patch"}  # never read or list Secrets
    assert "update" not in rules[("pods",)] and "*" not in str(role)
    assert {d["kind"] for d in rbac_manifests("x", read_nodes=False)} == {"ServiceAccount", "Role", "RoleBinding"}
