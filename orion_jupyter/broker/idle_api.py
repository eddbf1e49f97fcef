"""The broker's idle-culling API (beside handlers.py, served by app.py):

POST   api/kernels/{id}/keep     restart an idle kernel's clock (its owner or an instructor), a few times
POST   api/kernels/{id}/exempt   {"exempt": true|false}: an instructor spares a kernel from culling
POST   api/pods/{pod}/report     the kernel's own server reports its last activity and usage (annotations)
"""

from __future__ import annotations

from ..core.idle import NotCullable
from ..k8s.view import pod_user
from ..names import ANNOTATION_LAST_ACTIVITY, ANNOTATION_USAGE
from ..vgpu import short
from .api_auth import BrokerHandler

REPORTABLE = (ANNOTATION_LAST_ACTIVITY, ANNOTATION_USAGE)


class KeepHandler(BrokerHandler):
    async def post(self, kernel_id: str) -> None:
        """Restart an idle kernel's clock (its owner or an instructor), at most the course's cull_max_keeps times."""
        kernel = self.broker.culler.target.get_kernel(kernel_id)
        if kernel is None or not (kernel.user == self.user or self.instructor):
            return self.refuse(404, f'no vGPU kernel "{short(kernel_id)}" of yours')
        try:
            self.reply(self.broker.culler.keep(kernel_id))
        except NotCullable as err:
            self.refuse(409, str(err))


class ExemptHandler(BrokerHandler):
    async def post(self, kernel_id: str) -> None:
        """``{"exempt": true|false}``: an instructor spares a kernel from idle culling (or not any more)."""
        if not self.instructor:
            return self.refuse(403, "only instructors may exempt a kernel from being stopped when idle")
        if self.broker.culler.target.get_kernel(kernel_id) is None:
            return self.refuse(404, f'no vGPU kernel "{short(kernel_id)}" in the class')
        body = self.json_body()
        if body is None:
            return
        if set(body) != {"exempt"} or not isinstance(body["exempt"], bool):
            return self.refuse(400, 'send {"exempt": true} or {"exempt": false}', field="exempt")
        self.reply(self.broker.culler.exempt(kernel_id, body["exempt"]))


class ReportHandler(BrokerHandler):
    async def post(self, pod_name: str) -> None:
        pod = self.broker.cluster.pod(pod_name)
        if pod is None or pod_user(pod) != self.user:
            return self.refuse(404, f'no kernel pod "{short(pod_name)}" of yours')
        body = self.json_body()
        if body is None:
            return
        annotations = {k: v for k, v in body.items() if k in REPORTABLE and isinstance(v, str) and len(v) < 1024}
        if len(annotations) != len(body):
            return self.refuse(400, f"only {', '.join(REPORTABLE)} may be reported, as short texts",
                               field="annotations")
        ok = await self.broker.cluster.annotate_pod(pod_name, annotations)
        self.reply({"reported": ok})


def idle_routes(prefix: str) -> list:
    base = "/" + prefix.strip("/")
    return [
        (rf"{base}/api/kernels/([0-9a-f-]{{36}})/keep", KeepHandler),
        (rf"{base}/api/kernels/([0-9a-f-]{{36}})/exempt", ExemptHandler),
        (rf"{base}/api/pods/([a-z0-9.-]+)/report", ReportHandler),
    ]
