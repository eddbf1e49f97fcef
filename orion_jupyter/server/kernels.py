"""This server's vGPU kernels: started, listed and stopped through the public kernel-manager API."""

from __future__ import annotations

import uuid
from typing import Any

from jupyter_server.utils import ensure_async

from ..backends import Backend, get_backend
from ..config import KernelPolicy
from ..kernelspecs import spec_request, vgpu_specs
from ..protocols import BackendView
from ..provisioner import VGPUProvisioner
from ..vgpu import VGPURequest, VGPURequestError

START_FIELDS = ("spec", "vgpus", "memory", "compute", "path", "kernel_id")


class KernelIdTaken(VGPURequestError):
    """A kernel id that names a kernel which exists or is starting (a double click, or a guess)."""


def spec_config(spec: Any) -> dict[str, Any]:
    return spec.metadata["kernel_provisioner"].get("config", {})


def spec_backend(settings: VGPUProvisioner, view: BackendView, spec: Any) -> Backend:
    """A spec's backend (with this server's resource and env overrides), or the configured one."""
    name = spec_config(spec).get("backend")
    return get_backend(name, settings.resource_names, settings.env_names) if name else view.backend


class VGPUKernels:
    def __init__(self, serverapp: Any, settings: VGPUProvisioner, view: BackendView):
        self.serverapp = serverapp
        self.kernel_manager = serverapp.kernel_manager
        self.settings = settings
        self.view = view
        self.starting: dict[str, str] = {}  # kernel id -> user, for launches through this API

    def provisioner(self, kernel_id: str) -> VGPUProvisioner | None:
        try:
            km = self.kernel_manager.get_kernel(kernel_id)
        except KeyError:
            return None
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
                "phase": live.get("phase") or ("Running" if provisioner.has_process else "Stopped"),
                "reason": live.get("reason", ""),
                "started": live.get("started"),
                "last_activity": getattr(km, "last_activity", None),
                "execution_state": getattr(km, "execution_state", None),
            })
        return out

    async def allocations_for(self, user: Any, access: Any) -> list[dict[str, Any]]:
        paths = {}
        for session in await ensure_async(self.serverapp.session_manager.list_sessions()):
            kernel = session.get("kernel") or {}
            paths[kernel.get("id")] = session.get("path")
        return [{**kernel, "path": paths.get(kernel["kernel_id"])}
                for kernel in self.allocations() if access.owns(user, kernel.get("user", ""))]

    def default_spec(self, preferred: str = "") -> str:
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
        return min(candidates)[1] if candidates else ""

    def _checked_kernel_id(self, value: Any) -> str | None:
        if value is None:
            return None
        try:
            kernel_id = str(uuid.UUID(str(value)))
        except ValueError:
            raise VGPURequestError("kernel_id", value,
                                   f'field "kernel_id" {value!r} is not a UUID; leave it out or send a new UUID') from None
        if kernel_id in self.kernel_manager or kernel_id in self.starting:
            raise KernelIdTaken("kernel_id", kernel_id, f'kernel "{kernel_id}" already exists or is starting; send a new UUID')
        return kernel_id

    async def start(self, body: dict[str, Any], username: str, path: str | None = None) -> dict[str, Any]:
        """Validate, check policy and capacity, then start; nothing is created when a check fails."""
        spec_name = body.get("spec")
        if not spec_name:
            raise VGPURequestError("spec", spec_name, 'field "spec" is missing; name a vGPU kernel spec (see GET specs)')
        specs = vgpu_specs()
        if spec_name not in specs:
            known = ", ".join(sorted(specs)) or "none installed"
            if spec_name in self.kernel_manager.kernel_spec_manager.find_kernel_specs():
                raise VGPURequestError("spec", spec_name, f'kernel spec "{spec_name}" is not a vGPU spec; choose one of: {known}')
            raise VGPURequestError("spec", spec_name, f'no kernel spec named "{spec_name}"; choose one of: {known}')
        spec = specs[spec_name]
        unknown = sorted(set(body) - set(START_FIELDS) - {"path"})
        if unknown:
            raise VGPURequestError(unknown[0], body[unknown[0]],
                                   f'field "{unknown[0]}" is not known; use {", ".join(START_FIELDS)}')
        kernel_id = self._checked_kernel_id(body.get("kernel_id"))
        overrides = {k: body[k] for k in ("vgpus", "memory", "compute") if k in body}
        request = VGPURequest.from_mapping(overrides, spec_request(spec))
        image = spec_config(spec).get("image", self.settings.image)
        await KernelPolicy(config=self.serverapp.config).check(
            request, image=image, view=self.view, backend=spec_backend(self.settings, self.view, spec), capacity=True)
        vgpu = {"vgpus": request.count, "memory": f"{request.memory_mib}Mi" if request.count else None,
                "compute": request.compute_percent}
        kernel_id = kernel_id or str(uuid.uuid4())
        self.starting[kernel_id] = username
        try:
            await ensure_async(self.kernel_manager.start_kernel(
                kernel_name=spec_name, path=path, kernel_id=kernel_id, vgpu=vgpu, orion_user=username))
        finally:
            self.starting.pop(kernel_id, None)
        model = await ensure_async(self.kernel_manager.kernel_model(kernel_id))
        provisioner = self.provisioner(kernel_id)
        return {**model, "vgpu": provisioner.allocation_summary() if provisioner else None}

    async def stop(self, kernel: dict[str, Any], stopped_by: str) -> None:
        """Stop a kernel from the class view: this server's through its kernel manager, others' pods directly."""
        if kernel.get("kernel_id") in self.kernel_manager:
            await ensure_async(self.kernel_manager.shutdown_kernel(kernel["kernel_id"]))
            return
        await self.view.stop_kernel(kernel["pod"], stopped_by)


async def spec_views(settings: VGPUProvisioner, view: BackendView) -> list[dict[str, Any]]:
    out = []
    for name, spec in sorted(vgpu_specs().items()):
        try:
            request = spec_request(spec)
        except ValueError as err:
            out.append({"name": name, "display_name": spec.display_name, "error": str(err), "can_start": False})
            continue
        backend = spec_backend(settings, view, spec)
        out.append({
            "name": name,
            "display_name": spec.display_name,
            "description": (spec.metadata.get("orion_jupyter") or {}).get("description", ""),
            "backend": backend.name,
            **request.as_dict(),
            "label": request.describe(),
            "can_start": await view.can_serve(request, backend),
        })
    return out
