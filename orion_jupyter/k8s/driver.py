"""The Kubernetes driver: a KernelLaunch becomes a kernel pod on the shared KubeCluster."""

from __future__ import annotations

import os
import secrets
from typing import Any

from jupyter_client.connect import KernelConnectionInfo

from ..errors import stopped_kernel
from ..launch import KernelLaunch
from ..names import slug
from ..progress import PROGRESS
from ..protocols import ClaimRequest, WarmClaims
from ..wire import PORT_NAMES, connection_info, fresh_ports, ports_of
from .cluster import KubeCluster, PodKernel
from .manifests import KernelManifests, KernelPodOptions, add_user_storage, build_kernel_manifests
from .view import KubernetesView


def server_pod_owner() -> dict[str, str] | None:
    """The server's own pod (downward API POD_NAME / POD_UID), so kernel pods go when it goes."""
    name, uid = os.environ.get("POD_NAME"), os.environ.get("POD_UID")
    return {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid} if name and uid else None


def pod_options(launch: KernelLaunch, namespace: str, connection: dict[str, Any], suffix: str) -> KernelPodOptions:
    pod = launch.pod
    return KernelPodOptions(
        kernel_id=launch.kernel_id,
        user=launch.user,
        request=launch.request,
        backend=launch.backend,
        image=pod.image,
        namespace=namespace,
        connection_info=connection,
        name_suffix=suffix,
        kernel_spec_name=launch.kernel_spec_name,
        course=launch.course,
        labels=pod.labels,
        annotations=pod.annotations,
        node_selector=pod.node_selector,
        tolerations=[dict(t) for t in pod.tolerations],
        cpu_request=pod.cpu_request,
        cpu_limit=pod.cpu_limit,
        memory_request=pod.memory_request,
        memory_limit=pod.memory_limit,
        image_pull_policy=pod.image_pull_policy,
        extra_env=launch.env,
        owner=server_pod_owner(),
        host_ipc=pod.host_ipc,
        orion_controller=launch.orion_controller,
        python=pod.python,
        run_as_user=pod.run_as_user,
        run_as_group=pod.run_as_group,
        scheduler_name=pod.scheduler_name,
        dra_claim=True,  # dra: the pod's claim from a template the launch creates once (KubeCluster.launch)
    )


class KubernetesDriver:
    name = "kubernetes"

    def __init__(self, cluster: KubeCluster, view: KubernetesView, warm: WarmClaims | None = None):
        self.cluster = cluster
        self.view = view
        self.warm = warm  # this server's warm kernels (c.OrionJupyter.warm_kernels), handed in by make_driver
        self.manifests: KernelManifests | None = None
        self._connection: dict[str, Any] = {}

    async def pre_launch(self, launch: KernelLaunch, kwargs: dict[str, Any]) -> dict[str, Any]:
        stopped_by = self.cluster.stopped_by.get(slug(launch.kernel_id, 63))
        if stopped_by:
            raise stopped_kernel(stopped_by)
        previous = [self._connection.get(name) for name in PORT_NAMES]
        self._connection = {**connection_info(launch.ports or fresh_ports(previous), launch.key,
                                              launch.kernel_spec_name, signature_scheme=launch.signature_scheme),
                            **launch.curve_fields()}
        self.manifests = build_kernel_manifests(
            pod_options(launch, self.cluster.namespace, self._connection, secrets.token_hex(3)))
        add_user_storage(self.manifests.pod, launch.volumes, launch.volume_mounts, launch.user,
                         os.environ.get("JUPYTERHUB_SERVER_NAME", ""))
        kwargs["cmd"] = self.manifests.pod["spec"]["containers"][0]["command"]
        return kwargs

    async def launch(self, launch: KernelLaunch, cmd: list[str],
                     kwargs: dict[str, Any]) -> tuple[PodKernel, KernelConnectionInfo]:
        assert self.manifests is not None, "pre_launch first"
        claimed = await self._claim_warm(launch)
        if claimed is not None:
            return claimed
        kernel = await self.cluster.launch(
            self.manifests,
            timeout=launch.timeout,
            count_resource=launch.backend.count_resource,
            wait_when_unschedulable=launch.wait_for_capacity,
            progress=lambda message: PROGRESS.record(launch.kernel_id, message),
        )
        info = dict(self._connection, ip=kernel.ip, key=self._connection["key"].encode())
        return kernel, info  # type: ignore[return-value]

    async def _claim_warm(self, launch: KernelLaunch) -> tuple[PodKernel, KernelConnectionInfo] | None:
        """A warm kernel of this shape handed over (c.OrionJupyter.warm_kernels), or None: start one."""
        pool = self.warm
        if launch.curve_secretkey:  # warm pods hold plaintext connection files: an encrypted kernel starts fresh
            return None
        if launch.volumes or launch.volume_mounts:  # warm pods start before anyone claims them: no user's storage
            return None
        if pool is None or not pool.reserve(launch.kernel_id, launch.user, launch.request, launch.pod.image, ""):
            return None
        PROGRESS.record(launch.kernel_id, "handing over a warm kernel")
        try:
            ready = await pool.claim(ClaimRequest(launch.kernel_id, kernel_spec_name=launch.kernel_spec_name),
                                     launch.user, launch.course)
        finally:
            pool.unreserve(launch.kernel_id)
        self._connection.update(key=ready["key"], **dict(zip(PORT_NAMES, ports_of(ready["ports"]), strict=True)))
        kernel = PodKernel(self.cluster, ready["pod_name"], ready["ip"])
        return kernel, dict(self._connection, ip=kernel.ip, key=ready["key"].encode())  # type: ignore[return-value]

    async def attach(self, launch: KernelLaunch, info: dict[str, Any]) -> PodKernel:
        await self.cluster.ensure_started()
        return PodKernel(self.cluster, info["pod_name"], info.get("pod_ip", ""))
