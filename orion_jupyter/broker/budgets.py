"""The broker's budget meter: every metering interval, charge the class's running kernels (its own pod
cache, ``ClassPods.holdings``), log the warnings crossed, give back the kernels out of budget, and keep
the meter's state in the class namespace (``core.state_store``) so a restarted broker continues it."""

from __future__ import annotations

import logging
from typing import Any

from ..core.budgets import Budgets
from ..core.ledger import Holding
from ..names import LABEL_KERNEL_ID
from .pods import ClassPods

log = logging.getLogger("orion_jupyter.broker")
STOPPED_FOR_BUDGET = "the vGPU-hour budget (broker)"


class BudgetMeter:
    """``meter()`` on a timer; each account's last warning is the core meter's (``Budgets.warning``)."""

    def __init__(self, budgets: Budgets, pods: ClassPods, store: Any | None = None):
        self.budgets = budgets
        self.pods = pods
        self.store = store  # a ConfigMap-backed state store (None: the meter lives in memory only)
        self.given_back: list[str] = []  # kernel ids given back for budget, newest last

    async def start(self) -> None:
        """Continue the state an earlier broker kept, if any."""
        if self.store is not None:
            state = await self.store.load()
            if state:
                self.budgets.restore(state)

    async def meter(self) -> list[Holding]:
        crossed, out = self.budgets.meter(self.pods.holdings())
        for warning in crossed:
            log.info("budget of %s: %d %% used, %.2f left", warning.account, warning.level * 100, warning.left)
        for holding in out:
            await self.give_back_for_budget(holding)
        await self.save()
        return out

    async def save(self) -> None:
        if self.store is not None:
            await self.store.save(self.budgets.state())

    async def give_back_for_budget(self, holding: Holding) -> None:
        """The one seam where a kernel out of budget leaves: stopped with the reason (park/resume may park it)."""
        pods = [p["metadata"]["name"] for p in self.pods.cluster.kernel_pods()
                if (p["metadata"].get("labels") or {}).get(LABEL_KERNEL_ID) == holding.kernel_id]
        for name in pods:
            log.info("stopping kernel pod %s of %s: its vGPU-hour budget is used up", name, holding.user)
            await self.pods.site.stop(name, STOPPED_FOR_BUDGET)
        self.given_back = [*self.given_back[-99:], holding.kernel_id]

    def rows(self) -> list[dict[str, Any]]:
        """Use and what is left per student with use, a top-up or a kernel this window (the class view's rows)."""
        return self.budgets.rows(self.pods.holdings())

    def warning(self, account: str) -> dict[str, Any] | None:
        return self.budgets.warning(account)


__all__ = ["STOPPED_FOR_BUDGET", "BudgetMeter"]
