"""The read side of the local backend: pool and kernels from the slot table, read off the event loop."""

from __future__ import annotations

import asyncio
from typing import Any

from ..backends import Backend
from ..pool import PoolSnapshot
from ..protocols import DirectMode
from ..vgpu import VGPURequest
from .pool import VGPU_RESOURCE, LocalPool


class LocalView(DirectMode):
    kind = "local"
    count_resource = VGPU_RESOURCE
    uses_images = False
    decides_instructors = False

    def __init__(self, pool: LocalPool, backend: Backend):
        self.local_pool = pool
        self.backend = backend
        self._last_pool = PoolSnapshot(source="local")

    async def start(self) -> None:
        return None

    async def pool(self) -> PoolSnapshot:
        self._last_pool = await asyncio.to_thread(self.local_pool.snapshot)
        return self._last_pool

    def last_pool(self) -> PoolSnapshot:
        return self._last_pool

    async def can_serve(self, request: VGPURequest, backend: Backend) -> bool | None:
        return await asyncio.to_thread(self.local_pool.can_serve, request)

    async def shortage(self, request: VGPURequest, backend: Backend) -> str:
        return await asyncio.to_thread(self.local_pool.shortage, request)

    async def vgpus_by_kernel(self, user: str) -> dict[str, int]:
        holders = await asyncio.to_thread(self.local_pool.holders)
        return {kernel_id: len(entry["slots"]) for kernel_id, entry in holders.items() if entry.get("user") == user}

    def kernel_state(self, handle_info: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def class_kernels(self, user: str | None = None) -> list[dict[str, Any]]:
        holders = await asyncio.to_thread(self.local_pool.holders)
        kernels = [
            {"pod": None, "namespace": None, "user": entry.get("user", ""), "kernel_id": kernel_id,
             "node": "local", "phase": "Running" if entry.get("pid") else "Pending", "reason": "",
             "backend": self.backend.label, **(entry.get("request") or {}),
             "started": None, "last_activity": None, "idle_seconds": None, "pid": entry.get("pid")}
            for kernel_id, entry in holders.items()
        ]
        return [k for k in kernels if user is None or k["user"] == user]

    def find_kernel(self, name: str) -> dict[str, Any] | None:
        return None  # local kernels have no pod to stop from the class view

    async def stop_kernel(self, name: str, stopped_by: str) -> None:
        return None

    async def annotate(self, name: str, annotations: dict[str, str]) -> bool:
        return False
