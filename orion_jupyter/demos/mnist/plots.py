"""Figures of the MNIST demo: loss and accuracy per epoch, and the model's guesses."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..common import new_figure
from .model import MNISTResult, predict

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from matplotlib.figure import Figure


def plot_history(result: MNISTResult) -> Figure:
    """Training loss and held-out accuracy per epoch, side by side."""
    fig = new_figure(8.0, 3.0)
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = [e.epoch for e in result.history]
    ax_loss.plot(epochs, result.losses, "o-", color="tab:blue")
    ax_loss.set_title("training loss")
    ax_loss.set_xlabel("epoch")
    acc_epochs = [e.epoch for e in result.history if e.accuracy is not None]
    ax_acc.plot(acc_epochs, [100 * a for a in result.accuracies], "o-", color="tab:green")
    ax_acc.set_title("test accuracy (%)")
    ax_acc.set_xlabel("epoch")
    if result.accuracies:
        ax_acc.annotate(
            f"{result.final_accuracy:.1%}",
            (acc_epochs[-1], 100 * result.accuracies[-1]),
            textcoords="offset points",
            xytext=(-10, -14),
        )
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if epochs:
            ax.set_xticks(epochs if len(epochs) <= 12 else epochs[:: math.ceil(len(epochs) / 12)])
    fig.suptitle(f"{result.dataset} on {result.device_name} · {result.images_per_s:,.0f} images/s")
    return fig


def plot_predictions(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: Sequence[int] | None = None,
    count: int = 12,
) -> Figure:
    """A row of images with the model's predictions (red where they differ from ``labels``)."""
    images = images[:count]
    predicted = predict(model, images)
    fig = new_figure(1.1 * len(images), 1.5)
    axes = fig.subplots(1, len(images), squeeze=False)[0]
    for i, ax in enumerate(axes):
        ax.imshow(images[i].cpu().numpy(), cmap="gray")
        ax.set_xticks([])
        ax.set_yticks([])
        wrong = labels is not None and int(labels[i]) != int(predicted[i])
        ax.set_title(str(int(predicted[i])), color="red" if wrong else "black")
    return fig
