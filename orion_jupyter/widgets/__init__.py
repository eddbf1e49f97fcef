"""The in-notebook vGPU panel: what this kernel was granted, what it uses, and a demo runner.

Stock ipywidgets only (no front-end build), kernel-side only (nothing server-side imported),
and importable without PyTorch: torch, the demos and matplotlib are imported when used.

    from orion_jupyter.widgets import VGPUPanel
    VGPUPanel()

Modules: :mod:`.allocation` (the allocation and memory as text, the slider rule; no widgets),
:mod:`.runner` (:class:`DemoRunner`; the demos come from :mod:`orion_jupyter.demos.registry`),
:mod:`.panel` (:class:`VGPUPanel`).
"""

from .allocation import (
    ALLOCATION_TITLES,
    MEMORY_CAP_MEANING,
    NOT_ORION,
    MemoryReading,
    SliderLimits,
    describe_allocation,
    describe_devices,
    read_memory,
    slider_limits,
    summarize_allocation,
    vgpu_memory_mib,
)
from .panel import VGPUPanel
from .runner import DemoRunner, DemoSettings

__all__ = [
    "VGPUPanel",
    "DemoRunner",
    "DemoSettings",
    "SliderLimits",
    "MemoryReading",
    "slider_limits",
    "vgpu_memory_mib",
    "read_memory",
    "describe_allocation",
    "summarize_allocation",
    "describe_devices",
    "ALLOCATION_TITLES",
    "MEMORY_CAP_MEANING",
    "NOT_ORION",
]
