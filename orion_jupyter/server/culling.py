"""Idle culling in a server: direct mode applies ``core.idle``'s rules to this server's own kernels
(:class:`ServerKernels`, through the kernel manager's public API); in hub mode the broker culls and
this server shows its fields and passes Keep and Exempt on (:class:`BackendCulling`)."""

from __future__ import annotations

import logging
from typing import Any

from jupyter_server.utils import ensure_async

from ..core.idle import KernelActivity, NotCullable
from ..snapshot import SnapshotError
from .kernels import VGPUKernels
from .snapshots import SnapshotService

log = logging.getLogger("orion_jupyter.culling")


class ServerKernels:
    """This server's vGPU kernels as a ``core.idle.CullTarget``: the kernel manager's own ``execution_state``
    and ``last_activity`` (jupyter_server keeps them from the kernel's iopub; the usage probe is untracked).
    Where ``snapshots`` can park (``Snapshots.park_idle``, a backend with the owner's storage), an idle kernel
    is parked; a park that fails (a full disk, a limit) logs why and the kernel is stopped as before."""

    def __init__(self, kernels: VGPUKernels, snapshots: SnapshotService | None = None):
        self.kernels = kernels
        self.kernel_manager = kernels.kernel_manager
        self.snapshots = snapshots

    def kernel_ids(self) -> list[str]:
        return list(self.kernel_manager.list_kernel_ids())

    def activity(self, kernel_id: str) -> KernelActivity | None:
        provisioner = self.kernels.provisioner(kernel_id)
        request = getattr(provisioner, "request", None)
        if provisioner is None or request is None or not request.count:
            return None  # CPU-only kernels and others' kernels are never culled
        km = self.kernel_manager.get_kernel(kernel_id)
        ready = getattr(km, "ready", None)
        return KernelActivity(getattr(km, "last_activity", None), getattr(km, "execution_state", None) or "",
                              started=ready is None or ready.done())

    def owner(self, kernel_id: str) -> str | None:
        return self.kernels.kernel_user(kernel_id)

    def parks(self, kernel_id: str) -> bool:
        return self.snapshots is not None and self.snapshots.parks_idle()

    async def stop_idle(self, kernel_id: str) -> str | None:
        return await self.park_or_stop(kernel_id, "idle")

    async def park_or_stop(self, kernel_id: str, why: str) -> str | None:
        """Park the kernel where this server can, else (or when the park fails) stop it; the snapshot's id or None."""
        if self.parks(kernel_id):
            try:
                report = await self.snapshots.park(kernel_id, self.owner(kernel_id) or "")
                return report["snapshot"]
            except SnapshotError as err:
                log.warning("kernel %s (%s) could not be parked (%s); stopping it instead", kernel_id, why, err)
        await ensure_async(self.kernel_manager.shutdown_kernel(kernel_id))
        return None


class BackendCulling:
    """Hub mode: the broker stops idle kernels (students' servers are not trusted to); this server shows
    its fields and passes Keep and Exempt on. The same face as ``Culler`` for the handlers."""

    enabled = True

    def __init__(self, view: Any):
        self.view = view

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None

    def fields(self, kernel_id: str) -> dict[str, Any]:
        return self.view.cull_fields(kernel_id)

    def owner_of_culled(self, kernel_id: str) -> str | None:
        return None  # the kernel's owner reads why it stopped from its own server's kernel record

    async def keep(self, kernel_id: str) -> dict[str, Any]:
        return await self._ask(self.view.keep(kernel_id))

    async def exempt(self, kernel_id: str, flag: bool) -> dict[str, Any]:
        return await self._ask(self.view.set_exempt(kernel_id, flag))

    @staticmethod
    async def _ask(request: Any) -> dict[str, Any]:
        """The backend's answer; its refusals as NotCullable (409) or PermissionError with ``status``."""
        try:
            return await request
        except Exception as err:
            status = getattr(err, "status", None)
            if status == 409:
                raise NotCullable(str(err)) from None
            if status in (403, 404):
                refusal = PermissionError(str(err))
                refusal.status = status  # type: ignore[attr-defined]
                raise refusal from None
            raise


__all__ = ["BackendCulling", "ServerKernels"]
