"""The local driver: a KernelLaunch becomes a local process holding slots of the local pool.

The process is started by jupyter_client's own LocalProvisioner (its connection file, port cache,
CurveZMQ keys, ``resolve_path``), with the allocation in its environment and, for an IPython kernel
holding vGPUs, the memory cap hook.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.provisioning import LocalProvisioner

from ..allocation import KernelAllocation
from ..launch import KernelLaunch
from ..memory_cap import KERNEL_ARGUMENT, runs_ipykernel
from .pool import LocalPool, _process_start
from .view import LocalView


async def _off_loop(fn: Any, *args: Any) -> Any:
    """``fn`` in a thread (the slot table's lock may wait), or in place when the interpreter is exiting: an
    atexit shutdown (``jupyter run``) can start no thread, and its slot must be free when it returns."""
    try:
        future = asyncio.get_running_loop().run_in_executor(None, fn, *args)
    except RuntimeError:  # "cannot schedule new futures after interpreter shutdown"
        return fn(*args)
    return await future


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

    async def cleanup(self, restart: bool = False) -> None:
        """A restart keeps the ports (jupyter_client's port cache holds them for the kernel, as its own
        LocalProvisioner does); the slots go back either way (the next ``pre_launch`` takes them again)."""
        try:
            await self.process.cleanup(restart=restart)
        finally:
            await _off_loop(self.pool.release, self.kernel_id)

    def info(self) -> dict[str, Any]:
        return {"pid": self.process.pid, "pgid": self.process.pgid, "node_name": socket.gethostname(),
                "gpus": sorted({index for index, _ in self.slots if index >= 0}), "slots": self.slots}


def _without_env(kernel_spec: Any) -> Any:
    """The spec for the inner LocalProvisioner: its env templates were applied by the VGPUProvisioner's
    own ``pre_launch`` (``${PATH}:/x`` must gain ``/x`` once), everything else as it is."""
    if kernel_spec is None:
        return None
    spec = KernelSpec(resource_dir=kernel_spec.resource_dir, **kernel_spec.to_dict())
    spec.env = {}
    return spec


class LocalDriver:
    name = "local"
    interrupt_mode = "signal"  # a local process takes SIGINT, as with jupyter_client's LocalProvisioner

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
        return LocalProvisioner(kernel_id=kernel_id, kernel_spec=_without_env(self._kernel_spec),
                                parent=self._kernel_manager)

    async def pre_launch(self, launch: KernelLaunch, kwargs: dict[str, Any]) -> dict[str, Any]:
        self.slots = await _off_loop(self.pool.reserve, launch.kernel_id, launch.user, launch.request)
        try:
            kwargs["env"] = {**kwargs["env"], **self.environment(launch, self.slots)}
            if launch.request.count and runs_ipykernel(getattr(self._kernel_spec, "argv", ())):
                kwargs["extra_arguments"] = [*(kwargs.get("extra_arguments") or []), KERNEL_ARGUMENT]
            if self.process is None:  # reused across restarts, so the ports stay the same
                self.process = self._process(launch.kernel_id)
            return await self.process.pre_launch(**kwargs)
        except BaseException:
            await _off_loop(self.pool.release, launch.kernel_id)
            raise

    async def launch(self, launch: KernelLaunch, cmd: list[str],
                     kwargs: dict[str, Any]) -> tuple[LocalKernel, KernelConnectionInfo]:
        assert self.process is not None, "pre_launch first"
        try:
            info = await self.process.launch_kernel(cmd, **kwargs)
            await _off_loop(self.pool.started, launch.kernel_id, self.process.pid)
        except BaseException:
            await _off_loop(self.pool.release, launch.kernel_id)
            raise
        return LocalKernel(self.process, self.pool, launch.kernel_id, self.slots), info

    def resolve_path(self, path: str) -> str | None:
        """As jupyter_client's LocalProvisioner: against the kernel process's working folder."""
        return self.process.resolve_path(path) if self.process is not None else None

    async def attach(self, launch: KernelLaunch, info: dict[str, Any]) -> LocalKernel:
        process = self.process = self._process(launch.kernel_id)
        process.pid, process.pgid, process.ip = info.get("pid"), info.get("pgid"), "127.0.0.1"
        return LocalKernel(process, self.pool, launch.kernel_id, [tuple(s) for s in info.get("slots", [])])
