"""The local vGPU pool: slots on this machine's GPUs (or a CPU-only pool), in a locked slot table."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_runtime_dir
from traitlets import Float, Int, Unicode
from traitlets.config import LoggingConfigurable

from ..errors import KernelLaunchError, SlotTableUnavailable
from ..pool import NodePool, PoolSnapshot, ResourceCount
from ..vgpu import VGPURequest, parse_memory

MAX_TABLE_BYTES = 4 * 1024 * 1024  # a table of thousands of kernels is far smaller
VGPU_RESOURCE = "orion-jupyter.io/vgpu"
MEMORY_RESOURCE = "orion-jupyter.io/vgpu-memory-mib"


@dataclass(frozen=True)
class LocalDevice:
    index: int  # CUDA index; -1 for the CPU-only pool
    name: str
    memory_mib: int
    slices: int


def detect_gpus() -> list[tuple[int, str, int]]:
    """(index, name, MiB) of the NVIDIA GPUs nvidia-smi reports; none when there is no driver."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        index, name, memory = (part.strip() for part in line.split(","))
        gpus.append((int(index), name, int(float(memory))))
    return gpus


def _process_start(pid: int) -> str | None:
    """The process's start time (from /proc), so a recycled pid is not mistaken for our kernel."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _valid_entry(entry: Any) -> bool:
    slots = entry.get("slots") if isinstance(entry, dict) else None
    numbers = (entry.get("pid"), entry.get("owner_pid"), entry.get("reserved_at", 0)) if isinstance(entry, dict) else ()
    return isinstance(slots, list) and all(v is None or type(v) in (int, float) for v in numbers) and all(
        isinstance(slot, list) and len(slot) == 2 and all(type(v) is int for v in slot) for slot in slots)


def _alive(pid: int | None, start: str | None) -> bool:
    return bool(pid) and start is not None and _process_start(pid) == start  # type: ignore[arg-type]


class LocalPool(LoggingConfigurable):
    """``c.LocalPool.gpus = 1; c.LocalPool.slices_per_gpu = 4``: the vGPU slots of this machine."""

    gpus = Int(-1, config=True, help="GPUs to offer; -1: every GPU nvidia-smi finds; 0: a CPU-only pool.")
    gpu_memory = Unicode("", config=True, help="Memory per GPU when declared (e.g. '24Gi'); default: as detected.")
    slices_per_gpu = Int(4, config=True, help="vGPUs each GPU is cut into.")
    cpu_slots = Int(4, config=True, help="vGPU slots of the CPU-only pool (no GPU): kernels run on the CPU.")
    cpu_slot_memory = Unicode("4Gi", config=True, help="Nominal memory per slot of the CPU-only pool.")
    state_file = Unicode("", config=True,
                         help="The slot table; default orion-vgpu-slots.json in the Jupyter runtime dir.")
    lock_timeout = Float(10.0, config=True, help="Seconds to wait for the slot table's lock before a clear error.")

    @functools.cached_property
    def _devices(self) -> list[LocalDevice]:
        return self._find_devices()

    def devices(self) -> list[LocalDevice]:
        """The GPUs (or the CPU-only pool) this pool hands out; detected once per pool."""
        return self._devices

    def _find_devices(self) -> list[LocalDevice]:
        detected = detect_gpus() if self.gpus != 0 else []
        if self.gpus > 0 and (self.gpu_memory or len(detected) < self.gpus):
            memory = parse_memory(self.gpu_memory or "16Gi", "LocalPool.gpu_memory", "gpu_memory")
            detected = [(i, f"GPU {i} (declared)", memory) for i in range(self.gpus)]
        elif self.gpus > 0:
            detected = detected[: self.gpus]
        if detected:
            return [LocalDevice(i, name, mib, self.slices_per_gpu) for i, name, mib in detected]
        slot_mib = parse_memory(self.cpu_slot_memory, "LocalPool.cpu_slot_memory", "cpu_slot_memory")
        return [LocalDevice(-1, "CPU (no GPU)", slot_mib * self.cpu_slots, self.cpu_slots)]

    def path(self) -> Path:
        return Path(self.state_file or Path(jupyter_runtime_dir()) / "orion-vgpu-slots.json")

    def _folder(self, path: Path) -> None:
        """The table's folder must be this user's alone: nobody else may plant files or links in it."""
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.parent.stat()
        if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise SlotTableUnavailable(f"the vGPU slot table's folder {path.parent} is writable by other users; "
                                       "make it yours alone (chmod go-w) or set c.LocalPool.state_file elsewhere")

    def _lock(self, path: Path) -> int:
        """The table's lock file, held exclusively; waits at most ``lock_timeout`` seconds."""
        try:
            fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise SlotTableUnavailable(f"the vGPU slot table's lock {path.with_suffix('.lock')} cannot be opened "
                                       f"({err.strerror}); remove it if it is a link") from None
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise SlotTableUnavailable(
                        f"the vGPU slot table {path} is locked by another process for over {self.lock_timeout:g} s; "
                        "try again, or look for a hung orion-jupyter process") from None
                time.sleep(0.02)

    def _read(self, path: Path) -> tuple[dict[str, Any], dict[str, Any], str]:
        """(valid entries, entries kept but not understood, why the whole table is unreadable or '')."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return {}, {}, ""
        except OSError as err:
            return {}, {}, f"it cannot be opened ({err.strerror}; a link is never followed)"
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read(MAX_TABLE_BYTES + 1)
        try:
            table = json.loads(raw) if len(raw) <= MAX_TABLE_BYTES else None
        except (ValueError, RecursionError):
            table = None
        if not isinstance(table, dict):
            return {}, {}, "it is not a JSON object of kernel entries"
        valid = {k: v for k, v in table.items() if _valid_entry(v)}
        return valid, {k: v for k, v in table.items() if k not in valid}, ""

    @contextlib.contextmanager
    def _table(self, *, writing: bool = True, releasing: str = "") -> Iterator[dict[str, Any]]:
        """The slot table, locked for the duration, with dead holders already removed (``releasing``: the
        kernel being released, whose ended process is no news).

        A table that cannot be read is never overwritten (the slots it records may be held):
        readers see it as empty, and a launch is refused with what to do.
        """
        path = self.path()
        self._folder(path)
        lock = self._lock(path)
        try:
            table, unknown, damaged = self._read(path)
            if damaged:
                self.log.error("the vGPU slot table %s is kept as it is: %s", path, damaged)
                if writing:
                    raise SlotTableUnavailable(
                        f"the vGPU slot table {path} cannot be read: {damaged}. It is kept as it is, as it may record "
                        "held vGPUs; stop this machine's vGPU kernels and delete it to start afresh")
            for kernel_id in unknown:
                self.log.warning("the vGPU slot table %s holds an entry %r it cannot read; it is kept", path, kernel_id)
            for kernel_id in [k for k, entry in table.items() if not self._held(entry)]:
                if kernel_id != releasing:
                    self.log.info("reclaiming the vGPU slot of kernel %s (its process is gone)", kernel_id)
                del table[kernel_id]
            yield table
            if not damaged:
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
                with os.fdopen(fd, "w") as handle:
                    json.dump({**unknown, **table}, handle, indent=1)
                os.replace(tmp, path)
        finally:
            os.close(lock)

    @staticmethod
    def _held(entry: dict[str, Any]) -> bool:
        if entry.get("pid"):
            return _alive(entry["pid"], entry.get("pid_start"))
        # Reserved, not yet started: held while the reserving server lives (and not forever).
        return (_alive(entry.get("owner_pid"), entry.get("owner_start"))
                and time.time() - entry.get("reserved_at", 0) < 600)

    def _usage(self, table: dict[str, Any]) -> dict[int, tuple[int, int]]:
        used: dict[int, tuple[int, int]] = {}
        for entry in table.values():
            for index, memory in entry["slots"]:
                slices, mib = used.get(index, (0, 0))
                used[index] = (slices + 1, mib + memory)
        return used

    def snapshot(self) -> PoolSnapshot:
        with self._table(writing=False) as table:
            return self._snapshot(table)

    def _snapshot(self, table: dict[str, Any]) -> PoolSnapshot:
        used = self._usage(table)
        host = socket.gethostname()
        nodes = []
        for device in self.devices():
            slices, mib = used.get(device.index, (0, 0))
            label = "cpu" if device.index < 0 else f"gpu{device.index}"
            nodes.append(NodePool(
                name=f"{host}/{label}",
                labels={"name": device.name},
                resources={
                    VGPU_RESOURCE: ResourceCount(device.slices, slices),
                    MEMORY_RESOURCE: ResourceCount(device.memory_mib, mib),
                },
                device_memory_mib=device.memory_mib,
            ))
        return PoolSnapshot(nodes=nodes, source="local")

    def holders(self) -> dict[str, dict[str, Any]]:
        with self._table(writing=False) as table:
            return dict(table)

    def reserve(self, kernel_id: str, user: str, request: VGPURequest) -> list[tuple[int, int]]:
        """Take ``request.count`` slots (one GPU each, most free memory first) or fail at once."""
        if request.count == 0:
            return []
        devices = self.devices()
        with self._table() as table:
            table.pop(kernel_id, None)  # a restart gives back what it held
            slots = self._fit(devices, table, request)
            if slots is None:
                raise KernelLaunchError("unschedulable", self._shortage_text(table, request))
            me = os.getpid()
            table[kernel_id] = {"user": user, "slots": slots, "request": request.as_dict(), "pid": None,
                                "owner_pid": me, "owner_start": _process_start(me), "reserved_at": time.time()}
        return slots

    def can_serve(self, request: VGPURequest) -> bool:
        """Whether reserve() would succeed now (nothing is taken)."""
        with self._table(writing=False) as table:
            return request.count == 0 or self._fit(self.devices(), table, request) is not None

    def _fit(self, devices: list[LocalDevice], table: dict[str, Any],
             request: VGPURequest) -> list[tuple[int, int]] | None:
        """Slots for ``request`` (one GPU each, most free memory first), or None when they do not fit."""
        used = self._usage(table)
        free = {d.index: [d.slices - used.get(d.index, (0, 0))[0], d.memory_mib - used.get(d.index, (0, 0))[1]]
                for d in devices}
        slots: list[tuple[int, int]] = []
        for _ in range(request.count):
            candidates = [i for i, (s, m) in free.items() if s > 0 and m >= request.memory_mib]
            if not candidates:
                return None
            index = max(candidates, key=lambda i: (free[i][1], -i))
            free[index][0] -= 1
            free[index][1] -= request.memory_mib
            slots.append((index, request.memory_mib))
        return slots

    def shortage(self, request: VGPURequest) -> str:
        """Why ``request`` cannot be served now, as reserve() would say it."""
        with self._table(writing=False) as table:
            return self._shortage_text(table, request)

    def _shortage_text(self, table: dict[str, Any], request: VGPURequest) -> str:
        pool = self._snapshot(table)
        oversize = pool.oversize_message(request.memory_mib)
        if oversize:
            return oversize
        if pool.totals()[VGPU_RESOURCE].free >= request.count:  # slots are free: memory is what is short
            return pool.memory_shortage_message(MEMORY_RESOURCE, request.memory_mib, request.count)
        return pool.shortage_message(VGPU_RESOURCE, request.count, VGPU_RESOURCE)

    def started(self, kernel_id: str, pid: int) -> None:
        with self._table() as table:
            if kernel_id in table:
                table[kernel_id].update(pid=pid, pid_start=_process_start(pid))

    def release(self, kernel_id: str) -> None:
        with self._table(releasing=kernel_id) as table:
            table.pop(kernel_id, None)
