"""This server's vGPU kernels: started, listed and stopped through the public kernel-manager API."""

from __future__ import annotations

import posixpath
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jupyter_server.utils import ensure_async

from ..backends import Backend
from ..config import KernelPolicy
from ..core.ledger import LAUNCHES_IN_PROGRESS, Quota, holding_of, user_holdings
from ..errors import KernelLaunchError
from ..kernelspecs import spec_request, vgpu_specs
from ..protocols import BackendView
from ..provisioner import VGPUProvisioner
from ..settings import KernelSettings
from ..vgpu import VGPURequest, VGPURequestError, short, usage_fields
from .refusals import Refused

START_FIELDS = ("spec", "vgpus", "memory", "compute", "path", "kernel_id")
MAX_PATH_CHARS = 1024


def checked_path(value: Any) -> str | None:
    """A notebook path inside the server's root ('' or None: the root itself), or a clear refusal."""
    if value is None or value == "":
        return value
    if not isinstance(value, str):
        raise VGPURequestError("path", type(value).__name__, 'field "path" must be a text like "work/lab1.ipynb"')
    if len(value) > MAX_PATH_CHARS or "\0" in value:
        raise VGPURequestError("path", value[:40] + "...", f'field "path" is longer than {MAX_PATH_CHARS} characters')
    normal = posixpath.normpath("/" + value.lstrip("/")).lstrip("/")
    if value.startswith("/") or ".." in value.split("/"):
        raise VGPURequestError("path", value, f'field "path" {value!r} leaves the server\'s folder; '
                                              'give a path relative to it, like "work/lab1.ipynb"')
    return normal


@dataclass(frozen=True)
class StartPlan:
    """A start request that passed every check; nothing exists yet."""

    spec_name: str
    request: VGPURequest
    kernel_id: str | None


class KernelIdTaken(VGPURequestError):
    """A kernel id that names a kernel which exists or is starting (a double click, or a guess)."""

    http_status = 409


def spec_config(spec: Any) -> dict[str, Any]:
    return spec.metadata["kernel_provisioner"].get("config", {})


def spec_backend(settings: KernelSettings, view: BackendView, spec: Any) -> Backend:
    """A spec's backend (with this server's resource and env overrides), or the configured one."""
    name = spec_config(spec).get("backend")
    return settings.backend_named(name) if name else view.backend


class VGPUKernels:
    def __init__(self, serverapp: Any, settings: KernelSettings, view: BackendView, usage: Any = None):
        self.serverapp = serverapp
        self.usage = usage  # a UsageSampler: the kernels' memory in use
        self.kernel_manager = serverapp.kernel_manager
        self.settings = settings
        self.view = view
        self.starting: dict[str, str] = {}  # kernel id -> user, for launches through this API
        self.starting_paths: dict[str, str | None] = {}  # kernel id -> its notebook, while it starts
        self.row_fields: list[Callable[[str], dict[str, Any]]] = []  # more fields of a kernel's row (culling)
        self.start_checks: list[Callable[[str, VGPURequest], None]] = []  # more refusals of a plan (budgets)

    def provisioner(self, kernel_id: str) -> VGPUProvisioner | None:
        if kernel_id not in self.kernel_manager:  # get_kernel answers 404 itself for unknown ids
            return None
        km = self.kernel_manager.get_kernel(kernel_id)
        provisioner = getattr(km, "provisioner", None)
        return provisioner if isinstance(provisioner, VGPUProvisioner) else None

    def kernel_user(self, kernel_id: str) -> str | None:
        """Who a running or starting kernel belongs to (None: no vGPU kernel of this server)."""
        provisioner = self.provisioner(kernel_id)
        return provisioner.user if provisioner is not None else self.starting.get(kernel_id)

    def allocations(self) -> list[dict[str, Any]]:
        out = []
        for kernel_id in list(self.kernel_manager.list_kernel_ids()):
            provisioner = self.provisioner(kernel_id)
            if provisioner is None:
                continue
            km = self.kernel_manager.get_kernel(kernel_id)
            allocation = provisioner.allocation_summary()
            live = self.view.kernel_state(allocation)
            out.append({
                "kernel_id": kernel_id,
                "kernel_spec": km.kernel_name,
                **allocation,
                "pod": allocation.get("pod_name"),
                "node": live.get("node") or allocation.get("node_name"),
                "device": live.get("device"),
                "phase": live.get("phase") or ("Running" if provisioner.has_process else "Stopped"),
                "reason": live.get("reason", ""),
                "started": live.get("started"),
                "last_activity": getattr(km, "last_activity", None),
                "execution_state": getattr(km, "execution_state", None),
                **usage_fields(allocation, self.usage.latest(kernel_id) if self.usage else None),
                **{k: v for fields in self.row_fields for k, v in fields(kernel_id).items()},
            })
        return out

    async def allocations_for(self, user: Any, access: Any) -> list[dict[str, Any]]:
        paths = {}
        for session in await ensure_async(self.serverapp.session_manager.list_sessions()):
            kernel = session.get("kernel") or {}
            paths[kernel.get("id")] = session.get("path")
        return [{**kernel, "path": paths.get(kernel["kernel_id"])}
                for kernel in self.allocations() if access.owns(user, kernel.get("user", ""))]

    def default_spec(self, preferred: str = "", min_memory_mib: int = 0) -> str:
        """``preferred``, else the smallest vGPU spec with at least ``min_memory_mib`` in all (else the smallest)."""
        if preferred:
            return preferred
        candidates = []
        for name, spec in vgpu_specs().items():
            try:
                request = spec_request(spec)
            except VGPURequestError:
                continue
            if request.count:
                candidates.append((request.total_memory_mib, name))
        large_enough = [c for c in candidates if c[0] >= min_memory_mib]
        return min(large_enough or candidates)[1] if candidates else ""

    def warm_shape(self, spec_name: str) -> tuple[VGPURequest, str] | None:
        """The request and image of a vGPU kernel spec (the default one when ``spec_name`` is empty)."""
        spec = vgpu_specs().get(self.default_spec(spec_name))
        if spec is None:
            return None
        probe = KernelSettings(kernel_spec=spec, config=self.serverapp.config)
        probe.apply_spec_options(spec_config(spec))
        return spec_request(spec), probe.image

    def _checked_kernel_id(self, value: Any) -> str | None:
        if value is None:
            return None
        try:
            kernel_id = str(uuid.UUID(str(value)))
        except ValueError:
            raise VGPURequestError("kernel_id", short(value),
                                   f'field "kernel_id" {short(value)!r} is not a UUID; '
                                   "leave it out or send a new UUID") from None
        if kernel_id in self.kernel_manager or kernel_id in self.starting:
            raise KernelIdTaken("kernel_id", kernel_id,
                                f'kernel "{kernel_id}" already exists or is starting; send a new UUID')
        return kernel_id

    async def plan(self, body: dict[str, Any], username: str,
                   fields: tuple[str, ...] = START_FIELDS) -> StartPlan:
        """Every check of a start request (fields, spec, request, policy, quota, capacity); creates nothing."""
        unknown = sorted(set(body) - set(fields))
        if unknown:
            raise VGPURequestError(short(unknown[0]), short(body[unknown[0]]),
                                   f'field "{short(unknown[0])}" is not known; use {", ".join(fields)}')
        spec_name = body.get("spec")
        if not spec_name:
            raise VGPURequestError("spec", spec_name,
                                   'field "spec" is missing; name a vGPU kernel spec (see GET specs)')
        if not isinstance(spec_name, str):
            raise VGPURequestError("spec", type(spec_name).__name__,
                                   'field "spec" must be the name of a vGPU kernel spec (a text)')
        specs = vgpu_specs()
        if spec_name not in specs:
            spec_name = short(spec_name)
            known = ", ".join(sorted(specs)) or "none installed"
            if spec_name in self.kernel_manager.kernel_spec_manager.find_kernel_specs():
                raise VGPURequestError("spec", spec_name,
                                       f'kernel spec "{spec_name}" is not a vGPU spec; choose one of: {known}')
            raise VGPURequestError("spec", spec_name, f'no kernel spec named "{spec_name}"; choose one of: {known}')
        spec = specs[spec_name]
        kernel_id = self._checked_kernel_id(body.get("kernel_id"))
        overrides = {k: body[k] for k in ("vgpus", "memory", "compute") if k in body}
        request = VGPURequest.from_mapping(overrides, spec_request(spec))
        probe = KernelSettings(kernel_spec=spec, config=self.serverapp.config)
        problem = probe.apply_spec_options(spec_config(spec))
        if problem is not None:
            raise problem
        policy = KernelPolicy(config=self.serverapp.config)
        await policy.check(request, image=probe.image, view=self.view,
                           backend=spec_backend(self.settings, self.view, spec), capacity=True)
        held = user_holdings(username, await self.view.vgpus_by_kernel(username))
        LAUNCHES_IN_PROGRESS.check_user(holding_of("", username, "", request), held, Quota(policy.max_vgpus_per_user))
        for check in self.start_checks:
            check(username, request)
        return StartPlan(spec_name, request, kernel_id)

    async def start(self, body: dict[str, Any], username: str, path: str | None = None,
                    plan: StartPlan | None = None, own_storage: bool = False) -> dict[str, Any]:
        """Check (unless ``plan`` already did), then start; nothing is created when a check fails.
        ``own_storage``: the kernel must mount the user's own storage (a resume), so never a pool's warm kernel."""
        path = checked_path(path)
        plan = plan or await self.plan(body, username)
        kernel_id = plan.kernel_id or str(uuid.uuid4())
        if kernel_id in self.starting or kernel_id in self.kernel_manager:
            raise KernelIdTaken("kernel_id", kernel_id,
                                f'kernel "{kernel_id}" already exists or is starting; send a new UUID')
        spec_name = plan.spec_name
        self.starting[kernel_id] = username
        self.starting_paths[kernel_id] = path
        try:
            await ensure_async(self.kernel_manager.start_kernel(
                kernel_name=spec_name, path=path, kernel_id=kernel_id, vgpu=plan.request, orion_user=username,
                orion_own_storage=own_storage))
        except Refused as refused:  # this server's kernel manager answers Jupyter's API; ours answers itself
            raise refused.error from None
        except BaseException:
            # jupyter_client keeps a kernel whose start failed among its pending ones (shutdown_all then
            # trips over it at server exit); nothing of it exists, so forget it.
            getattr(self.kernel_manager, "_pending_kernels", {}).pop(kernel_id, None)
            raise
        finally:
            self.starting.pop(kernel_id, None)
            self.starting_paths.pop(kernel_id, None)
        model = await ensure_async(self.kernel_manager.kernel_model(kernel_id))
        provisioner = self.provisioner(kernel_id)
        return {**model, "vgpu": provisioner.allocation_summary() if provisioner else None}

    async def waiting(self, username: str) -> list[dict[str, Any]]:
        """``username``'s launches waiting in the broker's queue, with the notebook each will open."""
        return [{**place, "path": self.starting_paths.get(place["kernel_id"])}
                for place in await self.view.waiting(username)]

    async def spec_views(self, username: str) -> list[dict[str, Any]]:
        """The vGPU specs with whether ``username`` could start each now, and why not."""
        out = []
        for name, spec in sorted(vgpu_specs().items()):
            try:
                request = spec_request(spec)
            except ValueError as err:
                out.append({"name": name, "display_name": spec.display_name, "error": str(err), "can_start": False})
                continue
            backend = spec_backend(self.settings, self.view, spec)
            view = {
                "name": name,
                "display_name": spec.display_name,
                "description": (spec.metadata.get("orion_jupyter") or {}).get("description", ""),
                "backend": backend.name,
                **request.as_dict(),
                "label": request.describe(),
            }
            try:  # the same checks a start runs: policy, image allow-list, this user's quota, capacity
                await self.plan({"spec": name}, username)
                view["can_start"] = await self.view.can_serve(request, backend)
                if view["can_start"] is False:  # the dialog says why ("no vGPU free: 4 of 4 in use")
                    view["why_not"] = await self.view.shortage(request, backend)
            except (VGPURequestError, KernelLaunchError) as err:
                view.update(can_start=False, why_not=str(err))
            out.append(view)
        return out

    async def stop(self, kernel: dict[str, Any], stopped_by: str) -> None:
        """Stop a kernel from the class view: this server's through its kernel manager, others' pods directly."""
        if kernel.get("kernel_id") in self.kernel_manager:
            await ensure_async(self.kernel_manager.shutdown_kernel(kernel["kernel_id"]))
            return
        await self.view.stop_kernel(kernel["pod"], stopped_by)
