"""What the handlers share: the backend's view, who may do what, this server's kernels, demos.

Every read goes to caches (the kernel manager, the shared watches, the slot table); an HTTP
request or a metrics scrape costs no cluster traffic.
"""

from __future__ import annotations

from typing import Any

from ..clusters import make_view
from ..progress import PROGRESS
from ..settings import KernelSettings
from .access import Access, names_are_people
from .activity import ActivityReporter
from .demos import Demos
from .kernels import VGPUKernels


class OrionState:
    def __init__(self, app: Any, usage: Any = None):
        self.app = app
        serverapp = app.serverapp
        self.settings = KernelSettings(parent=serverapp)  # c.VGPUProvisioner: what kernels are and where they run
        self.view = make_view(self.settings, app.class_namespaces)
        self.access = Access(app, server_user=self.settings.user,
                             one_person=not names_are_people(serverapp.identity_provider))
        self.kernels = VGPUKernels(serverapp, self.settings, self.view, usage)
        self.activity = ActivityReporter(self.kernels, self.view)
        self.progress = PROGRESS
        self.demos = Demos(PROGRESS, app.demo_folder,
                           lambda min_mib=0: self.kernels.default_spec(app.demo_spec, min_mib), app.demo_cell_timeout)

    def is_instructor(self, user: Any) -> bool:
        return self.access.is_instructor(user)

    def may_see_kernel(self, user: Any, kernel_id: str) -> bool:
        owner = self.kernels.kernel_user(kernel_id)
        return owner is not None and self.access.owns(user, owner)

    async def report_activity(self) -> None:
        await self.activity.report()
