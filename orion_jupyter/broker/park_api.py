"""The broker's park API (beside handlers.py, served by app.py before its routes: ``api/class/park`` is not a pod):

POST   api/kernels/{id}/park   park one kernel (its owner, or an instructor for anyone's)
POST   api/class/park          {"course": "<hub group>"}: an instructor parks every kernel of a course
POST   api/park-all            an instructor or the broker's own token parks every kernel (before maintenance)
"""

from __future__ import annotations

import hmac

from ..snapshot import SnapshotError
from ..vgpu import short
from .api_auth import BrokerHandler

# A park's refusal (broker/parking.py) as an HTTP status: the kernel keeps running in every case.
PARK_STATUS = {"unsupported": 409, "busy": 409, "location": 409, "bad_id": 409, "too_big": 413, "disk": 507,
               "timeout": 504, "kernel": 502}


class ParkHandler(BrokerHandler):
    async def post(self, kernel_id: str) -> None:
        """Park one kernel (its owner's, or an instructor's for anyone's): its variables saved to its user's
        storage, then stopped; a park that fails answers why and the kernel keeps running."""
        kernel = self.broker.culler.target.get_kernel(kernel_id)
        if kernel is None or not (kernel.user == self.user or self.instructor):
            return self.refuse(404, f'no vGPU kernel "{short(kernel_id)}" of yours')
        trigger = "owner" if kernel.user == self.user else "instructor"
        try:
            self.reply(await self.broker.parking.park(kernel_id, trigger, self.user), 201)
        except SnapshotError as err:
            self.refuse(PARK_STATUS.get(err.reason, 502), str(err), reason=err.reason, kernel_id=kernel_id)


class ParkCourseHandler(BrokerHandler):
    async def post(self) -> None:
        """``{"course": "<hub group>"}``: an instructor parks every kernel of that course (the end of a lab)."""
        if not self.instructor:
            return self.refuse(403, "only instructors may park a course's kernels")
        body = self.json_body()
        if body is None:
            return
        course = body.get("course")
        kernels = self.broker.culler.target
        if set(body) != {"course"} or not isinstance(course, str) or not course:
            return self.refuse(400, 'send {"course": "<hub group>"}, the course whose kernels to park', field="course")
        ids = [k for k in kernels.kernel_ids() if kernels.kernels[k].course == course]
        if not ids and course not in self.broker.courses:
            return self.refuse(404, f'no course "{short(course)}" in this class (courses: '
                                    f"{', '.join(sorted(self.broker.courses)) or 'none configured'})", field="course")
        self.reply({"course": course, **await self.broker.parking.park_many(ids, "course", self.user)})


class ParkAllHandler(BrokerHandler):
    operator = False

    async def prepare(self) -> None:
        """An instructor's token, or the broker's own (the operator's `orion-jupyter broker --park-all`)."""
        token, own = self.given_token(), self.broker.api_token
        if token and own and hmac.compare_digest(token.encode(), own.encode()):
            self._chunks, self.operator = [], True
            return
        await super().prepare()

    async def post(self) -> None:
        """Park every kernel the broker follows (before maintenance); what was not parked keeps running."""
        if not (self.operator or self.instructor):
            return self.refuse(403, "only instructors (or the broker's operator) may park every kernel")
        by = "the broker's operator (maintenance)" if self.operator else f"{self.user} (maintenance)"
        self.reply(await self.broker.parking.park_many(self.broker.culler.target.kernel_ids(), "maintenance", by))


def park_routes(prefix: str) -> list:
    base = "/" + prefix.strip("/")
    return [
        (rf"{base}/api/kernels/([0-9a-f-]{{36}})/park", ParkHandler),
        (rf"{base}/api/class/park", ParkCourseHandler),
        (rf"{base}/api/park-all", ParkAllHandler),
    ]
