"""The Kubernetes driver: kernel pods created, watched and deleted through shared watches.

``KubeCluster`` is one per (API server, namespace) per process. It owns three shared watches
(this server's kernel pods, their events, and, when RBAC allows, the nodes) and runs blocking
client calls on its own small thread pool, off the event loop. A launch makes three API
requests (create Secret, create Pod, make the Secret owned by the Pod) and then only waits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from ..errors import KernelLaunchError
from ..names import ANNOTATION_STOPPED_BY, LABEL_KERNEL_ID, MANAGED_SELECTOR
from ..pool import HeldByNode, PoolSnapshot, pool_from_held
from ..protocols import WarmClaims
from . import rest
from .claims import DraWatches, ensure_claim_template, launch_judge
from .manifests import KernelManifests, secret_owner_patch
from .others import OtherPods
from .pod_kernel import PodKernel
from .pods import LaunchState, launch_state, trim_pod
from .watch import SharedWatch, stop_watches

log = logging.getLogger("orion_jupyter.k8s")

# Retry policy for creates: connection errors, 429 and 5xx are retried this many times with
# doubling backoff; any other refusal fails the launch at once with the API's own message.
CREATE_RETRIES = 2
RETRY_BACKOFF_SECONDS = 0.2
_RETRYABLE_STATUS = {429, 500, 502, 503, 504}
# The launch's own readiness check: a TCP connect to the kernel's shell port this often.
KNOCK_INTERVAL_SECONDS = 0.002
KNOCK_TIMEOUT_SECONDS = 0.5


def _api_message(err: ApiException) -> str:
    try:
        return json.loads(err.body).get("message") or err.reason
    except (TypeError, ValueError, AttributeError):
        return str(err.reason)


class KubeCluster:
    """Shared watches and API calls for one namespace of one cluster."""

    _instances: dict[tuple[str, str], KubeCluster] = {}
    _instances_lock = threading.Lock()

    def __init__(self, api: client.ApiClient, namespace: str, *, watch_nodes: bool = True, watch_others: bool = False,
                 watch_dra: bool = False):
        self.api = api
        self.core = client.CoreV1Api(api)
        self.rest = rest.Rest(api)
        self.namespace = namespace
        self._executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix=f"orion-k8s-{namespace}")
        self.pods = SharedWatch(f"pods/{namespace}", self.core.list_namespaced_pod, namespace=namespace,
                                label_selector=MANAGED_SELECTOR, keep=trim_pod)
        # Events are only routed to launches in progress, never kept.
        self.events = SharedWatch(f"events/{namespace}", self.core.list_namespaced_event, namespace=namespace,
                                  field_selector="involvedObject.kind=Pod", keep=None)
        self.nodes = SharedWatch("nodes", self.core.list_node) if watch_nodes else None
        # Every other pod that holds extended resources on a node (needs a cluster-wide read of pods).
        self.others = OtherPods(self.core, namespace) if watch_others else None
        # dra backend: this project's ResourceClaims and the ResourceSlices (k8s/claims.py); see enable_dra
        self.dra: DraWatches | None = DraWatches(api, namespace) if watch_dra else None
        self._pool_cache: tuple[tuple[int, int, int], PoolSnapshot] | None = None
        self._started = False
        self._closed = False
        self._start_lock = threading.Lock()
        # pod name -> progress callback of its launch; kept until the pod is gone, as events may lag
        self._progress_routes: dict[str, Callable[[str], None]] = {}
        self.last_event: dict[str, str] = {}
        self.events.subscribe(self._route_event)
        # kernel id -> who stopped it from the class view (so its server does not restart it)
        self.stopped_by: dict[str, str] = {}
        self.warm: WarmClaims | None = None  # warm kernels a direct-mode server keeps here (server/warm.py)
        self.gone_uids: OrderedDict[str, None] = OrderedDict()  # kernel pods deleted lately
        # kernel name -> what this process made its pod's ("Secret", "NetworkPolicy"): Kubernetes' garbage
        # collector deletes those with the pod, no request of ours needed
        self.goes_with_pod: dict[str, set[str]] = {}
        self.pods.subscribe(self._remember_stops)
        self.held = HeldByNode()  # what the kernel pods hold per node, for the pool
        self.pods.subscribe(self.held.apply)

    @classmethod
    def shared(cls, api: client.ApiClient, namespace: str, *, watch_nodes: bool = True,
               watch_others: bool = False, watch_dra: bool = False) -> KubeCluster:
        key = (api.configuration.host, namespace)
        with cls._instances_lock:
            if key not in cls._instances:
                cls._instances[key] = cls(api, namespace, watch_nodes=watch_nodes, watch_others=watch_others,
                                          watch_dra=watch_dra)
            instance = cls._instances[key]
        if watch_dra:
            instance.enable_dra()
        return instance

    @classmethod
    def close_all(cls) -> None:
        with cls._instances_lock:
            instances = list(cls._instances.values())
            cls._instances.clear()
        for instance in instances:
            instance.close()

    def start(self, sync_timeout: float = 10.0) -> None:
        with self._start_lock:
            if self._started:
                return
            self._started = True
            for watch in self._watches():
                watch.start()
        for watch in self._watches():
            watch.wait_synced(sync_timeout)

    def close(self) -> None:
        """Stop the watches and wait (a few seconds at most) until their threads have ended."""
        self._closed = True
        self.rest.sessions.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        stop_watches(self._watches())

    def _watches(self) -> list[SharedWatch]:
        dra = self.dra.watches if self.dra is not None else ()
        others = self.others.watches if self.others is not None else ()
        return [w for w in (self.pods, self.events, self.nodes, *others, *dra) if w is not None]

    def enable_dra(self) -> DraWatches:
        """The DRA watches (claims, slices), added to a cluster made without them; started if it runs."""
        with self._start_lock:
            if self.dra is None:
                self.dra = DraWatches(self.api, self.namespace)
                if self._started:
                    for watch in self.dra.watches:
                        watch.start()
            return self.dra

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A blocking client call on this cluster's thread pool."""
        if self._closed:  # a late cleanup after close(): still delete what it must
            return await asyncio.to_thread(fn, *args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    async def api_call(self, method: str, path: str, body: Any = None, *, answer: bool = True) -> dict:
        """One JSON request of a kernel's own objects (k8s/rest.py: no client models, no per-call validation;
        on the loop, or on a thread behind a proxy and after close); ``answer`` False: the object the API
        server sends back is not parsed ({}), where nobody reads it."""
        if self.rest.direct and not self._closed:
            return await self.rest.request(method, path, body, answer)
        return await self.call(self.rest.blocking, method, path, body, answer)

    async def request(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict:
        """A client call answered as a plain dict (no model building); the connection goes back to the pool."""

        def run() -> dict:
            response = fn(*args, _preload_content=False, **kwargs)
            try:
                return json.loads(response.data or b"{}")
            finally:
                response.release_conn()

        return await self.call(run)

    async def ensure_started(self) -> None:
        if not self._started:
            await asyncio.get_running_loop().run_in_executor(self._executor, self.start)

    # -- state from the caches (no API requests) ----------------------------------------------
    def pool(self) -> PoolSnapshot:
        """The pool, recomputed only after the pods or nodes changed (callers must not modify it)."""
        nodes_visible = self.nodes is not None and self.nodes.lists > 0
        others_visible = self.others is not None and self.others.lists > 0
        version = (self.held.version, self.nodes.version if nodes_visible else -1,
                   self.others.version if others_visible else -1)
        warnings = tuple(w for w in (watch.warning() for watch in self._watches()) if w)
        version = (*version, warnings)
        cached = self._pool_cache
        if cached is None or cached[0] != version:
            snapshot = pool_from_held(self.nodes.items() if nodes_visible else None, self.held,
                                      self.others.items() if others_visible else None, not_foreign=self.gone_uids)
            snapshot.warnings = list(warnings)  # a watch failing for a while: what the pool shows may be stale
            self._pool_cache = cached = (version, snapshot)
        return cached[1]

    def kernel_pods(self) -> list[dict]:
        return self.pods.items()

    def pod(self, name: str) -> dict | None:
        return self.pods.get(self.namespace, name)

    # -- API requests ------------------------------------------------------------------------
    async def _create(self, path: str, body: dict, what: str, answer: bool = True) -> dict | None:
        for attempt in range(CREATE_RETRIES + 1):
            try:
                return await self.api_call("POST", path, body, answer=answer)
            except ApiException as err:
                if err.status == 409 and attempt > 0:
                    return None  # our earlier attempt did create it; the name is unique per launch
                if err.status in _RETRYABLE_STATUS and attempt < CREATE_RETRIES:
                    log.warning("creating %s: API answered %s; retrying", what, err.status)
                else:
                    raise KernelLaunchError(
                        "api", f"Kubernetes refused to create the kernel {what}: {_api_message(err)}") from None
            except HTTPError as err:
                if attempt == CREATE_RETRIES:
                    raise KernelLaunchError(
                        "api", f"Kubernetes API unreachable while creating the kernel {what}: {err}") from None
                log.warning("creating %s: %s; retrying", what, err)
            await asyncio.sleep(RETRY_BACKOFF_SECONDS * 2**attempt)
        raise AssertionError("unreachable")

    async def delete_kernel_objects(self, name: str, grace_seconds: int = 0, *, collector: bool = True) -> bool:
        """Delete a kernel's Pod and Secret; one that is already gone is success. True when the Pod is gone
        or going (the API accepted its deletion, or it was not there). A Secret this process made its pod's
        goes with the pod, a moment later (Kubernetes' garbage collector): one request, not two; ``collector``
        False: deleted now all the same (a failed launch leaves nothing when it says so)."""
        options = rest.delete_options(grace_seconds, "Background")
        owned = collector and "Secret" in self.goes_with_pod.get(name, ())  # read first: DELETED forgets it
        pod_going = await self._delete("Pod", rest.pods(self.namespace, name), options)
        if not (pod_going and owned):
            await self._delete("Secret", rest.secrets(self.namespace, name), options)
        return pod_going

    async def _delete(self, what: str, path: str, options: dict) -> bool:
        """True when it is gone or going."""
        try:
            await self.api_call("DELETE", path, options, answer=False)
            return True
        except ApiException as err:
            if err.status == 404:
                return True
            log.error("deleting %s %s failed: %s", what, path.rsplit("/", 1)[-1], _api_message(err))
        except HTTPError as err:
            log.error("deleting %s %s failed, API unreachable (`orion-jupyter gc` removes leftovers): %s",
                      what, path.rsplit("/", 1)[-1], err)
        return False

    async def delete_pod(self, name: str, grace_seconds: int) -> None:
        try:
            await self.api_call("DELETE", rest.pods(self.namespace, name), rest.delete_options(grace_seconds),
                                answer=False)
        except ApiException as err:
            if err.status != 404:
                log.error("deleting kernel pod %s failed: %s", name, _api_message(err))
        except HTTPError as err:
            log.error("deleting kernel pod %s failed, API unreachable: %s", name, err)

    async def annotate_pod(self, name: str, annotations: dict[str, str]) -> bool:
        try:
            await self.api_call("PATCH", rest.pods(self.namespace, name), {"metadata": {"annotations": annotations}},
                                answer=False)
            return True
        except (ApiException, HTTPError) as err:
            log.warning("could not annotate kernel pod %s: %s", name, err)
            return False

    async def stop_kernel(self, name: str, stopped_by: str, grace_seconds: int = 5,
                          annotations: dict[str, str] | None = None) -> bool:
        """Stop a kernel pod for someone other than its own server: mark who stopped it (its restart is
        then refused with that name) and ``annotations`` (why), then delete Pod and Secret."""
        await self.annotate_pod(name, {**(annotations or {}), ANNOTATION_STOPPED_BY: stopped_by})
        return await self.delete_kernel_objects(name, grace_seconds=grace_seconds)

    def _route_event(self, kind: str, event: dict) -> None:
        name = (event.get("involvedObject") or {}).get("name", "")
        if kind == "DELETED" or name not in self._progress_routes:
            return
        text = f"{event.get('reason', '')}: {event.get('message', '')}"
        if self.last_event.get(name) == text:
            return
        self.last_event[name] = text
        log.log(logging.WARNING if event.get("type") == "Warning" else logging.INFO, "kernel pod %s: %s", name, text)
        self._progress_routes[name](text)

    def _remember_stops(self, kind: str, pod: dict) -> None:
        if kind == "DELETED":
            name = pod.get("metadata", {}).get("name", "")
            self.goes_with_pod.pop(name, None)  # gone with its pod
            self._progress_routes.pop(name, None)
            self.last_event.pop(name, None)
        meta = pod.get("metadata", {})
        if kind == "DELETED" and meta.get("uid"):
            # the cluster-wide watch may still hold it for a moment: never count it as another team's then
            self.gone_uids[meta["uid"]] = None
            while len(self.gone_uids) > 2000:
                self.gone_uids.popitem(last=False)
        who = (meta.get("annotations") or {}).get(ANNOTATION_STOPPED_BY)
        if who:
            self.stopped_by[(meta.get("labels") or {}).get(LABEL_KERNEL_ID, "")] = who

    async def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            text = await self.call(self.core.read_namespaced_pod_log, name, self.namespace, tail_lines=lines)
        except (ApiException, HTTPError):
            return ""
        return str(text or "").strip()

    # -- launch ------------------------------------------------------------------------------
    async def launch(self, manifests: KernelManifests, *, timeout: float, count_resource: str,
                     wait_when_unschedulable: bool = False,
                     progress: Callable[[str], None] | None = None,
                     created: Callable[[str], None] = lambda kind: None) -> PodKernel:
        """Create the kernel's Secret and Pod, wait until it is Ready; on failure delete both. ``created``
        hears "secret" and "pod" as each exists."""
        await self.ensure_started()
        name = manifests.name
        if progress is not None:
            self._progress_routes[name] = progress
        probe = (manifests.pod["spec"]["containers"][0].get("readinessProbe") or {}).get("tcpSocket") or {}
        waiter = _LaunchWaiter(self, name, asyncio.get_running_loop(), wait_when_unschedulable, probe.get("port"),
                               manifests=manifests, progress=progress)
        started = time.monotonic()
        try:
            if manifests.claim_template is not None:  # dra: made once per process, reused by every launch
                await ensure_claim_template(self, manifests.claim_template)
            await self._create(rest.secrets(self.namespace), manifests.secret, "Secret", answer=False)
            created("secret")
            pod = await self._create(rest.pods(self.namespace), manifests.pod, "Pod")
            created("pod")
            owner_patch = asyncio.ensure_future(self._own_secret(pod or self.pod(name)))
            try:
                state = await asyncio.wait_for(waiter.result, timeout)
            except TimeoutError:
                last = waiter.waiting_for or self.last_event.get(name) or "no progress reported"
                raise KernelLaunchError(
                    "timeout", f"the kernel pod {name} did not become ready within {timeout:g} s (last: {last})"
                ) from None
            if state.phase == "failed":
                raise waiter.error(state) or await self._explain(name, state, manifests, count_resource)
            await owner_patch
            log.info("kernel pod %s ready at %s after %.2f s", name, state.ip, time.monotonic() - started)
            return PodKernel(self, name, state.ip)
        except BaseException:
            await asyncio.shield(self.delete_kernel_objects(name, collector=False))
            raise
        finally:
            waiter.close()

    async def _own_secret(self, pod: dict | None) -> None:
        if not pod or not pod.get("metadata", {}).get("uid"):
            return
        try:
            await self.api_call("PATCH", rest.secrets(self.namespace, pod["metadata"]["name"]),
                                secret_owner_patch(pod), answer=False)
            self.goes_with_pod.setdefault(pod["metadata"]["name"], set()).add("Secret")
        except (ApiException, HTTPError) as err:
            log.warning("could not make Secret %s owned by its pod (cleanup still deletes it): %s",
                        pod["metadata"]["name"], err)

    async def _explain(self, name: str, state: LaunchState, manifests: KernelManifests,
                       count_resource: str) -> KernelLaunchError:
        if state.reason == "unschedulable":
            return KernelLaunchError("unschedulable",
                                     self._unschedulable_text(state.message, manifests.pod, count_resource))
        if state.reason == "exited":
            tail = await self.log_tail(name)
            return KernelLaunchError("exited", state.message + (f"; its last output:\n{tail}" if tail else ""))
        return KernelLaunchError(state.reason, state.message)

    def _unschedulable_text(self, scheduler_message: str, pod: dict, count_resource: str) -> str:
        """Which of the kernel's extended resources is short, and how much of it the pool has free."""
        limits = (pod["spec"]["containers"][0].get("resources") or {}).get("limits") or {}
        short = [r for r in re.findall(r"Insufficient ([\w./-]+?)\.?(?:,|$| )", scheduler_message) if r in limits]
        pool = self.pool()
        if not short:
            head = "No node can run this kernel. Check the kernel's node selector and tolerations with your operator."
        elif pool.others_visible or not pool.can_serve({short[0]: int(limits[short[0]])}):
            head = pool.shortage_message(short[0], int(limits[short[0]]), count_resource)
        else:  # the pool looks free only because other workloads are not visible: never claim it is
            head = pool.hidden_shortage_message(short[0], int(limits[short[0]]), count_resource)
        return f"{head} (scheduler: {scheduler_message})"


class _LaunchWaiter:
    """Follows one pod through the shared pod watch until it is ready or has failed.

    A kubelet probes readiness at most once a second, so as soon as the pod runs with an IP the
    waiter also connects to the kernel's shell port itself, every few milliseconds, and calls the
    kernel ready on the first connection; the watch still ends the launch on exit, eviction or
    deletion. A pod with a ResourceClaim or one KAI Scheduler places has a judge (k8s/claims.py)
    that also follows its claims or events and says when its pending state is final.
    """

    def __init__(self, cluster: KubeCluster, name: str, loop: asyncio.AbstractEventLoop, wait_when_unschedulable: bool,
                 shell_port: int | None = None, *, manifests: KernelManifests | None = None,
                 progress: Callable[[str], None] | None = None):
        self.name = name
        self._cluster = cluster
        self.result: asyncio.Future[LaunchState] = loop.create_future()
        self.waiting_for = ""
        self._wait_when_unschedulable = wait_when_unschedulable
        self._shell_port = shell_port
        self._knocking: asyncio.Task | None = None
        self._judge = launch_judge(cluster, manifests, loop, self._recheck, progress) if manifests else None
        self._unsubscribe = cluster.pods.subscribe(self._on_pod, loop)
        pod = cluster.pod(name)
        if pod is not None:
            self._on_pod("ADDED", pod)

    def _on_pod(self, kind: str, pod: dict) -> None:
        if pod.get("metadata", {}).get("name") != self.name or self.result.done():
            return
        if kind == "DELETED":
            self.result.set_result(
                LaunchState("failed", "deleted", f"the kernel pod {self.name} was deleted before it was ready"))
            return
        state = launch_state(pod)
        if self._judge is not None:
            state = self._judge.judge(pod, state)
        if state.phase == "failed" and state.reason == "unschedulable" and self._wait_when_unschedulable:
            self.waiting_for = f"waiting for capacity: {state.message}"
            return
        if state.phase != "pending":
            self.result.set_result(state)
        elif self._shell_port and self._knocking is None and _running_with_ip(pod):
            self._knocking = asyncio.ensure_future(self._knock(pod["status"]["podIP"], int(self._shell_port)))

    async def _knock(self, ip: str, port: int) -> None:
        while not self.result.done():
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), KNOCK_TIMEOUT_SECONDS)
            except (TimeoutError, OSError):
                await asyncio.sleep(KNOCK_INTERVAL_SECONDS)
                continue
            writer.close()
            if not self.result.done():
                self.result.set_result(LaunchState("ready", ip=ip))
            return

    def _recheck(self) -> None:
        pod = self._cluster.pod(self.name)
        if pod is not None:
            self._on_pod("MODIFIED", pod)

    def error(self, state: LaunchState) -> KernelLaunchError | None:
        """The judge's own error for a state it decided (its sentence is final), else None."""
        return self._judge.error(state) if self._judge is not None else None

    def close(self) -> None:
        self._unsubscribe()
        if self._judge is not None:
            self._judge.close()
        if self._knocking is not None:
            self._knocking.cancel()


def _running_with_ip(pod: dict) -> bool:
    status = pod.get("status") or {}
    running = any("running" in (cs.get("state") or {}) for cs in status.get("containerStatuses") or [])
    return bool(status.get("podIP")) and running
