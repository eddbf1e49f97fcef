"""VGPUProvisioner: each kernel on its own vGPU slice, as a Kubernetes pod or a local process.

A small Popen-like object in the manner of jupyter_client's LocalProvisioner: ``pre_launch``
resolves the vGPU request (kernel spec config, then start kwargs ``vgpu={...}``), checks it
against policy and fixes one :class:`~orion_jupyter.launch.KernelLaunch`; a driver (see
:mod:`orion_jupyter.protocols`, picked by :mod:`orion_jupyter.clusters`) launches it, and its
kernel handle answers poll/wait/kill from its own state.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import zmq
from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase

from .allocation import allocation_label
from .clusters import cluster_kind, make_driver
from .config import KernelPolicy
from .core.ledger import LAUNCHES_IN_PROGRESS, Quota, holding_of, user_holdings
from .errors import KernelLaunchError
from .launch import KernelLaunch
from .metrics import KERNEL_LAUNCH_FAILURES, KERNEL_LAUNCH_SECONDS
from .progress import PROGRESS
from .protocols import Driver, KernelHandle
from .settings import FORWARDED_ENV, TEMPLATE_RE, KernelSettings
from .vgpu import VGPURequest, VGPURequestError


class VGPUProvisioner(KernelProvisionerBase, KernelSettings):  # type: ignore[misc]
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
        self.spec_problem = self.apply_spec_options(spec_options)

    def cluster_kind(self) -> str:
        return cluster_kind(self)

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
                for match in TEMPLATE_RE.finditer(str(value)):
                    variable = match.group(1) or match.group(2)
                    if variable not in FORWARDED_ENV:
                        raise VGPURequestError("env", key, f'kernel spec env "{key}" refers to the server variable '
                                               f'{variable}; kernel pods get only {", ".join(FORWARDED_ENV)} '
                                               "from the server")
            spec_env = {k: TEMPLATE_RE.sub(lambda m: forwarded.get(m.group(1) or m.group(2), ""), str(v))
                        for k, v in spec_env.items()}
        else:
            spec_env = {k: launch_env.get(k, v) for k, v in spec_env.items()}
        return {**forwarded, **spec_env, **self.extra_env}

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
            volumes=tuple(self.volumes),
            volume_mounts=tuple(self.volume_mounts),
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
        own_storage = bool(kwargs.pop("orion_own_storage", False))
        backend = self.backend_model()  # invalid resource/env overrides fail here, before anything exists
        if self.driver is None:  # a restart keeps its driver (and, locally, its ports)
            self.driver = make_driver(self, self.parent, self.kernel_spec)
        if self.kernel_spec is not None:  # jupyter_client interrupts as the spec says: per backend
            self.kernel_spec.interrupt_mode = getattr(self.driver, "interrupt_mode", "message")
        await self.driver.view.start()
        policy = KernelPolicy(parent=self)
        # Remote vGPUs are taken when CUDA starts, not by Kubernetes: the controller's free count is the only gate.
        await policy.check(request, image=self.image, view=self.driver.view, backend=backend, capacity=backend.remote)
        limit = policy.max_vgpus_per_user  # held against it until the view counts the kernel
        held = await self.driver.view.vgpus_by_kernel(self.user) if limit and request.count else {}
        LAUNCHES_IN_PROGRESS.reserve(holding_of(self.kernel_id, self.user, "", request),
                                     user_holdings(self.user, held), per_user=Quota(limit))
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
            self.launch = replace(self._launch_description(request, kwargs.get("env") or {}, kwargs.get("cwd")),
                                  own_storage=own_storage)
            return await self.driver.pre_launch(self.launch, kwargs)
        except KernelLaunchError as err:
            LAUNCHES_IN_PROGRESS.release(self.kernel_id)
            self._launch_failed(err)
            raise
        except BaseException:
            LAUNCHES_IN_PROGRESS.release(self.kernel_id)
            raise

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        assert self.driver is not None and self.launch is not None, "pre_launch first"
        try:
            self.handle, self.connection_info = await self.driver.launch(self.launch, cmd, kwargs)
        except KernelLaunchError as err:
            self._launch_failed(err)
            raise
        finally:
            LAUNCHES_IN_PROGRESS.release(self.kernel_id)  # from here on the view counts what the kernel holds
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
        backend = self.launch.backend.label if self.launch else self.backend
        summary: dict[str, Any] = {"user": self.user, "backend": backend,
                                   "cluster": self.driver.name if self.driver else None}
        summary.update(self.request.as_dict() if self.request
                       else {"vgpus": None, "memory_mib": None, "compute_percent": None})
        summary["label"] = (allocation_label(self.request.count, self.request.memory_mib, self.request.compute_percent,
                                             backend) if self.request else "")
        summary.update(self.handle.info() if self.handle else {})
        return summary


def _json_safe(info: Any) -> Any:
    if isinstance(info, dict):
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in info.items()}
    return info


__all__ = ["VGPUProvisioner", "VGPURequestError"]
