"""Turns a VGPUProvisioner's settings into a kernel pod and launches it on the shared KubeCluster."""

from __future__ import annotations

import os
import secrets
from typing import TYPE_CHECKING, Any

from jupyter_client.connect import KernelConnectionInfo, port_names

from ..progress import PROGRESS
from .client import api_client, default_namespace
from .cluster import KubeCluster, PodKernel
from ..errors import KernelLaunchError
from ..pool import TERMINAL_PHASES, extended_limits
from .manifests import LABEL_KERNEL_ID, LABEL_USER, KernelManifests, KernelPodOptions, build_kernel_manifests, slug

if TYPE_CHECKING:
    from ..provisioner import VGPUProvisioner

# Server-side variables a kernel may learn (the rest of the server's environment stays home).
_FORWARDED_ENV = ("JPY_SESSION_NAME",)
PORT_RANGE = (40000, 60000)


def server_pod_owner() -> dict[str, str] | None:
    """The server's own pod (downward API POD_NAME / POD_UID), so kernel pods go when it goes."""
    name, uid = os.environ.get("POD_NAME"), os.environ.get("POD_UID")
    return {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid} if name and uid else None


class KubernetesDriver:
    name = "kubernetes"

    def __init__(self, provisioner: "VGPUProvisioner"):
        self.p = provisioner
        api = api_client(provisioner.kubeconfig, provisioner.kube_context)
        namespace = provisioner.namespace or default_namespace(provisioner.kubeconfig, provisioner.kube_context)
        self.cluster = KubeCluster.shared(api, namespace, watch_nodes=provisioner.watch_nodes)
        self.manifests: KernelManifests | None = None
        self._connection: dict[str, Any] = {}

    async def pre_launch(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        p, km = self.p, self.p.parent
        stopped_by = self.cluster.stopped_by.get(slug(p.kernel_id, 63))
        if stopped_by:
            raise KernelLaunchError("deleted", f"this kernel was stopped by {stopped_by}; start a new kernel when you need one")
        self._connection = {
            "transport": "tcp",
            "ip": "0.0.0.0",
            "key": km.session.key.decode(),
            "signature_scheme": km.session.signature_scheme,
            "kernel_name": getattr(km, "kernel_name", "") or "",
            **dict(zip(port_names, p.kernel_ports or self._fresh_ports())),
        }
        server_env = kwargs.get("env") or {}
        spec_env = {k: server_env.get(k, v) for k, v in (p.kernel_spec.env or {}).items()}
        forwarded = {k: server_env[k] for k in _FORWARDED_ENV if k in server_env}
        self.manifests = build_kernel_manifests(KernelPodOptions(
            kernel_id=p.kernel_id,
            user=p.user,
            request=p.request,
            backend=p.backend_model(),
            image=p.image,
            namespace=self.cluster.namespace,
            connection_info=self._connection,
            name_suffix=secrets.token_hex(3),
            kernel_spec_name=getattr(km, "kernel_name", "") or "",
            course=p.course,
            labels=p.labels,
            annotations=p.annotations,
            node_selector=p.node_selector,
            tolerations=p.tolerations,
            cpu_request=p.cpu_request,
            cpu_limit=p.cpu_limit,
            memory_request=p.memory_request,
            memory_limit=p.memory_limit,
            image_pull_policy=p.image_pull_policy,
            extra_env={**forwarded, **spec_env, **p.extra_env},
            owner=server_pod_owner(),
            host_ipc=p.host_ipc,
            orion_controller=p.orion_controller or None,
            python=p.kernel_python,
            run_as_user=p.run_as_user,
            run_as_group=p.run_as_group,
            scheduler_name=p.scheduler_name,
        ))
        kwargs["cmd"] = self.manifests.pod["spec"]["containers"][0]["command"]
        return kwargs

    def _fresh_ports(self) -> list[int]:
        """Five ports unlike the last launch's: each pod has its own IP, so only change matters."""
        previous = {self._connection.get(name) for name in port_names}
        ports: list[int] = []
        while len(ports) < len(port_names):
            port = secrets.choice(range(PORT_RANGE[0], PORT_RANGE[1]))
            if port not in previous and port not in ports:
                ports.append(port)
        return ports

    async def launch(self, cmd: list[str], kwargs: dict[str, Any]) -> tuple[PodKernel, KernelConnectionInfo]:
        assert self.manifests is not None, "pre_launch first"
        kernel = await self.cluster.launch(
            self.manifests,
            timeout=self.p.launch_timeout,
            count_resource=self.p.backend_model().count_resource,
            wait_when_unschedulable=self.p.wait_for_capacity,
            progress=lambda message: PROGRESS.record(self.p.kernel_id, message),
        )
        info = dict(self._connection, ip=kernel.ip, key=self._connection["key"].encode())
        return kernel, info  # type: ignore[return-value]

    async def vgpus_held_by(self, user: str, other_than_kernel: str) -> int:
        """vGPUs the user's other kernel pods in this namespace hold, from the watch cache."""
        await self.cluster.ensure_started()
        resource, user_label, kernel_label = self.p.backend_model().count_resource, slug(user, 63), slug(other_than_kernel, 63)
        held = 0
        for pod in self.cluster.kernel_pods():
            labels = pod["metadata"].get("labels") or {}
            if labels.get(LABEL_USER) == user_label and labels.get(LABEL_KERNEL_ID) != kernel_label \
                    and (pod.get("status") or {}).get("phase") not in TERMINAL_PHASES:
                held += extended_limits(pod).get(resource, 0)
        return held

    async def attach(self, info: dict[str, Any]) -> PodKernel:
        await self.cluster.ensure_started()
        return PodKernel(self.cluster, info["pod_name"], info.get("pod_ip", ""))
