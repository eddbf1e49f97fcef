"""The in-notebook vGPU panel: what this kernel was granted, what it uses, and a demo runner.

Stock ipywidgets only (no front-end build), kernel-side only (nothing server-side imported),
and importable without PyTorch: torch, the demos and matplotlib are imported when used.

    from orion_jupyter.widgets import VGPUPanel
    VGPUPanel()

Slider rule (:func:`slider_limits`), from M = vGPU memory per vGPU in MiB (the allocation's
``memory_mib``; without an allocation, the first CUDA device's total memory; on CPU, none):

* batch size: powers of two from 16 up to the largest power of two <= M - 512 (512 MiB are
  kept for the CUDA context and the framework, and about 1 MiB per image covers the demos'
  activations, gradients and the triplet tensor with room to spare), at most 2048:
  1 GiB -> 512, 2 GiB -> 1024, 3 GiB or more -> 2048; on CPU 256 (time, not memory, bounds it).
* epochs: 5 per GiB of M, between 5 and 50 (1 GiB -> 5, 4 GiB -> 20, 10 GiB or more -> 50);
  on CPU 5. A bigger slice is a bigger share of the GPU on Orion and HAMi, so longer runs fit.
* defaults: batch size min(128, max); epochs min(2, max).
"""

from __future__ import annotations

import html
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Optional

import ipywidgets as widgets

from .allocation import KernelAllocation

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
    "MEMORY_CAP_MEANING",
]

MIB = 1024 * 1024
CONTEXT_RESERVE_MIB = 512
MIB_PER_IMAGE = 1
BATCH_MIN, BATCH_CAP, CPU_BATCH_MAX = 16, 2048, 256
EPOCHS_PER_GIB, EPOCHS_MIN, EPOCHS_CAP, CPU_EPOCHS_MAX = 5, 5, 50, 5

MEMORY_CAP_MEANING = {
    "enforced": "enforced: the vGPU layer refuses allocations beyond the slice",
    "cooperative": "cooperative: the framework was asked to stay within the slice; code can exceed it",
    "none": "none: nothing limits GPU memory in this kernel",
}

NOT_ORION = "not started by orion-jupyter: no vGPU allocation (a plain kernel)"


# ------------------------------------------------------------------------------------------
# Pure helpers (tested without widgets)


@dataclass(frozen=True)
class SliderLimits:
    """Limits and defaults of the runner's sliders, and the sentence that explains them."""

    batch_max: int
    batch_default: int
    epochs_max: int
    epochs_default: int
    basis: str

    @property
    def batch_options(self) -> list[int]:
        sizes, size = [], BATCH_MIN
        while size <= self.batch_max:
            sizes.append(size)
            size *= 2
        return sizes


def _pow2_floor(value: float) -> int:
    return 1 << int(math.floor(math.log2(value))) if value >= 1 else 1


def slider_limits(memory_mib: Optional[int]) -> SliderLimits:
    """The rule in this module's docstring: ``memory_mib`` per vGPU, or None on CPU."""
    if not memory_mib or memory_mib <= 0:
        batch_max, epochs_max = CPU_BATCH_MAX, CPU_EPOCHS_MAX
        basis = "no GPU memory to size for: CPU limits"
    else:
        usable = max(memory_mib - CONTEXT_RESERVE_MIB, 0) / MIB_PER_IMAGE
        batch_max = min(max(_pow2_floor(usable), BATCH_MIN), BATCH_CAP)
        epochs_max = min(max(int(EPOCHS_PER_GIB * memory_mib / 1024), EPOCHS_MIN), EPOCHS_CAP)
        basis = (
            f"sized for {memory_mib} MiB per vGPU: batch <= {batch_max}"
            f" ({CONTEXT_RESERVE_MIB} MiB kept for CUDA, ~{MIB_PER_IMAGE} MiB per image), epochs <= {epochs_max}"
        )
    return SliderLimits(batch_max, min(128, batch_max), epochs_max, min(2, epochs_max), basis)


def _torch_module(import_it: bool = False) -> Any:
    """torch if it is (or, with ``import_it``, can be) imported; else None."""
    if "torch" in sys.modules:
        return sys.modules["torch"]
    if not import_it:
        return None
    try:
        import torch
    except ImportError:
        return None
    return torch


def vgpu_memory_mib(allocation: Optional[KernelAllocation]) -> Optional[int]:
    """Memory per vGPU: the allocation's, else the first CUDA device's total, else None (CPU)."""
    if allocation is not None and allocation.memory_mib > 0:
        return allocation.memory_mib
    torch = _torch_module(import_it=True)
    if torch is not None and torch.cuda.is_available():
        return int(_device_totals(torch)[0] // MIB)
    return None


def _fmt_mib(value_mib: float) -> str:
    return f"{value_mib / 1024:.1f} GiB" if value_mib >= 1024 else f"{value_mib:.0f} MiB"


def describe_allocation(allocation: Optional[KernelAllocation]) -> dict[str, str]:
    """Field title -> text, for people: what this kernel was granted."""
    if allocation is None:
        return {}
    a = allocation
    pod = "/".join(part for part in (a.namespace, a.pod_name) if part)
    return {
        "cluster": a.cluster or "?",
        "backend": a.backend or "?",
        "vgpus": str(a.vgpus),
        "memory": (
            f"{a.memory_mib} MiB per vGPU ({_fmt_mib(a.memory_mib)}"
            + (f", {_fmt_mib(a.memory_mib * a.vgpus)} in all)" if a.vgpus > 1 else ")")
            if a.memory_mib
            else "not set"
        ),
        "compute": f"{a.compute_percent}% of a GPU" if a.compute_percent is not None else "not limited",
        "node": a.node_name or "-",
        "pod": pod or ("local process" if a.cluster == "local" else "-"),
        "memory_cap": MEMORY_CAP_MEANING.get(a.memory_cap, a.memory_cap),
        "kernel": " · ".join(part for part in (a.kernel_id, a.user and f"user {a.user}") if part) or "-",
    }


def summarize_allocation(allocation: Optional[KernelAllocation]) -> str:
    """One line: what this kernel holds, or that orion-jupyter did not start it."""
    if allocation is None:
        return NOT_ORION
    a = allocation
    parts = [f"{a.cluster or '?'} · {a.backend or '?'}", f"{a.vgpus} vGPU" + ("s" if a.vgpus != 1 else "")]
    if a.memory_mib:
        parts[-1] += f" × {_fmt_mib(a.memory_mib)}"
    if a.compute_percent is not None:
        parts.append(f"{a.compute_percent}% compute")
    if a.pod_name:
        parts.append(f"pod {a.pod_name}" + (f" on {a.node_name}" if a.node_name else ""))
    elif a.node_name:
        parts.append(f"on {a.node_name}")
    parts.append(f"memory cap {a.memory_cap}")
    return " · ".join(parts)


ALLOCATION_TITLES = {
    "cluster": "cluster",
    "backend": "backend",
    "vgpus": "vGPUs",
    "memory": "vGPU memory",
    "compute": "compute share",
    "node": "node",
    "pod": "pod",
    "memory_cap": "memory cap",
    "kernel": "kernel",
}


def describe_devices(allocation: Optional[KernelAllocation] = None) -> list[str]:
    """One line per device the framework sees, or why there is none."""
    torch = _torch_module(import_it=True)
    if torch is None:
        return ["PyTorch is not installed in this kernel: no framework devices to show"]
    if not torch.cuda.is_available():
        lines = [f"no GPU: running on CPU (PyTorch {torch.__version__}, {torch.get_num_threads()} threads)"]
        if allocation is not None and allocation.vgpus > 0:
            lines.append(
                f"this kernel was granted {allocation.vgpus} vGPU(s) but PyTorch sees no CUDA device:"
                " check that the image has a CUDA build of PyTorch and that the vGPU runtime is reachable"
            )
        return lines
    from .demos.common import cuda_devices

    return [str(d) for d in cuda_devices()]


class MemoryReading(NamedTuple):
    """This process's memory: on GPU, PyTorch's allocated/reserved bytes against the limit."""

    on_gpu: bool
    used: int  # bytes: torch allocated (GPU) or resident set size (CPU)
    reserved: int  # bytes held by PyTorch's caching allocator (GPU), 0 on CPU
    limit: Optional[int]  # bytes of vGPU memory, None on CPU
    text: str

    @property
    def fraction(self) -> Optional[float]:
        if not self.limit:
            return None
        return min(max(self.reserved, self.used) / self.limit, 1.0)


def _process_rss() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:
        pass
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


_TOTALS: list[int] = []


def _device_totals(torch: Any) -> list[int]:
    """Total bytes of each CUDA device, read once (reading them creates a CUDA context)."""
    if not _TOTALS:
        _TOTALS.extend(
            int(torch.cuda.get_device_properties(i).total_memory) for i in range(torch.cuda.device_count())
        )
    return _TOTALS


def read_memory(allocation: Optional[KernelAllocation]) -> MemoryReading:
    """PyTorch's GPU memory of this process against the vGPU memory; on CPU, the process RSS.

    Reading does not create a CUDA context (``memory_allocated`` is 0 before one exists).
    """
    torch = _torch_module()
    if torch is not None and torch.cuda.is_available():
        count = torch.cuda.device_count()
        allocated = sum(int(torch.cuda.memory_allocated(i)) for i in range(count))
        reserved = sum(int(torch.cuda.memory_reserved(i)) for i in range(count))
        if allocation is not None and allocation.memory_mib > 0:
            limit = allocation.memory_mib * max(allocation.vgpus, 1) * MIB
            of = "vGPU memory"
        else:
            limit = sum(_device_totals(torch))
            of = "GPU memory"
        share = max(allocated, reserved) / limit if limit else 0.0
        text = (
            f"PyTorch: {_fmt_mib(allocated / MIB)} allocated, {_fmt_mib(reserved / MIB)} reserved"
            f" of {_fmt_mib(limit / MIB)} {of} ({share:.0%})"
        )
        return MemoryReading(True, allocated, reserved, limit, text)
    rss = _process_rss()
    text = f"no GPU: this process uses {_fmt_mib(rss / MIB)} of CPU memory (RSS); there is no vGPU memory to compare it with"
    return MemoryReading(False, rss, 0, None, text)


# ------------------------------------------------------------------------------------------
# Demo runner


@dataclass
class DemoSettings:
    """What the runner passes to the demos beyond the sliders; tests shrink these.

    ``data_root`` is MNIST's data folder (default ``$ORION_JUPYTER_DATA_DIR`` or
    ``~/.cache/orion-jupyter/mnist``); ``limit_*`` keep the first N images; ``download``
    lets torchvision fetch MNIST when absent. FaceNet: synthetic identities for training,
    steps per epoch, and unseen people shown in the heatmap. ``*_kwargs`` go to the demo
    functions as they are.
    """

    device: Optional[str] = None
    data_root: Optional[str | Path] = None
    limit_train: Optional[int] = None
    limit_test: Optional[int] = None
    download: bool = True
    mnist_lr: float = 1e-3
    facenet_identities: int = 200
    facenet_steps_per_epoch: Optional[int] = None
    facenet_holdout: int = 4
    mnist_kwargs: dict = field(default_factory=dict)
    facenet_kwargs: dict = field(default_factory=dict)


DEMOS = ("MNIST", "FaceNet")
_UI_INTERVAL_S = 0.2


class DemoRunner(widgets.VBox):
    """Pick a demo, epochs and batch size; Run trains in a background thread, Stop ends it.

    From code: ``runner.run(wait=True)`` (or :meth:`run_blocking`) runs the same way and
    returns the result (re-raising the demo's error); ``runner.run()`` returns at once,
    ``runner.wait()`` joins. ``runner.settings`` (a :class:`DemoSettings`) holds the rest.
    """

    def __init__(
        self, limits: Optional[SliderLimits] = None, settings: Optional[DemoSettings] = None, **kwargs: Any
    ):
        self.limits = limits or slider_limits(None)
        self.settings = settings or DemoSettings()
        self.demo = widgets.Dropdown(options=list(DEMOS), value="MNIST", description="demo")
        self.epochs = widgets.IntSlider(
            value=self.limits.epochs_default, min=1, max=self.limits.epochs_max, description="epochs"
        )
        self.batch_size = widgets.SelectionSlider(
            options=self.limits.batch_options, value=self.limits.batch_default, description="batch size"
        )
        self.run_button = widgets.Button(description="Run", button_style="primary", icon="play")
        self.stop_button = widgets.Button(
            description="Stop", button_style="warning", icon="stop", disabled=True
        )
        self.progress = widgets.IntProgress(value=0, min=0, max=100, description="progress")
        self.status = widgets.Label(value="ready")
        self.throughput = widgets.Label(value="images/s: -")
        self.plot = widgets.Output()
        self.rule = widgets.HTML(value=f"<small>{html.escape(self.limits.basis)}</small>")
        self.run_button.on_click(lambda _button: self.run())
        self.stop_button.on_click(lambda _button: self.stop())
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.history: list[Any] = []  # TrainingProgress reports with epoch_done=True, this run
        self.on_progress: Optional[Any] = None  # extra hook, called with every report
        self._thread: Optional[threading.Thread] = None
        self._stop_event = threading.Event()
        self._last_ui = 0.0
        self._mnist_data: dict[tuple, Any] = {}
        super().__init__(
            children=[
                widgets.HBox([self.demo, self.run_button, self.stop_button]),
                widgets.HBox([self.epochs, self.batch_size]),
                self.rule,
                widgets.HBox([self.progress, self.throughput]),
                self.status,
                self.plot,
            ],
            **kwargs,
        )

    # -- control ----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run(self, wait: bool = False, timeout: Optional[float] = None) -> Any:
        """Start the selected demo in a background thread; with ``wait`` join it and return
        its result (or raise its error)."""
        if self.running:
            if wait:
                raise RuntimeError("a demo is already running")
            return None
        self._stop_event.clear()
        self._last_ui = 0.0
        self.result, self.error, self.history = None, None, []
        self._set_running(True)
        self.progress.value, self.progress.bar_style = 0, ""
        self.throughput.value = "images/s: -"
        self.status.value = (
            f"starting {self.demo.value} ({self.epochs.value} epochs, batch {self.batch_size.value})"
        )
        self.plot.outputs = ()
        self._thread = threading.Thread(target=self._work, name=f"orion-demo-{self.demo.value}", daemon=True)
        self._thread.start()
        if wait:
            return self.wait(timeout)
        return None

    def run_blocking(self, timeout: Optional[float] = None) -> Any:
        """``run(wait=True)``."""
        return self.run(wait=True, timeout=timeout)

    def wait(self, timeout: Optional[float] = None) -> Any:
        """Join the running demo; return its result or raise its error."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"the demo is still running after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result

    def stop(self) -> None:
        """Ask the running demo to stop before its next step."""
        if self.running:
            self._stop_event.set()
            self.status.value = "stopping…"

    def close(self) -> None:
        self._stop_event.set()
        super().close()

    # -- work -------------------------------------------------------------------------------

    def _set_running(self, running: bool) -> None:
        self.run_button.disabled = running
        self.stop_button.disabled = not running
        for control in (self.demo, self.epochs, self.batch_size):
            control.disabled = running

    def _work(self) -> None:
        demo = self.demo.value
        try:
            if demo == "MNIST":
                self.result = self._run_mnist()
            else:
                self.result = self._run_facenet()
            stopped = getattr(self.result, "stopped", False)
            summary = self.result.summary()
            if stopped:
                self.status.value = f"stopped: {summary}"
                self.progress.bar_style = "warning"
            else:
                self.progress.value = self.progress.max
                self.progress.bar_style = "success"
                self.status.value = summary
            if self.result.history:
                self.throughput.value = (
                    f"images/s: {self.result.images_per_s:,.0f} on {self.result.device_name}"
                )
        except BaseException as exc:  # shown in the panel, re-raised by wait()
            self.error = exc
            self.progress.bar_style = "danger"
            self.status.value = f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            self.plot.outputs = (
                {"output_type": "stream", "name": "stderr", "text": f"{type(exc).__name__}: {exc}\n"},
            )
        finally:
            self._set_running(False)

    def _report(self, report: Any) -> None:
        if self.on_progress is not None:
            self.on_progress(report)
        now = time.monotonic()
        if report.epoch_done:
            self.history.append(report)
        if not report.epoch_done and now - self._last_ui < _UI_INTERVAL_S and report.fraction < 1.0:
            return
        self._last_ui = now
        self.progress.value = min(int(report.fraction * self.progress.max), self.progress.max)
        self.throughput.value = f"images/s: {report.images_per_s:,.0f}"
        text = f"epoch {report.epoch}/{report.epochs} · step {report.step}/{report.steps} · loss {report.loss:.4f}"
        if report.accuracy is not None:
            text += f" · test accuracy {report.accuracy:.1%}"
        self.status.value = text

    def _show(self, fig: Any, text: str) -> None:
        from .demos.common import figure_png, png_display_output

        self.plot.outputs = (png_display_output(figure_png(fig), text),)

    def _run_mnist(self) -> Any:
        from .demos import mnist
        from .demos.common import EpochStats, device_name, resolve_device

        s = self.settings
        key = (str(s.data_root), s.limit_train, s.limit_test)
        if key not in self._mnist_data:
            self.status.value = "loading MNIST…"
            self._mnist_data[key] = mnist.load_data(
                s.data_root, download=s.download, limit_train=s.limit_train, limit_test=s.limit_test
            )
        data = self._mnist_data[key]
        device = device_name(resolve_device(s.device))

        def progress(report: Any) -> None:
            self._report(report)
            if report.epoch_done:
                partial = mnist.MNISTResult(
                    history=[
                        EpochStats(r.epoch, r.loss, r.images_per_s, 0.0, r.accuracy) for r in self.history
                    ],
                    device="",
                    device_name=device,
                    train_size=0,
                    test_size=0,
                    batch_size=self.batch_size.value,
                    epochs_requested=report.epochs,
                )
                self._show(mnist.plot_history(partial), f"MNIST after epoch {report.epoch}")

        return self._train(mnist.train, mnist.plot_history, progress,
                           **{"lr": s.mnist_lr, "data": data, "seed": None, **s.mnist_kwargs})

    def _run_facenet(self) -> Any:
        from .demos import facenet
        from .demos.common import device_name, new_figure, resolve_device

        s = self.settings
        device = device_name(resolve_device(s.device))

        def progress(report: Any) -> None:
            self._report(report)
            if report.epoch_done:
                fig = new_figure(4.5, 3.0)
                ax = fig.subplots()
                ax.plot(
                    [r.epoch for r in self.history], [r.loss for r in self.history], "o-", color="tab:purple"
                )
                ax.set_title(f"triplet loss · {device}")
                ax.set_xlabel("epoch")
                ax.grid(alpha=0.3)
                self._show(fig, f"triplet loss after epoch {report.epoch}")

        return self._train(facenet.train_triplet, facenet.plot_triplet, progress,
                           facenet.SyntheticIdentities(s.facenet_identities),
                           **{"steps_per_epoch": s.facenet_steps_per_epoch, "holdout": s.facenet_holdout,
                              "seed": None, **s.facenet_kwargs})

    def _train(self, train: Any, plot: Any, progress: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a demo's training with the sliders' settings; plot its result when it has one."""
        result = train(*args, epochs=self.epochs.value, batch_size=self.batch_size.value, device=self.settings.device,
                       progress=progress, should_stop=self._stop_event.is_set, **kwargs)
        if result.history:
            self._show(plot(result), result.summary())
        return result


# ------------------------------------------------------------------------------------------
# The panel


class VGPUPanel(widgets.VBox):
    """This kernel's vGPU: allocation, devices, live memory use, and a demo runner.

    ``allocation`` defaults to ``KernelAllocation.from_env(environ)``. Memory is re-read every
    ``refresh_s`` seconds by a background thread while the panel is shown (the front end counts
    its views) and stops when the panel is closed; :meth:`refresh` reads it at once.
    ``settings`` go to the demo runner (:class:`DemoSettings`).
    """

    def __init__(
        self,
        allocation: Optional[KernelAllocation] = None,
        *,
        environ: Optional[Mapping[str, str]] = None,
        settings: Optional[DemoSettings] = None,
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
        self.refreshes = 0
        self.runner = DemoRunner(slider_limits(vgpu_memory_mib(self.allocation)), settings)
        self.runner.plot.observe(lambda _change: self.refresh(), names="outputs")

        super().__init__(
            children=[
                title,
                self.summary,
                self.allocation_grid,
                widgets.HTML(value="<b>devices</b>"),
                self.devices_label,
                widgets.HBox([self.memory_bar, self.memory_label]),
                widgets.HTML(value="<b>demo</b>"),
                self.runner,
            ],
            **kwargs,
        )
        self.refresh()
        self._monitor_stop = threading.Event()
        self._monitor: Optional[threading.Thread] = None
        if monitor:
            self._view_count = 0  # ask the front end to count views: refresh only while shown
            self.start_monitor()

    def refresh(self) -> MemoryReading:
        """Re-read memory use and update the bar and its label."""
        reading = read_memory(self.allocation)
        self.refreshes += 1
        self.memory_label.value = reading.text
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
