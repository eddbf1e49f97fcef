"""Direct mode's vGPU-hour budgets (``c.OrionJupyter.budgets``): ``core.budgets``, the broker's engine, metered
from this server's own kernels (what each provisioner holds), every ``interval`` seconds.

A warning level crossed is a progress event of the user's running kernels (and ``warning`` in GET budget);
at zero the user's vGPU kernels are parked where this server keeps snapshots, else stopped, the reason
their last event; a launch out of budget is refused with when the budget resets, through this extension's
API and Jupyter's own alike (the kernel manager's ``start_kernel``). Use and top-ups are kept in a small
JSON file, so a restarted server continues them. In hub mode the broker meters and this server asks it.
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

from tornado.ioloop import PeriodicCallback

from ..core.budgets import UNITS, BudgetConfig, Budgets, Crossed
from ..core.ledger import Holding
from ..kernelspecs import spec_request, vgpu_specs
from ..progress import ProgressLog
from ..vgpu import VGPURequest, VGPURequestError
from .culling import ServerKernels
from .kernels import VGPUKernels
from .refusals import Refused

log = logging.getLogger("orion_jupyter.budgets")
NO_BUDGET = {"budget": None, "text": "no vGPU-hour budget on this server"}
BUDGET_FILE = "orion-budgets.json"  # in the Jupyter data folder: use and top-ups of this window
MAX_REMEMBERED = 500  # kernels given back for budget, remembered for their owner's events


class NoBudgets(VGPURequestError):
    """A top-up on a server without budgets."""

    http_status = 409


class BudgetFile:
    """The meter's state in one JSON file, replaced whole (never half-written)."""

    def __init__(self, path: Path):
        self.path = path

    def load(self) -> dict[str, Any] | None:
        try:
            state = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None  # none yet, or unreadable: the window starts from nothing
        return state if isinstance(state, dict) else None

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(state))
        os.replace(partial, self.path)


class ServerBudgets:
    """The meter of one direct-mode server; ``budgets`` None: no budget configured (GET budget says so)."""

    def __init__(self, budgets: Budgets | None, kernels: VGPUKernels, target: ServerKernels, progress: ProgressLog,
                 default_user: str, course: str, store: BudgetFile | None = None):
        self.budgets = budgets
        self.kernels = kernels
        self.target = target
        self.progress = progress
        self.default_user = default_user  # the owner of kernels started through Jupyter's own API
        self.course = course
        self.store = store
        self.given_back: OrderedDict[str, str] = OrderedDict()  # kernel id -> owner, of kernels given back
        self._timer: PeriodicCallback | None = None

    @classmethod
    def configured(cls, settings: Any, kernels: VGPUKernels, target: ServerKernels, progress: ProgressLog,
                   default_user: str, course: str, store: BudgetFile | None = None) -> ServerBudgets:
        """From ``c.OrionJupyter.budgets`` and ``lab_timezone``, checked (a VGPURequestError names the bad value)."""
        config = BudgetConfig.parse(settings.budgets, {}, settings.lab_timezone, "c.OrionJupyter")
        budgets = Budgets(config) if config.enabled else None
        meter = cls(budgets, kernels, target, progress, default_user, course, store)
        if budgets is not None and store is not None:
            state = store.load()
            if state:
                budgets.restore(state)
        return meter

    # -- the server's ledger ------------------------------------------------------------------
    def holdings(self) -> list[Holding]:
        """This server's running vGPU kernels, as their provisioners hold them."""
        out = []
        for kernel_id in list(self.kernels.kernel_manager.list_kernel_ids()):
            provisioner = self.kernels.provisioner(kernel_id)
            request = getattr(provisioner, "request", None)
            if provisioner is not None and provisioner.has_process and request is not None and request.count:
                out.append(Holding(kernel_id, provisioner.user, provisioner.course, request.count,
                                   request.total_memory_mib))
        return out

    # -- metering -------------------------------------------------------------------------------
    def start(self) -> None:
        if self.budgets is not None:
            self._timer = PeriodicCallback(self.meter, self.budgets.config.interval * 1000)
            self._timer.start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        self.save()

    async def meter(self) -> list[str]:
        """Charge the running kernels up to now; warn, give back those out of budget; their ids."""
        if self.budgets is None:
            return []
        running = self.holdings()
        crossed, out = self.budgets.meter(running)
        for warning in crossed:
            self._warn(warning, running)
        for holding in out:
            await self._give_back(holding)
        self.save()
        return [h.kernel_id for h in out]

    def save(self) -> None:
        if self.budgets is not None and self.store is not None:
            try:
                self.store.save(self.budgets.state())
            except OSError as err:  # a full disk must not stop the meter; the next round tries again
                log.warning("could not keep the vGPU-hour budgets' use in %s: %s", self.store.path, err)

    def _whose(self, account: str) -> str:
        return "your" if account.startswith("user:") else f"course {account.removeprefix('course:')}'s"

    def _warn(self, warning: Crossed, running: list[Holding]) -> None:
        assert self.budgets is not None
        verb = "parked" if self.target.snapshots is not None and self.target.snapshots.parks_idle() else "stopped"
        message = (f"{warning.level:.0%} of {self._whose(warning.account)} vGPU-hour budget is used "
                   f"({max(warning.left, 0):.2f} {UNITS[self.budgets.config.unit]} left; it resets "
                   f"{self.budgets.resets_text()}): at zero vGPU kernels are {verb}")
        for holding in running:
            if warning.account in self.budgets.accounts(holding):
                self.progress.record(holding.kernel_id, message, stage="budget", level="warning",
                                     budget_level=warning.level)
        log.info("budget of %s: %s", warning.account, message)

    async def _give_back(self, holding: Holding) -> None:
        assert self.budgets is not None
        limit = self.budgets.limit(f"user:{holding.user}", holding.course)
        reason = (f"your budget of {limit:g} {UNITS[self.budgets.config.unit]} is used up; "
                  f"it resets {self.budgets.resets_text()}")
        log.info("giving back vGPU kernel %s of %s: %s", holding.kernel_id, holding.user, reason)
        try:
            snapshot = await self.target.park_or_stop(holding.kernel_id, "budget")
        except Exception as err:  # noqa: BLE001 - the next round tries again (it is still out of budget)
            log.exception("vGPU kernel %s could not be given back for its budget", holding.kernel_id)
            self.progress.record(holding.kernel_id, f"could not be stopped for its budget: {err}", stage="budget",
                                 level="error")
            return
        self.given_back[holding.kernel_id] = holding.user
        while len(self.given_back) > MAX_REMEMBERED:
            self.given_back.popitem(last=False)
        if snapshot:
            message = f"parked: {reason}; resume snapshot {snapshot} then to get its variables back"
        else:
            message = f"stopped: {reason}"
        self.progress.record(holding.kernel_id, message, stage="budget", level="info", stopped=True,
                             snapshot=snapshot)

    def owner_of_given_back(self, kernel_id: str) -> str | None:
        return self.given_back.get(kernel_id)

    # -- launches ---------------------------------------------------------------------------------
    def check(self, user: str, request: VGPURequest) -> None:
        """Raise BudgetExhausted (with when it resets) when ``user``'s budget cannot pay for this launch."""
        if self.budgets is None or not request.count:
            return
        refusal = self.budgets.refusal(Holding("", user, self.course, request.count, request.total_memory_mib))
        if refusal is not None:
            raise refusal

    def guard(self, kernel_manager: Any) -> None:
        """Check every start through the kernel manager (Jupyter's own API and sessions too), before anything
        exists; a refusal answers as the extension's refusals do (``Refused``)."""
        if self.budgets is None or getattr(kernel_manager, "_orion_budgets", False):
            return
        start_kernel = kernel_manager.start_kernel

        async def budgeted_start_kernel(*args: Any, **kwargs: Any) -> Any:
            request = kwargs.get("vgpu")
            if not isinstance(request, VGPURequest):
                name = kwargs.get("kernel_name") or (args[0] if args else None) or kernel_manager.default_kernel_name
                spec = vgpu_specs().get(name)
                try:
                    request = spec_request(spec) if spec is not None else None
                except VGPURequestError:
                    request = None  # a broken spec: its provisioner refuses it with the reason
            if request is not None:
                try:
                    self.check(kwargs.get("orion_user") or self.default_user, request)
                except VGPURequestError as err:
                    raise Refused(err) from None
            return await start_kernel(*args, **kwargs)

        kernel_manager.start_kernel = budgeted_start_kernel
        kernel_manager._orion_budgets = True

    # -- what people see ----------------------------------------------------------------------------
    def summary(self, user: str) -> dict[str, Any]:
        """GET budget: "2.5 of 10 vGPU-hours left this week · resets Tue 09:00" (the broker's shape)."""
        return self.budgets.summary(user, self.course) if self.budgets is not None else dict(NO_BUDGET)

    def rows(self) -> list[dict[str, Any]]:
        return self.budgets.rows(self.holdings()) if self.budgets is not None else []

    def topup(self, user: str, hours: float) -> dict[str, Any]:
        if self.budgets is None:
            raise NoBudgets("hours", hours, "this server has no vGPU-hour budgets (c.OrionJupyter.budgets)")
        self.budgets.topup(user, hours)
        self.save()
        return {"user": user, **self.summary(user)}


__all__ = ["BUDGET_FILE", "BudgetFile", "ServerBudgets"]
