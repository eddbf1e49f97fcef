"""`orion-jupyter broker`: the JupyterHub service that launches every student's vGPU kernels.

It alone holds the Kubernetes Role of the class namespace. A single-user server asks it, with the
hub token of its user, to launch, signal and stop kernels; the kernel manager then talks to the
kernel pod directly over ZMQ. Identity comes only from the hub; quotas per user and per course
count every server's kernels and the launches in progress; kernels of servers the hub no longer
runs are reaped; kernel pods are owned by the broker's Lease, so Kubernetes' garbage collector
removes them once the broker is uninstalled.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import urlparse

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from tornado import web
from tornado.ioloop import PeriodicCallback
from traitlets import Bool, Dict, Float, Int, List, Unicode, default
from traitlets.config import Application

from ..config import KernelPolicy
from ..core.admission import Admission
from ..core.booking_rules import BookingRules, parse_static
from ..core.bookings import Bookings
from ..core.budgets import BudgetConfig, Budgets
from ..core.fairshare import FairShare, check_seconds
from ..core.idle import CullRules
from ..core.ledger import Ledger, Quota
from ..core.places import KeptPlaces
from ..core.warm import WarmKernels
from ..core.warm_config import WarmConfig, check_keys
from ..k8s.client import api_client, default_namespace
from ..k8s.cluster import KubeCluster
from ..k8s.launcher import KernelPolicies, PodSite
from ..k8s.state_store import ConfigMapStore, Section
from ..k8s.view import KubernetesView, pod_user
from ..metrics import HANDOVER
from ..names import ANNOTATION_LAUNCHING, ANNOTATION_SERVER, LABEL_KERNEL_ID, LABEL_WARM, TERMINAL_PHASES
from ..settings import ClassSettings, KernelSettings
from ..vgpu import VGPURequestError, parse_memory
from . import heap
from .bookings import BrokerBookings
from .budgets import BudgetMeter
from .idle import broker_culler
from .looplag import LoopLag
from .parking import BrokerParking, ParkLimits
from .pods import ClassPods
from .waits import BrokerWaits

COURSE_KEYS = {"vgpus", "memory", "kernels", "queue", "cull_idle_seconds", "cull_warning_seconds", "cull_max_keeps",
               "budget", "weight", "student_bookings"}

# What a student may ask for unless the operator's c.KernelPolicy says otherwise (loosen on purpose).
SAFE_POLICY = {"max_vgpus": 4, "max_memory": "48Gi"}


def safe_policy(policy: KernelPolicy, images: list[str]) -> KernelPolicy:
    """``policy`` with the broker's safe defaults where the operator set nothing: only ``images`` (the
    broker's image and its warm kernels'), at most 4 vGPUs and 48 GiB of vGPU memory per kernel."""
    if not policy.allowed_images:
        policy.allowed_images = sorted(set(images))
    for name, value in SAFE_POLICY.items():
        if not getattr(policy, name):
            setattr(policy, name, value)
    return policy


# Students' kernel pods get these unless c.VGPUProvisioner sets its own: a pod without requests lets
# one student's kernels crowd a node; one without limits lets one kernel starve its neighbours.
KERNEL_POD_DEFAULTS = {"cpu_request": "100m", "cpu_limit": "2", "memory_request": "256Mi", "memory_limit": "4Gi"}

log = logging.getLogger("orion_jupyter.broker")
# Connections not yet accepted: a university's servers launching (or coming back after a restart) at once
# overflow tornado's default of 128, and the kernel then resets them.
LISTEN_BACKLOG = 2048


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Broker(Application, ClassSettings):
    name = "orion-jupyter-broker"
    description = "vGPU kernels for every server of a JupyterHub; the only holder of the Kubernetes Role"

    config_file = Unicode("", config=True,
                          help="A Python config file (c.Broker..., c.VGPUProvisioner... for the pods).")
    aliases = {"config": "Broker.config_file", "ip": "Broker.ip", "port": "Broker.port",
               "namespace": "VGPUProvisioner.namespace"}
    flags = {"park-all": ({"Broker": {"park_all": True}}, "Park every kernel of the running broker, then exit.")}
    url = Unicode(config=True, help="The broker's URL as the hub knows it; default $JUPYTERHUB_SERVICE_URL.")
    ip = Unicode("", config=True, help="Address to listen on (e.g. 0.0.0.0 in the hub pod); default: the URL's host.")
    port = Int(0, config=True, help="Port to listen on; default: the URL's port.")
    prefix = Unicode(config=True, help="URL prefix of the broker's API; default $JUPYTERHUB_SERVICE_PREFIX.")
    service_name = Unicode(config=True, help="The broker's name as a hub service; default $JUPYTERHUB_SERVICE_NAME.")
    hub_api_url = Unicode(config=True, help="The hub's API; default $JUPYTERHUB_API_URL.")
    api_token = Unicode(config=True, help="The broker's own hub token (scopes: list:users, read:users:groups, "
                                          "read:servers); default $JUPYTERHUB_API_TOKEN.")
    hub_cache_seconds = Float(5.0, config=True,
                              help="Seconds a user's groups and servers, as the hub said them, are reused: an "
                                   "instructor removed from the instructors group loses the class view within it.")
    hub_token_cache_seconds = Float(30.0, config=True,
                                    help="Seconds the hub's answer to who a token belongs to is reused: a revoked "
                                         "token stops working within it (JupyterHub's own HubAuth: 300).")
    max_body_bytes = Int(64 * 1024, config=True,
                         help="Largest request body the broker accepts (a launch is well under 1 KiB); a larger one "
                              "is refused before it is read, and no body is read before its token is checked.")
    metrics_allow = List(Unicode(), ["127.0.0.1/32", "::1/128"], config=True,
                         help="Addresses (CIDRs) that may read /metrics without a token, when they connect directly "
                              "(not through the hub's proxy); anyone else needs a hub token that may use the "
                              "broker. Add your Prometheus' pod network to scrape without one.")
    watch_recheck_seconds = Float(30.0, config=True,
                                  help="Seconds between checks that the token of an open watch stream is still valid; "
                                       "a revoked token ends its stream.")
    courses = Dict(Dict(), config=True,
                   help="Courses by hub group: {'ai101': {'vgpus': 16, 'memory': '96Gi', 'queue': True}}; a "
                        "student's course is the first of their groups named here (its quota, its queue). With "
                        "'queue' on, a launch that finds the course's quota or the pool full waits its turn, first "
                        "come first served, instead of failing. 'budget' ({'student': 5, 'course': 200} vGPU-hours) "
                        "and 'weight' (its fair share of the pool): see c.Broker.budgets and fair_share_half_life.")
    fair_share_half_life = Float(0.0, config=True,
                                 help="Seconds in which a course's and a student's remembered vGPU use halves; with it "
                                      "the next free vGPU goes to the course with the least use against its 'weight' "
                                      "(c.Broker.courses[group]['weight'], default 1) and, within a course, to the "
                                      "student with the least use (first come first served breaking ties), e.g. "
                                      "604800 (a week). 0: first come, first served per course.")
    fair_share_max_wait = Float(1800.0, config=True,
                                help="Seconds after which a waiting launch goes ahead of the fair order (the "
                                     "longest-waiting first), so no student with much past use starves; 0: never.")
    queue_max_wait = Float(3600.0, config=True,
                           help="Seconds a launch may wait in its course's queue; then it is refused with the reason.")
    queue_head_max_wait = Float(120.0, config=True,
                                help="Seconds the head of a course's queue, not fitting, holds back the launches "
                                     "behind it; then those behind that fit may start (the head keeps its place "
                                     "and is served first on every release).")
    queue_resume_grace = Float(60.0, config=True,
                               help="Seconds a waiting launch whose stream broke (its server's connection dropped, "
                                    "the broker restarted) keeps its place in the queue for its server to come back "
                                    "with the launch's ticket; then the place is given up. The queue's order is kept "
                                    "in c.Broker.state_configmap, so a restarted broker continues it. 0: given up "
                                    "at once.")
    queue_keepalive = Float(20.0, config=True,
                            help="Seconds between the queue position lines a waiting launch's stream gets.")
    max_vgpus_per_user = Float(4, config=True,
                               help="Most vGPUs one user holds at once across all servers; 0: no limit (loosen on "
                                    "purpose).")
    max_kernels_per_user = Int(8, config=True,
                               help="Most kernels one user runs at once across all servers, CPU-only ones included "
                                    "(each is a pod on a node); 0: no limit (loosen on purpose). A course may cap "
                                    "its own with 'kernels' in c.Broker.courses.")
    max_memory_per_user = Unicode("", config=True,
                                  help="Most vGPU memory one user holds at once, e.g. '16Gi'; empty: none.")
    volumes = List(Dict(), config=True,
                   help="Volumes of every kernel pod, KubeSpawner's shape with {username} and {servername} "
                        "templates, e.g. [{'name': 'home', 'persistentVolumeClaim': "
                        "{'claimName': 'claim-{username}'}}].")
    volume_mounts = List(Dict(), config=True,
                         help="Mounts of those volumes in the kernel container, e.g. [{'name': 'home', "
                              "'mountPath': '/home/jovyan'}]; templated like volumes.")
    home_mount_path = Unicode("", config=True,
                              help="Where the user's server root is mounted in kernel pods; a kernel starts in the "
                                   "notebook's folder below it, and a parked kernel's snapshot goes to "
                                   "<it>/.orion-snapshots/<user>/. Empty: the image's working directory, and the "
                                   "broker parks no kernel (it can only stop them).")
    park_idle = Bool(True, config=True,
                     help="Idle culling and a used-up vGPU-hour budget park a vGPU kernel (its variables saved to the "
                          "user's storage under home_mount_path) before stopping it; a park that fails stops it with "
                          "the reason. Instructors and --park-all park either way. Needs home_mount_path.")
    park_timeout_seconds = Float(600.0, config=True,
                                 help="Seconds a kernel may take to save its variables when the broker parks it; "
                                      "then the park fails (the kernel keeps running, or culling stops it).")
    max_snapshot_bytes = Int(4 << 30, config=True,
                             help="Bytes one snapshot of a kernel the broker parks may take; a larger park is "
                                  "refused by the kernel.")
    max_user_snapshot_bytes = Int(16 << 30, config=True,
                                  help="Bytes all of one user's snapshots may take together (in their own storage) "
                                       "when the broker parks one of their kernels.")
    park_all = Bool(False, config=True,
                    help="`orion-jupyter broker --park-all`: ask the running broker (c.Broker.url, with its own "
                         "token c.Broker.api_token) to park every kernel, print what was parked and what was not, "
                         "and exit (1 when some kernel was not parked); then stop the broker for maintenance.")
    network_policies = Bool(True, config=True,
                            help="Give each kernel pod a NetworkPolicy that admits its ports only from its user's "
                                 "server pod.")
    reap_interval = Float(30.0, config=True,
                          help="Seconds between checks of the hub's running servers; kernels of stopped or lost "
                               "servers are deleted. 0: never.")
    reap_grace = Float(120.0, config=True, help="Seconds a kernel pod is spared after its creation before reaping.")
    warm_pools = List(Dict(), config=True,
                      help="Warm kernels kept started per shape and handed over on a launch of that shape: "
                           "[{'name': 'gpu-1x4gi', 'vgpus': 1, 'memory': '4Gi', 'size': 4, 'hours': {'days': "
                           "'mon-fri', 'start': '08:30', 'end': '17:00'}}]; optional 'image', 'compute', 'volumes' / "
                           "'volume_mounts' (never the user's own: they start before anyone claims them) and "
                           "'workdir' ('/home/{username}' on a class-shared volume). Each holds a vGPU while it "
                           "waits.")
    rosters = Dict(Dict(), config=True,
                   help="Per course (hub group), one kernel pre-started for each student at the window's start, "
                        "with their own storage (c.Broker.volumes): {'ai101': {'vgpus': 1, 'memory': '4Gi', "
                        "'hours': {'days': 'tue', 'start': '09:00', 'end': '11:00'}, 'grace': 1200}}; those not "
                        "claimed 'grace' seconds after the start are stopped.")
    warm_interval = Float(5.0, config=True,
                          help="Seconds between checks that warm pools are full and rosters pre-warmed.")
    pod_labels = Dict(value_trait=Unicode(), default_value={"app": "jupyterhub", "component": "hub"}, config=True,
                      help="Labels of the broker's own pod (z2jh's hub pod by default): a warm kernel's "
                           "NetworkPolicy admits only it until a claim.")
    bookings = List(config=True,
                    help="Bookings kept from the config: [{'course': 'AI_101', 'vgpus': 1, 'memory': '4Gi', 'count': "
                         "10, 'start': '2026-12-08T09:00', 'end': '2026-12-08T11:00'}] (times without an offset are in "
                         "lab_timezone; optional 'user': one student of the course; optional 'repeat': 'weekly' with "
                         "'until': '2027-02-23', the last date). During each window the booked "
                         "vGPUs are held back from others' launches and the course's (student's) launches of that "
                         "shape take them first. Instructors (of a course's hub group) book more through POST "
                         "api/bookings; students too where c.Broker.courses[group]['student_bookings'] gives the "
                         "most hours one of theirs may last.")
    state_configmap = Unicode("orion-broker-state", config=True,
                              help="The name of the broker's state in the kernel namespace: budgets' use, "
                                   "top-ups, fair-share memory, bookings and the queue's order, each in the "
                                   "ConfigMap '<name>-<section>' (gzipped; a big one split over parts), so a "
                                   "restarted broker continues them. A section an earlier version kept in the "
                                   "ConfigMap '<name>' is read from there and moved.")
    lease_name = Unicode("orion-broker", config=True,
                         help="The broker's Lease (coordination.k8s.io) in the kernel namespace; it owns the "
                              "kernel pods.")

    @default("url")
    def _default_url(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101")

    @default("prefix")
    def _default_prefix(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/orion-broker/")

    @default("service_name")
    def _default_service_name(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_NAME", "orion-broker")

    @default("hub_api_url")
    def _default_hub_api(self) -> str:
        return os.environ.get("JUPYTERHUB_API_URL", "http://127.0.0.1:8081/hub/api")

    @default("api_token")
    def _default_token(self) -> str:
        return os.environ.get("JUPYTERHUB_API_TOKEN", "")

    # -- state ------------------------------------------------------------------------------
    def setup(self) -> None:
        """The broker's state; every setting is checked before the cluster is reached (a typo fails at once)."""
        from .hub import HubClient

        self.settings = KernelSettings(parent=self)  # the pod shape: c.VGPUProvisioner in the broker's config
        for name, value in KERNEL_POD_DEFAULTS.items():  # no kernel pod without requests and limits
            if getattr(self.settings, name) is None:
                setattr(self.settings, name, value)
        for group, entry in self.courses.items():
            check_keys(entry, COURSE_KEYS, f"c.Broker.courses[{group!r}]")
        courses = {group: Quota(int(q.get("vgpus", 0)), parse_memory(q["memory"], f"course {group} memory")
                                if q.get("memory") else 0, int(q.get("kernels", 0)))
                   for group, q in self.courses.items()}
        per_user = Quota(int(self.max_vgpus_per_user), parse_memory(self.max_memory_per_user, "max_memory_per_user")
                         if self.max_memory_per_user else 0, self.max_kernels_per_user)
        ledger = Ledger(per_user, courses)
        budget_config = BudgetConfig.parse(self.budgets, self.courses, self.lab_timezone)
        budgets = Budgets(budget_config) if budget_config.enabled else None
        fair: FairShare | None = FairShare.parse(self.courses, self.fair_share_half_life, self.fair_share_max_wait)
        fair = fair if fair.half_life else None  # checked either way; off: first come, first served
        resume_grace = check_seconds(self.queue_resume_grace, "c.Broker.queue_resume_grace")
        warm_config = WarmConfig.parse(self.warm_pools, self.rosters, self.settings.image, self.lab_timezone)
        booking_rules = BookingRules.parse(self.courses, courses, per_user, warm_config.zone)
        bookings, static_bookings = Bookings(booking_rules), parse_static(self.bookings, booking_rules)
        self.kernel_policy = safe_policy(KernelPolicy(parent=self), [self.settings.image, *(
            entry.shape.image for entry in (*warm_config.pools, *warm_config.rosters))])
        self._released: OrderedDict[str, None] = OrderedDict()  # pods whose release the queue was told
        self.cull_listeners: set[Callable[[str], None]] = set()  # watch streams: a kernel's cull fields changed
        self.hub = HubClient(self.hub_api_url, self.api_token, self.hub_cache_seconds, self.hub_token_cache_seconds)
        try:
            api = api_client(self.settings.kubeconfig, self.settings.kube_context)
        except ConfigException as err:
            raise VGPURequestError("kubeconfig", None, f"no Kubernetes cluster to use ({err}); run the broker in a "
                                                       "pod with its service account, or set KUBECONFIG") from None
        self.namespace = self.settings.namespace or default_namespace(self.settings.kubeconfig,
                                                                      self.settings.kube_context)
        self.cluster = KubeCluster.shared(api, self.namespace, watch_nodes=self.settings.watch_nodes,
                                          watch_others=self.settings.count_other_workloads)
        self.backend = self.settings.backend_model()
        self.view = KubernetesView([self.cluster], self.backend)
        self.coordination = client.CoordinationV1Api(api)
        self.site = PodSite(self.cluster, self.backend, self.settings.pod_settings, self.settings.launch_timeout,
                            self.settings.wait_for_capacity, self.settings.orion_controller or None,
                            policies=KernelPolicies(self.cluster, self.pod_labels) if self.network_policies else None)
        self.pods = ClassPods(self.site, self.view, ledger, members=self.hub.members, is_instructor=self.is_instructor,
                              volumes=self.volumes, volume_mounts=self.volume_mounts,
                              home_mount_path=self.home_mount_path)
        self.admission = Admission(self.pods, ledger, [g for g, q in self.courses.items() if q.get("queue")],
                                   handed_over=HANDOVER.observe, head_max_wait=self.queue_head_max_wait,
                                   budgets=budgets, fair=fair, bookings=bookings)
        self.queue = self.admission.queue
        self.warm = self.pods.warm = self.admission.warm = WarmKernels(self.pods, warm_config, self.queue)
        self.state_store = ConfigMapStore(self.cluster, self.namespace, self.state_configmap,
                                          {"app.kubernetes.io/managed-by": "orion-jupyter-broker"})
        self.booked = BrokerBookings(bookings, static_bookings, self.pods, self.admission, self.warm,
                                     Section(self.state_store, "bookings"))
        self.places = KeptPlaces(self.queue, self.admission.release, Section(self.state_store, "queue"),
                                 resume_grace)
        self.fair = fair
        if fair is not None:
            fair.running = self.pods.holdings
        self.culler = broker_culler(
            self.pods, CullRules(self.cull_idle_seconds, self.cull_warning_seconds, self.cull_max_keeps),
            self.courses, self.cull_interval_seconds,
            changed=lambda kernel_id: [f(kernel_id) for f in list(self.cull_listeners)])
        self.parking = self.culler.target.parking = BrokerParking(
            self.pods, self.culler.target, self.park_limits(), Section(self.state_store, "parks"))
        self.budget_meter = BudgetMeter(budgets, self.pods, Section(self.state_store, "budgets"),
                                        give_back=lambda kernel_id, why: self.parking.give_back(kernel_id, why,
                                                                                                "budget")) \
            if budgets is not None else None
        self.waits = BrokerWaits(self.pods, self.culler.cull_at, budgets,
                                 lambda course: bool(course in courses and courses[course].vgpus),
                                 weight=lambda course: fair.weights.get(course, 1.0) if fair else 1.0,
                                 waiting_courses=lambda: list(self.queue.lines))
        self.queue.describe_more = self.waits.describe_more

    def is_instructor(self, name: str, groups: list[str]) -> bool:
        return self.is_instructor_named(name, groups)

    def park_limits(self) -> ParkLimits:
        for name in ("park_timeout_seconds", "max_snapshot_bytes", "max_user_snapshot_bytes"):
            if not getattr(self, name) > 0:
                raise VGPURequestError(name, getattr(self, name),
                                       f"c.Broker.{name} is {getattr(self, name)!r}; it must be more than 0")
        return ParkLimits(self.home_mount_path, self.max_snapshot_bytes, self.max_user_snapshot_bytes,
                          self.park_timeout_seconds, self.park_idle)

    def _on_pod(self, kind: str, pod: dict) -> None:
        """A kernel pod gone (or ended) gives its vGPUs back: the queue's heads may start."""
        if kind == "DELETED" or (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
            uid = pod["metadata"].get("uid")
            if uid in self._released:
                return
            self._released[uid] = None
            while len(self._released) > 1000:
                self._released.popitem(last=False)
            self.queue.released()

    # -- the Lease that owns the kernel pods --------------------------------------------------
    async def hold_lease(self) -> None:
        """Create or take over the Lease, so kernel pods have a live owner (a restart re-adopts them)."""
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.lease_name, "namespace": self.namespace},
                "spec": {"holderIdentity": f"{socket.gethostname()}-{os.getpid()}", "leaseDurationSeconds": 60,
                         "renewTime": _now()}}
        try:
            lease = await self.cluster.request(self.coordination.create_namespaced_lease, self.namespace, body)
        except ApiException as err:
            if err.status != 409:
                raise
            lease = await self.cluster.request(self.coordination.patch_namespaced_lease, self.lease_name,
                                               self.namespace, {"spec": body["spec"]})
        self.site.owner = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "name": self.lease_name,
                            "uid": lease["metadata"]["uid"]}

    async def renew_lease(self) -> None:
        try:
            await self.cluster.request(self.coordination.patch_namespaced_lease, self.lease_name, self.namespace,
                                       {"spec": {"renewTime": _now()}})
        except ApiException as err:
            log.warning("could not renew the broker's Lease %s: %s", self.lease_name, err.reason)
            if err.status == 404:
                await self.hold_lease()

    async def save_fair_share(self) -> None:
        if self.fair is not None:
            self.fair.meter()
            await self.state_store.save("fairshare", self.fair.state())

    # -- reaping --------------------------------------------------------------------------
    async def reap(self) -> list[str]:
        """Delete the kernel pods whose server the hub does not run, or whose launch died before its server
        was told (never a pod younger than reap_grace), and the Secrets and NetworkPolicies of launches
        that died before their pod existed."""
        reaped = await self.site.sweep(self.reap_grace)
        try:
            running = await self.hub.running_servers()
        except Exception as err:  # noqa: BLE001 - the hub down is no reason to guess: reap nothing
            log.warning("cannot ask the hub which servers run (%s); reaping no pod this time", err)
            return reaped
        now = datetime.now(UTC)
        for pod in self.cluster.kernel_pods():
            meta = pod["metadata"]
            annotations = meta.get("annotations") or {}
            if ANNOTATION_SERVER not in annotations or LABEL_WARM in (meta.get("labels") or {}):
                continue  # not a broker's kernel (a direct-mode server's in the same namespace), or warm
            kernel_id = (meta.get("labels") or {}).get(LABEL_KERNEL_ID, "")
            if kernel_id in self.pods.ledger.pending or meta["name"] in self.site.starting:
                continue  # a launch of this broker, in progress
            # a pod still "launching" here was started by a broker that died before its server heard of it:
            # nobody will ever use it, though its server runs
            orphan = ANNOTATION_LAUNCHING in annotations
            if not orphan and (pod_user(pod), annotations[ANNOTATION_SERVER]) in running:
                continue
            created = datetime.fromisoformat(str(meta.get("creationTimestamp", _now())).replace("Z", "+00:00"))
            if (now - created).total_seconds() < self.reap_grace:
                continue
            log.info("reaping kernel pod %s of %s: %s", meta["name"], pod_user(pod),
                     "its launch died before its server was told" if orphan
                     else f"server {annotations[ANNOTATION_SERVER]!r} is not running")
            await self.site.delete_kernel(meta["name"])
            reaped.append(meta["name"])
        return reaped

    # -- running --------------------------------------------------------------------------
    async def serve(self, routes: Callable[[str], list]) -> None:
        """Set up, then answer ``routes(prefix)`` (the HTTP API, broker/handlers.py) until cancelled."""
        heap.limit_arenas()
        self.setup()
        await self.cluster.ensure_started()
        loop = asyncio.get_running_loop()
        unsubscribes = [self.pods.index.follow(self._on_pod, self.waits.on_pod)]
        if self.cluster.others is not None:  # another team's pod gone frees room too
            unsubscribes.append(self.cluster.others.subscribe(
                lambda kind, pod: self.queue.wake() if kind == "DELETED" else None, loop))
        await self.hold_lease()
        await self.places.restore(self.pods.kernel_exists)  # the queue an earlier broker kept, before anyone new
        await self.warm.adopt_or_clean()
        await self.booked.start()
        if self.fair is not None:  # what an earlier broker kept, before anyone asks (or tops up)
            self.fair.restore(await self.state_store.load("fairshare") or {})
        await self.parking.start()
        if self.budget_meter is not None:
            await self.budget_meter.start()
        heap.started()
        address = urlparse(self.url)
        server = web.Application(routes(self.prefix), broker=self).listen(
            self.port or address.port or 80, self.ip or address.hostname or "127.0.0.1",
            max_body_size=self.max_body_bytes, backlog=LISTEN_BACKLOG)
        log.info("orion-jupyter broker on %s%s, kernels in namespace %s", self.url, self.prefix, self.namespace)
        timers = [PeriodicCallback(self.renew_lease, 15_000), PeriodicCallback(self.booked.prune, 5_000),
                  PeriodicCallback(heap.give_back, 60_000)]
        if self.warm.enabled:
            timers.append(PeriodicCallback(self.warm.tick, self.warm_interval * 1000))
            self.warm.wake()
        if self.fair is not None:
            timers.append(PeriodicCallback(self.save_fair_share, 30_000))
        if self.budget_meter is not None:
            timers.append(PeriodicCallback(self.budget_meter.meter, self.budget_meter.budgets.config.interval * 1000))
        if self.reap_interval > 0:
            timers.append(PeriodicCallback(self.reap, self.reap_interval * 1000))
            await self.reap()  # after a restart: what the broker left behind, at once
        for timer in timers:
            timer.start()
        self.culler.start()
        lag = LoopLag()
        lag.start()
        try:
            await asyncio.Event().wait()
        finally:
            lag.stop()
            for timer in timers:
                timer.stop()
            for unsubscribe in unsubscribes:
                unsubscribe()
            self.culler.stop()
            server.stop()
            await self.hub.sessions.aclose()
            await self.cluster.rest.sessions.aclose()


__all__ = ["Broker"]
