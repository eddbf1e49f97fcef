"""This kernel's vGPU memory in use, and the hook that reports it on ipykernel's ``usage_request``.

``sample()`` reads the memory this kernel holds, from the best source it has:

- ``torch``: PyTorch's caching allocator (``memory_reserved``, with ``memory_allocated`` beside it),
  summed over the visible CUDA devices, when the user's code has imported torch and it has
  initialised CUDA (also, at 0 bytes, when CUDA works but NVML cannot be read);
- ``nvml``: this process's used memory on each visible device from NVML (nvidia-ml-py), where a
  device is visible and torch is not using it (any framework's memory, CUDA contexts included);
- ``rss``: the resident memory of the kernel process, on the CPU (no GPU visible), and it says so.

``install_reply_hook()`` (run at kernel start by ``memory_cap.install()``) makes the kernel's
control-channel ``usage_reply`` carry an ``orion_vgpu`` entry with the sample, so the server reads
it without an execute request (nothing in the user's history, no user activity). ipykernel >= 6.11
answers ``usage_request`` itself and the hook wraps its handler; on an older one the hook answers
it. Kernel-side and pure Python: torch and pynvml are read only when already imported or
installed, and nothing from the server is imported.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
from typing import Any

REPLY_KEY = "orion_vgpu"  # the usage_reply content entry this module adds
HOOK: dict[str, str] = {}  # "usage_reply" -> what install_reply_hook() did, for the user

_NVML = {"state": "unknown"}  # "ok" once nvmlInit() worked, "unavailable" after it failed
_NVML_LOCK = threading.Lock()


# -- reading -------------------------------------------------------------------------------------
def process_rss(pid: int | None = None) -> int:
    """Resident set size of a process (this one by default), in bytes."""
    try:
        import psutil

        return int(psutil.Process(pid).memory_info().rss)
    except Exception:  # noqa: BLE001 - psutil missing or the process is gone: read /proc
        pass
    try:
        with open(f"/proc/{pid or 'self'}/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource  # peak, not current: the last resort

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _torch_sample(*, initialized_only: bool) -> dict[str, Any] | None:
    """PyTorch's view, only when the user's code imported torch (never imported here)."""
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    if cuda is None or not cuda.is_available():
        return None
    initialized = bool(getattr(cuda, "is_initialized", lambda: True)())
    if initialized_only and not initialized:
        return None  # torch holds no GPU memory yet: another framework may, which NVML would show
    devices = []
    # Before CUDA is initialised memory_stats() is empty (0 bytes): reading creates no CUDA context.
    for index in range(cuda.device_count()):
        devices.append({"index": index, "memory_reserved": int(cuda.memory_reserved(index)),
                        "memory_allocated": int(cuda.memory_allocated(index))})
    return {
        "memory_used": sum(d["memory_reserved"] for d in devices),
        "memory_allocated": sum(d["memory_allocated"] for d in devices),
        "source": "torch",
        "devices": devices,
        "note": "PyTorch's caching allocator, reserved bytes (the CUDA context itself is not counted)"
                if initialized else "PyTorch has not initialised CUDA yet: it holds no GPU memory",
    }


def _visible_device_ids() -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as a list ([] hides every device), or None when it is not set."""
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    ids = []
    for part in raw.split(","):
        part = part.strip()
        if not part or part.startswith("-"):
            break  # CUDA stops at the first invalid entry
        ids.append(part)
    return ids


def _nvml() -> Any | None:
    """pynvml, initialised once, or None when nvidia-ml-py or the driver is missing."""
    if _NVML["state"] == "unavailable":
        return None
    if "pynvml" not in sys.modules and importlib.util.find_spec("pynvml") is None:
        _NVML["state"] = "unavailable"
        return None
    import pynvml

    with _NVML_LOCK:
        if _NVML["state"] == "unknown":
            try:
                pynvml.nvmlInit()
                _NVML["state"] = "ok"
            except Exception:  # noqa: BLE001 - no driver / no library: no NVML source
                _NVML["state"] = "unavailable"
                return None
    return pynvml


def _own_pids() -> set[int]:
    pids = {os.getpid()}
    try:
        import psutil

        pids.update(child.pid for child in psutil.Process().children(recursive=True))
    except Exception:  # noqa: BLE001 - without psutil: this process only
        pass
    return pids


def _nvml_sample() -> dict[str, Any] | None:
    visible = _visible_device_ids()
    if visible == []:
        return None  # every GPU hidden from this kernel
    pynvml = _nvml()
    if pynvml is None:
        return None
    try:
        if visible is None:
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        else:
            handles = [pynvml.nvmlDeviceGetHandleByUUID(v) if not v.isdigit() else
                       pynvml.nvmlDeviceGetHandleByIndex(int(v)) for v in visible]
    except Exception:  # noqa: BLE001 - a device NVML cannot name: no NVML source
        return None
    if not handles:
        return None
    pids, devices = _own_pids(), []
    for index, handle in enumerate(handles):
        used, matched = 0, False
        try:
            processes = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except Exception:  # noqa: BLE001
            processes = []
        for process in processes:
            if process.pid in pids:
                matched = True
                used += int(process.usedGpuMemory or 0)  # None: not available on this platform
        devices.append({"index": index, "memory_used": used, "process_found": matched})
    found = any(d["process_found"] for d in devices)
    return {
        "memory_used": sum(d["memory_used"] for d in devices),
        "source": "nvml",
        "devices": devices,
        "note": "NVML, per-process used memory on the visible devices" + (
            "" if found else "; no process of this kernel on them (NVML lists host PIDs: inside a container"
                             " it may not see the kernel's own use)"),
    }


def sample() -> dict[str, Any]:
    """This kernel's memory in use: ``memory_used`` (bytes), ``source``, ``devices``, ``note``. Never raises."""
    # torch once it uses CUDA; else NVML (any framework); else torch's 0 bytes; else the CPU's RSS.
    readers = (lambda: _torch_sample(initialized_only=True), _nvml_sample,
               lambda: _torch_sample(initialized_only=False))
    for reader in readers:
        try:
            result = reader()
        except Exception:  # noqa: BLE001 - a broken framework must not break the reply
            result = None
        if result is not None:
            return result
    return {
        "memory_used": process_rss(),
        "source": "rss",
        "devices": [],
        "note": "no GPU in use or visible: the resident memory of the kernel process, on the CPU",
    }


# -- the usage_reply hook ------------------------------------------------------------------------
def _running_kernel() -> Any | None:
    app_module = sys.modules.get("ipykernel.kernelapp")
    if app_module is not None and app_module.IPKernelApp.initialized():
        kernel = getattr(app_module.IPKernelApp.instance(), "kernel", None)
        if kernel is not None:
            return kernel
    ipython_module = sys.modules.get("IPython")
    shell = ipython_module.get_ipython() if ipython_module is not None else None
    return getattr(shell, "kernel", None)


def _hook_session(kernel: Any, pending: dict[str, dict]) -> None:
    """Adds the pending sample to the usage_reply that answers its request (by the request's msg_id)."""
    session = kernel.session
    if getattr(session.send, "_orion_usage", False):
        return
    original_send = session.send

    def send(stream: Any, msg_or_type: Any, content: Any = None, parent: Any = None, *args: Any, **kwargs: Any):
        if msg_or_type == "usage_reply" and isinstance(content, dict) and isinstance(parent, dict):
            extra = pending.pop(parent.get("header", {}).get("msg_id", ""), None)
            if extra is not None:
                content = {**content, REPLY_KEY: extra}
        return original_send(stream, msg_or_type, content, parent, *args, **kwargs)

    send._orion_usage = True  # type: ignore[attr-defined]
    session.send = send


def install_reply_hook(kernel: Any = None) -> str:
    """Make this kernel's ``usage_reply`` carry ``orion_vgpu`` (the sample); a no-op outside ipykernel."""
    kernel = kernel if kernel is not None else _running_kernel()
    handlers = getattr(kernel, "control_handlers", None)
    if not isinstance(handlers, dict) or getattr(kernel, "session", None) is None:
        HOOK["usage_reply"] = "not in an ipykernel: no usage_reply to extend"
        return HOOK["usage_reply"]
    original = handlers.get("usage_request")
    if getattr(original, "_orion_usage", False):
        return HOOK["usage_reply"]
    pending: dict[str, dict] = {}
    _hook_session(kernel, pending)

    if original is not None:
        async def usage_request(stream: Any, ident: Any, parent: dict) -> None:
            msg_id = parent.get("header", {}).get("msg_id", "")
            pending[msg_id] = sample()
            try:
                result = original(stream, ident, parent)
                if hasattr(result, "__await__"):
                    await result
            finally:
                pending.pop(msg_id, None)

        HOOK["usage_reply"] = "usage_reply carries orion_vgpu (ipykernel's handler, wrapped)"
    else:
        # ipykernel < 6.11 has no usage_request: answer it, with ipykernel's memory field as well.
        async def usage_request(stream: Any, ident: Any, parent: dict) -> None:
            import socket

            content = {"hostname": socket.gethostname(), "pid": os.getpid(), "kernel_memory": process_rss(),
                       REPLY_KEY: sample()}
            kernel.session.send(stream, "usage_reply", content, parent, ident)

        HOOK["usage_reply"] = "usage_reply answered by orion-jupyter (this ipykernel has no usage_request)"
    usage_request._orion_usage = True  # type: ignore[attr-defined]
    handlers["usage_request"] = usage_request
    return HOOK["usage_reply"]
