"""`orion-jupyter manifests --orion-stack`: the tutorial's hand-edited Orion deployment in one command,
strictly valid against Kubernetes 1.37, the DaemonSets on the GPU nodes, the controller's address
in the plugin's and the servers' env, privileges for Orion Server alone."""

from __future__ import annotations

import pytest
import yaml

from orion_jupyter.cli import main
from orion_jupyter.k8s.orion_stack import OrionStack, orion_stack_manifests

from .test_hub_manifests import validate, validate_cli_output

NS = "orion-system"
ADDRESS = f"orion-controller.{NS}.svc.cluster.local:9123"


def env_of(doc: dict) -> dict[str, object]:
    container = doc["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def by_kind_name(docs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


@pytest.mark.parametrize("remote", [False, True])
def test_cli_renders_a_strictly_valid_stack_on_the_gpu_nodes(tmp_path, capsys, remote):
    argv = ["manifests", "--orion-stack", "--namespace", NS, "--gpu-node-selector", "gpu=true"]
    assert main(argv + (["--remote", "--bind-net", "ib0"] if remote else [])) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# Orion stack in namespace {NS}; kernels reach the controller at {ADDRESS}")
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert validate_cli_output(tmp_path, out) == len(docs) == (5 if remote else 4)
    objects = by_kind_name(docs)
    deployment = objects["Deployment", "orion-controller"]
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    service = objects["Service", "orion-controller"]
    assert service["spec"]["ports"][0]["port"] == 9123
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    plugin, server = objects["DaemonSet", "orion-device-plugin"], objects["DaemonSet", "orion-server"]
    for daemonset in (plugin, server):
        assert daemonset["spec"]["template"]["spec"]["nodeSelector"] == {"gpu": "true"}
        assert env_of(daemonset)["ORION_CONTROLLER"] == ADDRESS
    server_env = env_of(server)
    assert server_env["PORT"] == "9960" and server_env["VGPU"] == "2" and server_env["LOG_LEVEL"] == "INFO"
    server_spec = server["spec"]["template"]["spec"]
    assert server_spec["hostNetwork"] and server_spec["hostIPC"] and server_spec["hostPID"]
    assert server_spec["containers"][0]["securityContext"] == {"privileged": True}
    assert server_spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    # Only Orion Server is privileged: the controller and the plugin drop every capability.
    for doc in (deployment, plugin):
        spec = doc["spec"]["template"]["spec"]
        assert not any(spec.get(k) for k in ("hostNetwork", "hostIPC", "hostPID"))
        assert spec["containers"][0]["securityContext"] == {"allowPrivilegeEscalation": False,
                                                            "capabilities": {"drop": ["ALL"]}}
        assert spec["automountServiceAccountToken"] is False
    if remote:
        assert server_env["BIND_NET"] == "ib0" and "BIND_ADDR" not in server_env
        conf = objects["ConfigMap", "orion-server-conf"]["data"]["server.conf"]
        assert 'enable_shm = "false"' in conf and 'enable_rdma = "false"' in conf
        mounts = {m["mountPath"]: m for m in server_spec["containers"][0]["volumeMounts"]}
        assert mounts["/etc/orion/server.conf"]["readOnly"] is True
    else:
        assert server_env["BIND_ADDR"] == {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.hostIP"}}
        assert ("ConfigMap", "orion-server-conf") not in objects


def test_options_reach_the_objects():
    stack = OrionStack(NS, {"nvidia.com/gpu.present": "true"}, vgpus_per_gpu=4, cuda="9.0", remote=True, rdma=True,
                       controller_node_selector={"kubernetes.io/hostname": "cpu-1"},
                       controller_image="registry.local/orion-controller:1.0", plugin_image="registry.local/plugin:1")
    docs = orion_stack_manifests(stack)
    for doc in docs:
        validate(doc)
    objects = by_kind_name(docs)
    server = objects["DaemonSet", "orion-server"]
    assert server["spec"]["template"]["spec"]["containers"][0]["image"] == "virtaitech/orion-server:cu9.0"
    assert env_of(server)["VGPU"] == "4"
    assert 'enable_rdma = "true"' in objects["ConfigMap", "orion-server-conf"]["data"]["server.conf"]
    controller = objects["Deployment", "orion-controller"]["spec"]["template"]["spec"]
    assert controller["nodeSelector"] == {"kubernetes.io/hostname": "cpu-1"}
    assert controller["containers"][0]["image"] == "registry.local/orion-controller:1.0"
    assert objects["DaemonSet", "orion-device-plugin"]["spec"]["template"]["spec"]["containers"][0]["image"] == \
        "registry.local/plugin:1"


@pytest.mark.parametrize(("extra", "message"), [
    ([], "--gpu-node-selector KEY=VALUE"),
    (["--gpu-node-selector", "gpu"], "--gpu-node-selector 'gpu' is not KEY=VALUE"),
    (["--gpu-node-selector", "gpu=true", "--vgpus-per-gpu", "0"], "--vgpus-per-gpu 0 is not allowed; use 1 to 64"),
    (["--gpu-node-selector", "gpu=true", "--bind-net", "ib0"], "--bind-net and --rdma are for remote mode"),
    (["--gpu-node-selector", "gpu=true", "--hub"], "render the RBAC in a second call"),
])
def test_bad_stack_options_are_refused_in_one_line(capsys, extra, message):
    assert main(["manifests", "--orion-stack", "--namespace", NS, *extra]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""


def test_stack_flags_without_orion_stack_are_refused(capsys):
    assert main(["manifests", "--namespace", NS, "--remote"]) == 2
    assert "--remote is for the Orion stack: add --orion-stack" in capsys.readouterr().err
