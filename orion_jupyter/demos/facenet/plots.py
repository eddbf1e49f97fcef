"""Figures of the FaceNet demo: detections, face crops, distance heatmaps, triplet training.

Every function returns a matplotlib Figure that belongs to no pyplot state (safe in background
threads; a notebook still shows it inline).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..common import new_figure
from .detection import FaceDetection, as_face_batch, load_image

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.figure import Figure


def plot_distances(
    matrix: Any,
    names: Sequence[str],
    *,
    threshold: float | None = None,
    title: str = "distance between faces",
    ax: Any = None,
) -> Figure:
    """A heatmap of a distance matrix with the values written in; ``threshold`` outlines the
    pairs below it (e.g. 1.0 for same-person pairs with the VGGFace2 weights)."""
    import numpy as np

    matrix = np.asarray(matrix, dtype=float)
    n = len(names)
    if matrix.shape != (n, n):
        raise ValueError(f"matrix is {matrix.shape} but there are {n} names")
    if ax is None:
        size = min(2.0 + 0.6 * n, 12.0)
        fig = new_figure(size + 1.2, size)
        ax = fig.subplots()
    else:
        fig = ax.figure
    image = ax.imshow(matrix, cmap="viridis_r", vmin=0.0, vmax=max(float(matrix.max()), 1e-6))
    ax.set_xticks(range(n), labels=names, rotation=45, ha="right")
    ax.set_yticks(range(n), labels=names)
    if n <= 8:
        for i in range(n):
            for j in range(n):
                value = matrix[i, j]
                dark_cell = value > 0.55 * matrix.max()  # viridis_r: large distances are dark
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if dark_cell else "black")
    if threshold is not None:
        from matplotlib.patches import Rectangle

        for i in range(n):
            for j in range(n):
                if i != j and matrix[i, j] < threshold:
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=1.5))
    ax.set_title(title)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def plot_detections(
    images: Sequence[Any], detections: Sequence[FaceDetection], names: Sequence[str] | None = None
) -> Figure:
    """The photos with their face boxes and probabilities drawn on."""
    from matplotlib.patches import Rectangle

    fig = new_figure(3.2 * len(images), 3.4)
    axes = fig.subplots(1, len(images), squeeze=False)[0]
    for i, (ax, image, found) in enumerate(zip(axes, images, detections, strict=False)):
        ax.imshow(load_image(image))
        for (x1, y1, x2, y2), p in zip(found.boxes, found.probs, strict=True):
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="lime", lw=2))
            # readable on any photo: larger, black on the box's own green
            ax.text(x1, y1 - 4, f"face {p:.0%}", color="black", fontsize=12, fontweight="bold", va="bottom",
                    bbox={"facecolor": "lime", "edgecolor": "none", "pad": 1.5})
        ax.set_title(f"{names[i] if names else i}: {len(found.boxes)} face(s)", fontsize=12)
        ax.axis("off")
    return fig


def plot_faces(faces: Any, names: Sequence[str] | None = None) -> Figure:
    """Aligned face crops (as returned by :func:`detect_faces`) side by side."""
    batch = as_face_batch(faces)
    n = max(len(batch), 1)
    fig = new_figure(1.6 * n, 1.9)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i < len(batch):
            # undo fixed_image_standardization: (x - 127.5) / 128
            pixels = (batch[i].permute(1, 2, 0).float() * 128 + 127.5).clamp(0, 255).byte().numpy()
            ax.imshow(pixels)
            if names:
                ax.set_title(names[i], fontsize=8)
    return fig


def _loss_axes(ax: Any, epochs: Sequence[int], losses: Sequence[float], title: str) -> None:
    ax.plot(epochs, losses, "o-", color="tab:purple")
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)


def plot_losses(epochs: Sequence[int], losses: Sequence[float], title: str = "triplet loss") -> Figure:
    """Triplet loss per epoch so far (what the demo runner shows while it trains)."""
    fig = new_figure(4.5, 3.0)
    _loss_axes(fig.subplots(), epochs, losses, title)
    return fig


def plot_triplet(result: Any) -> Figure:
    """Triplet loss per epoch, and (if measured) the distance heatmap of unseen people, of a
    :class:`TripletResult`."""
    has_holdout = result.holdout is not None
    fig = new_figure(9.0 if has_holdout else 4.5, 3.6)
    axes = fig.subplots(1, 2 if has_holdout else 1, squeeze=False)[0]
    _loss_axes(axes[0], [e.epoch for e in result.history], result.losses, "triplet loss (all triplets)")
    if result.losses and min(result.losses) > 0:
        axes[0].set_yscale("log")
    if has_holdout:
        sep = result.holdout
        verdict = "separated" if sep.separated else "not separated"
        plot_distances(
            sep.distances,
            sep.names,
            ax=axes[1],
            title=f"{len(set(sep.labels))} unseen people: {verdict}\n"
            f"same <= {sep.max_same:.2f}, different >= {sep.min_different:.2f}",
        )
    fig.suptitle(f"triplet training on {result.device_name} · {result.images_per_s:,.0f} images/s")
    return fig
