"""The MNIST model: a small CNN, its training loop with progress reports, accuracy and predictions."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..common import (
    EpochHistory,
    EpochStats,
    ProgressCallback,
    StopCheck,
    TrainingProgress,
    device_name,
    reporting_interval,
    resolve_device,
    synchronize,
)
from .data import MNISTData, load_data

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

#: Normalisation used for MNIST (mean and std of the training pixels, scaled to 0..1).
MEAN, STD = 0.1307, 0.3081


@dataclass
class MNISTResult(EpochHistory):
    """What :func:`train` did: per-epoch loss, held-out accuracy and throughput, on ``dataset``
    (``"MNIST"``, or the offline stand-in's name)."""

    history: list[EpochStats]
    device: str
    device_name: str
    train_size: int
    test_size: int
    batch_size: int
    epochs_requested: int
    stopped: bool = False
    seconds: float = 0.0
    model: Any = field(default=None, repr=False)
    dataset: str = "MNIST"

    @property
    def accuracies(self) -> list[float]:
        return [e.accuracy for e in self.history if e.accuracy is not None]

    @property
    def final_accuracy(self) -> float | None:
        return self.accuracies[-1] if self.accuracies else None

    def summary(self) -> str:
        if not self.history:
            return f"{self.dataset}: stopped before the first epoch finished on {self.device_name}"
        state = "stopped early" if self.stopped else "done"
        return (
            f"{self.dataset} {state}: {len(self.history)}/{self.epochs_requested} epochs on {self.device_name},"
            f" final test accuracy {self.final_accuracy:.2%} ({self.test_size} held-out images),"
            f" loss {self.losses[-1]:.4f}, {self.images_per_s:,.0f} images/s"
        )


def build_model(seed: int | None = 0) -> torch.nn.Module:
    """A small CNN for 28x28 digits: two conv blocks and a two-layer classifier (~0.2 M weights)."""
    import torch
    from torch import nn

    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 14x14
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 7x7
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, 128),
            nn.ReLU(),
            nn.Dropout(0.25),
            nn.Linear(128, 10),
        )


def _normalise(images_uint8: torch.Tensor) -> torch.Tensor:
    return ((images_uint8.float() / 255.0) - MEAN).div_(STD).unsqueeze(1)


def evaluate(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000
) -> float:
    """Accuracy (0..1) of ``model`` on uint8 images (N, 28, 28), on the model's device."""
    import torch

    if len(labels) == 0:
        return float("nan")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(labels), batch_size):
            batch = _normalise(images[start : start + batch_size].to(device))
            predicted = model(batch).argmax(dim=1)
            correct += int((predicted == labels[start : start + batch_size].to(device)).sum())
    model.train(was_training)
    return correct / len(labels)


def predict(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Predicted digits (on the CPU) for uint8 images (N, 28, 28)."""
    import torch

    device = next(model.parameters()).device
    model.eval()
    with torch.inference_mode():
        return model(_normalise(images.to(device))).argmax(dim=1).cpu()


def train(
    epochs: int = 3,
    batch_size: int = 128,
    lr: float = 1e-3,
    root: str | Path | None = None,
    device: str | torch.device | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    *,
    data: MNISTData | None = None,
    download: bool = True,
    seed: int | None = 0,
) -> MNISTResult:
    """Train the small CNN on MNIST and measure held-out accuracy after every epoch.

    ``device``: ``None`` picks ``cuda`` when PyTorch sees a GPU (the vGPU), else ``cpu``.
    ``progress`` is called with a :class:`TrainingProgress` after every step (every
    ``steps // 50`` steps in long epochs, so a GPU is not synchronised every step) and at the end
    of every epoch; ``should_stop`` is polled before every step and, when it returns True, training
    ends early and the result says ``stopped=True`` (finished epochs are kept). ``data`` skips
    loading (e.g. reuse one :func:`load_data` across runs). Images live on the device as uint8
    (47 MB for all of MNIST) and are normalised per batch.
    """
    import torch
    from torch import nn

    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be at least 1")
    started = time.perf_counter()
    dev = resolve_device(device)
    if data is None:
        data = load_data(root, download=download, limit_train=limit_train, limit_test=limit_test)
    else:
        data = data.limited(limit_train, limit_test)
    train_images, train_labels = data.train_images.to(dev), data.train_labels.to(dev)
    test_images, test_labels = data.test_images.to(dev), data.test_labels.to(dev)
    n_train = len(train_labels)
    if n_train == 0:
        raise ValueError("no training images")

    model = build_model(seed).to(dev)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator()
    if seed is not None:
        generator.manual_seed(seed)
    steps = math.ceil(n_train / batch_size)
    report_every = reporting_interval(steps)
    result = MNISTResult(
        history=[],
        device=str(dev),
        device_name=device_name(dev),
        train_size=n_train,
        test_size=len(test_labels),
        batch_size=batch_size,
        epochs_requested=epochs,
        model=model,
        dataset=data.source,
    )

    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(n_train, generator=generator).to(dev)
        loss_sum = torch.zeros((), device=dev)
        seen = 0
        epoch_start = time.perf_counter()
        for step in range(1, steps + 1):
            if should_stop is not None and should_stop():
                result.stopped = True
                break
            index = order[(step - 1) * batch_size : step * batch_size]
            batch, target = _normalise(train_images[index]), train_labels[index]
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(model(batch), target)
            loss.backward()
            optimiser.step()
            loss_sum += loss.detach() * len(index)
            seen += len(index)
            if progress is not None and (step % report_every == 0 or step == steps):
                mean_loss = float(loss_sum) / seen  # syncs the GPU: honest images/s
                progress(TrainingProgress.mid_epoch(epoch, epochs, step, steps, mean_loss, seen, epoch_start))
        if result.stopped:
            break
        synchronize(dev)
        train_seconds = time.perf_counter() - epoch_start
        accuracy = evaluate(model, test_images, test_labels)
        stats = EpochStats(
            epoch=epoch,
            loss=float(loss_sum) / max(seen, 1),
            images_per_s=seen / max(train_seconds, 1e-9),
            seconds=time.perf_counter() - epoch_start,
            accuracy=accuracy,
        )
        result.history.append(stats)
        if progress is not None:
            progress(TrainingProgress.epoch_end(stats, epochs, steps))
    model.eval()
    result.seconds = time.perf_counter() - started
    return result


