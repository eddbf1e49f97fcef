"""How the broker starts one kernel pod: its manifests (the user's storage, the notebook's folder,
the Lease as owner), its NetworkPolicy, and the wait until it is ready; a failure leaves nothing."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kubernetes.client.exceptions import ApiException

from ..errors import KernelLaunchError
from ..k8s.driver import pod_options
from ..k8s.hub_manifests import kernel_network_policy, z2jh_username_label
from ..k8s.manifests import build_kernel_manifests, secret_owner_patch, slug
from ..launch import KernelLaunch
from ..names import ANNOTATION_SERVER, LABEL_KERNEL_ID
from ..vgpu import VGPURequest

log = logging.getLogger("orion_jupyter.broker")
PORT_NAMES = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
LABEL_WARM = "orion-jupyter.io/warm"  # a warm kernel's pool ("roster-<course>" for a roster's); gone once claimed
ANNOTATION_WARM_SHAPE = "orion-jupyter.io/warm-shape"


@dataclass(frozen=True)
class PodPlan:
    """One kernel pod the broker starts: for a user's launch, or warm (``warm``: its pool's name)."""

    kernel_id: str
    user: str
    request: VGPURequest
    image: str
    key: str
    ports: tuple[int, ...]  # in PORT_NAMES order
    kernel_spec_name: str = ""
    course: str = ""
    server_name: str | None = None  # hub mode: the user's server (a reaped kernel's server is gone)
    working_dir: str | None = None
    volumes: Sequence[Mapping[str, Any]] = ()  # KubeSpawner's shape, {username}/{servername} templated
    volume_mounts: Sequence[Mapping[str, Any]] = ()
    warm: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    curve: tuple[str, str] = ("", "")  # CurveZMQ (public, secret) keys of the launch; empty: plaintext

    @property
    def connection(self) -> dict[str, Any]:
        curve = {"curve_publickey": self.curve[0], "curve_secretkey": self.curve[1]} if self.curve[1] else {}
        return {"transport": "tcp", "ip": "0.0.0.0", "key": self.key, "signature_scheme": "hmac-sha256",
                "kernel_name": self.kernel_spec_name, **dict(zip(PORT_NAMES, self.ports, strict=True)), **curve}


def add_user_storage(pod: dict, volumes: Sequence[Mapping], mounts: Sequence[Mapping], user: str,
                     server_name: str) -> None:
    """The user's volumes (KubeSpawner's {username} / {servername} templates) in a kernel pod."""
    values = {"username": slug(user, 63) if user else "", "servername": slug(server_name, 63) if server_name else ""}

    def fill(item: Any) -> Any:
        if isinstance(item, str):
            return item.format(**values)
        if isinstance(item, dict):
            return {k: fill(v) for k, v in item.items()}
        if isinstance(item, list):
            return [fill(v) for v in item]
        return item

    if volumes:
        pod["spec"]["volumes"] = [*pod["spec"].get("volumes", []), *fill(list(volumes))]
    if mounts:
        container = pod["spec"]["containers"][0]
        container["volumeMounts"] = [*container.get("volumeMounts", []), *fill(list(mounts))]


def kernel_policy(broker: Any, name: str, kernel_label: str, user: str, ports: Sequence[int], *,
                  also_kernel_label: str | None = None) -> dict:
    """The kernel's NetworkPolicy: its ports only from ``user``'s server pod, and its iopub port from
    the broker's (a warm kernel's, user "": every port from the broker's pod only).
    ``also_kernel_label``: the policy selects that kernel id too (a claim relabels the pod, and the
    pod must never be without a policy in between)."""
    policy = kernel_network_policy(name, broker.namespace, kernel_label, z2jh_username_label(user) if user else "warm",
                                   ports)
    spec = policy["spec"]
    if also_kernel_label:
        spec["podSelector"] = {"matchExpressions": [{"key": LABEL_KERNEL_ID, "operator": "In",
                                                     "values": sorted({kernel_label, also_kernel_label})}]}
    from_broker = [{"podSelector": {"matchLabels": dict(broker.pod_labels)}}]
    if not user:
        spec["ingress"][0]["from"] = from_broker
    else:  # the broker follows the kernel's execution state (idle culling): its iopub port, and only that
        iopub = dict(zip(PORT_NAMES, ports, strict=True))["iopub_port"]
        spec["ingress"].append({"from": from_broker, "ports": [{"protocol": "TCP", "port": iopub}]})
    return policy


async def start_kernel_pod(broker: Any, plan: PodPlan,
                           progress: Callable[[str], None] | None = None) -> tuple[str, Any]:
    """Create the plan's NetworkPolicy, Secret and Pod and wait until the kernel is ready:
    (pod name, PodKernel). On failure nothing of it is left and the KernelLaunchError says why."""
    settings = broker.settings
    launch = KernelLaunch(
        kernel_id=plan.kernel_id, user=plan.user, request=plan.request, backend=broker.backend,
        pod=settings.pod_settings(plan.image), kernel_spec_name=plan.kernel_spec_name, course=plan.course,
        key=plan.key, ports=plan.ports, timeout=settings.launch_timeout, wait_for_capacity=settings.wait_for_capacity,
        orion_controller=settings.orion_controller or None)
    options = replace(pod_options(launch, broker.namespace, plan.connection, uuid.uuid4().hex[:6]),
                      owner=broker.lease_owner, working_dir=plan.working_dir,
                      labels={**launch.pod.labels, **({LABEL_WARM: plan.warm} if plan.warm else {})},
                      annotations={**launch.pod.annotations, **plan.annotations,
                                   **({} if plan.server_name is None else {ANNOTATION_SERVER: plan.server_name})})
    manifests = build_kernel_manifests(options)
    add_user_storage(manifests.pod, plan.volumes, plan.volume_mounts, plan.user, plan.server_name or "")
    name = manifests.name
    try:
        if broker.network_policies:
            policy = kernel_policy(broker, name, manifests.pod["metadata"]["labels"][LABEL_KERNEL_ID], plan.user,
                                   plan.ports)
            await broker.cluster.request(broker.networking.create_namespaced_network_policy, broker.namespace, policy)
        loop = asyncio.get_running_loop()  # pod events arrive on the watch's thread
        kernel = await broker.cluster.launch(
            manifests, timeout=launch.timeout, count_resource=broker.backend.count_resource,
            wait_when_unschedulable=launch.wait_for_capacity,
            progress=None if progress is None else lambda message: loop.call_soon_threadsafe(progress, message))
    except (KernelLaunchError, ApiException) as err:
        if broker.network_policies:
            await broker.delete_kernel(name)
        if isinstance(err, KernelLaunchError):
            raise
        raise KernelLaunchError("api", f"Kubernetes refused the launch: {err.reason}") from None
    if broker.network_policies:  # the policy goes with its pod
        pod = broker.cluster.pod(name)
        if pod is not None:
            try:
                await broker.cluster.request(broker.networking.patch_namespaced_network_policy, name,
                                             broker.namespace, secret_owner_patch(pod))
            except ApiException as err:
                log.warning("could not make the NetworkPolicy %s owned by its pod: %s", name, err.reason)
    return name, kernel
