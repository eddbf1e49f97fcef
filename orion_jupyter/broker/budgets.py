"""The broker's budget meter: every metering interval, charge the class's running kernels (its own pod
cache, ``ClassPods.holdings``), log the warnings crossed, give back the kernels out of budget (parked
where the broker can park them, ``broker/parking.py``), and keep the meter's state in the class
namespace (``core.state_store``) so a restarted broker continues it."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..core.budgets import Budgets
from ..core.ledger import Holding
from .parking import stop_kernel_pods
from .pods import ClassPods

log = logging.getLogger("orion_jupyter.broker")
STOPPED_FOR_BUDGET = "the vGPU-hour budget (broker)"


class BudgetMeter:
    """``meter()`` on a timer; each account's last warning is the core meter's (``Budgets.warning``)."""

    def __init__(self, budgets: Budgets, pods: ClassPods, store: Any | None = None,
                 give_back: Callable[[str, str], Awaitable[Any]] | None = None):
        self.budgets = budgets
        self.pods = pods
        self.store = store  # a ConfigMap-backed state store (None: the meter lives in memory only)
        # (kernel id, why) -> the kernel parked or stopped (the broker's BrokerParking.give_back); else stopped
        self.give_back = give_back or (lambda kernel_id, why: stop_kernel_pods(self.pods, kernel_id, why))
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
        """The one seam where a kernel out of budget leaves: parked where it can be, else stopped, with the reason."""
        log.info("giving back kernel %s of %s: its vGPU-hour budget is used up", holding.kernel_id, holding.user)
        await self.give_back(holding.kernel_id, STOPPED_FOR_BUDGET)
        self.given_back = [*self.given_back[-99:], holding.kernel_id]

    def rows(self) -> list[dict[str, Any]]:
        """Use and what is left per student with use, a top-up or a kernel this window (the class view's rows)."""
        return self.budgets.rows(self.pods.holdings())

    def warning(self, account: str) -> dict[str, Any] | None:
        return self.budgets.warning(account)


__all__ = ["STOPPED_FOR_BUDGET", "BudgetMeter"]
