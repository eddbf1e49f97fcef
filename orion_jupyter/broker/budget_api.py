"""The broker's budget API (beside handlers.py, served by app.py):

GET    api/budget                 the caller's budget: "2.5 of 10 vGPU-hours left this week · resets Tue 09:00"
GET    api/budgets                every student's use and what is left (instructors; also in api/class)
POST   api/budgets/{user}/topup   {"hours": 2}: add to a student's budget for this window (instructors)
"""

from __future__ import annotations

from ..core.budgets import topup_hours
from ..vgpu import VGPURequestError
from .api_auth import BrokerHandler

USER_NAME = r"[^/]{1,255}"


class BudgetHandler(BrokerHandler):
    async def get(self) -> None:
        meter = self.broker.budget_meter
        if meter is None:
            return self.reply({"budget": None, "text": "no vGPU-hour budgets in this class"})
        self.reply(meter.budgets.summary(self.user, self.broker.admission.course_of(self.groups)))


class BudgetsHandler(BrokerHandler):
    async def get(self) -> None:
        if not self.instructor:
            return self.refuse(403, "everyone's budget is for instructors; GET api/budget shows your own")
        self.reply({"budgets": self.broker.budget_meter.rows() if self.broker.budget_meter else []})


class TopupHandler(BrokerHandler):
    async def post(self, user: str) -> None:
        """An instructor adds hours to ``user``'s budget for this window (a student cannot top up anyone)."""
        if not self.instructor:
            return self.refuse(403, "only instructors may top up a budget")
        broker, meter = self.broker, self.broker.budget_meter
        if meter is None:
            return self.refuse(409, "this class has no vGPU-hour budgets (c.Broker.budgets)")
        body = self.json_body()
        if body is None:
            return
        try:
            hours = topup_hours(body)
        except VGPURequestError as err:
            return self.refuse(400, str(err), field=err.field)
        meter.budgets.topup(user, hours)
        await meter.save()
        self.reply({"user": user, **meter.budgets.summary(user, broker.admission.course_of(
            await broker.hub.groups(user)))})


def budget_routes(prefix: str) -> list:
    base = "/" + prefix.strip("/")
    return [
        (rf"{base}/api/budget", BudgetHandler),
        (rf"{base}/api/budgets", BudgetsHandler),
        (rf"{base}/api/budgets/({USER_NAME})/topup", TopupHandler),
    ]


__all__ = ["budget_routes"]
