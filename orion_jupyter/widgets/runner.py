"""The demo runner: pick a demo, epochs and batch size; Run trains in a background thread.

The demos, and what each runs, come from :mod:`orion_jupyter.demos.registry`; the runner only
gives each run its sliders, :class:`DemoSettings` and callbacks (:class:`DemoRun`) and shows what
comes back: progress, status, the demo's figures and notes.
"""

from __future__ import annotations

import html
import threading
import time
from typing import Any

import ipywidgets as widgets

from ..demos import registry
from ..demos.common import TrainingProgress
from ..demos.registry import DemoRun, DemoSettings
from .allocation import SliderLimits, slider_limits

__all__ = ["DemoRunner", "DemoSettings"]

_UI_INTERVAL_S = 0.2


class DemoRunner(widgets.VBox):
    """Pick a demo, epochs and batch size; Run trains in a background thread, Stop ends it.

    From code: ``runner.run(wait=True)`` runs the same way and returns the result (re-raising
    the demo's error); ``runner.run()`` returns at once, ``runner.wait()`` joins.
    ``runner.settings`` (a :class:`DemoSettings`) holds the rest.
    """

    def __init__(self, limits: SliderLimits | None = None, settings: DemoSettings | None = None, **kwargs: Any):
        self.limits = limits or slider_limits(None)
        self.settings = settings or DemoSettings()
        choices = registry.names()
        self.demo = widgets.Dropdown(options=choices, value=choices[0], description="demo")
        self.epochs = widgets.IntSlider(
            value=self.limits.epochs_default, min=1, max=self.limits.epochs_max, description="epochs"
        )
        self.batch_size = widgets.SelectionSlider(
            options=self.limits.batch_options, value=self.limits.batch_default, description="batch size"
        )
        self.run_button = widgets.Button(description="Run", button_style="primary", icon="play")
        self.stop_button = widgets.Button(description="Stop", button_style="warning", icon="stop", disabled=True)
        self.progress = widgets.IntProgress(value=0, min=0, max=100, description="progress")
        self.status = widgets.Label(value="ready")
        self.throughput = widgets.Label(value="images/s: -")
        self.plot = widgets.Output()
        self.rule = widgets.HTML(value=f"<small>{html.escape(self.limits.basis)}</small>")
        self.run_button.on_click(lambda _button: self.run())
        self.stop_button.on_click(lambda _button: self.stop())
        self.result: Any = None
        self.error: BaseException | None = None
        self.history: list[TrainingProgress] = []  # reports with epoch_done=True, this run
        self.on_progress: Any = None  # extra hook, called with every report
        self.job: DemoRun | None = None  # the run in progress, or the last one
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._last_ui = 0.0
        self._cache: dict = {}  # the demos' (e.g. data loaded once), for the runner's lifetime
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

    def run(self, wait: bool = False, timeout: float | None = None) -> Any:
        """Start the selected demo in a background thread; with ``wait`` join it and return
        its result (or raise its error)."""
        if self.running:
            if wait:
                raise RuntimeError("a demo is already running")
            return None
        demo = registry.get(self.demo.value)
        self._stop_event.clear()
        self._last_ui = 0.0
        self.result, self.error, self.history = None, None, []
        self.job = DemoRun(
            epochs=self.epochs.value,
            batch_size=self.batch_size.value,
            settings=self.settings,
            progress=self._report,
            should_stop=self._stop_event.is_set,
            show=self._show,
            status=self._say,
            cache=self._cache,
        )
        self._set_running(True)
        self.progress.value, self.progress.bar_style = 0, ""
        self.throughput.value = "images/s: -"
        self.status.value = f"starting {demo.name} ({self.job.epochs} epochs, batch {self.job.batch_size})"
        self.plot.outputs = ()
        self._thread = threading.Thread(target=self._work, args=(demo, self.job), name=f"orion-demo-{demo.name}",
                                        daemon=True)
        self._thread.start()
        if wait:
            return self.wait(timeout)
        return None

    def wait(self, timeout: float | None = None) -> Any:
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

    def _work(self, demo: registry.Demo, job: DemoRun) -> None:
        try:
            self.result = demo.run(job)
            summary = self.result.summary()
            if getattr(self.result, "stopped", False):
                self.status.value = f"stopped: {summary}"
                self.progress.bar_style = "warning"
            else:
                self.progress.value = self.progress.max
                self.progress.bar_style = "success"
                self.status.value = summary
            if self.result.history:
                self.throughput.value = f"images/s: {self.result.images_per_s:,.0f} on {self.result.device_name}"
        except BaseException as exc:  # shown in the panel, re-raised by wait()
            self.error = exc
            self.progress.bar_style = "danger"
            self.status.value = f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            self.plot.outputs = (
                {"output_type": "stream", "name": "stderr", "text": f"{type(exc).__name__}: {exc}\n"},
            )
        finally:
            self._set_running(False)

    def _say(self, text: str) -> None:
        self.status.value = text

    def _report(self, report: TrainingProgress) -> None:
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
        if self.job is not None and self.job.label:
            text = f"{self.job.label} · {text}"
        self.status.value = text

    def _show(self, fig: Any, text: str) -> None:
        """The demo's figure, then its notes (if any), in the output area."""
        from ..demos.common import figure_png, png_display_output

        outputs: tuple[dict, ...] = (png_display_output(figure_png(fig), text),)
        if self.job is not None and self.job.notes:
            outputs += ({"output_type": "stream", "name": "stdout", "text": "\n".join(self.job.notes) + "\n"},)
        self.plot.outputs = outputs
