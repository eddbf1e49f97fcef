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
        self.budgets: Any = None  # direct mode: this server's meter (server.budgets); hub mode: the broker's

    async def budget(self, user: str) -> dict[str, Any]:
        """``user``'s vGPU-hour budget, the same shape in both modes: "2.5 of 10 vGPU-hours left this week · ..."."""
        return self.budgets.summary(user) if self.budgets is not None else await self.view.budget()

    def budget_rows(self) -> list[dict[str, Any]]:
        """Each user's use and what is left (the class view's, instructors)."""
        return self.budgets.rows() if self.budgets is not None else self.view.budget_rows()

    async def topup(self, user: str, hours: float) -> dict[str, Any]:
        if self.budgets is not None:
            return self.budgets.topup(user, hours)
        return await self.view.topup_budget(user, hours)

    def is_instructor(self, user: Any) -> bool:
        return self.access.is_instructor(user)

    def may_see_kernel(self, user: Any, kernel_id: str) -> bool:
        owner = self.kernels.kernel_user(kernel_id)
        return owner is not None and self.access.owns(user, owner)

    async def report_activity(self) -> None:
        await self.activity.report()
