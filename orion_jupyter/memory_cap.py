"""Caps a kernel's GPU memory at its vGPU memory when PyTorch or TensorFlow is imported.

Cooperative, not a hardware boundary: it sets the frameworks' own per-process limits
(``torch.cuda.set_per_process_memory_fraction``, TensorFlow's logical device memory limit), which
code in the kernel could undo. The local backend starts every kernel with ``install()``, and so
does a kernel pod whose backend does not enforce memory (NVIDIA whole GPUs / time-slicing) when its
image has orion-jupyter. ``STATUS`` says what was done per framework, for the user to read (the
widget shows the allocation's ``memory_cap`` mode from the environment, not ``STATUS``).

``install()`` is also the kernel's start hook: it makes the kernel's control-channel ``usage_reply``
report its vGPU memory in use (``usage.install_reply_hook``), with or without a cap to apply.
Kernel-side: imports nothing from the server.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable
from typing import Any

from .allocation import KernelAllocation
from .usage import HOOK, install_reply_hook

MIB = 1024 * 1024
STATUS: dict[str, str] = {}  # framework -> what was done, for the user (print it in the kernel)


def cap_torch(torch: Any, memory_mib: int) -> str:
    if not torch.cuda.is_available():
        return "no GPU present: PyTorch runs on the CPU, nothing to cap"
    parts = []
    for index in range(torch.cuda.device_count()):
        total = torch.cuda.get_device_properties(index).total_memory
        fraction = min(1.0, memory_mib * MIB / total)
        torch.cuda.set_per_process_memory_fraction(fraction, index)
        parts.append(f"cuda:{index} {fraction:.3f}")
    return f"capped at {memory_mib} MiB per device ({', '.join(parts)} of device memory)"


def cap_tensorflow(tf: Any, memory_mib: int) -> str:
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "no GPU present: TensorFlow runs on the CPU, nothing to cap"
    for gpu in gpus:
        tf.config.set_logical_device_configuration(gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=memory_mib)])
    return f"capped at {memory_mib} MiB per device ({len(gpus)} GPU(s))"


CAPS: dict[str, Callable[[Any, int], str]] = {"torch": cap_torch, "tensorflow": cap_tensorflow}


def _apply(name: str, module: Any, memory_mib: int) -> None:
    try:
        STATUS[name] = CAPS[name](module, memory_mib)
    except Exception as err:  # noqa: BLE001 - never break the user's import over the cap
        STATUS[name] = f"cap not applied: {err}"


class _CapOnImport(importlib.abc.MetaPathFinder):
    """Runs the framework's cap right after the framework module finishes importing."""

    def __init__(self, memory_mib: int):
        self.memory_mib = memory_mib

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in CAPS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        loader, memory_mib = spec.loader, self.memory_mib
        original_exec = loader.exec_module

        def exec_module(module: Any) -> None:
            original_exec(module)
            _apply(fullname, module, memory_mib)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install(environ: dict | None = None) -> str:
    """Cap frameworks already imported now and the others when they are imported.

    Also hooks the running kernel's ``usage_reply`` (a no-op outside a kernel). A backend that
    enforces memory itself (``memory_cap=enforced``) gets the hook and no framework cap.
    """
    try:
        install_reply_hook()
    except Exception as err:  # noqa: BLE001 - never break the kernel's start over the report
        HOOK["usage_reply"] = f"usage_reply hook not installed: {err}"
    allocation = KernelAllocation.from_env(environ)
    if allocation is None or not allocation.vgpus or not allocation.memory_mib:
        return "no vGPU memory granted: nothing to cap"
    if allocation.memory_cap == "enforced":
        backend = allocation.backend or "vGPU"
        return f"vGPU memory of {allocation.memory_mib} MiB enforced by the {backend} backend: no framework cap"
    for name in CAPS:
        if name in sys.modules:
            _apply(name, sys.modules[name], allocation.memory_mib)
    if not any(isinstance(f, _CapOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _CapOnImport(allocation.memory_mib))
    return f"vGPU memory cap of {allocation.memory_mib} MiB installed (cooperative)"


def load_ipython_extension(ipython: Any) -> None:
    """The kernel's start hook, as an IPython extension (``KERNEL_ARGUMENT``)."""
    install()


# Loads the hook in an IPython kernel. ``extra_extensions`` is IPython's list for the command line, so the
# user's own ``c.IPKernelApp.exec_lines`` / ``extensions`` (ipython_kernel_config.py) stay as they are.
KERNEL_ARGUMENT = "--IPKernelApp.extra_extensions=orion_jupyter.memory_cap"


def runs_ipykernel(argv: Any) -> bool:
    """Whether a kernel spec's command starts an IPython kernel (the hook is an ipykernel option)."""
    return any(isinstance(arg, str) and arg.split(".")[0] in ("ipykernel_launcher", "ipykernel") for arg in argv or ())
