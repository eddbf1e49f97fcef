"""Training a face embedding with a triplet loss on the vGPU, and checking it on unseen people.

:func:`train_triplet` trains the small :func:`EmbeddingNet` on P x K batches (synthetic identities by
default) and reports images/s; :func:`separation` measures whether every same-person distance is below
every different-person distance, for people the net never saw.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field
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
from .embedding import EmbeddingNet, distance_matrix
from .sources import SyntheticIdentities, as_source

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import torch


def triplet_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 0.2,
    mining: str = "auto",
    reduction: str = "active",
) -> torch.Tensor:
    """Triplet loss over the (anchor, positive, negative) triplets of a batch.

    ``batch_all``: ``relu(d(a,p) - d(a,n) + margin)`` over every valid triplet, averaged over
    those that still violate the margin (``reduction="active"``, what training minimises,
    Hermans et al. 2017) or over all of them (``reduction="all"``: falls as the net learns,
    what the demo reports). ``batch_hard``: per anchor, the farthest positive against the
    nearest negative, averaged over anchors. ``auto``: batch_all up to 256 images (its n^3
    tensor stays under 64 MiB), batch_hard above.
    """
    import torch

    if mining == "auto":
        mining = "batch_all" if len(labels) <= 256 else "batch_hard"
    d = torch.cdist(embeddings, embeddings)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive = same & ~eye
    negative = ~same
    if mining == "batch_hard":
        hardest_pos = (d * positive).max(dim=1).values
        hardest_neg = d.masked_fill(~negative, float("inf")).min(dim=1).values
        valid = positive.any(dim=1) & negative.any(dim=1)
        return torch.relu(hardest_pos - hardest_neg + margin)[valid].mean()
    if mining != "batch_all":
        raise ValueError("mining must be 'auto', 'batch_all' or 'batch_hard'")
    valid = positive[:, :, None] & negative[:, None, :]
    losses = torch.relu(d[:, :, None] - d[:, None, :] + margin) * valid
    if reduction == "all":
        return losses.sum() / valid.sum().clamp_min(1)
    if reduction != "active":
        raise ValueError("reduction must be 'active' or 'all'")
    return losses.sum() / (losses > 1e-12).sum().clamp_min(1)


@dataclass
class Separation:
    """Distances between embeddings of labelled images, and whether people are apart.

    ``separated``: every same-person distance is below every different-person distance.
    """

    distances: np.ndarray
    labels: list[int]
    max_same: float
    min_different: float

    @property
    def separated(self) -> bool:
        return self.max_same < self.min_different

    @property
    def gap(self) -> float:
        return self.min_different - self.max_same

    @property
    def names(self) -> list[str]:
        counts: dict[int, int] = {}
        names = []
        order = {label: i for i, label in enumerate(dict.fromkeys(self.labels))}
        for label in self.labels:
            counts[label] = counts.get(label, 0) + 1
            names.append(f"P{order[label] + 1}.{counts[label]}")
        return names


def separation(model: torch.nn.Module, images: torch.Tensor, labels: Any) -> Separation:
    """Embed ``images`` with ``model`` (eval mode) and measure how well people are separated."""
    import numpy as np
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        embeddings = model(images.to(device)).float().cpu()
    model.train(was_training)
    labels = [int(label) for label in labels]
    d = distance_matrix(embeddings)
    lab = np.asarray(labels)
    same = (lab[:, None] == lab[None, :]) & ~np.eye(len(lab), dtype=bool)
    different = lab[:, None] != lab[None, :]
    return Separation(
        distances=d,
        labels=labels,
        max_same=float(d[same].max()) if same.any() else 0.0,
        min_different=float(d[different].min()) if different.any() else float("inf"),
    )


@dataclass
class TripletResult(EpochHistory):
    """What :func:`train_triplet` did: per-epoch loss and images/s, and how well it separates
    people it never saw (``holdout``), before and after training."""

    history: list[EpochStats]
    device: str
    device_name: str
    batch_size: int
    epochs_requested: int
    steps_per_epoch: int
    embedding_dim: int
    stopped: bool = False
    seconds: float = 0.0
    holdout: Separation | None = None
    holdout_before: Separation | None = None
    model: Any = field(default=None, repr=False)

    def summary(self) -> str:
        if not self.history:
            return f"triplet training stopped before the first epoch finished on {self.device_name}"
        text = (
            f"triplet training {'stopped early' if self.stopped else 'done'}:"
            f" {len(self.history)}/{self.epochs_requested} epochs on {self.device_name},"
            f" loss {self.losses[0]:.3f} -> {self.losses[-1]:.3f},"
            f" {self.images_per_s:,.0f} images/s"
        )
        if self.holdout is not None:
            verdict = "separated" if self.holdout.separated else "NOT separated"
            text += (
                f"; unseen people {verdict} (largest same-person distance {self.holdout.max_same:.2f},"
                f" smallest different-person distance {self.holdout.min_different:.2f})"
            )
        return text


def train_triplet(
    data: Any = None,
    epochs: int = 5,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    *,
    lr: float = 3e-3,
    steps_per_epoch: int | None = None,
    per_identity: int = 4,
    margin: float = 0.2,
    mining: str = "auto",
    embedding_dim: int = 64,
    width: int = 16,
    model: torch.nn.Module | None = None,
    holdout: Any = 4,
    holdout_per_identity: int = 3,
    seed: int | None = 0,
) -> TripletResult:
    """Train a small embedding net with a triplet loss and report images/s on the (v)GPU.

    ``data``: ``None`` (synthetic identities, :class:`SyntheticIdentities`), a source with
    ``sample_batch(identities, per_identity, generator[, device=])``, an ``(images, labels)`` pair or a
    dataset of ``(image, label)``. Each step draws ``batch_size // per_identity`` people with
    ``per_identity`` photos each. ``steps_per_epoch`` defaults to 30 for synthetic data, else
    one pass over the images. The loss reported (progress, history) is the mean over all
    triplets of the batch; the one minimised averages over the still-violating ones.
    ``holdout``: a number of unseen synthetic identities (with ``holdout_per_identity`` photos
    each), an ``(images, labels)`` pair, or None; the result reports their separation before and
    after training. ``progress``/``should_stop`` as in
    :func:`orion_jupyter.demos.mnist.train`.
    """
    import torch

    if epochs < 1:
        raise ValueError("epochs must be at least 1")
    if per_identity < 2 or batch_size < 2 * per_identity:
        raise ValueError("need per_identity >= 2 and batch_size >= 2 * per_identity (two people at least)")
    started = time.perf_counter()
    dev = resolve_device(device)
    source = as_source(data)
    identities = min(batch_size // per_identity, source.n_identities)
    real_batch = identities * per_identity
    if steps_per_epoch is None:
        steps_per_epoch = (
            30
            if isinstance(source, SyntheticIdentities)
            else max(1, math.ceil(len(source.labels) / real_batch))
        )
    generator = torch.Generator()
    if seed is not None:
        generator.manual_seed(seed)

    if model is None:
        model = EmbeddingNet(source.image_shape[0], embedding_dim, width=width, seed=seed)
    model = model.to(dev)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimiser, T_max=epochs * steps_per_epoch, eta_min=lr / 20
    )

    holdout_set = None
    if isinstance(holdout, int) and holdout >= 2 and hasattr(source, "unseen"):
        holdout_set = source.unseen(holdout, holdout_per_identity, torch.Generator().manual_seed(12345))
    elif isinstance(holdout, tuple):
        holdout_set = (torch.as_tensor(holdout[0]).float(), torch.as_tensor(holdout[1]))

    result = TripletResult(
        history=[],
        device=str(dev),
        device_name=device_name(dev),
        batch_size=real_batch,
        epochs_requested=epochs,
        steps_per_epoch=steps_per_epoch,
        embedding_dim=embedding_dim,
        model=model,
    )
    if holdout_set is not None:
        result.holdout_before = separation(model, *holdout_set)

    takes_device = "device" in inspect.signature(source.sample_batch).parameters
    report_every = reporting_interval(steps_per_epoch)
    for epoch in range(1, epochs + 1):
        model.train()
        loss_sum = torch.zeros((), device=dev)
        seen = 0
        epoch_start = time.perf_counter()
        for step in range(1, steps_per_epoch + 1):
            if should_stop is not None and should_stop():
                result.stopped = True
                break
            if takes_device:
                images, labels = source.sample_batch(identities, per_identity, generator, device=dev)
            else:
                images, labels = source.sample_batch(identities, per_identity, generator)
            images, labels = images.to(dev, non_blocking=True), labels.to(dev, non_blocking=True)
            optimiser.zero_grad(set_to_none=True)
            embeddings = model(images)
            loss = triplet_loss(embeddings, labels, margin=margin, mining=mining)
            loss.backward()
            optimiser.step()
            scheduler.step()
            with torch.no_grad():  # report the mean over all triplets: it falls as the net learns
                loss_sum += triplet_loss(
                    embeddings.detach(), labels, margin=margin, mining=mining, reduction="all"
                )
            seen += len(labels)
            if progress is not None and (step % report_every == 0 or step == steps_per_epoch):
                progress(TrainingProgress.mid_epoch(epoch, epochs, step, steps_per_epoch, float(loss_sum) / step,
                                                    seen, epoch_start))
        if result.stopped:
            break
        synchronize(dev)
        seconds = time.perf_counter() - epoch_start
        stats = EpochStats(
            epoch=epoch,
            loss=float(loss_sum) / steps_per_epoch,
            images_per_s=seen / max(seconds, 1e-9),
            seconds=seconds,
        )
        result.history.append(stats)
        if progress is not None:
            progress(TrainingProgress.epoch_end(stats, epochs, steps_per_epoch))
    model.eval()
    if holdout_set is not None:
        result.holdout = separation(model, *holdout_set)
    result.seconds = time.perf_counter() - started
    return result
