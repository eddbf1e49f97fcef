"""Hub mode's rendered objects: the broker's RBAC, the NetworkPolicy of a kernel pod, z2jh's user label
and the zero-to-jupyterhub values snippet; all Kubernetes objects validate strictly against 1.37."""

from __future__ import annotations

import random
import re
import string
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from orion_jupyter.backends import get_backend
from orion_jupyter.cli import main
from orion_jupyter.k8s.hub_manifests import (
    BROKER_PORT,
    KERNEL_PORT_RANGE,
    PRESETS_MOUNT,
    broker_manifests,
    broker_url,
    kernel_network_defaults,
    kernel_network_policy,
    selects,
    z2jh_username_label,
    z2jh_values,
)
from orion_jupyter.k8s.manifests import KernelPodOptions, build_kernel_manifests
from orion_jupyter.k8s.rbac import KERNEL_RULES, rbac_manifests
from orion_jupyter.names import LABEL_KERNEL_ID
from orion_jupyter.vgpu import VGPURequest, VGPURequestError
from orion_jupyter.wire import PORT_RANGE

K8S = "1.37.0"
NS = "class-ai101"
KERNEL_ID = "3f2a9c1d-7b8e-4c1a-9d2e-5f6a7b8c9d0e"
PORTS = [52011, 52012, 52013, 52014, 52015]
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def validate(obj: dict) -> None:
    """As `kubernetes-validate --strict -k 1.37.0` does."""
    assert kubernetes_validate.validate(obj, K8S, strict=True) == "1.37"


def validate_cli_output(tmp_path: Path, out: str) -> int:
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(out)
    tool = Path(sys.executable).with_name("kubernetes-validate")
    result = subprocess.run([str(tool), "--strict", "-k", K8S, str(rendered)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "against version 1.37" in result.stdout
    return result.stdout.count("passed")


def rules_of(doc: dict) -> dict[tuple[str, str], set[str]]:
    return {(group, resource): set(rule["verbs"])
            for rule in doc["rules"] for group in rule["apiGroups"] for resource in rule["resources"]}


# ---------------------------------------------------------------- the broker's RBAC


@pytest.mark.parametrize("kwargs", [
    {}, {"read_all_pods": True}, {"read_nodes": False}, {"service_account": "hub", "create_service_account": False},
    {"backend": "dra"}, {"backend": get_backend("dra"), "read_nodes": False},
], ids=["default", "all-pods", "no-nodes", "hub-account", "dra", "dra-no-nodes"])
def test_broker_rbac_validates_strictly(kwargs):
    docs = broker_manifests(NS, **kwargs)
    for doc in docs:
        validate(doc)
    kinds = [d["kind"] for d in docs]
    assert kinds[-4:-2] == ["Role", "RoleBinding"] or kinds[-2:] == ["Role", "RoleBinding"]
    assert ("ServiceAccount" in kinds) == kwargs.get("create_service_account", True)
    subjects = [s for d in docs if "subjects" in d for s in d["subjects"]]
    assert subjects and all(s == {"kind": "ServiceAccount", "name": kwargs.get("service_account", "orion-broker"),
                                  "namespace": NS} for s in subjects)


def test_broker_role_is_exactly_what_the_broker_does():
    docs = broker_manifests(NS)
    role = next(d for d in docs if d["kind"] == "Role")
    assert role["metadata"] == {"name": "orion-jupyter-broker", "namespace": NS}
    assert rules_of(role) == {
        ("", "pods"): {"get", "list", "watch", "create", "delete", "patch"},
        ("", "pods/log"): {"get"},
        ("", "secrets"): {"create", "delete", "patch"},
        ("", "events"): {"list", "watch"},
        ("networking.k8s.io", "networkpolicies"): {"create", "delete", "get", "list", "watch", "patch"},
        ("coordination.k8s.io", "leases"): {"create", "get", "update", "patch", "delete"},
        ("", "persistentvolumeclaims"): {"get", "list"},
        ("", "configmaps"): {"create", "get", "update", "delete"},
    }
    # Students' connection keys stay unreadable even to a broker bug that lists or reads.
    assert not {"get", "list", "watch", "*"} & rules_of(role)[("", "secrets")]
    assert "*" not in str(docs)
    # What direct mode gets for kernel pods, the broker gets too (one list of rules, in rbac.py).
    assert all(rule in role["rules"] for rule in KERNEL_RULES)
    cluster = next(d for d in docs if d["kind"] == "ClusterRole")
    assert rules_of(cluster) == {("", "nodes"): {"get", "list", "watch"}}
    assert cluster["metadata"]["name"] == f"orion-jupyter-broker-pool-reader-{NS}"


def test_broker_cluster_reads():
    all_pods = next(d for d in broker_manifests(NS, read_all_pods=True) if d["kind"] == "ClusterRole")
    assert rules_of(all_pods) == {("", "nodes"): {"get", "list", "watch"}, ("", "pods"): {"get", "list", "watch"}}
    assert {d["kind"] for d in broker_manifests(NS, read_nodes=False)} == {"ServiceAccount", "Role", "RoleBinding"}
    dra = broker_manifests(NS, backend="dra")
    assert ("resource.k8s.io", "resourceclaims") in rules_of(next(d for d in dra if d["kind"] == "Role"))
    assert ("resource.k8s.io", "resourceslices") in rules_of(next(d for d in dra if d["kind"] == "ClusterRole"))
    with pytest.raises(VGPURequestError):
        broker_manifests("Class_1")
    # Direct mode's RBAC has its own names, so both can live in one namespace.
    direct = {(d["kind"], d["metadata"]["name"]) for d in rbac_manifests(NS)}
    assert not direct & {(d["kind"], d["metadata"]["name"]) for d in broker_manifests(NS)}


# ---------------------------------------------------------------- the kernel pod's NetworkPolicy




def admits(policy: dict, pod_labels: dict, source_labels: dict, port: int) -> bool:
    """Whether ``policy`` lets a pod labelled ``source_labels`` (same namespace) reach ``port`` of a pod
    labelled ``pod_labels`` (the parts of NetworkPolicy semantics these policies use)."""
    spec = policy["spec"]
    if not selects(spec["podSelector"], pod_labels):
        return True  # not this policy's pod
    assert spec["policyTypes"] == ["Ingress"]
    for rule in spec.get("ingress", []):
        assert set(rule) <= {"from", "ports"}
        peers_ok = any(set(peer) == {"podSelector"} and selects(peer["podSelector"], source_labels)
                       for peer in rule["from"])
        ports_ok = any(p["protocol"] == "TCP" and p["port"] == port and "endPort" not in p for p in rule["ports"])
        if peers_ok and ports_ok:
            return True
    return False


def server_pod_labels(user: str) -> dict:
    """What kubespawner (7+) and z2jh put on a single-user server pod."""
    return {"hub.jupyter.org/username": z2jh_username_label(user), "hub.jupyter.org/servername": "",
            "component": "singleuser-server", "app.kubernetes.io/component": "singleuser-server",
            "app": "jupyterhub", "release": "jhub", "hub.jupyter.org/network-access-hub": "true"}


def kernel_pod(user: str, kernel_id: str) -> dict:
    return build_kernel_manifests(KernelPodOptions(
        kernel_id=kernel_id, user=user, request=VGPURequest.parse(1, "4Gi"), backend=get_backend("hami"),
        image="quay.io/jupyter/pytorch-notebook:cuda12-python-3.11", namespace=NS,
        connection_info={"shell_port": PORTS[0], "key": "k"}, name_suffix="a1b2c3",
    )).pod


@pytest.mark.parametrize("user", ["alice", "alice@example.com", "Bob.Smith"])
def test_network_policy_admits_only_the_users_server_on_the_kernel_ports(user):
    pod = kernel_pod(user, KERNEL_ID)
    labels = pod["metadata"]["labels"]
    policy = kernel_network_policy(pod["metadata"]["name"], NS, labels[LABEL_KERNEL_ID], z2jh_username_label(user),
                                   reversed(PORTS))
    validate(policy)
    assert policy["metadata"]["name"] == pod["metadata"]["name"] and policy["metadata"]["namespace"] == NS
    assert policy["spec"]["podSelector"] == {"matchLabels": {LABEL_KERNEL_ID: KERNEL_ID}}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    [rule] = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"hub.jupyter.org/username": z2jh_username_label(user),
                                                             "component": "singleuser-server"}}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": p} for p in PORTS]

    own_server = server_pod_labels(user)
    assert all(admits(policy, labels, own_server, port) for port in PORTS)
    assert not admits(policy, labels, own_server, 8888)  # the kernel ports only
    assert not admits(policy, labels, own_server, PORTS[0] + 100)
    others = [
        server_pod_labels("mallory"),  # another student's server
        {**own_server, "component": "hub"},  # not a server pod, even with the user's label
        {k: v for k, v in own_server.items() if k != "component"},
        kernel_pod(user, "0a1b2c3d-0000-4000-8000-000000000000")["metadata"]["labels"],  # the user's other kernel
        kernel_pod("mallory", KERNEL_ID)["metadata"]["labels"],
        {"component": "singleuser-server"},
    ]
    assert not any(admits(policy, labels, source, port) for source in others for port in PORTS)
    # It selects this kernel's pod, not another kernel's.
    assert not selects(policy["spec"]["podSelector"],
                       kernel_pod(user, "0a1b2c3d-0000-4000-8000-000000000000")["metadata"]["labels"])


def test_network_policy_goes_with_its_pod_and_refuses_what_would_admit_more():
    owner = {"metadata": {"name": "kernel-alice-3f2a9c1d-a1b2c3", "uid": "9b7c6d5e-0000-4000-8000-000000000001"}}
    policy = kernel_network_policy("kernel-alice-3f2a9c1d-a1b2c3", NS, KERNEL_ID, "alice", PORTS, owner_pod=owner)
    validate(policy)
    assert policy["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
         "blockOwnerDeletion": False}]
    with pytest.raises(ValueError, match="every single-user server"):
        kernel_network_policy("k", NS, KERNEL_ID, "", PORTS)
    for ports in ([], [0], [70000], ["52011"], [True]):
        with pytest.raises(ValueError, match="kernel ports"):
            kernel_network_policy("k", NS, KERNEL_ID, "alice", ports)
    with pytest.raises(ValueError, match="label value"):
        kernel_network_policy("k", NS, KERNEL_ID, "alice@example.com", PORTS)
    with pytest.raises(ValueError, match="label value"):
        kernel_network_policy("k", NS, "-" + KERNEL_ID, "alice", PORTS)
    with pytest.raises(VGPURequestError):
        kernel_network_policy("K", NS, KERNEL_ID, "alice", PORTS)


# ---------------------------------------------------------------- z2jh's user label

# Computed with kubespawner's own kubespawner/slugs.py (7.x, with escapism 1.x):
# safe_slug(name, is_valid=is_valid_label) and escape_slug(name).
KUBESPAWNER_LABELS = [
    ("alice", "alice", "alice"),
    ("alice@example.com", "alice-example-com---ff8d9819", "alice-40example-2ecom"),
    ("Bob.Smith", "Bob.Smith", "-42ob-2e-53mith"),
    ("bob-smith", "bob-smith", "bob-2dsmith"),
    ("a--b", "a-b---90827a2e", "a-2d-2db"),
    ("x_", "x---3e16f53f", "x-5f"),
    ("user.name_x", "user.name_x", "user-2ename-5fx"),
    ("1234", "1234", "1234"),
    ("a\nb", "a-b---7e18f737", "a-ab"),  # escapism's hex is not zero-padded
    ("", "", ""),
]


@pytest.mark.parametrize("name,safe,escaped", KUBESPAWNER_LABELS, ids=[repr(n) for n, _, _ in KUBESPAWNER_LABELS])
def test_username_label_matches_kubespawner(name, safe, escaped):
    assert z2jh_username_label(name) == safe
    assert z2jh_username_label(name, scheme="safe") == safe
    assert z2jh_username_label(name, scheme="escape") == escaped


def test_username_label_safe_scheme_is_always_a_label_and_the_policy_refuses_escapes_that_are_none():
    assert z2jh_username_label("Zoë") == "zo---c6a12698"
    assert z2jh_username_label("_x") == "x---a01e47cb"
    assert z2jh_username_label("a" * 70) == "a" * 21 + "---6bd5e503"
    rng = random.Random(7)
    alphabet = string.ascii_letters + string.digits + "-_.@+ ~!'éßЖ中"
    for _ in range(2000):
        name = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 70)))
        label = z2jh_username_label(name)
        assert LABEL_VALUE.match(label) and len(label) <= 63, (name, label)
    for name in ("Bob.Smith", "_x", "Zoë", "a" * 70):  # kubespawner < 7 made invalid labels of these
        with pytest.raises(ValueError, match="label value"):
            kernel_network_policy("k", NS, KERNEL_ID, z2jh_username_label(name, scheme="escape"), PORTS)
    with pytest.raises(ValueError, match="scheme"):
        z2jh_username_label("alice", scheme="legacy")


# ---------------------------------------------------------------- the zero-to-jupyterhub values


@pytest.fixture
def presets(tmp_path):
    path = tmp_path / "presets.yaml"
    path.write_text('- display_name: "Python 3 · 1 vGPU · 4 GiB"\n  vgpus: 1\n  memory: 4Gi\n', encoding="utf-8")
    return path


def test_values_give_single_user_pods_no_credentials_and_the_server_token_the_broker_scope(presets):
    values = z2jh_values("ghcr.io/example/k8s-hub-orion:4.2.0", NS, presets)
    hub, singleuser = values["hub"], values["singleuser"]
    assert singleuser["serviceAccountName"] is None
    assert singleuser["extraPodConfig"] == {"automountServiceAccountToken": False}
    scope = "access:services!service=orion-broker"
    # The server role's scopes (what the token had before), plus the broker's.
    assert hub["config"]["Spawner"]["server_token_scopes"] == ["users:activity!user", "access:servers!server", scope]
    assert hub["loadRoles"]["user"]["scopes"] == ["self", scope]  # a token gets only what its owner holds
    broker_role = hub["loadRoles"]["orion-broker"]
    assert broker_role["services"] == ["orion-broker"]
    assert broker_role["scopes"] == ["list:users", "read:users:groups", "read:servers"]
    assert not any(s.startswith(("admin", "delete:", "servers", "access:servers", "tokens"))
                   for s in broker_role["scopes"])
    from jupyterhub import scopes as hub_scopes
    from jupyterhub.roles import get_default_roles

    server_role = next(r for r in get_default_roles() if r["name"] == "server")
    assert set(server_role["scopes"]) < set(hub["config"]["Spawner"]["server_token_scopes"])
    hub_scopes._check_scopes_exist(broker_role["scopes"] + hub["config"]["Spawner"]["server_token_scopes"]
                                   + hub["loadRoles"]["user"]["scopes"])

    assert hub["image"] == {"name": "ghcr.io/example/k8s-hub-orion", "tag": "4.2.0"}
    service = hub["services"]["orion-broker"]
    assert service == {"url": f"http://hub:{BROKER_PORT}", "command": [
        "orion-jupyter", "broker", "--namespace", NS, "--ip", "0.0.0.0", "--port", str(BROKER_PORT)]}
    assert "apiToken" not in service and "api_token" not in service  # z2jh generates it; the hub passes it on
    from orion_jupyter.broker.service import Broker

    broker = Broker()
    broker.parse_command_line(service["command"][2:])  # the broker takes exactly these options
    assert (broker.ip, broker.port, broker.config.VGPUProvisioner.namespace) == ("0.0.0.0", BROKER_PORT, NS)
    assert singleuser["extraEnv"] == {"ORION_JUPYTER_BROKER_URL": "http://hub:10101/services/orion-broker/"}
    text = presets.read_text(encoding="utf-8")
    assert singleuser["extraFiles"]["orion-presets"] == {"mountPath": PRESETS_MOUNT, "stringData": text}
    assert hub["extraFiles"]["orion-presets"] == {"mountPath": PRESETS_MOUNT, "stringData": text}
    assert singleuser["lifecycleHooks"]["postStart"]["exec"]["command"] == [
        "orion-jupyter", "kernelspec", "install", "--presets", PRESETS_MOUNT, "--sys-prefix"]


def test_values_network_rules_are_valid_kubernetes_and_open_only_the_broker_port_and_the_kernel_ports():
    values = z2jh_values("ghcr.io/example/k8s-hub-orion:4.2.0", NS)
    assert "extraFiles" not in values["singleuser"] and "lifecycleHooks" not in values["singleuser"]
    assert "--presets" not in values["hub"]["services"]["orion-broker"]["command"]
    hub_ingress = values["hub"]["networkPolicy"]["ingress"]
    egress = values["singleuser"]["networkPolicy"]["egress"]
    for spec in ({"podSelector": {"matchLabels": {"component": "hub"}}, "policyTypes": ["Ingress"],
                  "ingress": hub_ingress},
                 {"podSelector": {"matchLabels": {"component": "singleuser-server"}}, "policyTypes": ["Egress"],
                  "egress": egress}):
        validate({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                  "metadata": {"name": "check", "namespace": NS}, "spec": spec})
    validate({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "hub", "namespace": NS},
              "spec": {"selector": {"component": "hub"},
                       "ports": [{"name": "hub", "port": 8081, "targetPort": "http"},
                                 *values["hub"]["service"]["extraPorts"]]}})
    assert [r["ports"] for r in hub_ingress] == [[{"port": BROKER_PORT, "protocol": "TCP"}]]
    assert [r["ports"] for r in egress] == [[{"port": BROKER_PORT, "protocol": "TCP"}],
                                            [{"port": 40000, "endPort": 59999, "protocol": "TCP"}]]
    kernel_labels = kernel_pod("alice", KERNEL_ID)["metadata"]["labels"]
    assert selects(egress[1]["to"][0]["podSelector"], kernel_labels)
    # The egress range is the range launches pick kernel ports from.
    assert KERNEL_PORT_RANGE == (PORT_RANGE[0], PORT_RANGE[1] - 1)


def test_values_refuse_what_would_not_work(tmp_path):
    with pytest.raises(ValueError, match="needs a tag"):
        z2jh_values("ghcr.io/example/k8s-hub-orion", NS)
    with pytest.raises(ValueError, match="needs a tag"):
        z2jh_values("localhost:5000/k8s-hub-orion", NS)
    with pytest.raises(ValueError, match="8081"):
        z2jh_values("hub:1", NS, port=8081)
    broken = tmp_path / "broken.yaml"
    broken.write_text("- vgpus: 1\n  memory: 2 GB?\n")
    with pytest.raises(VGPURequestError):
        z2jh_values("hub:1", NS, broken)
    assert z2jh_values("localhost:5000/hub:1@sha256:abc", NS)["hub"]["image"] == {
        "name": "localhost:5000/hub", "tag": "1@sha256:abc"}
    assert broker_url(base_url="/jupyter") == "http://hub:10101/jupyter/services/orion-broker/"


# ---------------------------------------------------------------- the CLI


def test_cli_prints_the_broker_rbac_which_validates_strictly(tmp_path, capsys):
    assert main(["manifests", "--hub", "--namespace", NS]) == 0
    out = capsys.readouterr().out
    docs = list(yaml.safe_load_all(out))
    assert docs == broker_manifests(NS) + kernel_network_defaults(NS)
    assert validate_cli_output(tmp_path, out) == len(docs) == 7

    assert main(["manifests", "--hub", "--namespace", NS, "--hub-service-account", "hub", "--read-all-pods"]) == 0
    out = capsys.readouterr().out
    docs = list(yaml.safe_load_all(out))
    assert [d["kind"] for d in docs] == ["Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding",
                                         "NetworkPolicy", "NetworkPolicy"]
    assert docs == broker_manifests(NS, "hub", read_all_pods=True, create_service_account=False) \
        + kernel_network_defaults(NS)
    assert validate_cli_output(tmp_path, out) == 6
    # Direct mode is unchanged.
    assert main(["manifests", "--namespace", NS]) == 0
    assert list(yaml.safe_load_all(capsys.readouterr().out)) == rbac_manifests(NS)


def test_kernel_pods_fail_closed_and_egress_is_dns_and_what_the_operator_allows(tmp_path, capsys):
    """Issue 24: `manifests --hub` rendered no NetworkPolicy; kernels had ingress rules only."""
    assert main(["manifests", "--hub", "--namespace", NS, "--kernel-egress", "10.0.0.5/32:9123",
                 "--kernel-egress", "0.0.0.0/0:443", "--kernel-egress", "fd00::/8"]) == 0
    out = capsys.readouterr().out
    validate_cli_output(tmp_path, out)
    policies = {d["metadata"]["name"]: d for d in yaml.safe_load_all(out) if d["kind"] == "NetworkPolicy"}
    deny, egress = policies["orion-kernels-default-deny"]["spec"], policies["orion-kernels-egress"]["spec"]
    # every kernel pod: nothing in, nothing out, unless another policy allows it
    kernel = kernel_pod("alice", KERNEL_ID)
    assert selects(deny["podSelector"], kernel["metadata"]["labels"])
    assert selects(egress["podSelector"], kernel["metadata"]["labels"])
    assert deny["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in deny and "egress" not in deny
    assert egress["egress"][0]["ports"] == [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    assert egress["egress"][1:] == [
        {"to": [{"ipBlock": {"cidr": "10.0.0.5/32"}}], "ports": [{"protocol": "TCP", "port": 9123}]},
        {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"protocol": "TCP", "port": 443}]},
        {"to": [{"ipBlock": {"cidr": "fd00::/8"}}]}]


def test_cli_prints_the_values_snippet(presets, capsys):
    assert main(["manifests", "--hub", "--namespace", NS, "--values", "--broker-image",
                 "ghcr.io/example/k8s-hub-orion:4.2.0", "--presets", str(presets)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# zero-to-jupyterhub values")
    assert "mount no service-account token" in out and "--hub-service-account hub" in out
    values = yaml.safe_load(out)
    assert values == z2jh_values("ghcr.io/example/k8s-hub-orion:4.2.0", NS, presets)
    assert values["singleuser"]["extraPodConfig"]["automountServiceAccountToken"] is False
    assert "access:services!service=orion-broker" in values["hub"]["config"]["Spawner"]["server_token_scopes"]
    assert "stringData: |" in out and "Python 3 · 1 vGPU · 4 GiB" in out  # the presets stay readable


@pytest.mark.parametrize("argv,message", [
    (["--values"], "--values is for hub mode: add --hub"),
    (["--hub-service-account", "hub"], "--hub-service-account is for hub mode: add --hub"),
    (["--broker-image", "hub:1"], "--broker-image is for hub mode: add --hub"),
    (["--hub", "--values"], "--values needs --broker-image"),
    (["--hub", "--values", "--broker-image", "hub"], "needs a tag"),
    (["--hub", "--service-account", "a", "--hub-service-account", "hub"], "not both"),
    (["--hub", "--kernel-egress", "10.0.0.5:99999"], "the port must be 1-65535"),
    (["--hub", "--kernel-egress", "example.com"], "is not CIDR or CIDR:PORT"),
    (["--kernel-egress", "10.0.0.0/8"], "--kernel-egress is for hub mode"),
])
def test_cli_refuses_hub_options_out_of_place(argv, message, capsys):
    assert main(["manifests", "--namespace", NS, *argv]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and not captured.out
