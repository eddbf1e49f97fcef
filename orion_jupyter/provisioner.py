"""VGPUProvisioner: each kernel on its own vGPU slice, as a Kubernetes pod or a local process.

A small Popen-like object in the manner of jupyter_client's LocalProvisioner: ``pre_launch``
resolves the vGPU request (kernel spec config, then start kwargs ``vgpu={...}``), checks it
against policy and fixes one :class:`~orion_jupyter.launch.KernelLaunch`; a driver (see
:mod:`orion_jupyter.protocols`, picked by :mod:`orion_jupyter.clusters`) launches it, and its
kernel handle answers poll/wait/kill from its own state.
"""

from __future__ import annotations

import getpass
import os
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import zmq
from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase
from jupyter_core.paths import ENV_JUPYTER_PATH, SYSTEM_JUPYTER_PATH
from traitlets import Bool, Dict, Enum, Float, Int, List, TraitError, Unicode, default

from .backends import Backend, get_backend
from .clusters import cluster_kind, make_driver
from .config import PENDING, KernelPolicy
from .errors import KernelLaunchError
from .launch import KernelLaunch, PodSettings
from .metrics import KERNEL_LAUNCH_FAILURES, KERNEL_LAUNCH_SECONDS
from .progress import PROGRESS
from .protocols import Driver, KernelHandle
from .vgpu import DEFAULT_MEMORY, DEFAULT_VGPUS, VGPURequest, VGPURequestError

# Server-side variables a kernel may learn (the rest of the server's environment stays home).
FORWARDED_ENV = ("JPY_SESSION_NAME",)
# What a kernel spec may ask for; every other option (identity, security context, placement, env,
# namespace...) is the server's own configuration unless the spec is trusted.
SPEC_OPTIONS = frozenset({
    "vgpus", "vgpu_memory", "compute_percent", "backend", "image", "image_pull_policy", "cluster", "kernel_python",
    "cpu_request", "cpu_limit", "memory_request", "memory_limit", "launch_timeout", "wait_for_capacity",
})
_TEMPLATE_RE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def system_kernel_spec_dirs() -> list[str]:
    """Where only an administrator installs kernel specs: the system and sys-prefix Jupyter paths."""
    return [os.path.join(path, "kernels") for path in (*ENV_JUPYTER_PATH, *SYSTEM_JUPYTER_PATH)]


def _inside(path: str, folders: list[str]) -> bool:
    real = os.path.realpath(path)
    return any(os.path.commonpath([real, os.path.realpath(folder)]) == os.path.realpath(folder)
               for folder in folders if folder)


class VGPUProvisioner(KernelProvisionerBase):  # type: ignore[misc]
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

    request: VGPURequest | None = None
    launch: KernelLaunch | None = None
    spec_problem: VGPURequestError | None = None  # a kernel spec option that is refused, raised in pre_launch
    driver: Driver | None = None
    handle: KernelHandle | None = None
    cwd: str | None = None  # the kernel's folder on the server (the notebook's)
    _launch_started = 0.0

    def __init__(self, **kwargs: Any):
        """jupyter_client passes the kernel spec's provisioner config as keyword arguments: each is
        checked here (known, well typed, allowed for a spec from where this one lies)."""
        spec_options = {k: kwargs.pop(k) for k in list(kwargs)
                        if k not in ("kernel_id", "kernel_spec", "parent", "config", "log")}
        super().__init__(**kwargs)
        for name, value in spec_options.items():
            try:
                self._apply_spec_option(name, value)
            except VGPURequestError as err:
                self.spec_problem = self.spec_problem or err

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
        return get_backend(name, self.resource_names, self.env_names,
                           dra=self.dra if name == "dra" else None, kai=self.kai if name == "kai" else None)

    def cluster_kind(self) -> str:
        return cluster_kind(self)

    def resolve_request(self, override: Any = None) -> VGPURequest:
        """The spec's request, with a caller's ``vgpu={'vgpus':..,'memory':..}`` on top."""
        spec_default = VGPURequest.parse(self.vgpus, self.vgpu_memory if self.vgpus else None, self.compute_percent)
        return VGPURequest.from_mapping(override, spec_default) if override is not None else spec_default

    def _kernel_env(self, launch_env: dict[str, str]) -> dict[str, str]:
        """What the kernel's environment gains: the spec's env, forwarded server variables, extra_env.

        A pod spec is readable by anyone who may list pods, so a spec's ``${VAR}`` may name only the
        forwarded variables, never the server's own (its tokens); a local kernel inherits the
        server's environment anyway.
        """
        forwarded = {k: launch_env[k] for k in FORWARDED_ENV if k in launch_env}
        spec_env = dict((self.kernel_spec.env if self.kernel_spec is not None else None) or {})
        if self.cluster_kind() == "kubernetes":
            for key, value in spec_env.items():
                for match in _TEMPLATE_RE.finditer(str(value)):
                    variable = match.group(1) or match.group(2)
                    if variable not in FORWARDED_ENV:
                        raise VGPURequestError("env", key, f'kernel spec env "{key}" refers to the server variable '
                                               f'{variable}; kernel pods get only {", ".join(FORWARDED_ENV)} '
                                               "from the server")
            spec_env = {k: _TEMPLATE_RE.sub(lambda m: forwarded.get(m.group(1) or m.group(2), ""), str(v))
                        for k, v in spec_env.items()}
        else:
            spec_env = {k: launch_env.get(k, v) for k, v in spec_env.items()}
        return {**forwarded, **spec_env, **self.extra_env}

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

    def _server_folder(self, cwd: str | None) -> str:
        """The kernel's working folder relative to the server's root ('' when it is the root or outside)."""
        root = getattr(getattr(self.parent, "parent", None), "root_dir", None)
        if not cwd or not root:
            return ""
        relative = os.path.relpath(os.path.realpath(cwd), os.path.realpath(root))
        return "" if relative == "." or relative.startswith("..") else relative.replace(os.sep, "/")

    def _launch_description(self, request: VGPURequest, launch_env: dict[str, str],
                            cwd: str | None = None) -> KernelLaunch:
        km = self.parent
        session = getattr(km, "session", None)
        return KernelLaunch(
            kernel_id=self.kernel_id,
            user=self.user,
            request=request,
            backend=self.backend_model(),
            pod=self.pod_settings(),
            kernel_spec_name=getattr(km, "kernel_name", "") or "",
            course=self.course,
            env=self._kernel_env(launch_env),
            key=session.key.decode() if session is not None else "",
            signature_scheme=session.signature_scheme if session is not None else "hmac-sha256",
            ports=tuple(self.kernel_ports),
            timeout=self.launch_timeout,
            wait_for_capacity=self.wait_for_capacity,
            orion_controller=self.orion_controller or None,
            cwd=self._server_folder(cwd),
            **self._curve_keys(),
        )

    def _curve_keys(self) -> dict[str, str]:
        """CurveZMQ keys as jupyter_client's LocalProvisioner provisions them: when the kernel manager's
        ``transport_encryption`` is ``required`` (it already refused a spec without curve) or ``auto`` with
        a spec that declares curve; kept across restarts, like the session key."""
        km = self.parent
        policy_of = getattr(km, "_transport_encryption_policy", None)
        policy = policy_of() if policy_of is not None else "disabled"
        if policy == "disabled" or (policy == "auto" and not km._kernel_supports_curve_encryption()):
            return {}
        if km.curve_publickey is None or km.curve_secretkey is None:
            km.curve_publickey, km.curve_secretkey = zmq.curve_keypair()
        return {"curve_publickey": km.curve_publickey.decode(), "curve_secretkey": km.curve_secretkey.decode()}

    # -- the provisioner API ------------------------------------------------------------------
    @property
    def has_process(self) -> bool:
        return self.handle is not None

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        if self.spec_problem is not None:
            raise self.spec_problem
        user = kwargs.pop("orion_user", None)
        if user:
            self.user = user
        request = self.resolve_request(kwargs.pop("vgpu", None))
        backend = self.backend_model()  # invalid resource/env overrides fail here, before anything exists
        if self.driver is None:  # a restart keeps its driver (and, locally, its ports)
            self.driver = make_driver(self, self.parent, self.kernel_spec)
        if self.kernel_spec is not None:  # jupyter_client interrupts as the spec says: per backend
            self.kernel_spec.interrupt_mode = getattr(self.driver, "interrupt_mode", "message")
        await self.driver.view.start()
        policy = KernelPolicy(parent=self)
        await policy.check(request, image=self.image, view=self.driver.view, backend=backend)
        await policy.take_quota(request, user=self.user, kernel_id=self.kernel_id, view=self.driver.view)
        self.request = request
        self._launch_started = time.monotonic()
        # jupyter_server lists a kernel as soon as it is ready but stamps its activity a moment later;
        # when many pods become ready at once GET /api/kernels could meet a kernel without it (a 500).
        parent = self.parent
        if parent is not None and parent.has_trait("last_activity") and not parent.trait_has_value("last_activity"):
            parent.last_activity = datetime.now(UTC)
        PROGRESS.record(self.kernel_id, f"starting a kernel with {request.describe()} ({self.driver.name})")
        try:
            kwargs = await super().pre_launch(**kwargs)  # the one place the spec's env templates are applied
            self.cwd = kwargs.get("cwd") or os.getcwd()
            self.launch = self._launch_description(request, kwargs.get("env") or {}, kwargs.get("cwd"))
            return await self.driver.pre_launch(self.launch, kwargs)
        except KernelLaunchError as err:
            PENDING.release(self.kernel_id)
            self._launch_failed(err)
            raise
        except BaseException:
            PENDING.release(self.kernel_id)
            raise

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        assert self.driver is not None and self.launch is not None, "pre_launch first"
        try:
            self.handle, self.connection_info = await self.driver.launch(self.launch, cmd, kwargs)
        except KernelLaunchError as err:
            self._launch_failed(err)
            raise
        finally:
            PENDING.release(self.kernel_id)  # from here on the view counts what the kernel holds
        seconds = time.monotonic() - self._launch_started
        KERNEL_LAUNCH_SECONDS.labels("success").observe(seconds)
        PROGRESS.record(self.kernel_id, f"kernel ready after {seconds:.1f} s", stage="ready")
        return self.connection_info

    def _launch_failed(self, err: KernelLaunchError) -> None:
        KERNEL_LAUNCH_FAILURES.labels(err.reason).inc()
        KERNEL_LAUNCH_SECONDS.labels("failure").observe(time.monotonic() - self._launch_started)
        PROGRESS.record(self.kernel_id, str(err), stage="failed", level="error", reason=err.reason)

    async def poll(self) -> int | None:
        return self.handle.poll() if self.handle else 0

    async def wait(self) -> int | None:
        return await self.handle.wait() if self.handle else None

    async def send_signal(self, signum: int) -> None:
        if self.handle:
            await self.handle.send_signal(signum)

    async def kill(self, restart: bool = False) -> None:
        if self.handle:
            await self.handle.kill()

    async def terminate(self, restart: bool = False) -> None:
        if self.handle:
            await self.handle.terminate(self.termination_grace_seconds)

    async def cleanup(self, restart: bool = False) -> None:
        if self.handle:
            handle, self.handle = self.handle, None
            await handle.cleanup(restart=restart)

    def resolve_path(self, path: str) -> str | None:
        """A path the kernel names, as a path of this server (``/api/resolvePath``). Local: as jupyter_client's
        LocalProvisioner does. A pod's folder is the notebook's folder mapped into it, so a relative path
        resolves against that folder on the server; the pod's absolute paths are not the server's."""
        resolve = getattr(self.driver, "resolve_path", None)
        if resolve is not None:
            return resolve(path)
        candidate = Path(path).expanduser()
        if candidate.is_absolute() or not self.cwd:
            return None
        resolved = (Path(self.cwd) / candidate).resolve()
        return resolved.as_posix() if resolved.exists() else None

    def get_shutdown_wait_time(self, recommended: float = 5.0) -> float:
        return max(recommended, 2.0 * self.termination_grace_seconds)

    def get_stable_start_time(self, recommended: float = 10.0) -> float:
        return max(recommended, self.launch_timeout) if self.cluster_kind() != "local" else recommended

    async def get_provisioner_info(self) -> dict[str, Any]:
        info = await super().get_provisioner_info()
        info["connection_info"] = _json_safe(info.get("connection_info"))
        info["driver"] = self.driver.name if self.driver else self.cluster_kind()
        info["vgpu_request"] = self.request.as_dict() if self.request else None
        info["user"] = self.user
        info["kernel"] = self.handle.info() if self.handle else None
        return info

    async def load_provisioner_info(self, provisioner_info: dict) -> None:
        await super().load_provisioner_info(provisioner_info)
        request = provisioner_info.get("vgpu_request")
        if request:
            self.request = VGPURequest(request["vgpus"], request["memory_mib"], request.get("compute_percent"))
        self.user = provisioner_info.get("user") or self.user
        if provisioner_info.get("driver"):
            self.cluster = provisioner_info["driver"]
        self.driver = make_driver(self, self.parent, self.kernel_spec)
        if provisioner_info.get("kernel"):
            self.launch = self._launch_description(self.request or VGPURequest(), {})
            self.handle = await self.driver.attach(self.launch, provisioner_info["kernel"])

    def allocation_summary(self) -> dict[str, Any]:
        """This kernel's allocation for the server extension's views."""
        summary: dict[str, Any] = {"user": self.user, "backend": self.backend,
                                   "cluster": self.driver.name if self.driver else None}
        summary.update(self.request.as_dict() if self.request
                       else {"vgpus": None, "memory_mib": None, "compute_percent": None})
        summary["label"] = self.request.describe() if self.request else ""
        summary.update(self.handle.info() if self.handle else {})
        return summary


def _json_safe(info: Any) -> Any:
    if isinstance(info, dict):
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in info.items()}
    return info


__all__ = ["VGPUProvisioner", "VGPURequestError"]
