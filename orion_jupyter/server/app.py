"""The orion-jupyter server extension: who holds which vGPU, vGPU kernels with chosen memory, demos."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from prometheus_client import REGISTRY
from tornado.ioloop import PeriodicCallback
from traitlets import Float, Int, List, Unicode, default

from ..clusters import import_launch_side
from ..core.idle import Culler, CullRules
from ..progress import PROGRESS
from ..settings import ClassSettings
from ..vgpu import VGPURequestError
from .budgets import BUDGET_FILE, BudgetFile, ServerBudgets
from .culling import BackendCulling, ServerKernels
from .handlers import routes
from .metrics import COLLECTOR
from .refusals import answer_refusals
from .snapshots import Snapshots, SnapshotService, snapshot_routes
from .state import OrionState
from .usage import UsageSampler
from .warm import make_warm_pool

log = logging.getLogger("orion_jupyter.server")


def warm_up(kind: str) -> None:
    """What the first kernel launch of a server process would otherwise pay for on its event loop:
    jupyter_client's look-up of this host's addresses (it imports psutil), the provisioner factory's
    scan of entry points, ipykernel's spec module, the launch side's modules. Run once, in a thread, at
    extension load."""
    try:
        from jupyter_client import localinterfaces
        from jupyter_client.provisioning.factory import KernelProvisionerFactory

        localinterfaces.local_ips()
        KernelProvisionerFactory.instance()
        try:  # jupyter_client reads the native python3 spec from ipykernel when specs are listed
            import ipykernel.kernelspec  # noqa: F401
        except ImportError:
            pass
        import_launch_side(kind)
    except Exception as err:  # noqa: BLE001 - a warm-up never stops the server; the first launch pays instead
        log.debug("warm-up skipped: %s", err)


def warm_kernel_manager(kernel_manager: Any) -> None:
    """On the event loop (traitlets are not thread-safe), what the server's first kernel would make: its
    kernel manager factory and the shared ZMQ context's I/O threads (started with its first socket)."""
    try:
        kernel_manager.kernel_manager_factory  # noqa: B018 - the trait's default: imports the class
        if getattr(kernel_manager, "shared_context", False):
            import zmq

            kernel_manager.context.socket(zmq.DEALER).close(linger=0)
    except Exception as err:  # noqa: BLE001 - a warm-up never stops the server
        log.debug("kernel manager warm-up skipped: %s", err)


class OrionJupyter(ExtensionApp, ClassSettings):
    name = "orion_jupyter"
    description = "vGPU allocations, pool, vGPU kernels with chosen memory, demos and metrics"

    class_namespaces = List(Unicode(), config=True,
                            help="Extra namespaces whose kernel pods the class view shows "
                                 "(the kernel namespace is always shown).")
    server_owner = Unicode(config=True,
                           help="Owner of kernels started through Jupyter's own API; default JUPYTERHUB_USER, "
                                "or any user of this server.")
    demo_folder = Unicode("orion-demos", config=True,
                          help="Folder (relative to the server root) the demo notebooks are copied to.")
    demo_spec = Unicode("", config=True, help="Kernel spec demos start on; default the smallest installed vGPU spec.")
    demo_cell_timeout = Int(1800, config=True, help="Seconds one cell of a headless demo run may take.")
    usage_sample_interval = Float(15.0, config=True,
                                  help="Seconds between samples of each vGPU kernel's memory in use "
                                       "(a usage_request on its control channel: no execute request, "
                                       "not user activity); 0: never.")
    activity_report_interval = Float(60.0, config=True,
                                     help="Seconds between writes of kernels' last activity onto their pods "
                                          "(for idle time in the class view); 0: never.")

    @default("cull_idle_seconds")
    def _one_person_keeps_idle_kernels(self) -> float:
        # `orion-jupyter lab` (ORION_JUPYTER_LAB=1): one person on their own machine keeps idle kernels.
        # A default, not a config file of lab's: ~/.jupyter and an operator's config still set it.
        return 0.0 if os.environ.get("ORION_JUPYTER_LAB") == "1" else 1800.0

    warm_kernels = Int(0, config=True,
                       help="Direct mode on Kubernetes: kernel pods of warm_kernel_spec this server keeps started; a "
                            "launch of that shape takes one (no pod start to wait for) and the pool refills. Each "
                            "holds its vGPUs while it waits. 0: none. In hub mode the broker's pools do this.")
    warm_kernel_spec = Unicode("", config=True,
                               help="The vGPU kernel spec of the warm kernels; empty: the default vGPU spec.")

    def initialize_settings(self) -> None:
        answer_refusals(self.serverapp.kernel_manager, self.serverapp.session_manager)
        if not self.server_owner:
            self.server_owner = os.environ.get("JUPYTERHUB_USER", "")
        self.usage = UsageSampler(self.serverapp.kernel_manager, self.usage_sample_interval, self.log)
        self.state = OrionState(self, self.usage)
        self.settings["orion_jupyter_state"] = self.state
        if COLLECTOR.state is None and not COLLECTOR.registered:
            REGISTRY.register(COLLECTOR)
            COLLECTOR.registered = True
        COLLECTOR.state = self.state  # one server per process reports (the newest)
        self._activity_timer = None
        snapshots = SnapshotService(self.state, Snapshots(parent=self))
        self.settings["orion_jupyter_snapshots"] = snapshots
        if self.state.view.decides_culling:  # hub mode: the broker culls, from the kernels' own activity
            self.culler: Culler | BackendCulling = BackendCulling(self.state.view)
        else:
            self.culler = Culler(ServerKernels(self.state.kernels, snapshots), PROGRESS,
                                 CullRules(self.cull_idle_seconds, self.cull_warning_seconds, self.cull_max_keeps),
                                 interval_seconds=self.cull_interval_seconds, log=self.log)
        self.settings["orion_jupyter_culler"] = self.culler
        self.state.kernels.row_fields.append(self.culler.fields)
        if not self.state.view.decides_budgets:  # hub mode: the broker meters, from its own ledger
            try:
                self.state.budgets = ServerBudgets.configured(
                    self, self.state.kernels, ServerKernels(self.state.kernels, snapshots), PROGRESS,
                    self.state.settings.user, self.state.settings.course,
                    BudgetFile(Path(jupyter_data_dir()) / BUDGET_FILE))
            except VGPURequestError as err:
                # Not a warning and a server without the extension: its kernels would start unmetered.
                self.log.critical("%s", err)
                raise SystemExit(2) from None
            self.state.budgets.guard(self.serverapp.kernel_manager)
            self.state.kernels.start_checks.append(self.state.budgets.check)

    def initialize_handlers(self) -> None:
        self.handlers.extend(snapshot_routes(r"/orion/api") + routes(r"/orion/api"))

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        warm_kernel_manager(serverapp.kernel_manager)
        threading.Thread(target=warm_up, args=(self.state.view.kind,), name="orion-warm-up", daemon=True).start()
        await self.state.view.start()  # the shared watches list and start now, not at the first launch
        self.usage.start()
        if self.activity_report_interval > 0:
            self._activity_timer = PeriodicCallback(self.state.report_activity, self.activity_report_interval * 1000)
            self._activity_timer.start()
        self.culler.start()
        if self.state.budgets is not None:
            self.state.budgets.start()
        shape = self.state.kernels.warm_shape(self.warm_kernel_spec) if self.warm_kernels > 0 else None
        self.warm_pool = make_warm_pool(self.state.settings, self.state.view, self.warm_kernels, *shape) \
            if shape else None
        if self.warm_pool is not None:
            await self.warm_pool.start()

    async def stop_extension(self) -> None:
        if getattr(self, "warm_pool", None) is not None:
            await self.warm_pool.stop()
        if self._activity_timer is not None:
            self._activity_timer.stop()
        self.culler.stop()
        if self.state.budgets is not None:
            self.state.budgets.stop()
        self.usage.stop()
        if COLLECTOR.state is self.state:
            COLLECTOR.state = None
