"""The demos the vGPU panel runs: each registered once, by display name, with the function that
trains it and plots its progress.

A demo function takes one :class:`DemoRun` (the sliders' epochs and batch size, the
:class:`DemoSettings`, and callbacks for progress, stop, figures and status text) and returns a
result with ``summary()``, ``history`` (a list of :class:`~.common.EpochStats`), ``stopped``,
``images_per_s`` and ``device_name``, as :func:`orion_jupyter.demos.mnist.train` and
:func:`orion_jupyter.demos.facenet.train_triplet` do.

Registering imports nothing: the function may be named as ``"module:attribute"`` (a leading dot
is relative to this package) and is imported on the first run, so listing the demos never
imports torch::

    from orion_jupyter.demos import registry
    registry.register("My demo", "my_package.demo:run")
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import ProgressCallback, StopCheck, TrainingProgress

__all__ = ["Demo", "DemoRun", "DemoSettings", "register", "get", "names", "demos"]


@dataclass
class DemoSettings:
    """What the runner passes to the demos beyond the sliders; tests shrink these.

    ``data_root`` is MNIST's data folder (default ``$ORION_JUPYTER_DATA_DIR`` or
    ``~/.cache/orion-jupyter/mnist``); ``limit_*`` keep the first N images; ``download``
    lets torchvision fetch MNIST when absent, from ``mnist_mirror`` (default
    ``$ORION_JUPYTER_MNIST_MIRROR``, else torchvision's own mirrors); ``offline_fallback``:
    when that download fails, train on scikit-learn's digits instead (and say so).
    FaceNet: synthetic identities for training, steps per epoch, and unseen people shown in
    the heatmap. ``*_kwargs`` go to the demo functions as they are.
    """

    device: str | None = None
    data_root: str | Path | None = None
    limit_train: int | None = None
    limit_test: int | None = None
    download: bool = True
    mnist_mirror: str | None = None
    offline_fallback: bool = True
    mnist_lr: float = 1e-3
    facenet_identities: int = 200
    facenet_steps_per_epoch: int | None = None
    facenet_holdout: int = 4
    mnist_kwargs: dict = field(default_factory=dict)
    facenet_kwargs: dict = field(default_factory=dict)


def _ignore(*_args: Any) -> None:
    return None


def _never() -> bool:
    return False


@dataclass
class DemoRun:
    """One run of a demo, as its function sees it.

    ``progress`` takes every :class:`TrainingProgress` report; ``should_stop`` is polled
    between steps; ``show(figure, text)`` replaces the figure on display (``text`` is its
    plain-text stand-in); ``status(text)`` says what is happening between reports. A demo sets
    ``label`` when it trains on something other than its name says (shown before every
    progress line) and adds ``notes`` (shown under the figure). ``cache`` lives as long as the
    runner, e.g. for data loaded once.
    """

    epochs: int
    batch_size: int
    settings: DemoSettings = field(default_factory=DemoSettings)
    progress: ProgressCallback = _ignore
    should_stop: StopCheck = _never
    show: Callable[[Any, str], Any] = _ignore
    status: Callable[[str], Any] = _ignore
    cache: dict = field(default_factory=dict)
    label: str = ""
    notes: list[str] = field(default_factory=list)

    def epoch_reports(self, on_epoch: Callable[[list[TrainingProgress]], Any]) -> ProgressCallback:
        """A progress callback that passes every report on to ``progress`` and, after each
        epoch, calls ``on_epoch`` with this run's epoch-end reports so far (e.g. to plot them)."""
        done: list[TrainingProgress] = []

        def report(progress: TrainingProgress) -> None:
            self.progress(progress)
            if progress.epoch_done:
                done.append(progress)
                on_epoch(list(done))

        return report


@dataclass(frozen=True)
class Demo:
    """A demo's display name, the function that runs it (or ``"module:attribute"``), and a line
    about what it does."""

    name: str
    target: Callable[[DemoRun], Any] | str
    description: str = ""

    @property
    def function(self) -> Callable[[DemoRun], Any]:
        if callable(self.target):
            return self.target
        module, _, attribute = self.target.partition(":")
        package = __package__ if module.startswith(".") else None
        return getattr(importlib.import_module(module, package), attribute)

    def run(self, job: DemoRun) -> Any:
        return self.function(job)


_DEMOS: dict[str, Demo] = {}


def register(
    name: str, target: Callable[[DemoRun], Any] | str, description: str = "", *, replace: bool = False
) -> Demo:
    """Add a demo under ``name`` (what the runner's dropdown shows); a name is registered once
    unless ``replace``."""
    if name in _DEMOS and not replace:
        raise ValueError(f"a demo named {name!r} is already registered")
    if isinstance(target, str) and ":" not in target:
        raise ValueError(f"target {target!r} must be a function or 'module:attribute'")
    demo = Demo(name, target, description)
    _DEMOS[name] = demo
    return demo


def get(name: str) -> Demo:
    try:
        return _DEMOS[name]
    except KeyError:
        raise KeyError(f"no demo named {name!r}; registered: {', '.join(_DEMOS) or 'none'}") from None


def names() -> list[str]:
    """Display names, in the order they were registered."""
    return list(_DEMOS)


def demos() -> list[Demo]:
    return list(_DEMOS.values())


register("MNIST", ".mnist:run_demo", "a small CNN learns handwritten digits")
register("FaceNet", ".facenet:run_demo", "a face embedding learns, with a triplet loss, to tell people apart")
