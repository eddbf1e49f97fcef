"""Hub mode: the broker's RBAC, the NetworkPolicy of one kernel pod, and zero-to-jupyterhub values.

In hub mode `orion-jupyter broker` runs as a JupyterHub service and alone holds the Kubernetes Role
of the class namespace; single-user servers hold no cluster credentials. Kernel pods, their Secrets
and NetworkPolicies live in the namespace of the single-user servers (z2jh's namespace), where the
user's PVC (`claim-{username}`) can be mounted into kernel pods too.

Everything here is data (no cluster calls); `z2jh_values` only reads the presets file it embeds.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import string
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from ..names import LABEL_COMPONENT, LABEL_KERNEL_ID, LABEL_MANAGED_BY, MANAGED_BY
from ..vgpu import check_k8s_name
from ..wire import PORT_RANGE
from .rbac import DRA_NAMESPACED_RULES, KERNEL_RULES, is_dra, pool_reader_rules, role_manifests

BROKER_SERVICE = "orion-broker"  # the JupyterHub service's name, and the default ServiceAccount
BROKER_ROLE = "orion-jupyter-broker"
BROKER_PORT = 10101  # where the broker listens in the hub pod (a port on z2jh's `hub` Service)
PRESETS_MOUNT = "/etc/orion/presets.yaml"
BROKER_URL_ENV = "ORION_JUPYTER_BROKER_URL"
# The kernel ports a launch picks from (wire.PORT_RANGE, as an inclusive range): the single-user
# servers' egress to kernel pods.
KERNEL_PORT_RANGE = (PORT_RANGE[0], PORT_RANGE[1] - 1)

# zero-to-jupyterhub's pod labels (kubespawner sets the first two on single-user pods).
Z2JH_USERNAME_LABEL = "hub.jupyter.org/username"
Z2JH_COMPONENT_LABEL = "component"
Z2JH_SINGLEUSER = "singleuser-server"
Z2JH_HUB = "hub"
Z2JH_PROXY = "proxy"
# JupyterHub's `server` role: what $JUPYTERHUB_API_TOKEN gets when Spawner.server_token_scopes is unset
# (JupyterHub 4 to 6). Setting the list replaces it, so it is repeated.
SERVER_ROLE_SCOPES = ["users:activity!user", "access:servers!server"]
# What the broker asks the hub: who the users are, their groups (courses, instructors), which
# servers run (reaping the kernels of stopped servers). It never starts, stops or enters servers.
BROKER_HUB_SCOPES = ["list:users", "read:users:groups", "read:servers"]

# The broker's Role: the kernel pods of direct mode (pods, logs, Secrets it may create and delete but
# never read or list, events) and what hub mode adds. A launch that died before its pod existed is found
# by its NetworkPolicy (listed), and its Secret of the same name deleted without being read.
BROKER_RULES = KERNEL_RULES + [
    # One NetworkPolicy per kernel pod: its ports only from its user's server.
    # patch: the policy is owned by its pod once it exists, and a warm kernel's is bound to its claimer.
    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"],
     "verbs": ["create", "delete", "get", "list", "watch", "patch"]},
    # The broker's Lease: the owner of the kernel pods (they go when the broker's Lease goes) and who leads.
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
     "verbs": ["create", "get", "update", "patch", "delete"]},
    # The broker's state that outlives it (budgets' use, fair-share memory, the queue): a ConfigMap per
    # section, replaced with resourceVersion checks; delete: the parts of a big section a newer write replaced.
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "get", "update", "delete"]},
    # Users' storage (z2jh's claim-{username}), mounted into their kernel pods.
    {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["get", "list"]},
]


def broker_manifests(namespace: str, service_account: str = BROKER_SERVICE, read_nodes: bool = True,
                     read_all_pods: bool = False, *, backend: Any = None,
                     create_service_account: bool = True) -> list[dict]:
    """ServiceAccount, Role and RoleBinding of the broker in the class namespace and, for the pool view,
    a ClusterRole (+Binding) reading nodes (and, with ``read_all_pods``, pods cluster-wide).

    ``create_service_account=False`` binds an account that exists: z2jh's ``hub`` when the broker runs
    as a managed service in the hub pod. ``backend`` ``dra`` adds the claim rules of direct mode.
    """
    dra = is_dra(backend)
    return role_manifests(
        namespace, service_account, BROKER_ROLE, BROKER_RULES + (DRA_NAMESPACED_RULES if dra else []),
        f"{BROKER_ROLE}-pool-reader-{namespace}", pool_reader_rules(read_nodes, read_all_pods, dra),
        create_service_account=create_service_account,
    )


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether a Kubernetes label selector (``matchLabels`` and ``matchExpressions``, ANDed) selects ``labels``."""
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression.get("key"), expression.get("operator"), expression.get("values") or []
        present = key in labels
        if not {"In": present and labels.get(key) in values, "NotIn": not present or labels.get(key) not in values,
                "Exists": present, "DoesNotExist": not present}.get(operator, False):
            return False
    return True


KERNEL_PODS = {"matchLabels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_COMPONENT: "kernel"}}
DEFAULT_DENY = "orion-kernels-default-deny"
KERNEL_EGRESS = "orion-kernels-egress"


def kernel_network_defaults(namespace: str, egress: Iterable[str] = ()) -> list[dict]:
    """The namespace's NetworkPolicies for every kernel pod, so that a kernel's network fails closed:

    - ``orion-kernels-default-deny``: no ingress and no egress. A kernel's own policy (made with it by the
      broker) admits its user's server; a policy lost, late or selecting nothing leaves the kernel shut,
      never open to every pod.
    - ``orion-kernels-egress``: DNS (kube-system's kube-dns, UDP and TCP 53) and each of ``egress``, what
      the operator allows students' code to reach: ``CIDR`` or ``CIDR:PORT`` (e.g. the Orion controller,
      a package mirror, ``0.0.0.0/0:443`` for the web over HTTPS). Replies to the connections a kernel
      accepts need no rule (policies are stateful).
    """
    check_k8s_name("namespace", namespace)
    rules: list[dict[str, Any]] = [{
        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }]
    for entry in egress:
        network, _, port = entry.rpartition(":") if entry.count(":") == 1 or "]:" in entry else (entry, "", "")
        network = network.strip("[]")
        try:
            cidr = str(ipaddress.ip_network(network, strict=False))
            port_number = int(port) if port else None
        except ValueError:
            raise ValueError(f"kernel egress {entry!r} is not CIDR or CIDR:PORT (e.g. 10.0.0.5/32:9123, "
                             "0.0.0.0/0:443)") from None
        if port_number is not None and not 0 < port_number < 65536:
            raise ValueError(f"kernel egress {entry!r}: the port must be 1-65535")
        rule: dict[str, Any] = {"to": [{"ipBlock": {"cidr": cidr}}]}
        if port_number is not None:
            rule["ports"] = [{"protocol": "TCP", "port": port_number}]
        rules.append(rule)
    labels = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_COMPONENT: "kernel-network"}
    return [
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": DEFAULT_DENY, "namespace": namespace, "labels": dict(labels)},
         "spec": {"podSelector": KERNEL_PODS, "policyTypes": ["Ingress", "Egress"]}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": KERNEL_EGRESS, "namespace": namespace, "labels": dict(labels)},
         "spec": {"podSelector": KERNEL_PODS, "policyTypes": ["Egress"], "egress": rules}},
    ]


_LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def _check_label_value(field: str, value: Any) -> str:
    if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE_RE.match(value):
        raise ValueError(f"{field} {value!r} is not a Kubernetes label value (at most 63 letters, digits, "
                         "'-', '_' or '.', starting and ending with a letter or digit)")
    return value


def kernel_network_policy(pod_name: str, namespace: str, kernel_id_label: str, username_label_value: str,
                          ports: Iterable[int], *, owner_pod: Mapping[str, Any] | None = None) -> dict:
    """The NetworkPolicy of one kernel pod: ingress on exactly its kernel ``ports`` (TCP), only from
    the single-user server pods of its user (z2jh labels ``hub.jupyter.org/username`` and
    ``component=singleuser-server``), in the same namespace. Nothing else reaches the kernel's ZMQ
    sockets: not other students' servers, not other kernels, not the broker.

    ``kernel_id_label`` is the pod's ``orion-jupyter.io/kernel-id`` label value, ``username_label_value``
    the user's z2jh label (``z2jh_username_label``). ``owner_pod`` (the created pod, with its uid)
    makes the policy go with its pod.
    """
    check_k8s_name("namespace", namespace)
    check_k8s_name("pod name", pod_name)
    _check_label_value("kernel id label", kernel_id_label)
    if not username_label_value:
        raise ValueError("a kernel's NetworkPolicy needs its user's label value: an empty one would admit "
                         "every single-user server without the label")
    _check_label_value("user name label", username_label_value)
    port_list = sorted(set(ports))
    if not port_list or any(not isinstance(p, int) or isinstance(p, bool) or not 0 < p < 65536 for p in port_list):
        raise ValueError(f"kernel ports must be one or more TCP ports (1-65535), not {ports!r}")
    metadata: dict[str, Any] = {
        "name": pod_name,
        "namespace": namespace,
        "labels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_COMPONENT: "kernel", LABEL_KERNEL_ID: kernel_id_label},
    }
    if owner_pod is not None:
        from .manifests import secret_owner_patch

        metadata["ownerReferences"] = secret_owner_patch(owner_pod)["metadata"]["ownerReferences"]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": {
            "podSelector": {"matchLabels": {LABEL_KERNEL_ID: kernel_id_label}},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [{"podSelector": {"matchLabels": {
                    Z2JH_USERNAME_LABEL: username_label_value,
                    Z2JH_COMPONENT_LABEL: Z2JH_SINGLEUSER,
                }}}],
                "ports": [{"protocol": "TCP", "port": port} for port in port_list],
            }],
        },
    }


# kubespawner's slugs (kubespawner/slugs.py, BSD-3-Clause), written out here so that the label the broker
# selects on is the label kubespawner put on the pod.
_SAFE_LABEL_RE = re.compile(r"^[a-z0-9.\-_]+$", re.IGNORECASE)
_NON_ALPHANUM_RE = re.compile(r"[^a-z0-9]+")
_ESCAPE_SAFE = frozenset(string.ascii_lowercase + string.digits)


def _kubespawner_label_valid(name: str) -> bool:
    if not name:
        return True
    return (len(name) <= 63 and name[0] in string.ascii_letters + string.digits
            and name[-1] in string.ascii_letters + string.digits and bool(_SAFE_LABEL_RE.match(name)))


def _strip_and_hash(name: str, max_length: int = 32) -> str:
    digest = hashlib.sha256(name.encode("utf8")).hexdigest()[:8]
    name_length = max_length - (8 + 3)
    safe = _NON_ALPHANUM_RE.sub("-", name.lower()).lstrip("-")[:name_length].rstrip("-")
    if safe and safe[0] not in string.ascii_lowercase:
        safe = "x-" + safe[: name_length - 2]
    return f"{safe or 'x'}---{digest}"


def z2jh_username_label(name: str, scheme: str = "safe") -> str:
    """The value kubespawner gives a user's pods in the label ``hub.jupyter.org/username``.

    ``scheme="safe"`` (kubespawner 7+, z2jh 4+, whatever its ``slug_scheme``): the name itself when it
    is already a valid label value without ``--`` (``alice``, ``Bob.Smith``); otherwise its lower-cased
    alphanumeric runs joined by ``-``, cut to 21 characters (``x-`` in front when that does not start
    with a letter, ``x`` when nothing is left), then ``---`` and the first 8 hex digits of the name's
    SHA-256 (``alice@example.com`` -> ``alice-example-com---ff8d9819``).

    ``scheme="escape"`` (kubespawner < 7, z2jh < 4): escapism's escape with safe characters a-z and 0-9
    and ``-`` as the escape character: every other character becomes ``-`` and the upper-case hex of
    each of its UTF-8 bytes (unpadded), and the whole is lower-cased (``alice@example.com`` ->
    ``alice-40example-2ecom``, ``Bob.Smith`` -> ``-42ob-2e-53mith``). That is returned as kubespawner
    made it, even where it is no valid label value (too long, or starting with ``-`` like the last one):
    kubespawner could not start such a user's pod either, and ``kernel_network_policy`` refuses it.
    """
    if scheme == "safe":
        if "--" not in name and _kubespawner_label_valid(name):
            return name
        return _strip_and_hash(name)
    if scheme == "escape":
        return "".join(c if c in _ESCAPE_SAFE else "".join(f"-{byte:X}" for byte in c.encode("utf8"))
                       for c in name).lower()
    raise ValueError(f"scheme must be 'safe' (kubespawner 7+) or 'escape' (kubespawner < 7), not {scheme!r}")


def _image(image: str) -> dict[str, str]:
    slash = image.rfind("/")
    colon = image.find(":", slash + 1)
    if not image or colon < 0 or colon == len(image) - 1 or any(c.isspace() for c in image):
        raise ValueError(f"the broker image {image!r} needs a tag (name:tag): it is the hub image, "
                         "z2jh's hub.image.name and hub.image.tag")
    return {"name": image[:colon], "tag": image[colon + 1:]}


def broker_url(service_name: str = BROKER_SERVICE, port: int = BROKER_PORT, base_url: str = "/") -> str:
    """How a single-user server reaches the broker: straight to the hub pod's broker port (the hub
    Service's extra port), under the service's prefix, so the event stream never passes the proxy.
    Not ``http://hub:8081/...``: the hub's own port serves ``/hub/`` only, ``/services/`` is the proxy's."""
    prefix = "/" + base_url.strip("/") + "/" if base_url.strip("/") else "/"
    return f"http://{Z2JH_HUB}:{port}{prefix}services/{service_name}/"


def z2jh_values(broker_image: str, namespace: str, presets_path: str | Path | None = None, *,
                service_name: str = BROKER_SERVICE, port: int = BROKER_PORT, base_url: str = "/",
                kernel_ports: tuple[int, int] = KERNEL_PORT_RANGE) -> dict:
    """A zero-to-jupyterhub Helm values snippet for hub mode (merge it into your values; Helm merges
    maps but replaces lists, so merge any list you already set, e.g. networkPolicy rules).

    - ``hub.image``: ``broker_image``, a hub image with orion-jupyter installed (the broker runs as a
      managed service in the hub pod; bind the broker Role to the hub's service account with
      ``orion-jupyter manifests --hub --hub-service-account hub``).
    - ``hub.services.<service_name>``: ``orion-jupyter broker --namespace NS --ip 0.0.0.0 --port PORT``.
      Its API token is generated by z2jh and given to the process by
      JupyterHub as ``$JUPYTERHUB_API_TOKEN``; ``hub.service.extraPorts`` publishes the port on the
      ``hub`` Service, ``hub.networkPolicy.ingress`` admits single-user servers and the proxy to it.
    - ``hub.loadRoles``: the broker's hub scopes (list:users, read:users:groups, read:servers), and the
      ``user`` role extended with ``access:services!service=<service_name>`` (a token gets only scopes
      its owner holds). ``hub.config.Spawner.server_token_scopes``: the ``server`` role's scopes plus
      that one, so the server's ``$JUPYTERHUB_API_TOKEN`` can call the broker.
    - ``singleuser``: no service account, ``automountServiceAccountToken: false`` (single-user pods mount
      no service-account token), ``ORION_JUPYTER_BROKER_URL``, egress to the broker port and to kernel
      pods on ``kernel_ports`` (an inclusive range); with ``presets_path``, the presets as
      ``/etc/orion/presets.yaml`` and a postStart hook installing their kernel specs (``orion-jupyter
      kernelspec install --presets /etc/orion/presets.yaml --sys-prefix``).

    ``base_url`` is your ``hub.baseUrl`` (it is not set here), for the broker's URL.
    """
    check_k8s_name("namespace", namespace)
    check_k8s_name("service name", service_name)
    if not 0 < port < 65536 or port == 8081:
        raise ValueError(f"broker port {port} must be a TCP port other than the hub's 8081")
    low, high = kernel_ports
    if not 0 < low <= high < 65536:
        raise ValueError(f"kernel ports {kernel_ports!r} must be an inclusive range of TCP ports")
    presets_text = None
    if presets_path is not None:
        from ..kernelspecs import load_presets

        load_presets(presets_path)  # a broken file fails here, not in every student's postStart
        presets_text = Path(presets_path).read_text(encoding="utf-8")
    # The presets are the single-user servers' (their kernel specs); the broker shapes pods from its own config.
    command = ["orion-jupyter", "broker", "--namespace", namespace, "--ip", "0.0.0.0", "--port", str(port)]
    broker_port = {"port": port, "protocol": "TCP"}
    kernel_ports_rule = {"port": low, "endPort": high, "protocol": "TCP"} if high > low else \
        {"port": low, "protocol": "TCP"}
    hub: dict[str, Any] = {
        "image": _image(broker_image),
        "services": {service_name: {"url": f"http://{Z2JH_HUB}:{port}", "command": command}},
        "loadRoles": {
            service_name: {
                "description": "orion-jupyter broker: who the users are, their groups, which servers run",
                "scopes": list(BROKER_HUB_SCOPES),
                "services": [service_name],
            },
            "user": {
                "description": "Standard user privileges, and calling the orion-jupyter broker",
                "scopes": ["self", f"access:services!service={service_name}"],
            },
        },
        "config": {"Spawner": {
            "server_token_scopes": SERVER_ROLE_SCOPES + [f"access:services!service={service_name}"],
        }},
        "service": {"extraPorts": [{"name": service_name, "port": port, "targetPort": port, "protocol": "TCP"}]},
        "networkPolicy": {"ingress": [{
            "from": [{"podSelector": {"matchLabels": {Z2JH_COMPONENT_LABEL: Z2JH_SINGLEUSER}}},
                     {"podSelector": {"matchLabels": {Z2JH_COMPONENT_LABEL: Z2JH_PROXY}}}],
            "ports": [dict(broker_port)],
        }], "egress": [
            # the broker to kernel pods: a warm kernel's ports until its claim, then its iopub (idle culling) and
            # shell (parking it); each kernel's own NetworkPolicy admits no more
            {"to": [{"podSelector": {"matchLabels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_COMPONENT: "kernel"}}}],
             "ports": [dict(kernel_ports_rule)]},
        ]},
    }
    singleuser: dict[str, Any] = {
        # Single-user pods mount no service-account token: students have terminals, only the broker
        # holds the Role.
        "serviceAccountName": None,
        "extraPodConfig": {"automountServiceAccountToken": False},
        "extraEnv": {BROKER_URL_ENV: broker_url(service_name, port, base_url)},
        "networkPolicy": {"egress": [
            {"to": [{"podSelector": {"matchLabels": {Z2JH_COMPONENT_LABEL: Z2JH_HUB}}}],
             "ports": [dict(broker_port)]},
            # ZMQ straight to the kernel pods; each kernel's own NetworkPolicy admits only its user's server.
            {"to": [{"podSelector": {"matchLabels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_COMPONENT: "kernel"}}}],
             "ports": [dict(kernel_ports_rule)]},
        ]},
    }
    if presets_text is not None:
        files = {"orion-presets": {"mountPath": PRESETS_MOUNT, "stringData": presets_text}}
        hub["extraFiles"] = {key: dict(value) for key, value in files.items()}
        singleuser["extraFiles"] = {key: dict(value) for key, value in files.items()}
        singleuser["lifecycleHooks"] = {"postStart": {"exec": {"command": [
            "orion-jupyter", "kernelspec", "install", "--presets", PRESETS_MOUNT, "--sys-prefix"]}}}
    return {"hub": hub, "singleuser": singleuser}


VALUES_HEADER = """\
# zero-to-jupyterhub values for orion-jupyter hub mode (merge into your values: Helm replaces lists).
# - hub.image must be a hub image with orion-jupyter installed: the broker runs in the hub pod as a
#   managed JupyterHub service. Bind its Role to the hub's service account:
#     orion-jupyter manifests --hub --namespace {namespace} --hub-service-account hub | kubectl apply -f -
# - Single-user pods mount no service-account token (serviceAccountName null,
#   automountServiceAccountToken false): they reach the broker with their hub token only.
# - Kernel pods run in this namespace ({namespace}), beside the single-user servers and their PVCs.
"""


class _ValuesDumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    style = "|" if "\n" in text else None  # files (the presets) stay readable
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_ValuesDumper.add_representer(str, _str)


def z2jh_values_yaml(values: Mapping[str, Any], namespace: str) -> str:
    """``values`` as a commented Helm values file."""
    body = yaml.dump(dict(values), Dumper=_ValuesDumper, sort_keys=False, allow_unicode=True, width=120)
    return VALUES_HEADER.format(namespace=namespace) + body
