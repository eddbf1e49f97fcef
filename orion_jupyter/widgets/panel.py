"""The in-notebook vGPU panel: what this kernel was granted, what it uses, and the demo runner."""

from __future__ import annotations

import html
import threading
from collections.abc import Mapping
from typing import Any

import ipywidgets as widgets
import psutil

from ..allocation import KernelAllocation
from ..demos.registry import DemoSettings
from .allocation import (
    ALLOCATION_TITLES,
    MemoryReading,
    describe_allocation,
    describe_devices,
    read_memory,
    slider_limits,
    summarize_allocation,
    vgpu_memory_mib,
)
from .chart import MemoryHistory, load_text
from .runner import DemoRunner

__all__ = ["VGPUPanel"]


class VGPUPanel(widgets.VBox):
    """This kernel's vGPU: allocation, devices, live memory use, and a demo runner.

    ``allocation`` defaults to ``KernelAllocation.from_env(environ)``. Memory is re-read every
    ``refresh_s`` seconds by a background thread while the panel is shown (the front end counts
    its views) and stops when the panel is closed; :meth:`refresh` reads it at once.
    ``settings`` go to the demo runner (:class:`DemoSettings`).
    """

    def __init__(
        self,
        allocation: KernelAllocation | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        settings: DemoSettings | None = None,
        refresh_s: float = 2.0,
        monitor: bool = True,
        **kwargs: Any,
    ):
        self.allocation = allocation if allocation is not None else KernelAllocation.from_env(environ)
        self.refresh_s = refresh_s
        title = widgets.HTML(value="<b>vGPU kernel</b>")

        self.summary = widgets.Label(value=summarize_allocation(self.allocation))
        self.allocation_labels: dict[str, widgets.Label] = {}
        cells = []
        for key, text in describe_allocation(self.allocation).items():
            label = widgets.Label(value=text)
            self.allocation_labels[key] = label
            cells += [widgets.Label(value=ALLOCATION_TITLES[key] + ":"), label]
        self.allocation_grid = widgets.GridBox(
            cells, layout=widgets.Layout(grid_template_columns="max-content auto", grid_gap="0 12px")
        )

        self.devices_label = widgets.HTML(
            value="<br>".join(html.escape(line) for line in describe_devices(self.allocation))
        )
        self.memory_bar = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, description="memory")
        self.memory_label = widgets.Label(value="")
        self.history = MemoryHistory()
        self.chart = widgets.HTML(value="")
        self.load = widgets.Label(value="")
        self._process = psutil.Process()
        self._process.cpu_percent(interval=None)  # the first reading starts the measurement
        # ipykernel's subshells would need the front end to open one; a thread's comm messages
        # reach the page while a cell runs in any ipykernel.
        self.updates = widgets.HTML(value=f"<small>updates every {refresh_s:g} s from a background thread "
                                          "(comm messages), also while a cell runs</small>")
        self.refreshes = 0
        self.runner = DemoRunner(slider_limits(vgpu_memory_mib(self.allocation)), settings)
        self.runner.plot.observe(lambda _change: self.refresh(), names="outputs")

        # The allocation in full (its one-line summary is at the top): folded, for a compact card.
        self.details = widgets.Accordion(children=[self.allocation_grid], selected_index=None)
        self.details.set_title(0, "allocation details")
        super().__init__(
            children=[
                widgets.HBox([title, self.summary]),
                self.chart,
                self.load,
                widgets.HBox([self.memory_bar, self.memory_label]),
                self.updates,
                self.details,
                widgets.HTML(value="<b>devices</b>"),
                self.devices_label,
                widgets.HTML(value="<b>demo</b>"),
                self.runner,
            ],
            **kwargs,
        )
        self.refresh()
        self._monitor_stop = threading.Event()
        self._monitor: threading.Thread | None = None
        if monitor:
            self._view_count = 0  # ask the front end to count views: refresh only while shown
            self.start_monitor()

    def refresh(self) -> MemoryReading:
        """Re-read memory use and update the bar and its label."""
        reading = read_memory(self.allocation)
        self.refreshes += 1
        self.memory_label.value = reading.text
        self.history.add(reading.used)
        self.chart.value = self.history.svg(reading.limit, reading.on_gpu)
        self.load.value = load_text(self._process)
        if reading.fraction is None:
            self.memory_bar.layout.display = "none"
            self.memory_bar.value = 0.0
        else:
            self.memory_bar.layout.display = None
            self.memory_bar.value = reading.fraction
            self.memory_bar.bar_style = (
                "danger" if reading.fraction >= 0.9 else "warning" if reading.fraction >= 0.7 else "success"
            )
        return reading

    @property
    def visible(self) -> bool:
        """Shown in a front end (or view counting is off)."""
        return self._view_count is None or self._view_count > 0

    def start_monitor(self) -> None:
        if self._monitor is not None and self._monitor.is_alive():
            return
        self._monitor_stop.clear()
        self._monitor = threading.Thread(target=self._monitor_loop, name="orion-vgpu-monitor", daemon=True)
        self._monitor.start()

    def stop_monitor(self, timeout: float = 5.0) -> None:
        self._monitor_stop.set()
        if self._monitor is not None and self._monitor is not threading.current_thread():
            self._monitor.join(timeout)

    @property
    def monitoring(self) -> bool:
        return self._monitor is not None and self._monitor.is_alive()

    def _monitor_loop(self) -> None:
        while not self._monitor_stop.wait(self.refresh_s):
            if self.comm is None:  # closed elsewhere
                return
            if self.visible:
                try:
                    self.refresh()
                except Exception as exc:  # keep the kernel quiet; say it once in the label
                    self.memory_label.value = f"memory reading failed: {exc}"
                    return

    def close(self) -> None:
        """Stop the memory monitor and any running demo, then close every widget."""
        self.stop_monitor()
        self.runner.stop()
        for child in self._all_children(self):
            if child is not self:
                child.close()
        super().close()

    @staticmethod
    def _all_children(widget: widgets.Widget) -> list[widgets.Widget]:
        found = []
        for child in getattr(widget, "children", ()):
            found.append(child)
            found.extend(VGPUPanel._all_children(child))
        return found
