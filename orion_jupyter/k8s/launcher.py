"""Kernel pods a host starts itself (the broker for every launch, either mode for warm kernels): the
pod from a :class:`~orion_jupyter.launch.PodPlan` (the user's storage, the notebook's folder, the
host's owner), its NetworkPolicy, and the wait until it is ready; a failure leaves nothing."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ..backends import Backend
from ..errors import KernelLaunchError
from ..launch import KernelLaunch, PodPlan, PodSettings
from ..names import (
    ANNOTATION_CLAIMED,
    ANNOTATION_COURSE,
    ANNOTATION_KERNEL_SPEC,
    ANNOTATION_LAUNCHING,
    ANNOTATION_SERVER,
    ANNOTATION_USER,
    LABEL_COURSE,
    LABEL_KERNEL_ID,
    LABEL_USER,
    LABEL_WARM,
    MANAGED_SELECTOR,
    slug,
)
from ..protocols import ClaimRequest
from ..wire import host_ports
from . import rest
from .cluster import KubeCluster
from .driver import pod_options
from .hub_manifests import kernel_network_policy, selects, z2jh_username_label
from .manifests import add_user_storage, build_kernel_manifests, secret_owner_patch

log = logging.getLogger("orion_jupyter.k8s")
# Tests only: the step of a launch ("policy", "secret", "pod") after which this process SIGKILLs itself,
# as a crash there would (what a launch leaves behind must then be owned, and swept by the reaper).
DIE_AFTER_ENV = "ORION_JUPYTER_DIE_AFTER"


def _created(step: str) -> None:
    if os.environ.get(DIE_AFTER_ENV) == step:
        log.warning("%s=%s: killing this process after the launch's %s", DIE_AFTER_ENV, step, step)
        os.kill(os.getpid(), signal.SIGKILL)


class KernelPolicies:
    """Per-kernel NetworkPolicies (hub mode): a kernel's ports only from its user's server pod, its
    iopub and shell ports from the host's own pod (idle culling follows iopub; a park is one request on
    shell); a warm kernel's, every port from the host only."""

    def __init__(self, cluster: KubeCluster, host_pod_labels: Mapping[str, str]):
        self.cluster = cluster
        self.host_pod_labels = dict(host_pod_labels)
        self.api = client.NetworkingV1Api(cluster.api)

    def build(self, name: str, kernel_label: str, user: str, ports: Sequence[int], *,
              also_kernel_label: str | None = None) -> dict:
        """``also_kernel_label``: the policy selects that kernel id too (a claim relabels the pod, and the
        pod must never be without a policy in between)."""
        policy = kernel_network_policy(name, self.cluster.namespace, kernel_label,
                                       z2jh_username_label(user) if user else "warm", ports)
        spec = policy["spec"]
        if also_kernel_label:
            spec["podSelector"] = {"matchExpressions": [{"key": LABEL_KERNEL_ID, "operator": "In",
                                                         "values": sorted({kernel_label, also_kernel_label})}]}
        from_host = [{"podSelector": {"matchLabels": dict(self.host_pod_labels)}}]
        if not user:
            spec["ingress"][0]["from"] = from_host
        else:  # the host follows the kernel's execution state (iopub: idle culling) and parks it (shell)
            spec["ingress"].append({"from": from_host, "ports": [{"protocol": "TCP", "port": port}
                                                                 for port in host_ports(ports)]})
        return policy

    async def create(self, policy: dict) -> None:
        await self.cluster.api_call("POST", rest.network_policies(self.cluster.namespace), policy, answer=False)

    async def replace_spec(self, name: str, policy: dict) -> None:
        """The policy's spec written whole (a JSON patch ``replace``): a merge patch would keep the old
        ``matchLabels`` beside the new selector, and the two together select no pod at all."""
        await self.cluster.api_call("PATCH", rest.network_policies(self.cluster.namespace, name),
                                    [{"op": "replace", "path": "/spec", "value": policy["spec"]}], answer=False)

    async def check_selects(self, name: str, pod_labels: Mapping[str, str]) -> None:
        """Read the policy back: it must select the pod as labelled now, else KernelLaunchError (the caller
        deletes the pod rather than leave it open)."""
        policy = await self.cluster.api_call("GET", rest.network_policies(self.cluster.namespace, name))
        if not selects((policy.get("spec") or {}).get("podSelector") or {}, pod_labels):
            raise KernelLaunchError("api", f"the NetworkPolicy {name} does not select its kernel pod after the "
                                           "hand-over; the kernel is stopped rather than left open")

    async def owned_by_pod(self, name: str) -> None:
        """The policy goes with its pod."""
        pod = self.cluster.pod(name)
        if pod is None:
            return
        try:
            await self.cluster.api_call("PATCH", rest.network_policies(self.cluster.namespace, name),
                                        secret_owner_patch(pod), answer=False)
            self.cluster.goes_with_pod.setdefault(name, set()).add("NetworkPolicy")
        except ApiException as err:
            log.warning("could not make the NetworkPolicy %s owned by its pod: %s", name, err.reason)

    async def delete(self, name: str, goes_with_pod: bool = False) -> None:
        """``goes_with_pod``: the policy is its pod's and the pod is gone or going: no request."""
        if goes_with_pod:
            return
        try:
            await self.cluster.api_call("DELETE", rest.network_policies(self.cluster.namespace, name), answer=False)
        except ApiException as err:
            if err.status != 404:
                log.warning("could not delete the NetworkPolicy of %s: %s", name, err.reason)


@dataclass
class PodSite:
    """Where and how a host starts kernel pods: its cluster and backend, the pod shape per image, the
    owner of what it creates (the broker's Lease, a server's own pod) and, in hub mode, NetworkPolicies."""

    cluster: KubeCluster
    backend: Backend
    pod_settings: Callable[[str], PodSettings]  # image -> the pod's shape
    launch_timeout: float = 300.0
    wait_for_capacity: bool = False
    orion_controller: str | None = None
    owner: dict[str, str] | None = None
    policies: KernelPolicies | None = None
    starting: set[str] = field(default_factory=set)  # pod names whose objects are being created now

    def owner_references(self) -> list[dict[str, Any]]:
        """What everything a launch creates is owned by from the moment it exists (the host's owner)."""
        if not self.owner:
            return []
        return [{"apiVersion": self.owner.get("apiVersion", "v1"), "kind": self.owner.get("kind", "Pod"),
                 "name": self.owner["name"], "uid": self.owner["uid"], "blockOwnerDeletion": False}]

    async def launched(self, pod_name: str) -> None:
        """Its server is about to hear the kernel is ready: it is no longer an orphan if this process dies."""
        try:
            await self.cluster.api_call("PATCH", rest.pods(self.cluster.namespace, pod_name),
                                        {"metadata": {"annotations": {ANNOTATION_LAUNCHING: None}}}, answer=False)
        except ApiException as err:
            raise KernelLaunchError("api", f"Kubernetes refused to mark the kernel started: {err.reason}") from None

    async def delete_kernel(self, pod_name: str, grace_seconds: int = 0, *, collector: bool = True) -> bool:
        """A kernel's Pod, Secret and (hub mode) NetworkPolicy; what is already gone is success. True when
        the Pod is gone or going. ``collector`` False: what would go with the pod is deleted now."""
        return await self._with_policy(pod_name, self.cluster.delete_kernel_objects(
            pod_name, grace_seconds, collector=collector), collector)

    async def stop(self, pod_name: str, stopped_by: str, grace_seconds: int = 5,
                   annotations: dict[str, str] | None = None) -> bool:
        """Stop a kernel for someone other than its server (an instructor, the idle rule): it stays stopped.
        True when the Pod is gone or going."""
        return await self._with_policy(pod_name, self.cluster.stop_kernel(pod_name, stopped_by, grace_seconds,
                                                                          annotations))

    async def _with_policy(self, pod_name: str, pod_deleted: Awaitable[bool], collector: bool = True) -> bool:
        """Delete the pod (``pod_deleted``), then its NetworkPolicy unless that goes with the pod."""
        owned = self.cluster.goes_with_pod.get(pod_name, set()) if collector else set()  # read before DELETED
        pod_going = await pod_deleted
        if pod_going:
            self.cluster.goes_with_pod.pop(pod_name, None)
        if self.policies is not None:
            await self.policies.delete(pod_name, pod_going and "NetworkPolicy" in owned)
        return pod_going

    async def sweep(self, grace_seconds: float) -> list[str]:
        """Delete what a launch that died before its pod existed left: its NetworkPolicy (created first, owned
        by the host's owner, listed here) and its Secret of the same name (deleted unread: Secrets are never
        listed); never those being created now or younger than ``grace_seconds``; what was swept, by name.
        Once its pod exists, both are the pod's and go with it."""
        if not self.owner or self.policies is None:
            return []
        try:
            found = await self.cluster.request(self.policies.api.list_namespaced_network_policy,
                                               self.cluster.namespace, label_selector=MANAGED_SELECTOR)
        except ApiException as err:
            log.warning("cannot list NetworkPolicies to sweep what dead launches left: %s", err.reason)
            return []
        now, swept = datetime.now(UTC), []
        for policy in found.get("items") or []:
            meta = policy["metadata"]
            name = meta["name"]
            if not any(ref.get("uid") == self.owner["uid"] for ref in meta.get("ownerReferences") or []) \
                    or name in self.starting or self.cluster.pod(name) is not None:
                continue
            created = datetime.fromisoformat(str(meta.get("creationTimestamp") or now.isoformat())
                                             .replace("Z", "+00:00"))
            if (now - created).total_seconds() < grace_seconds:
                continue
            log.info("sweeping the NetworkPolicy and Secret %s: its launch died before its pod existed", name)
            await self.cluster.delete_kernel_objects(name)  # the Secret (and a pod, if one came meanwhile)
            await self.policies.delete(name)
            swept.append(name)
        return swept

    async def hand_over(self, name: str, warm_kernel_id: str, ask: ClaimRequest, user: str, course: str,
                        ports: tuple[int, ...]) -> None:
        """A claimed warm pod becomes ``user``'s: first its NetworkPolicy (selecting both ids, so the pod is
        never without one), then its labels and annotations."""
        kernel_label = slug(ask.kernel_id, 63)
        try:
            if self.policies is not None:
                await self.policies.replace_spec(name, self.policies.build(
                    name, kernel_label, user, ports, also_kernel_label=slug(warm_kernel_id, 63)))
            pod = await self.cluster.api_call("PATCH", rest.pods(self.cluster.namespace, name),
                                              {"metadata": claimed_metadata(ask, user, course)})
            if self.policies is not None:
                await self.policies.check_selects(name, (pod.get("metadata") or {}).get("labels") or {})
        except ApiException as err:
            raise KernelLaunchError("api", f"Kubernetes refused the hand-over: {err.reason}") from None

    async def start(self, plan: PodPlan, progress: Callable[[str], None] | None = None) -> tuple[str, Any]:
        """Create the plan's NetworkPolicy, Secret and Pod and wait until the kernel is ready:
        (pod name, PodKernel). On failure nothing of it is left and the KernelLaunchError says why."""
        launch = KernelLaunch(
            kernel_id=plan.kernel_id, user=plan.user, request=plan.request, backend=self.backend,
            pod=self.pod_settings(plan.image), kernel_spec_name=plan.kernel_spec_name, course=plan.course,
            key=plan.key, ports=plan.ports, timeout=self.launch_timeout, wait_for_capacity=self.wait_for_capacity,
            orion_controller=self.orion_controller)
        options = replace(pod_options(launch, self.cluster.namespace, plan.connection, uuid.uuid4().hex[:6]),
                          owner=self.owner, working_dir=plan.working_dir,
                          labels={**launch.pod.labels, **({LABEL_WARM: plan.warm} if plan.warm else {})},
                          annotations={**launch.pod.annotations, **plan.annotations,
                                       **({} if plan.server_name is None else {ANNOTATION_SERVER: plan.server_name})})
        manifests = build_kernel_manifests(options)
        add_user_storage(manifests.pod, plan.volumes, plan.volume_mounts, plan.user, plan.server_name or "")
        name = manifests.name
        owners = self.owner_references()
        if owners:  # owned from creation: a crash before the pod exists leaves nothing unowned
            manifests.secret["metadata"]["ownerReferences"] = owners
        self.starting.add(name)
        try:
            if self.policies is not None:
                policy = self.policies.build(name, manifests.pod["metadata"]["labels"][LABEL_KERNEL_ID], plan.user,
                                             plan.ports)
                if owners:
                    policy["metadata"]["ownerReferences"] = owners
                await self.policies.create(policy)
                _created("policy")
            loop = asyncio.get_running_loop()  # pod events arrive on the watch's thread
            kernel = await self.cluster.launch(
                manifests, timeout=launch.timeout, count_resource=self.backend.count_resource,
                wait_when_unschedulable=launch.wait_for_capacity, created=_created,
                progress=None if progress is None else lambda message: loop.call_soon_threadsafe(progress, message))
        except (KernelLaunchError, ApiException) as err:
            if self.policies is not None:
                await self.delete_kernel(name, collector=False)
            if isinstance(err, KernelLaunchError):
                raise
            raise KernelLaunchError("api", f"Kubernetes refused the launch: {err.reason}") from None
        finally:
            self.starting.discard(name)
        if self.policies is not None:
            await self.policies.owned_by_pod(name)
        return name, kernel


def claimed_metadata(ask: ClaimRequest, user: str, course: str) -> dict[str, Any]:
    """A claimed warm pod's new labels and annotations (a merge patch: None removes)."""
    return {"labels": {LABEL_WARM: None, LABEL_KERNEL_ID: slug(ask.kernel_id, 63), LABEL_USER: slug(user, 63),
                       LABEL_COURSE: slug(course, 63) if course else None},
            "annotations": {ANNOTATION_USER: user, ANNOTATION_SERVER: ask.server_name,
                            ANNOTATION_COURSE: course or None, ANNOTATION_KERNEL_SPEC: ask.kernel_spec_name or None,
                            ANNOTATION_CLAIMED: datetime.now().astimezone().isoformat(timespec="seconds")}}


class SiteHost:
    """The pod side of a warm-kernel host (``core.warm.WarmHost``) over a :class:`PodSite`: a host adds
    ``has_room``, ``roster_members`` and the user's storage."""

    def __init__(self, site: PodSite):
        self.site = site
        self.cluster = site.cluster

    def pod(self, name: str) -> dict | None:
        return self.cluster.pod(name)

    def kernel_pods(self) -> list[dict]:
        return self.cluster.kernel_pods()

    async def start_pod(self, plan: PodPlan) -> tuple[str, str]:
        name, kernel = await self.site.start(plan)
        return name, kernel.ip

    async def hand_over(self, name: str, warm_kernel_id: str, ask: ClaimRequest, user: str, course: str,
                        ports: tuple[int, ...]) -> None:
        await self.site.hand_over(name, warm_kernel_id, ask, user, course, ports)

    async def delete_kernel(self, name: str, grace_seconds: int = 0) -> None:
        await self.site.delete_kernel(name, grace_seconds)
