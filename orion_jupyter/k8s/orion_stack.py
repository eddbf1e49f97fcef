"""The Orion side of a cluster, as the tutorial deploys it by hand, rendered in one command.

`orion-jupyter manifests --orion-stack` prints what the upstream virtaitech/orion repository's
`orion-kubernetes-deploy/` YAML files become after the tutorial's edits: the Orion Controller (a
Deployment of one with a Service, so its address is a name rather than a node IP found by hand),
the device plugin DaemonSet and the Orion Server DaemonSet on the GPU nodes, with the env the
upstream images read (``ORION_CONTROLLER``, ``BIND_ADDR`` / ``BIND_NET``, ``PORT``, ``VGPU``,
``LOG_LEVEL``). Only Orion Server is privileged (it drives the GPUs and shares memory with clients);
the controller and the plugin drop every capability. Pure data, no cluster calls.

``remote=True`` (scenario 3: clients on nodes without GPUs) renders the servers for network
access: ``BIND_NET`` (the device whose IP the server binds) and a ConfigMap with the server.conf
that remote mode needs (no shared memory; RDMA when asked), mounted over /etc/orion/server.conf.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..names import LABEL_COMPONENT, LABEL_MANAGED_BY, MANAGED_BY
from ..vgpu import VGPURequestError, check_k8s_name

CONTROLLER_PORT = 9123  # Orion Controller 1.x (its HTTP API too)
SERVER_PORT = 9960
CUDA_VERSIONS = ("10.0", "9.0")  # the upstream server images: virtaitech/orion-server:cu10.0, :cu9.0
CONTROLLER_NAME = "orion-controller"
PLUGIN_NAME = "orion-device-plugin"
SERVER_NAME = "orion-server"
SERVER_CONF = "/etc/orion/server.conf"
LABEL_NAME = "app.kubernetes.io/name"
# The tutorial's plugin tolerates the control-plane taint (GPU workstations that are also masters).
CONTROL_PLANE_TOLERATIONS = [
    {"key": "node-role.kubernetes.io/master", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"},
]
UNPRIVILEGED = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


@dataclass
class OrionStack:
    namespace: str
    gpu_node_selector: dict[str, str]
    vgpus_per_gpu: int = 2
    cuda: str = "10.0"
    remote: bool = False
    bind_net: str = ""  # remote: the network device the servers bind (e.g. ib0); default: the node's IP
    rdma: bool = False
    controller_node_selector: dict[str, str] = field(default_factory=dict)
    controller_image: str = "virtaitech/orion-controller:latest"
    plugin_image: str = "virtaitech/orion-plugin:latest"
    server_image: str = ""  # default virtaitech/orion-server:cu<cuda>
    log_level: str = "INFO"

    def checked(self) -> OrionStack:
        check_k8s_name("namespace", self.namespace)
        if not self.gpu_node_selector:
            raise VGPURequestError("gpu_node_selector", None,
                                   "the GPU nodes are not named; give --gpu-node-selector KEY=VALUE (e.g. gpu=true)")
        if not isinstance(self.vgpus_per_gpu, int) or not 1 <= self.vgpus_per_gpu <= 64:
            raise VGPURequestError("vgpus_per_gpu", self.vgpus_per_gpu,
                                   f"--vgpus-per-gpu {self.vgpus_per_gpu} is not allowed; use 1 to 64")
        if self.cuda not in CUDA_VERSIONS:
            raise VGPURequestError("cuda", self.cuda,
                                   f"--cuda {self.cuda} has no Orion Server image; use {' or '.join(CUDA_VERSIONS)}")
        if (self.bind_net or self.rdma) and not self.remote:
            raise VGPURequestError("remote", None, "--bind-net and --rdma are for remote mode: add --remote")
        return self

    @property
    def controller_address(self) -> str:
        """host:port of the controller for the plugin, the servers and remote kernels (ORION_CONTROLLER)."""
        return f"{CONTROLLER_NAME}.{self.namespace}.svc.cluster.local:{CONTROLLER_PORT}"


def parse_selector(text: str, flag: str) -> dict[str, str]:
    """'gpu=true,zone=a' -> {'gpu': 'true', 'zone': 'a'}."""
    selector = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise VGPURequestError(flag, text, f"--{flag} {text!r} is not KEY=VALUE[,KEY=VALUE]; e.g. gpu=true")
        selector[key] = value
    return selector


def _labels(name: str) -> dict[str, str]:
    return {LABEL_NAME: name, LABEL_COMPONENT: "orion", LABEL_MANAGED_BY: MANAGED_BY}


def _env(values: dict[str, Any]) -> list[dict]:
    return [v if isinstance(v, dict) else {"name": k, "value": str(v)} for k, v in values.items()]


def _pod_template(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"labels": _labels(name)},
            "spec": {"automountServiceAccountToken": False, "enableServiceLinks": False, **spec}}


def _daemonset(stack: OrionStack, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": stack.namespace, "labels": _labels(name)},
        "spec": {
            "selector": {"matchLabels": {LABEL_NAME: name}},
            "updateStrategy": {"type": "RollingUpdate"},
            "template": _pod_template(name, {"nodeSelector": dict(stack.gpu_node_selector),
                                             "tolerations": [dict(t) for t in CONTROL_PLANE_TOLERATIONS],
                                             **spec}),
        },
    }


def controller_manifests(stack: OrionStack) -> list[dict]:
    """One controller per pool (it embeds its etcd): replicas 1, Recreate, so two never run at once."""
    container = {
        "name": "controller", "image": stack.controller_image, "imagePullPolicy": "IfNotPresent",
        "env": _env({"PORT": CONTROLLER_PORT, "LOG_LEVEL": stack.log_level}),
        "ports": [{"name": "http", "containerPort": CONTROLLER_PORT, "protocol": "TCP"}],
        "readinessProbe": {"tcpSocket": {"port": CONTROLLER_PORT}, "periodSeconds": 5},
        "securityContext": dict(UNPRIVILEGED),
    }
    spec: dict[str, Any] = {"containers": [container]}
    if stack.controller_node_selector:
        spec["nodeSelector"] = dict(stack.controller_node_selector)
    return [
        {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": CONTROLLER_NAME, "namespace": stack.namespace, "labels": _labels(CONTROLLER_NAME)},
            "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                     "selector": {"matchLabels": {LABEL_NAME: CONTROLLER_NAME}},
                     "template": _pod_template(CONTROLLER_NAME, spec)},
        },
        {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": CONTROLLER_NAME, "namespace": stack.namespace, "labels": _labels(CONTROLLER_NAME)},
            "spec": {"selector": {LABEL_NAME: CONTROLLER_NAME},
                     "ports": [{"name": "http", "port": CONTROLLER_PORT, "targetPort": "http", "protocol": "TCP"}]},
        },
    ]


def plugin_manifest(stack: OrionStack) -> dict:
    """The device plugin registers virtaitech.com/gpu with the kubelet: its socket folder only."""
    container = {
        "name": "plugin", "image": stack.plugin_image, "imagePullPolicy": "IfNotPresent",
        "env": _env({"ORION_CONTROLLER": stack.controller_address, "LOG_LEVEL": stack.log_level}),
        "securityContext": dict(UNPRIVILEGED),
        "volumeMounts": [{"name": "device-plugins", "mountPath": "/var/lib/kubelet/device-plugins"}],
    }
    return _daemonset(stack, PLUGIN_NAME, {
        "containers": [container],
        "volumes": [{"name": "device-plugins",
                     "hostPath": {"path": "/var/lib/kubelet/device-plugins", "type": "Directory"}}],
    })


def server_manifests(stack: OrionStack) -> list[dict]:
    """Orion Server on every GPU node.

    Privileges, and why (the upstream deploy-server YAML): ``privileged`` (it opens the GPU devices
    and pins memory), ``hostNetwork`` (clients reach it on the node's address, port 9960),
    ``hostIPC`` and /dev/shm (shared-memory transfer with local clients), ``hostPID`` (it tells
    client processes apart). Nothing else in the stack gets any of these.
    """
    env: dict[str, Any] = {"ORION_CONTROLLER": stack.controller_address, "PORT": SERVER_PORT,
                           "VGPU": stack.vgpus_per_gpu, "LOG_LEVEL": stack.log_level}
    if stack.bind_net:
        env["BIND_NET"] = stack.bind_net
    else:  # the node's own address (the upstream default, 172.17.0.1, exists only with Docker's bridge)
        env["BIND_ADDR"] = {"name": "BIND_ADDR",
                            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.hostIP"}}}
    container: dict[str, Any] = {
        "name": "server", "image": stack.server_image or f"virtaitech/orion-server:cu{stack.cuda}",
        "imagePullPolicy": "IfNotPresent", "env": _env(env),
        "ports": [{"name": "orion", "containerPort": SERVER_PORT, "hostPort": SERVER_PORT, "protocol": "TCP"}],
        "securityContext": {"privileged": True},
        "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}],
    }
    volumes: list[dict] = [{"name": "shm", "hostPath": {"path": "/dev/shm", "type": "Directory"}}]
    docs: list[dict] = []
    if stack.remote:
        docs.append(server_conf_map(stack))
        container["volumeMounts"].append({"name": "server-conf", "mountPath": SERVER_CONF,
                                          "subPath": "server.conf", "readOnly": True})
        volumes.append({"name": "server-conf", "configMap": {"name": f"{SERVER_NAME}-conf"}})
    docs.append(_daemonset(stack, SERVER_NAME, {
        "hostNetwork": True, "hostIPC": True, "hostPID": True,
        "dnsPolicy": "ClusterFirstWithHostNet",  # hostNetwork, yet the controller's Service name resolves
        "containers": [container], "volumes": volumes,
    }))
    return docs


def server_conf_map(stack: OrionStack) -> dict:
    """Remote mode's server.conf: clients on other nodes, so no shared memory; RDMA when the network has it."""
    rdma = "true" if stack.rdma else "false"
    # The keys the upstream entrypoint writes (shared memory on, RDMA and KVM off), turned for remote clients.
    conf = (
        "# orion-jupyter manifests --orion-stack --remote\n"
        'enable_shm = "false"\n'
        f'enable_rdma = "{rdma}"\n'
        'enable_kvm = "false"\n'
    )
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"{SERVER_NAME}-conf", "namespace": stack.namespace, "labels": _labels(SERVER_NAME)},
            "data": {"server.conf": conf}}


def orion_stack_manifests(stack: OrionStack) -> list[dict]:
    """Controller (Deployment + Service), device plugin and Orion Server DaemonSets (+ remote mode's ConfigMap).

    Remote mode still runs the device plugin: GPU nodes keep advertising virtaitech.com/gpu for local
    clients, while remote kernels ask the controller instead."""
    stack.checked()
    return [*controller_manifests(stack), plugin_manifest(stack), *server_manifests(stack)]
