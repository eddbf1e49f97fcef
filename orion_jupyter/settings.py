"""Settings declared once: kernel pods and launches (``c.VGPUProvisioner.*``), and a class's (instructors,
idle culling) which a direct-mode server and the broker share (``c.OrionJupyter.*`` / ``c.Broker.*``).

:class:`KernelSettings` is a ``Configurable`` apart from the worker: the provisioner inherits it (a
kernel spec's ``kernel_provisioner.config`` sets its own copy), and the server extension, the kernel
spec tools and the broker build it with ``parent=`` to read the same configuration. It is configured
under the section ``VGPUProvisioner`` (the documented name) as well as ``KernelSettings``.
"""

from __future__ import annotations

import getpass
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from jupyter_core.paths import ENV_JUPYTER_PATH, SYSTEM_JUPYTER_PATH
from traitlets import Any as AnyTrait
from traitlets import Bool, Dict, Enum, Float, Int, List, TraitError, Unicode, default
from traitlets.config import LoggingConfigurable

from .backends import Backend, get_backend
from .launch import PodSettings
from .vgpu import DEFAULT_MEMORY, DEFAULT_VGPUS, VGPURequest, VGPURequestError

# Server-side variables a kernel may learn (the rest of the server's environment stays home).
FORWARDED_ENV = ("JPY_SESSION_NAME",)
# What a kernel spec may ask for; every other option (identity, security context, placement, env,
# namespace...) is the server's own configuration unless the spec is trusted.
SPEC_OPTIONS = frozenset({
    "vgpus", "vgpu_memory", "compute_percent", "backend", "image", "image_pull_policy", "cluster", "kernel_python",
    "cpu_request", "cpu_limit", "memory_request", "memory_limit", "launch_timeout", "wait_for_capacity",
})
TEMPLATE_RE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def system_kernel_spec_dirs() -> list[str]:
    """Where only an administrator installs kernel specs: the system and sys-prefix Jupyter paths."""
    return [os.path.join(path, "kernels") for path in (*ENV_JUPYTER_PATH, *SYSTEM_JUPYTER_PATH)]


def _inside(path: str, folders: list[str]) -> bool:
    real = os.path.realpath(path)
    return any(os.path.commonpath([real, os.path.realpath(folder)]) == os.path.realpath(folder)
               for folder in folders if folder)


class KernelSettings(LoggingConfigurable):
    # -- what a kernel asks for (per spec in kernel.json's provisioner config) -----------------
    vgpus = Int(DEFAULT_VGPUS, config=True, help="vGPUs per kernel (0: a CPU-only kernel).")
    vgpu_memory = Unicode(DEFAULT_MEMORY, config=True, help="vGPU memory per vGPU: 4096 (MiB), '4Gi', '0.5Gi'.")
    compute_percent = Int(None, allow_none=True, config=True, help="Compute share of one GPU per vGPU, 1-100.")
    backend = Enum(["orion", "hami", "nvidia", "dra", "kai"], "orion", config=True,
                   help="vGPU backend: orion (virtaitech.com/gpu + ORION_GMEM), hami (nvidia.com/gpumem), "
                        "nvidia (whole GPU / MIG), dra (a ResourceClaim per kernel: HAMi slice, MIG or whole GPU; "
                        "see dra), kai (KAI Scheduler gpu-memory / gpu-fraction, a queue per course; see kai).")
    dra = Dict(config=True,
               help="Settings of the dra backend: {'flavors': ['hami']} (default), or several in order of preference, "
                    "which make a firstAvailable list, e.g. ['mig', 'hami']; a flavor is hami, mig, gpu, "
                    "mig:<profile> (e.g. 'mig:1g.10gb') or a mapping {'name', 'device_class', 'capacity', 'selectors', "
                    "'memory_enforced'}. Needs `orion-jupyter manifests --backend dra` RBAC.")
    kai = Dict(config=True,
               help="Settings of the kai backend: {'queue_label': 'kai.scheduler/queue', 'default_queue': '' "
                    "(the queue of a kernel without a course; the course is the queue), 'request': 'gpu-memory' or "
                    "'gpu-fraction', 'device_memory_mib' (for gpu-fraction), 'priority_class' (e.g. 'build'), "
                    "'hami_core' (True: KAI's HAMi-core isolation caps memory)}.")
    resource_names = Dict(Unicode(), config=True,
                          help="Override the backend's resource names: {'count': 'example.com/vgpu', 'memory': ..., "
                               "'compute': ...}.")
    env_names = Dict(Unicode(), config=True,
                     help="Override the backend's env names: {'count': 'ORION_VGPU', 'memory': 'ORION_GMEM', "
                          "'compute': ..., 'controller': ...}.")
    orion_controller = Unicode("", config=True,
                               help="ORION_CONTROLLER for the Orion client in the kernel (host:port); "
                                    "empty: the image's own.")
    orion = Dict(config=True,
                 help="Settings of the orion backend: {'mode': 'local'} (default: virtaitech.com/gpu from the device "
                      "plugin on GPU nodes) or {'mode': 'remote'} (scenario 3: the kernel pod asks for no GPU and may "
                      "run on any node; its Orion client takes vGPUs from the controller when CUDA starts), with "
                      "'controller' (host:port; default orion_controller) and 'node_selector' (e.g. the CPU nodes). "
                      "Deploy the servers with `orion-jupyter manifests --orion-stack --remote`.")
    host_ipc = Bool(False, config=True,
                    help="Give Orion kernels hostIPC (faster client-server transfer; "
                         "shares the node's IPC namespace: a security trade-off).")
    cluster = Enum(["auto", "kubernetes", "local", "broker"], "auto", config=True,
                   help="Where kernels run: kubernetes, local (processes on this machine), broker (hub mode: the "
                        "vGPU broker service launches them), or auto (broker when broker_url is set, kubernetes "
                        "when in a pod or a kubeconfig exists, else local).")
    broker_url = Unicode(config=True,
                         help="Hub mode: the vGPU broker's URL (a JupyterHub service); default "
                              "$ORION_JUPYTER_BROKER_URL. This server then holds no cluster credentials.")
    broker_token = Unicode(config=True,
                           help="Hub token for the broker; default $JUPYTERHUB_API_TOKEN (the server's own).")
    user = Unicode(config=True,
                   help="User the kernel belongs to (labels, class view); default JUPYTERHUB_USER or the login name.")
    course = Unicode("", config=True, help="Course or class label put on kernel pods (for the instructor view).")

    # -- Kubernetes ---------------------------------------------------------------------------
    kubeconfig = Unicode("", config=True,
                         help="kubeconfig file; default: in-cluster config, then KUBECONFIG, then ~/.kube/config.")
    kube_context = Unicode("", config=True, help="kubeconfig context; default: the current one.")
    namespace = Unicode("", config=True,
                        help="Namespace of kernel pods; "
                             "default POD_NAMESPACE, the service account's, or the context's.")
    image = Unicode("quay.io/jupyter/pytorch-notebook:cuda12-python-3.11", config=True,
                    help="Kernel image: any image with Python 3 and ipykernel (see the README's kernel image section).")
    image_pull_policy = Enum(["Always", "IfNotPresent", "Never"], "IfNotPresent", config=True,
                             help="Kernel image pull policy.")
    kernel_python = Unicode("python", config=True, help="Python executable in the kernel image.")
    launch_timeout = Float(300.0, config=True,
                           help="Seconds a kernel pod may take to become ready (image pulls included); "
                                "known failures end sooner.")
    wait_for_capacity = Bool(False, config=True,
                             help="Wait (up to launch_timeout) when no vGPU is free, e.g. with a cluster autoscaler, "
                                  "instead of failing at once.")
    node_selector = Dict(Unicode(), config=True, help="nodeSelector for kernel pods, e.g. {'gpu': 'a100'}.")
    tolerations = List(Dict(), config=True, help="Tolerations for kernel pods (Kubernetes' own shape).")
    cpu_request = Unicode(None, allow_none=True, config=True, help="CPU request of a kernel pod, e.g. '500m'.")
    cpu_limit = Unicode(None, allow_none=True, config=True, help="CPU limit of a kernel pod, e.g. '4'.")
    memory_request = Unicode(None, allow_none=True, config=True, help="Memory request of a kernel pod, e.g. '2Gi'.")
    memory_limit = Unicode(None, allow_none=True, config=True, help="Memory limit of a kernel pod, e.g. '8Gi'.")
    extra_env = Dict(Unicode(), config=True, help="Extra environment for kernels (never the server's own environment).")
    labels = Dict(Unicode(), config=True, help="Extra labels on kernel pods.")
    annotations = Dict(Unicode(), config=True, help="Extra annotations on kernel pods.")
    volumes = List(Dict(), config=True,
                   help="Direct mode on Kubernetes: volumes of every kernel pod, KubeSpawner's shape with {username} "
                        "and {servername} templates, e.g. the user's storage for snapshots of parked kernels "
                        "(c.Snapshots.kernel_location). A kernel that mounts volumes never takes a warm kernel "
                        "(those start before anyone claims them). Hub mode: c.Broker.volumes.")
    volume_mounts = List(Dict(), config=True,
                         help="Direct mode on Kubernetes: mounts of those volumes in the kernel container, e.g. "
                              "[{'name': 'home', 'mountPath': '/home/jovyan'}]; templated like volumes.")
    scheduler_name = Unicode(None, allow_none=True, config=True,
                             help="schedulerName, e.g. 'hami-scheduler' or 'orion-scheduler'.")
    run_as_user = Int(1000, config=True, help="UID kernel containers run as (never root).")
    run_as_group = Int(100, config=True, help="GID and fsGroup of kernel containers.")
    kernel_ports = List(Int(), [], config=True,
                        help="Fixed kernel ports (shell, iopub, stdin, control, hb) inside the pod; default: new "
                             "random ports per launch, so that jupyter_server notices a restarted kernel (new pod, "
                             "new IP) and reconnects.")
    termination_grace_seconds = Int(5, config=True, help="Grace period when a kernel pod is terminated.")
    watch_nodes = Bool(True, config=True,
                       help="Watch nodes for the pool view and shortage messages (needs read access to nodes).")
    count_other_workloads = Bool(True, config=True,
                                 help="Count what other workloads hold on the pool's nodes (one cluster-wide, trimmed "
                                      "watch of pods; needs `orion-jupyter manifests --read-all-pods`). Without that "
                                      "read, shortage messages say what this project holds and quote the scheduler.")

    trusted_kernel_spec_dirs = List(Unicode(), config=True,
                                    help="Folders whose kernel specs may set any provisioner option (identity, "
                                         "security context, placement, env); default: the system and sys-prefix "
                                         "kernel folders. Specs elsewhere may set only what a kernel asks for "
                                         "(vgpus, vgpu_memory, image...).")
    trust_user_kernel_specs = Bool(config=True,
                                   help="Trust kernel specs in the user's own folders too; default: only when not "
                                        "under JupyterHub (a server of one person, who configures it anyway).")

    kernel_spec = AnyTrait(None, allow_none=True, help="The kernel spec whose options apply (its folder: trust).")

    @classmethod
    def section_names(cls) -> list[str]:
        """``c.VGPUProvisioner.*`` configures these settings wherever they are built (it wins over
        ``c.KernelSettings.*``)."""
        names = [name for name in super().section_names() if name != "VGPUProvisioner"]
        return [*names, "VGPUProvisioner"]

    @default("broker_url")
    def _default_broker_url(self) -> str:
        return os.environ.get("ORION_JUPYTER_BROKER_URL", "")

    @default("broker_token")
    def _default_broker_token(self) -> str:
        return os.environ.get("JUPYTERHUB_API_TOKEN", "")

    @default("user")
    def _default_user(self) -> str:
        return os.environ.get("JUPYTERHUB_USER") or getpass.getuser()

    @default("trusted_kernel_spec_dirs")
    def _default_trusted_dirs(self) -> list[str]:
        return system_kernel_spec_dirs()

    @default("trust_user_kernel_specs")
    def _default_trust_user_specs(self) -> bool:
        return not os.environ.get("JUPYTERHUB_API_TOKEN")

    def spec_trusted(self) -> bool:
        resource_dir = getattr(self.kernel_spec, "resource_dir", "") if self.kernel_spec is not None else ""
        return self.trust_user_kernel_specs or not resource_dir or _inside(resource_dir, self.trusted_kernel_spec_dirs)

    def apply_spec_options(self, options: Mapping[str, Any]) -> VGPURequestError | None:
        """A kernel spec's provisioner config, each option checked (known, well typed, allowed for a spec
        from where this one lies); the first refusal, which the launch raises (None: all applied)."""
        problem = None
        for name, value in options.items():
            try:
                self._apply_spec_option(name, value)
            except VGPURequestError as err:
                problem = problem or err
        return problem

    def _apply_spec_option(self, name: str, value: Any) -> None:
        where = getattr(self.kernel_spec, "resource_dir", "") or "this kernel spec"
        if not self.has_trait(name) or not self.trait_metadata(name, "config"):
            raise VGPURequestError(name, value,
                                   f'kernel spec option "{name}" is not a VGPUProvisioner option ({where})')
        if name not in SPEC_OPTIONS and not self.spec_trusted():
            allowed = ", ".join(sorted(SPEC_OPTIONS))
            raise VGPURequestError(name, value, f'kernel spec option "{name}" may only be set by the server\'s own '
                                                f'configuration, not by a kernel spec in {where}; '
                                                f'a spec may set {allowed}')
        try:
            setattr(self, name, value)
        except TraitError as err:
            raise VGPURequestError(name, value,
                                   f'kernel spec option "{name}" has a wrong type ({where}): {err}') from None

    # -- what to launch -----------------------------------------------------------------------
    def backend_model(self) -> Backend:
        return self.backend_named(self.backend)

    def backend_named(self, name: str) -> Backend:
        """A backend with this server's overrides (the dra / kai settings only for their own backend)."""
        orion = {"controller": self.orion_controller, **self.orion} if name == "orion" and self.orion else None
        return get_backend(name, self.resource_names, self.env_names, dra=self.dra if name == "dra" else None,
                           kai=self.kai if name == "kai" else None, orion=orion)

    def resolve_request(self, override: VGPURequest | Mapping[str, Any] | None = None) -> VGPURequest:
        """The spec's request, with a caller's on top: a checked ``VGPURequest`` (the server's own start path)
        or ``vgpu={'vgpus':..,'memory':..}`` from a start kwarg."""
        if isinstance(override, VGPURequest):
            return override
        spec_default = VGPURequest.parse(self.vgpus, self.vgpu_memory if self.vgpus else None, self.compute_percent)
        return VGPURequest.from_mapping(override, spec_default) if override is not None else spec_default

    def pod_settings(self, image: str | None = None) -> PodSettings:
        """How this configuration shapes a kernel pod (also the broker's, from its own config)."""
        return PodSettings(
            image=image or self.image,
            image_pull_policy=self.image_pull_policy,
            python=self.kernel_python,
            labels=dict(self.labels),
            annotations=dict(self.annotations),
            node_selector=dict(self.node_selector),
            tolerations=tuple(dict(t) for t in self.tolerations),
            cpu_request=self.cpu_request,
            cpu_limit=self.cpu_limit,
            memory_request=self.memory_request,
            memory_limit=self.memory_limit,
            host_ipc=self.host_ipc,
            run_as_user=self.run_as_user,
            run_as_group=self.run_as_group,
            scheduler_name=self.scheduler_name,
        )



class ClassSettings(LoggingConfigurable):
    """Who instructs a class and when its idle vGPU kernels are given back; the server extension
    (``c.OrionJupyter.*``) and the broker (``c.Broker.*``) inherit them, with the same defaults."""

    instructors = List(Unicode(), config=True, help="User names that see and may stop every kernel of the class.")
    instructor_groups = List(Unicode(), ["instructors"], config=True,
                             help="JupyterHub groups whose members are instructors.")
    cull_idle_seconds = Float(1800.0, config=True,
                              help="Seconds a vGPU kernel may stay idle (not busy, no activity on its iopub) before it "
                                   "is stopped and its pod deleted, freeing its vGPU; 0: never. CPU-only kernels are "
                                   "never stopped. The broker's courses may set their own 'cull_idle_seconds' (and "
                                   "'cull_warning_seconds', 'cull_max_keeps') in c.Broker.courses.")
    cull_warning_seconds = Float(300.0, config=True,
                                 help="Seconds before an idle vGPU kernel is stopped that its owner is warned "
                                      "(cull_warning in allocations, a progress event, the log) and may keep it.")
    cull_max_keeps = Int(3, config=True,
                         help="Times the owner may keep an idle vGPU kernel (POST kernels/{id}/keep restarts its "
                              "idle clock) in one idle stretch; activity in the kernel gives them back.")
    cull_interval_seconds = Float(30.0, config=True, help="Seconds between checks for idle vGPU kernels.")
    budgets = Dict(config=True,
                   help="vGPU-hour budgets, metered live: {'unit': 'vgpu-hours' (or 'vgpu-memory-gib-hours'), "
                        "'student': 10, 'course': 0, 'reset': {'weekly': 'tue 09:00'} (lab_timezone) or {'term': "
                        "['2026-09-01', '2026-12-20']}, 'warn': [0.8, 0.95], 'rates': [{'vgpus': 1, 'memory': "
                        "'4Gi', 'rate': 0.5}], 'interval': 60}; 'student' is per user (direct mode: each user of "
                        "this server), 'course' for all kernels of the course (direct mode: c.VGPUProvisioner.course); "
                        "the broker's courses may set their own in c.Broker.courses[group]['budget'] = {'student': 5, "
                        "'course': 200}. 0 or empty: no budget. At zero a kernel is parked (where snapshots are kept) "
                        "or stopped, with the reason, and a launch is refused until the reset.")
    lab_timezone = Unicode("", config=True,
                           help="The time zone of budgets' weekly reset and of the broker's warm pools' and rosters' "
                                "hours (an IANA name such as 'Europe/Berlin'); empty: this machine's local time.")

    def is_instructor_named(self, name: str, groups: Iterable[str]) -> bool:
        """An exact user name in ``instructors``, or a member of an instructor group."""
        return name in self.instructors or bool(set(groups) & set(self.instructor_groups))
