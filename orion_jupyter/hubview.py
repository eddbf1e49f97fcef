"""The single-user server's read side of hub mode: the pool, the caller's kernels, the class, budgets and
parking, as the broker answers them to this user's hub token (the launch side is hubclient.py)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from .backends import Backend
from .hubclient import BrokerClient, BrokerError, BrokerRefusal
from .pool import PoolSnapshot
from .vgpu import VGPURequest
from .wire import CULL_FIELDS


class BrokerView:
    """The read side in hub mode: what the broker shows this server's user (it decides capacity)."""

    kind = "broker"
    uses_images = True
    decides_instructors = True
    decides_culling = True
    decides_budgets = True

    def __init__(self, client: BrokerClient, backend: Backend):
        self.client = client
        self.backend = backend
        self.count_resource = backend.count_resource
        self._last_pool = PoolSnapshot()
        self._rows: dict[str, dict[str, Any]] = {}
        self._budget_rows: list[dict[str, Any]] = []
        self._parked_rows: list[dict[str, Any]] = []
        self.home = ""  # where kernel pods mount this user's server root, as the broker last said

    async def start(self) -> None:
        return None

    async def pool(self) -> PoolSnapshot:
        code, body = await self.client.call("GET", "api/pool")
        if code == 200 and isinstance(body, dict):
            self.count_resource = body.get("count_resource", self.count_resource)
            self.home = body["home"] if isinstance(body.get("home"), str) else ""
            self._last_pool = PoolSnapshot.from_dict(body)
        return self._last_pool

    async def kernel_home(self) -> str:
        """Where kernel pods mount this user's server root (the broker's c.Broker.home_mount_path; '': they
        mount no storage of the user's). Asked again until the broker names one: it does not change while
        it runs."""
        if not self.home:
            await self.pool()
        return self.home

    def last_pool(self) -> PoolSnapshot:
        return self._last_pool

    async def can_serve(self, request: VGPURequest, backend: Backend) -> bool | None:
        return None  # the broker arbitrates the class: it answers at launch, with the reason

    async def shortage(self, request: VGPURequest, backend: Backend) -> str:
        return ""

    async def vgpus_by_kernel(self, user: str) -> dict[str, int]:
        return {}  # quotas are the broker's

    def kernel_state(self, handle_info: dict[str, Any]) -> dict[str, Any]:
        for state in self.client.kernels.values():
            if state.get("pod") == handle_info.get("pod_name"):
                return {"node": state.get("node"), "phase": state.get("phase"), "reason": state.get("reason", "")}
        return {}

    async def class_kernels(self, user: str | None = None) -> list[dict[str, Any]]:
        code, body = await self.client.call("GET", "api/class" if user is None else "api/kernels")
        if code in (403, 404):
            raise PermissionError((body or {}).get("message") or "the class view is for instructors")
        if code != 200 or not isinstance(body, dict):
            raise BrokerError((body or {}).get("message") or f"the vGPU broker answered {code}")
        rows = body.get("kernels") or []
        self._rows = {row["pod"]: row for row in rows if row.get("pod")}
        self._budget_rows = (body.get("budgets") or []) if user is None else []
        self._parked_rows = (body.get("parked") or []) if user is None else []
        return rows

    def parked_rows(self) -> list[dict[str, Any]]:
        """Per student, what the broker parked of theirs, as its class view last said (instructors)."""
        return self._parked_rows

    async def park_kernel(self, kernel_id: str) -> dict[str, Any]:
        """Park a kernel (its owner, or an instructor: anyone's); the broker's refusal with its reason."""
        return await self._ask_parking(f"api/kernels/{quote(kernel_id, safe='')}/park", {})

    async def park_course(self, course: str) -> dict[str, Any]:
        """An instructor parks every kernel of ``course``: ``{parked: [...], not_parked: [...]}``."""
        return await self._ask_parking("api/class/park", {"course": course})

    async def _ask_parking(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        code, answer = await self.client.call("POST", path, body)
        message = (answer or {}).get("message") or f"the vGPU broker answered {code}"
        if code >= 400 and isinstance(answer, dict) and answer.get("message"):
            raise BrokerRefusal(code, message)  # not yours (404), or a park that failed, saying why (409, 507...)
        if code not in (200, 201) or not isinstance(answer, dict):
            raise BrokerError(message)
        return answer

    def find_kernel(self, name: str) -> dict[str, Any] | None:
        return self._rows.get(name)

    async def stop_kernel(self, name: str, stopped_by: str) -> None:
        code, body = await self.client.call("DELETE", f"api/class/{name}")
        if code in (403, 404):
            raise PermissionError((body or {}).get("message") or f"no kernel pod {name} of yours")
        if code != 200:
            raise BrokerError((body or {}).get("message") or f"the vGPU broker answered {code}")

    async def annotate(self, name: str, annotations: dict[str, str]) -> bool:
        code, _ = await self.client.call("POST", f"api/pods/{name}/report", annotations)
        return code == 200

    def cull_fields(self, kernel_id: str) -> dict[str, Any]:
        """The broker's idle-culling fields of one kernel, as its watch stream last said them."""
        state = self.client.kernels.get(kernel_id) or {}
        return {name: state.get(name, False if name in ("cull_warning", "exempt", "cull_parks") else None)
                for name in CULL_FIELDS}

    async def keep(self, kernel_id: str) -> dict[str, Any]:
        return await self._ask_culling(f"api/kernels/{kernel_id}/keep", {})

    async def set_exempt(self, kernel_id: str, flag: bool) -> dict[str, Any]:
        return await self._ask_culling(f"api/kernels/{kernel_id}/exempt", {"exempt": flag})

    async def _ask_culling(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        code, answer = await self.client.call("POST", path, body)
        message = (answer or {}).get("message") or f"the vGPU broker answered {code}"
        if code in (403, 404, 409):
            raise BrokerRefusal(code, message)
        if code != 200 or not isinstance(answer, dict):
            raise BrokerError(message)
        return answer

    async def waiting(self, user: str) -> list[dict[str, Any]]:
        return [{"kernel_id": kernel_id, **place} for kernel_id, place in self.client.waiting.items()
                if place.get("user") == user]

    async def cancel_waiting(self, kernel_id: str) -> bool:
        code, _ = await self.client.call("DELETE", f"api/queue/{kernel_id}")
        return code == 200

    async def budget(self) -> dict[str, Any]:
        """The user's vGPU-hour budget as the broker meters it ("2.5 of 10 vGPU-hours left this week · ...")."""
        code, body = await self.client.call("GET", "api/budget")
        if code != 200 or not isinstance(body, dict):
            raise BrokerError((body or {}).get("message") or f"the vGPU broker answered {code}")
        return body

    def budget_rows(self) -> list[dict[str, Any]]:
        """Each student's use and what is left, as the broker's class view last said (instructors)."""
        return self._budget_rows

    async def topup_budget(self, user: str, hours: float) -> dict[str, Any]:
        """An instructor adds ``hours`` to ``user``'s budget; the broker's refusal (403, 409, 400) with its reason."""
        code, body = await self.client.call("POST", f"api/budgets/{quote(user, safe='')}/topup", {"hours": hours})
        message = (body or {}).get("message") or f"the vGPU broker answered {code}"
        if code in (400, 403, 404, 409):
            raise BrokerRefusal(code, message)
        if code != 200 or not isinstance(body, dict):
            raise BrokerError(message)
        return body
