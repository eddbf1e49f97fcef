"""The orion-jupyter server extension: who holds which vGPU, vGPU kernels with chosen memory, demos."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from prometheus_client import REGISTRY
from tornado.ioloop import PeriodicCallback
from traitlets import Float, Int, List, Unicode

from ..config import KernelPolicy
from ..errors import KernelLaunchError
from ..kernelspecs import spec_request, vgpu_specs
from ..progress import PROGRESS
from ..provisioner import VGPUProvisioner
from ..vgpu import VGPURequest, VGPURequestError
from . import handlers
from .demos import Demos
from .state import ANNOTATION_LAST_ACTIVITY, ClusterView, OrionCollector, user_label

COLLECTOR = OrionCollector()

class OrionState:
    """Shared by the handlers: the cluster view, the kernel manager, instructors, demos."""

    def __init__(self, app: "OrionJupyter"):
        self.app = app
        self.serverapp = app.serverapp
        self.kernel_manager = app.serverapp.kernel_manager
        self.view = ClusterView(app.serverapp.config, app.class_namespaces)
        self.progress = PROGRESS
        self.demos = Demos(PROGRESS, app.demo_folder, self.default_spec, app.demo_cell_timeout)
        self._reported_activity: dict[str, Any] = {}

    # -- who may see what ----------------------------------------------------------------------
    def is_instructor(self, user: Any) -> bool:
        if user.username in self.app.instructors:
            return True
        groups = set((getattr(user, "hub_user", None) or {}).get("groups") or [])
        return bool(groups & set(self.app.instructor_groups))

    def owns(self, user: Any, kernel_user: str) -> bool:
        if self.is_instructor(user) or user_label(kernel_user) == user_label(user.username):
            return True
        # Kernels started through Jupyter's own API carry the server owner's name.
        owner = self.app.server_owner
        return kernel_user == self.view.settings.user and owner in ("", user.username)

    def may_see_kernel(self, user: Any, kernel_id: str) -> bool:
        provisioner = self._provisioner(kernel_id)
        return provisioner is not None and self.owns(user, provisioner.user)

    # -- this server's kernels -----------------------------------------------------------------
    def _provisioner(self, kernel_id: str) -> VGPUProvisioner | None:
        km = self.kernel_manager._kernels.get(kernel_id) or self.kernel_manager._pending_kernels.get(kernel_id)
        provisioner = getattr(km, "provisioner", None)
        return provisioner if isinstance(provisioner, VGPUProvisioner) else None

    def kernel_allocations(self) -> list[dict[str, Any]]:
        out = []
        for kernel_id in list(self.kernel_manager.list_kernel_ids()):
            km = self.kernel_manager.get_kernel(kernel_id)
            provisioner = getattr(km, "provisioner", None)
            if not isinstance(provisioner, VGPUProvisioner):
                continue
            allocation = provisioner.allocation_summary()
            found = self.view.find_pod(allocation["pod_name"]) if allocation.get("pod_name") else None
            pod = found[1] if found else None
            status = (pod or {}).get("status") or {}
            out.append({
                "kernel_id": kernel_id,
                "kernel_spec": km.kernel_name,
                **allocation,
                "pod": allocation.get("pod_name"),
                "node": (pod or {}).get("spec", {}).get("nodeName") or allocation.get("node_name"),
                "phase": status.get("phase") or ("Running" if provisioner.has_process else "Stopped"),
                "reason": status.get("reason", ""),
                "started": (pod or {}).get("metadata", {}).get("creationTimestamp"),
                "last_activity": getattr(km, "last_activity", None),
                "execution_state": getattr(km, "execution_state", None),
            })
        return out

    async def allocations_for(self, user: Any) -> list[dict[str, Any]]:
        paths = {}
        for session in await self.serverapp.session_manager.list_sessions():
            kernel = session.get("kernel") or {}
            paths[kernel.get("id")] = session.get("path")
        return [
            {**kernel, "path": paths.get(kernel["kernel_id"])}
            for kernel in self.kernel_allocations()
            if self.owns(user, kernel.get("user", ""))
        ]

    def default_spec(self) -> str:
        if self.app.demo_spec:
            return self.app.demo_spec
        candidates = []
        for name, spec in vgpu_specs().items():
            try:
                request = spec_request(spec)
            except VGPURequestError:
                continue
            if request.count:
                candidates.append((request.total_memory_mib, name))
        return min(candidates)[1] if candidates else ""

    async def start_vgpu_kernel(self, body: dict[str, Any], username: str, path: str | None = None) -> dict[str, Any]:
        """Validate, check capacity, then start; nothing is created when any check fails."""
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
        unknown = sorted(set(body) - {"spec", "vgpus", "memory", "compute", "kernel_id"})
        if unknown:
            raise VGPURequestError(unknown[0], body[unknown[0]], f'field "{unknown[0]}" is not known; use spec, vgpus, memory, compute, path, kernel_id')
        kernel_id = body.get("kernel_id")
        if kernel_id is not None:
            try:
                kernel_id = str(uuid.UUID(str(kernel_id)))
            except ValueError:
                raise VGPURequestError("kernel_id", kernel_id, f'field "kernel_id" {kernel_id!r} is not a UUID; leave it out or send a new UUID') from None
            if kernel_id in self.kernel_manager:
                raise VGPURequestError("kernel_id", kernel_id, f'kernel "{kernel_id}" already exists; send a new UUID')
        overrides = {k: body[k] for k in ("vgpus", "memory", "compute") if k in body}
        request = VGPURequest.from_mapping(overrides, spec_request(spec))
        config = spec.metadata["kernel_provisioner"].get("config", {})
        image = config.get("image", self.view.settings.image) if self.view.kind == "kubernetes" else None
        KernelPolicy(config=self.serverapp.config).policy().check(request, image)
        if self.view.can_serve(request, config.get("backend")) is False:
            raise KernelLaunchError("unschedulable", self.view.shortage(request, config.get("backend")))
        vgpu = {"vgpus": request.count, "memory": f"{request.memory_mib}Mi" if request.count else None,
                "compute": request.compute_percent}
        kernel_id = await self.kernel_manager.start_kernel(
            kernel_name=spec_name, path=path, kernel_id=kernel_id, vgpu=vgpu, orion_user=username)
        model = self.kernel_manager.kernel_model(kernel_id)
        model = await model if asyncio.iscoroutine(model) else model
        provisioner = self._provisioner(kernel_id)
        return {**model, "vgpu": provisioner.allocation_summary() if provisioner else None}

    async def stop_pod(self, cluster: Any, pod: dict, stopped_by: str) -> None:
        kernel_id = (pod["metadata"].get("labels") or {}).get("orion-jupyter.io/kernel-id", "")
        if kernel_id in self.kernel_manager:
            await self.kernel_manager.shutdown_kernel(kernel_id)
            return
        await cluster.stop_foreign_pod(pod["metadata"]["name"], stopped_by)

    # -- last activity on kernel pods, for the class view's idle time ----------------------------
    async def report_activity(self) -> None:
        """One PATCH per kernel pod whose activity changed since the last report, none otherwise."""
        if self.view.kind != "kubernetes":
            return
        kernels = self.kernel_allocations()
        live = {kernel.get("pod") for kernel in kernels}
        self._reported_activity = {pod: seen for pod, seen in self._reported_activity.items() if pod in live}
        for kernel in kernels:
            pod, activity = kernel.get("pod"), kernel.get("last_activity")
            if not pod or activity is None or self._reported_activity.get(pod) == activity:
                continue
            stamp = activity.astimezone(timezone.utc).isoformat() if isinstance(activity, datetime) else str(activity)
            if await self.view.clusters[0].annotate_pod(pod, {ANNOTATION_LAST_ACTIVITY: stamp}):
                self._reported_activity[pod] = activity


class OrionJupyter(ExtensionApp):
    name = "orion_jupyter"
    description = "vGPU allocations, pool, vGPU kernels with chosen memory, demos and metrics"

    instructors = List(Unicode(), config=True, help="User names that see and may stop every kernel of the class.")
    instructor_groups = List(Unicode(), config=True, help="JupyterHub groups whose members are instructors.")
    class_namespaces = List(Unicode(), config=True,
                            help="Extra namespaces whose kernel pods the class view shows (the kernel namespace is always shown).")
    server_owner = Unicode(config=True,
                           help="Owner of kernels started through Jupyter's own API; default JUPYTERHUB_USER, or any user of this server.")
    demo_folder = Unicode("orion-demos", config=True, help="Folder (relative to the server root) the demo notebooks are copied to.")
    demo_spec = Unicode("", config=True, help="Kernel spec demos start on; default the smallest installed vGPU spec.")
    demo_cell_timeout = Int(1800, config=True, help="Seconds one cell of a headless demo run may take.")
    activity_report_interval = Float(60.0, config=True,
                                     help="Seconds between writes of kernels' last activity onto their pods (for idle time in the class view); 0: never.")

    def _default_server_owner(self) -> str:
        import os

        return os.environ.get("JUPYTERHUB_USER", "")

    def initialize_settings(self) -> None:
        if not self.server_owner:
            self.server_owner = self._default_server_owner()
        self.state = OrionState(self)
        self.settings["orion_jupyter_state"] = self.state
        if COLLECTOR.state is None and not COLLECTOR.registered:
            REGISTRY.register(COLLECTOR)
            COLLECTOR.registered = True
        COLLECTOR.state = self.state  # one server per process reports (the newest)
        self._activity_timer = None

    def initialize_handlers(self) -> None:
        prefix = r"/orion/api"
        self.handlers.extend([
            (rf"{prefix}/allocations", handlers.AllocationsHandler),
            (rf"{prefix}/pool", handlers.PoolHandler),
            (rf"{prefix}/specs", handlers.SpecsHandler),
            (rf"{prefix}/kernels", handlers.KernelsHandler),
            (rf"{prefix}/events", handlers.EventsHandler),
            (rf"{prefix}/demos", handlers.DemosHandler),
            (rf"{prefix}/demos/([a-z0-9_-]+)", handlers.DemoHandler),
            (rf"{prefix}/class", handlers.ClassHandler),
            (rf"{prefix}/class/([a-z0-9.-]+)", handlers.ClassPodHandler),
        ])

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        await self.state.view.start()
        if self.activity_report_interval > 0:
            self._activity_timer = PeriodicCallback(self.state.report_activity, self.activity_report_interval * 1000)
            self._activity_timer.start()

    async def stop_extension(self) -> None:
        if self._activity_timer is not None:
            self._activity_timer.stop()
        if COLLECTOR.state is self.state:
            COLLECTOR.state = None
