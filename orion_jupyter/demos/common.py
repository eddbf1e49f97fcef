"""Pieces shared by the demos: device choice, progress reports, data folder, figures as PNG.

Kernel-side and light: importing this module imports neither torch nor matplotlib; the
functions that need them import them when called.
"""

from __future__ import annotations

import base64
import io
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from matplotlib.figure import Figure

#: Where the demos keep their data (MNIST files under ``<dir>/MNIST/raw``); overrides the default.
DATA_DIR_ENV = "ORION_JUPYTER_DATA_DIR"
DEFAULT_DATA_DIR = Path("~/.cache/orion-jupyter/mnist")

MIB = 1024 * 1024


def default_data_dir() -> Path:
    """``$ORION_JUPYTER_DATA_DIR`` when set, else ``~/.cache/orion-jupyter/mnist``."""
    value = os.environ.get(DATA_DIR_ENV, "").strip()
    return Path(value).expanduser() if value else DEFAULT_DATA_DIR.expanduser()


@dataclass(frozen=True)
class TrainingProgress:
    """What a demo tells its ``progress`` callback after training steps (every step in short
    epochs, about 50 times an epoch in long ones).

    ``epoch`` and ``step`` count from 1; ``fraction`` is the share of the whole run done
    (0..1, exactly 1.0 after the last step); ``images_per_s`` is this epoch's training
    throughput so far; ``loss`` is the mean training loss of this epoch so far. At the end of
    an epoch one more report comes with ``epoch_done=True`` and, for MNIST, the held-out
    ``accuracy``.
    """

    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float
    fraction: float
    images_per_s: float
    epoch_done: bool = False
    accuracy: float | None = None

    @classmethod
    def mid_epoch(cls, epoch: int, epochs: int, step: int, steps: int, loss: float, seen: int,
                  epoch_start: float) -> TrainingProgress:
        """A report during an epoch: ``seen`` images since ``epoch_start`` (a perf_counter time)."""
        elapsed = max(time.perf_counter() - epoch_start, 1e-9)
        return cls(epoch=epoch, epochs=epochs, step=step, steps=steps, loss=loss,
                   fraction=((epoch - 1) * steps + step) / (epochs * steps), images_per_s=seen / elapsed)

    @classmethod
    def epoch_end(cls, stats: EpochStats, epochs: int, steps: int) -> TrainingProgress:
        """The report that closes an epoch, from its statistics."""
        return cls(epoch=stats.epoch, epochs=epochs, step=steps, steps=steps, loss=stats.loss,
                   fraction=stats.epoch / epochs, images_per_s=stats.images_per_s, epoch_done=True,
                   accuracy=stats.accuracy)


class EpochHistory:
    """What every demo result derives from its ``history`` of :class:`EpochStats`."""

    history: list

    @property
    def losses(self) -> list[float]:
        return [e.loss for e in self.history]

    @property
    def images_per_s(self) -> float:
        """Mean training throughput over the finished epochs."""
        if not self.history:
            return 0.0
        return sum(e.images_per_s for e in self.history) / len(self.history)


@dataclass(frozen=True)
class EpochStats:
    """One finished epoch: mean training loss, held-out accuracy (if measured), throughput."""

    epoch: int
    loss: float
    images_per_s: float
    seconds: float
    accuracy: float | None = None


def reporting_interval(steps_per_epoch: int, reports_per_epoch: int = 50) -> int:
    """Report every step in short epochs, about ``reports_per_epoch`` times in long ones."""
    return max(1, steps_per_epoch // reports_per_epoch)


ProgressCallback = Callable[[TrainingProgress], Any]
StopCheck = Callable[[], bool]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, or ``cuda`` when PyTorch sees a GPU, else ``cpu``."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device} was asked for, but PyTorch sees no GPU in this kernel")
    return device


def device_name(device: str | torch.device) -> str:
    """A person's name for a device: the GPU's model, or the CPU with its thread count."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"{torch.cuda.get_device_name(index)} (cuda:{index})"
    return f"CPU {_cpu_model()} ({torch.get_num_threads()} threads)"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@dataclass(frozen=True)
class DeviceInfo:
    """One accelerator the framework sees."""

    index: int
    name: str
    total_mib: int

    def __str__(self) -> str:
        return f"cuda:{self.index} {self.name} ({self.total_mib / 1024:.1f} GiB)"


def cuda_devices() -> list[DeviceInfo]:
    """The CUDA devices PyTorch sees in this process; empty without a GPU or without PyTorch."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    found = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        found.append(DeviceInfo(index, props.name, int(props.total_memory // MIB)))
    return found


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so timings are honest; no-op on CPU."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def figure_png(fig: Figure, dpi: int = 90) -> bytes:
    """PNG bytes of a matplotlib figure (no pyplot, safe from any thread)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def png_display_output(png: bytes, text: str = "<Figure>") -> dict:
    """A Jupyter ``display_data`` output (nbformat v4) that shows ``png``."""
    return {
        "output_type": "display_data",
        "data": {"image/png": base64.b64encode(png).decode("ascii"), "text/plain": text},
        "metadata": {},
    }


def new_figure(width: float, height: float) -> Figure:
    """A matplotlib Figure that belongs to no pyplot state (usable in background threads).

    In a notebook it still displays inline: IPython's inline backend formats any Figure.
    """
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")
