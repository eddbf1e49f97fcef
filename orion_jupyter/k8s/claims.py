"""The launch path's Dynamic Resource Allocation and KAI Scheduler parts (cluster.py keeps small hooks).

* :class:`DraWatches` - two more shared watches for the dra backend: this project's ResourceClaims in
  the namespace (they carry the managed-by label of their template) and the cluster's ResourceSlices;
  the pool they make (:func:`~orion_jupyter.k8s.dra_pool.dra_pool`) is recomputed only after a change.
* :func:`ensure_claim_template` - a kernel's ResourceClaimTemplate, created once per process: its name
  hashes its spec, so 409 AlreadyExists means it is there with this very spec; 403 means the RBAC
  for DRA is missing, and says which command renders it.
* :func:`launch_judge` - for a pod with a claim, or one KAI Scheduler places, turns what the pod
  watch says into the launch's state: the scheduler's "unschedulable" alone is not final for a claim
  (it may be waiting for the claim to be made); a claim that fits no device, or KAI's reason, ends
  the launch at once with a sentence that names what was short. Ready is ready, whatever the claim
  cache says.
* :func:`pod_devices` - what a kernel pod's claims got, for the class view and the allocations.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from ..errors import KernelLaunchError
from ..names import MANAGED_SELECTOR
from ..pool import PoolSnapshot
from . import dra, dra_pool, kai
from .pods import LaunchState
from .watch import SharedWatch

if TYPE_CHECKING:  # pragma: no cover
    from .manifests import KernelManifests

KubeCluster = Any  # a .cluster.KubeCluster (not imported: it imports this module)

log = logging.getLogger("orion_jupyter.k8s")

TEMPLATE_RETRIES = 2
TEMPLATE_BACKOFF_SECONDS = 0.2
_RETRYABLE_STATUS = {429, 500, 502, 503, 504}
RBAC_HINT = ("render the RBAC with `orion-jupyter manifests --backend dra --namespace {namespace}` "
             "and apply it (kubectl apply -f -)")
_WAITING_FOR_CONTROLLER = "waiting for dynamic resource controller"


# ---------------------------------------------------------------- the watches and the pool


class DraWatches:
    """This project's ResourceClaims of one namespace and every ResourceSlice, as shared watches."""

    def __init__(self, api: client.ApiClient, namespace: str):
        resource = client.ResourceV1Api(api)
        self.claims = SharedWatch(f"resourceclaims/{namespace}", resource.list_namespaced_resource_claim,
                                  namespace=namespace, label_selector=MANAGED_SELECTOR)
        self.slices = SharedWatch("resourceslices", resource.list_resource_slice)
        self._pool: tuple[tuple[int, int], PoolSnapshot] | None = None

    @property
    def watches(self) -> tuple[SharedWatch, SharedWatch]:
        return self.claims, self.slices

    def wait_synced(self, timeout: float = 10.0) -> None:
        for watch in self.watches:
            watch.wait_synced(timeout)

    @property
    def claims_visible(self) -> bool:
        """False while the claims were never listed (no RBAC: 403, or not synced yet)."""
        return self.claims.lists > 0

    def pool(self) -> PoolSnapshot:
        """Devices per node with what this namespace's claims hold of them (invisible without the slices)."""
        slices_visible = self.slices.lists > 0
        version = (self.claims.version, self.slices.version if slices_visible else -1)
        cached = self._pool
        if cached is None or cached[0] != version:
            snapshot = dra_pool.dra_pool(self.slices.items() if slices_visible else None, self.claims.items())
            for node in snapshot.nodes:  # the largest device: a request above it can never fit
                node.device_memory_mib = max((d.memory_mib for d in node.devices), default=0) or None
            self._pool = cached = (version, snapshot)
        return cached[1]


async def dra_synced(cluster: KubeCluster, timeout: float = 10.0) -> None:
    """The cluster's DRA watches, started and listed once (off the event loop)."""
    watches = cluster.enable_dra()
    if not all(watch.wait_synced(0) for watch in watches.watches):
        await asyncio.to_thread(watches.wait_synced, timeout)


def dra_pool_of(cluster: KubeCluster) -> PoolSnapshot:
    return cluster.dra.pool() if cluster.dra is not None else PoolSnapshot(nodes=[], visible=False, source="dra")


# ---------------------------------------------------------------- templates

_created: set[tuple[str, str, str]] = set()  # (API server, namespace, template name) created by this process
_created_lock = threading.Lock()


async def ensure_claim_template(cluster: KubeCluster, template: Mapping[str, Any]) -> None:
    """Create the template unless this process already did; AlreadyExists is success (same name, same spec)."""
    namespace, name = template["metadata"]["namespace"], template["metadata"]["name"]
    key = (cluster.api.configuration.host, namespace, name)
    with _created_lock:
        if key in _created:
            return
    create = client.ResourceV1Api(cluster.api).create_namespaced_resource_claim_template
    for attempt in range(TEMPLATE_RETRIES + 1):
        try:
            await cluster.request(create, namespace, dict(template))
            break
        except ApiException as err:
            if err.status == 409:
                break
            if err.status in (401, 403):
                raise KernelLaunchError(
                    "api", f"This server may not create the kernel's ResourceClaimTemplate {name} in namespace "
                           f"{namespace} (Kubernetes answered {err.status} {err.reason}); the dra backend needs "
                           f"more RBAC: {RBAC_HINT.format(namespace=namespace)}.") from None
            if err.status not in _RETRYABLE_STATUS or attempt == TEMPLATE_RETRIES:
                raise KernelLaunchError(
                    "api", f"Kubernetes refused to create the ResourceClaimTemplate {name}: {_api_message(err)}"
                ) from None
            log.warning("creating ResourceClaimTemplate %s: API answered %s; retrying", name, err.status)
        except HTTPError as err:
            if attempt == TEMPLATE_RETRIES:
                raise KernelLaunchError(
                    "api", f"Kubernetes API unreachable while creating the ResourceClaimTemplate {name}: {err}"
                ) from None
            log.warning("creating ResourceClaimTemplate %s: %s; retrying", name, err)
        await asyncio.sleep(TEMPLATE_BACKOFF_SECONDS * 2**attempt)
    with _created_lock:
        _created.add(key)


def forget_templates(cluster: KubeCluster | None = None, name: str | None = None) -> None:
    """Forget that this process made a template (one deleted behind its back), or all of them (tests)."""
    with _created_lock:
        if cluster is None:
            _created.clear()
        else:
            _created.discard((cluster.api.configuration.host, cluster.namespace, name or ""))


def _api_message(err: ApiException) -> str:
    import json

    try:
        return json.loads(err.body).get("message") or str(err.reason)
    except (TypeError, ValueError, AttributeError):
        return str(err.reason)


# ---------------------------------------------------------------- waiting for a launch


def _state(phase: str, reason: str = "", message: str = "") -> LaunchState:
    return LaunchState(phase, reason, message)


class LaunchJudge:
    """Decides a pending pod's launch state where the pod watch alone cannot (claims, KAI).

    ``recheck()`` is called (on the launch's loop) when something the judge watches changes, so the
    waiter looks at its pod again; ``progress(text)`` gets each new step (allocated, scheduled).
    """

    def __init__(self, recheck: Callable[[], None], progress: Callable[[str], None] | None):
        self._recheck = recheck
        self._progress = progress
        self._said = ""
        self._final: LaunchState | None = None
        self._unsubscribe: list[Callable[[], None]] = []

    def judge(self, pod: dict, state: LaunchState) -> LaunchState:
        if state.phase == "ready" or (state.phase == "failed" and state.reason != "unschedulable"):
            return state  # running and ready, or a failure of its own (image, exit, eviction)
        decided = self._decide(pod, state)
        if decided.phase == "failed":
            self._final = decided
        return decided

    def _decide(self, pod: dict, state: LaunchState) -> LaunchState:
        raise NotImplementedError

    def error(self, state: LaunchState) -> KernelLaunchError | None:
        """The launch's error for a failed state this judge decided (its message is final)."""
        if self._final is not None and state is self._final:
            return KernelLaunchError(state.reason, state.message)
        return None

    def _say(self, text: str) -> None:
        if text and text != self._said:
            self._said = text
            if self._progress is not None:
                self._progress(text)

    def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()


class ClaimJudge(LaunchJudge):
    """A pod whose GPU comes from a ResourceClaim made from its template."""

    def __init__(self, cluster: KubeCluster, manifests: KernelManifests, loop: asyncio.AbstractEventLoop,
                 recheck: Callable[[], None], progress: Callable[[str], None] | None):
        super().__init__(recheck, progress)
        self._cluster, self._manifests = cluster, manifests
        self._watches = cluster.enable_dra()
        self._pod_claims = list(manifests.pod["spec"].get("resourceClaims") or [])
        self._remade: asyncio.Future | None = None
        self._unsubscribe.append(self._watches.claims.subscribe(lambda kind, claim: self._recheck(), loop))
        self._unsubscribe.append(cluster.events.subscribe(self._on_event, loop))

    def _on_event(self, kind: str, event: dict) -> None:
        """A template deleted behind this process's back (Kubernetes cannot make the claim): make it again."""
        template = self._manifests.claim_template
        if (kind == "DELETED" or template is None or self._remade is not None
                or (event.get("involvedObject") or {}).get("name") != self._manifests.name
                or event.get("reason") != "FailedResourceClaimCreation"
                or "not found" not in (event.get("message") or "")):
            return
        log.warning("ResourceClaimTemplate %s is gone; creating it again", template["metadata"]["name"])
        forget_templates(self._cluster, template["metadata"]["name"])
        self._remade = asyncio.ensure_future(ensure_claim_template(self._cluster, template))
        self._remade.add_done_callback(self._remade_done)

    def _remade_done(self, future: asyncio.Future) -> None:
        if not future.cancelled() and future.exception() is not None:
            self._failure = future.exception()
            self._recheck()

    _failure: BaseException | None = None

    def close(self) -> None:
        super().close()
        if self._remade is not None and not self._remade.done():
            self._remade.cancel()

    def _decide(self, pod: dict, state: LaunchState) -> LaunchState:
        if isinstance(self._failure, KernelLaunchError):  # the template could not be made again
            return _state("failed", self._failure.reason, str(self._failure))
        if not self._watches.claims_visible:  # the claims cannot be read: the scheduler's words alone
            if state.phase == "failed" and _WAITING_FOR_CONTROLLER not in state.message:
                return _state("failed", "unschedulable",
                              "Not enough GPU devices free for this kernel: the scheduler cannot allocate its "
                              f'ResourceClaim (scheduler: "{" ".join(state.message.split())}"). Stop a kernel you '
                              "no longer use, ask for less, or try again later.")
            return _state("pending")
        spec = {**(pod.get("spec") or {}), "resourceClaims": self._pod_claims}  # the watch cache trims them
        phase, _reason, message = dra.claim_launch_state({**pod, "spec": spec}, self._watches.claims.items(),
                                                         self._watches.pool())
        if phase == "unschedulable":
            return _state("failed", "unschedulable", message)
        self._say(f"Allocated: {message}" if phase == "allocated" and message else message)
        return _state("pending") if state.phase == "failed" else state


class KaiJudge(LaunchJudge):
    """A pod placed by KAI Scheduler: its Unschedulable condition or event, in one sentence."""

    def __init__(self, cluster: KubeCluster, manifests: KernelManifests, loop: asyncio.AbstractEventLoop,
                 recheck: Callable[[], None], progress: Callable[[str], None] | None):
        super().__init__(recheck, progress)
        self._name = manifests.name
        self._events: list[dict] = []
        self._unsubscribe.append(cluster.events.subscribe(self._on_event, loop))

    def _on_event(self, kind: str, event: dict) -> None:
        if kind != "DELETED" and (event.get("involvedObject") or {}).get("name") == self._name:
            self._events.append(event)
            self._recheck()

    def _decide(self, pod: dict, state: LaunchState) -> LaunchState:
        phase, _reason, message = kai.kai_launch_state(pod, self._events)
        if phase == "unschedulable":
            return _state("failed", "unschedulable", message)
        if phase == "scheduled":
            self._say(message)
        return _state("pending") if state.phase == "failed" else state


def launch_judge(cluster: KubeCluster, manifests: KernelManifests, loop: asyncio.AbstractEventLoop,
                 recheck: Callable[[], None], progress: Callable[[str], None] | None = None) -> LaunchJudge | None:
    """The judge a launch needs: claims (dra), KAI Scheduler (kai), or none (extended resources)."""
    spec = manifests.pod.get("spec") or {}
    if spec.get("resourceClaims"):
        return ClaimJudge(cluster, manifests, loop, recheck, progress)
    if spec.get("schedulerName") == kai.SCHEDULER_NAME:
        return KaiJudge(cluster, manifests, loop, recheck, progress)
    return None


# ---------------------------------------------------------------- what a kernel got


def owned_claims(pod: Mapping, claims: Iterable[Mapping]) -> list[Mapping]:
    """The ResourceClaims made for ``pod`` (owned by it), from a claim cache."""
    uid = (pod.get("metadata") or {}).get("uid")
    if not uid:
        return []
    return [c for c in claims
            if any(r.get("uid") == uid for r in (c.get("metadata") or {}).get("ownerReferences") or [])]


def pod_devices(cluster: KubeCluster, pod: Mapping) -> dict[str, Any]:
    """{'devices': [granted devices], 'device': 'gpu-1/gpu-0 (driver): 4 GiB'} of a dra kernel pod; {} else."""
    if cluster.dra is None:
        return {}
    granted = [g for c in owned_claims(pod, cluster.dra.claims.items()) for g in dra.granted_devices(c)]
    if not granted:
        return {}
    return {"devices": granted, "device": dra.describe_granted(granted)}
