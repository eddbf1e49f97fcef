"""The local driver: a KernelLaunch becomes a local process holding slots of the local pool.

The process is started by jupyter_client's own LocalProvisioner, with the allocation in its
environment and the memory cap hook.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning import LocalProvisioner

from ..allocation import KernelAllocation
from ..launch import KernelLaunch
from ..memory_cap import KERNEL_ARGUMENT
from .pool import LocalPool, _process_start
from .view import LocalView


class LocalKernel:
    """A kernel process holding local slots; the process is jupyter_client's LocalProvisioner's."""

    def __init__(self, process: LocalProvisioner, pool: LocalPool, kernel_id: str, slots: list[tuple[int, int]]):
        self.process = process
        self.pool = pool
        self.kernel_id = kernel_id
        self.slots = slots
        self._exit_code: int | None = None
        self.ip = process.connection_info.get("ip", "127.0.0.1") if process.connection_info else "127.0.0.1"

    def poll(self) -> int | None:
        popen = self.process.process
        if popen is not None:
            return popen.poll()
        if self._exit_code is None and not self.process.pid:
            return 0
        if self._exit_code is None and _process_start(self.process.pid) is None:
            self._exit_code = 0  # an attached kernel whose process is gone
        return self._exit_code

    async def wait(self) -> int | None:
        if self.process.process is not None:
            self._exit_code = await self.process.wait()
        return self.poll()

    async def send_signal(self, signum: int) -> None:
        await self.process.send_signal(signum)

    async def terminate(self, grace_seconds: int) -> None:
        await self.process.terminate()

    async def kill(self) -> None:
        await self.process.kill()

    async def cleanup(self) -> None:
        try:
            await self.process.cleanup()
        finally:
            await asyncio.to_thread(self.pool.release, self.kernel_id)

    def info(self) -> dict[str, Any]:
        return {"pid": self.process.pid, "pgid": self.process.pgid, "node_name": socket.gethostname(),
                "gpus": sorted({index for index, _ in self.slots if index >= 0}), "slots": self.slots}


class LocalDriver:
    name = "local"

    def __init__(self, view: LocalView, kernel_manager: Any, kernel_spec: Any):
        """``kernel_manager`` and ``kernel_spec`` are what jupyter_client's LocalProvisioner needs."""
        self.view = view
        self.pool = view.local_pool
        self._kernel_manager = kernel_manager
        self._kernel_spec = kernel_spec
        self.process: LocalProvisioner | None = None
        self.slots: list[tuple[int, int]] = []

    @staticmethod
    def environment(launch: KernelLaunch, slots: list[tuple[int, int]]) -> dict[str, str]:
        request = launch.request
        allocation = KernelAllocation(
            cluster="local", backend=launch.backend.label, vgpus=request.count, memory_mib=request.memory_mib,
            compute_percent=request.compute_percent, kernel_id=launch.kernel_id, user=launch.user,
            memory_cap="cooperative" if request.count else "none", node_name=socket.gethostname(),
            namespace="", pod_ip="127.0.0.1",
        )
        gpus = sorted({index for index, _ in slots if index >= 0})
        return {
            **launch.env,
            **launch.backend.env(request, controller=launch.orion_controller),
            **allocation.to_env(),
            # No GPU granted (CPU pool or CPU-only kernel): hide every GPU from the kernel.
            "CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus)),
        }

    def _process(self, kernel_id: str) -> LocalProvisioner:
        return LocalProvisioner(kernel_id=kernel_id, kernel_spec=self._kernel_spec, parent=self._kernel_manager)

    async def pre_launch(self, launch: KernelLaunch, kwargs: dict[str, Any]) -> dict[str, Any]:
        self.slots = await asyncio.to_thread(self.pool.reserve, launch.kernel_id, launch.user, launch.request)
        try:
            kwargs["env"] = {**kwargs["env"], **self.environment(launch, self.slots)}
            kwargs["extra_arguments"] = [*(kwargs.get("extra_arguments") or []), KERNEL_ARGUMENT]
            if self.process is None:  # reused across restarts, so the ports stay the same
                self.process = self._process(launch.kernel_id)
            return await self.process.pre_launch(**kwargs)
        except BaseException:
            await asyncio.to_thread(self.pool.release, launch.kernel_id)
            raise

    async def launch(self, launch: KernelLaunch, cmd: list[str],
                     kwargs: dict[str, Any]) -> tuple[LocalKernel, KernelConnectionInfo]:
        assert self.process is not None, "pre_launch first"
        try:
            info = await self.process.launch_kernel(cmd, **kwargs)
            await asyncio.to_thread(self.pool.started, launch.kernel_id, self.process.pid)
        except BaseException:
            await asyncio.to_thread(self.pool.release, launch.kernel_id)
            raise
        return LocalKernel(self.process, self.pool, launch.kernel_id, self.slots), info

    async def attach(self, launch: KernelLaunch, info: dict[str, Any]) -> LocalKernel:
        process = self._process(launch.kernel_id)
        process.pid, process.pgid, process.ip = info.get("pid"), info.get("pgid"), "127.0.0.1"
        return LocalKernel(process, self.pool, launch.kernel_id, [tuple(s) for s in info.get("slots", [])])
