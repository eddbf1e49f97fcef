"""The panel's live picture: memory in use against the grant over the last minutes, as an SVG for an
HTML widget (no front-end build), and this kernel's CPU and, where NVML gives them, GPU figures."""

from __future__ import annotations

import html
import time
from collections import deque
from typing import Any

import psutil

from .. import usage

WINDOW_S = 300.0
MIB = 1024 * 1024


class MemoryHistory:
    """(time, used bytes) samples of the last ``window_s`` seconds, and the grant (None: no vGPU)."""

    def __init__(self, window_s: float = WINDOW_S):
        self.window_s = window_s
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, used: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.samples.append((now, used))
        while self.samples and self.samples[0][0] < now - self.window_s:
            self.samples.popleft()

    def svg(self, limit: int | None, on_gpu: bool, width: int = 320, height: int = 72) -> str:
        """A polyline of memory used; with a grant, a dashed line at it and the scale up to it.
        Without a GPU the figure is this process's RAM, and it says so."""
        if not self.samples:
            return ""
        top = max([limit or 0, *(u for _, u in self.samples)]) or 1
        start = self.samples[-1][0] - self.window_s
        samples = list(self.samples)
        if len(samples) == 1:  # a level line from the left edge until the next sample
            samples.insert(0, (start, samples[0][1]))
        points = " ".join(f"{(t - start) / self.window_s * width:.1f},{height - u / top * (height - 4):.1f}"
                          for t, u in samples)
        used = self.samples[-1][1] / MIB
        what = "vGPU memory used" if on_gpu else "RAM used (no GPU: a CPU-only pool)"
        caption = f"{what}: {used:.0f} MiB" + (f" of {limit / MIB:.0f} MiB granted" if limit else "")
        grant = (f'<line x1="0" y1="4" x2="{width}" y2="4" stroke="#d32f2f" stroke-dasharray="4 3"/>'
                 if limit else "")
        span = f"last {self.window_s / 60:.0f} min"
        return (f'<div class="orion-chart" title="{html.escape(caption)}, {span}">'
                f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
                f'aria-label="{html.escape(caption)}" style="background:#f5f5f5">{grant}'
                f'<polyline fill="none" stroke="#1976d2" stroke-width="2" points="{points}"/></svg>'
                f'<div style="font-size:smaller">{html.escape(caption)} · {span}</div></div>')


def load_text(process: psutil.Process) -> str:
    """"CPU 12%" and, where NVML answers, "GPU 40% · 61 °C · 120 W"; nothing made up where it does not."""
    parts = [f"CPU {process.cpu_percent(interval=None):.0f}%"]
    gpu = gpu_figures()
    if gpu:
        parts += [f"{k} {v}" for k, v in gpu.items()]
    return " · ".join(parts)


def gpu_figures() -> dict[str, str]:
    """Utilisation, temperature and power of the first visible GPU from NVML; {} without one."""
    pynvml: Any = usage._nvml()
    if pynvml is None:
        return {}
    try:
        if pynvml.nvmlDeviceGetCount() == 0:
            return {}
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        return {"GPU": f"{pynvml.nvmlDeviceGetUtilizationRates(handle).gpu}%",
                "temp": f"{pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)} °C",
                "power": f"{pynvml.nvmlDeviceGetPowerUsage(handle) / 1000:.0f} W"}
    except Exception:  # noqa: BLE001 - a figure NVML does not give is left out, never shown as 0
        return {}
