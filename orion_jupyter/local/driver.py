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
            self.pool.release(self.kernel_id)

    def info(self) -> dict[str, Any]:
        return {"pid": self.process.pid, "pgid": self.process.pgid, "node_name": socket.gethostname(),
                "gpus": sorted({index for index, _ in self.slots if index >= 0}), "slots": self.slots}


class LocalDriver:
    name = "local"

    def __init__(self, provisioner: "VGPUProvisioner"):
        self.p = provisioner
        self.pool = LocalPool(parent=provisioner)
        self.process: LocalProvisioner | None = None
        self.slots: list[tuple[int, int]] = []

    def _environment(self, slots: list[tuple[int, int]]) -> dict[str, str]:
        p, request = self.p, self.p.request
        allocation = KernelAllocation(
            cluster="local", backend=p.backend, vgpus=request.count, memory_mib=request.memory_mib,
            compute_percent=request.compute_percent, kernel_id=p.kernel_id, user=p.user,
            memory_cap="cooperative" if request.count else "none", node_name=socket.gethostname(),
            namespace="", pod_ip="127.0.0.1",
        )
        gpus = sorted({index for index, _ in slots if index >= 0})
        return {
            **p.extra_env,
            **p.backend_model().env(request, controller=p.orion_controller or None),
            **allocation.to_env(),
            # No GPU granted (CPU pool or CPU-only kernel): hide every GPU from the kernel.
            "CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus)),
        }

    async def pre_launch(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        p = self.p
        self.slots = self.pool.reserve(p.kernel_id, p.user, p.request)
        try:
            kwargs["env"] = {**kwargs["env"], **self._environment(self.slots)}
            kwargs["extra_arguments"] = [*(kwargs.get("extra_arguments") or []), KERNEL_ARGUMENT]
            if self.process is None:
                self.process = LocalProvisioner(kernel_id=p.kernel_id, kernel_spec=p.kernel_spec, parent=p.parent)
            return await self.process.pre_launch(**kwargs)
        except BaseException:
            self.pool.release(p.kernel_id)
            raise

    async def launch(self, cmd: list[str], kwargs: dict[str, Any]) -> tuple[LocalKernel, KernelConnectionInfo]:
        assert self.process is not None, "pre_launch first"
        try:
            info = await self.process.launch_kernel(cmd, **kwargs)
            self.pool.started(self.p.kernel_id, self.process.pid)
        except BaseException:
            self.pool.release(self.p.kernel_id)
            raise
        return LocalKernel(self.process, self.pool, self.p.kernel_id, self.slots), info

    async def vgpus_held_by(self, user: str, other_than_kernel: str) -> int:
        return sum(len(entry["slots"]) for kernel_id, entry in self.pool.holders().items()
                   if entry.get("user") == user and kernel_id != other_than_kernel)

    async def attach(self, info: dict[str, Any]) -> LocalKernel:
        process = LocalProvisioner(kernel_id=self.p.kernel_id, kernel_spec=self.p.kernel_spec, parent=self.p.parent)
        process.pid, process.pgid, process.ip = info.get("pid"), info.get("pgid"), "127.0.0.1"
        return LocalKernel(process, self.pool, self.p.kernel_id, [tuple(s) for s in info.get("slots", [])])
