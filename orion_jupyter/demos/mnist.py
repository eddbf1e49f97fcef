"""MNIST on a vGPU: a small CNN, trained with progress reports and a loss/accuracy plot.

Data comes from ``torchvision.datasets.MNIST(root, download=True)``: with the four IDX files
already under ``<root>/MNIST/raw`` nothing is downloaded, so a classroom without internet (or a
test) can plant them with :func:`write_idx_dataset` (or :func:`write_digits_dataset`, which
writes scikit-learn's small 8x8 digits in MNIST's format).

Typical use in a notebook::

    from orion_jupyter.demos import mnist
    result = mnist.train(epochs=3)
    print(result.summary())
    mnist.plot_history(result)

torch, torchvision and matplotlib are imported inside the functions that need them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from .common import (
    DATA_DIR_ENV,
    EpochHistory,
    EpochStats,
    ProgressCallback,
    StopCheck,
    TrainingProgress,
    default_data_dir,
    device_name,
    new_figure,
    reporting_interval,
    resolve_device,
    synchronize,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import torch
    from matplotlib.figure import Figure

__all__ = [
    "MNISTDataUnavailable",
    "MNISTData",
    "MNISTResult",
    "IDX_FILES",
    "MEAN",
    "STD",
    "build_model",
    "load_data",
    "train",
    "evaluate",
    "predict",
    "plot_history",
    "plot_predictions",
    "write_idx_dataset",
    "write_digits_dataset",
    "default_data_dir",
]

#: torchvision's names for the uncompressed files it looks for under ``<root>/MNIST/raw``.
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
#: Normalisation used for MNIST (mean and std of the training pixels, scaled to 0..1).
MEAN, STD = 0.1307, 0.3081


class MNISTDataUnavailable(RuntimeError):
    """The MNIST files are not in the data folder and could not be downloaded."""

    def __init__(self, root: Path, cause: BaseException | None = None, download: bool = True):
        self.root = Path(root)
        self.raw_folder = self.root / "MNIST" / "raw"
        names = ", ".join(IDX_FILES.values())
        why = (
            "could not be downloaded (is there no internet access from this kernel?)"
            if download
            else "downloading is turned off"
        )
        message = (
            f"MNIST is not in {self.raw_folder} and {why}.\n"
            f"Put the four files ({names}, .gz or uncompressed) in that folder, point"
            f" ${DATA_DIR_ENV} at a folder that has MNIST/raw/ in it, or, to work offline,"
            " write scikit-learn's small digits there with"
            " orion_jupyter.demos.mnist.write_digits_dataset(root)."
        )
        if cause is not None and download:
            lines = str(cause).strip().splitlines() or [type(cause).__name__]
            message += "\nDownload error: " + " ".join(line.strip() for line in lines[:3])
        super().__init__(message)


@dataclass
class MNISTData:
    """Images as uint8 tensors (N, 28, 28) and labels (N,), as torchvision's MNIST read them."""

    root: Path
    train_images: "torch.Tensor"
    train_labels: "torch.Tensor"
    test_images: "torch.Tensor"
    test_labels: "torch.Tensor"

    @property
    def sizes(self) -> tuple[int, int]:
        return len(self.train_labels), len(self.test_labels)


@dataclass
class MNISTResult(EpochHistory):
    """What :func:`train` did: per-epoch loss, held-out accuracy and throughput."""

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

    @property
    def accuracies(self) -> list[float]:
        return [e.accuracy for e in self.history if e.accuracy is not None]

    @property
    def final_accuracy(self) -> Optional[float]:
        return self.accuracies[-1] if self.accuracies else None

    def summary(self) -> str:
        if not self.history:
            return f"MNIST: stopped before the first epoch finished on {self.device_name}"
        state = "stopped early" if self.stopped else "done"
        return (
            f"MNIST {state}: {len(self.history)}/{self.epochs_requested} epochs on {self.device_name},"
            f" final test accuracy {self.final_accuracy:.2%} ({self.test_size} held-out images),"
            f" loss {self.losses[-1]:.4f}, {self.images_per_s:,.0f} images/s"
        )


# --------------------------------------------------------------------------------------------
# Data


def _raw_folder(root: Path) -> Path:
    return Path(root) / "MNIST" / "raw"


def _idx_bytes(array: "np.ndarray") -> bytes:
    """An IDX (SN3 "Pascal Vincent") file of unsigned bytes: magic, big-endian sizes, data."""
    import numpy as np

    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.tobytes()


def _as_uint8(name: str, values: Any, ndim: int) -> "np.ndarray":
    import numpy as np

    if hasattr(values, "detach"):  # torch tensor
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {array.shape}")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"{name} must hold values 0..255, got {array.min()}..{array.max()}")
    if not np.issubdtype(array.dtype, np.integer):
        if array.size and not np.all(np.equal(np.mod(array, 1), 0)):
            raise ValueError(f"{name} must hold whole numbers 0..255 (uint8), got {array.dtype}")
    return array.astype(np.uint8)


def write_idx_dataset(
    root: "str | Path",
    train_images: Any,
    train_labels: Any,
    test_images: Any,
    test_labels: Any,
) -> Path:
    """Write images (N, 28, 28) of 0..255 and labels 0..9 as MNIST's four IDX files.

    They land in ``<root>/MNIST/raw/`` uncompressed, where ``torchvision.datasets.MNIST(root)``
    finds them (it checks the uncompressed names), so :func:`load_data` then downloads nothing.
    Returns that raw folder.
    """
    arrays = {
        "train_images": _as_uint8("train_images", train_images, 3),
        "train_labels": _as_uint8("train_labels", train_labels, 1),
        "test_images": _as_uint8("test_images", test_images, 3),
        "test_labels": _as_uint8("test_labels", test_labels, 1),
    }
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.shape[1:] != (28, 28):
            raise ValueError(f"{split}_images must be N x 28 x 28, got {images.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{split}: {len(images)} images but {len(labels)} labels")
        if len(labels) and labels.max() > 9:
            raise ValueError(f"{split}_labels must be digits 0..9")
    raw = _raw_folder(Path(root).expanduser())
    raw.mkdir(parents=True, exist_ok=True)
    for key, filename in IDX_FILES.items():
        target = raw / filename
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(_idx_bytes(arrays[key]))
        tmp.replace(target)
    return raw


def digits_as_mnist(test_fraction: float = 0.25, seed: int = 0):
    """scikit-learn's 1,797 8x8 digits (0..16) as MNIST-like 28x28 uint8 images, split in two.

    Each digit is scaled to 20x20 (bilinear) and centred in 28x28 with a 4-pixel border, like
    MNIST. Returns ``(train_images, train_labels, test_images, test_labels)`` as numpy arrays,
    split per class so both halves hold every digit. Needs scikit-learn and Pillow.
    """
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.zeros((len(digits.images), 28, 28), dtype=np.uint8)
    for i, small in enumerate(digits.images):
        scaled = np.clip(small * (255.0 / 16.0), 0, 255).astype(np.float32)
        big = Image.fromarray(scaled).resize((20, 20), Image.Resampling.BILINEAR)
        images[i, 4:24, 4:24] = np.clip(np.rint(np.asarray(big)), 0, 255).astype(np.uint8)
    labels = digits.target.astype(np.uint8)
    rng = np.random.default_rng(seed)
    test_mask = np.zeros(len(labels), dtype=bool)
    for digit in range(10):
        members = np.flatnonzero(labels == digit)
        chosen = rng.choice(members, size=max(1, int(round(len(members) * test_fraction))), replace=False)
        test_mask[chosen] = True
    train_order = rng.permutation(np.flatnonzero(~test_mask))
    test_order = rng.permutation(np.flatnonzero(test_mask))
    return images[train_order], labels[train_order], images[test_order], labels[test_order]


def write_digits_dataset(
    root: "str | Path | None" = None, test_fraction: float = 0.25, seed: int = 0
) -> Path:
    """Offline stand-in for MNIST: write scikit-learn's digits as MNIST IDX files under ``root``.

    About 1,350 training and 450 test images: enough to watch the CNN learn (and for tests),
    with nothing downloaded. Returns the raw folder. ``root`` defaults to :func:`default_data_dir`.
    """
    root = default_data_dir() if root is None else Path(root)
    return write_idx_dataset(root, *digits_as_mnist(test_fraction=test_fraction, seed=seed))


def _unreachable(mirrors: Sequence[str], timeout: float = 5.0) -> Optional[OSError]:
    """None when some mirror accepts a TCP connection (or a proxy is configured), else the error."""
    import socket
    import urllib.parse
    import urllib.request

    if any(key in urllib.request.getproxies() for key in ("http", "https", "all")):
        return None  # the proxy decides; torchvision goes through it
    error: Optional[OSError] = None
    for mirror in mirrors:
        url = urllib.parse.urlsplit(mirror)
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            socket.create_connection((url.hostname, port), timeout=timeout).close()
            return None
        except OSError as exc:
            error = OSError(f"cannot reach {url.hostname}:{port} ({exc})")
    return error


def load_data(
    root: "str | Path | None" = None,
    *,
    download: bool = True,
    limit_train: Optional[int] = None,
    limit_test: Optional[int] = None,
) -> MNISTData:
    """Read MNIST with ``torchvision.datasets.MNIST(root, train=..., download=download)``.

    ``root`` defaults to ``$ORION_JUPYTER_DATA_DIR`` or ``~/.cache/orion-jupyter/mnist``; the
    files live in ``<root>/MNIST/raw``. ``limit_train``/``limit_test`` keep the first N images.
    Raises :class:`MNISTDataUnavailable` (with what to do) when the files are absent and the
    download fails.
    """
    from torchvision.datasets import MNIST

    root = (default_data_dir() if root is None else Path(root)).expanduser()
    raw = _raw_folder(root)
    for name in IDX_FILES.values():  # files put there by hand as .gz: unpack them (any source)
        packed = raw / f"{name}.gz"
        if packed.is_file() and not (raw / name).is_file():
            import gzip
            import shutil

            tmp = raw / f"{name}.tmp"
            with gzip.open(packed, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            tmp.replace(raw / name)
    if download and not all((raw / name).is_file() for name in IDX_FILES.values()):
        # torchvision's download has no timeout: without internet it can hang for minutes
        problem = _unreachable(MNIST.mirrors)
        if problem is not None:
            raise MNISTDataUnavailable(root, problem)
    splits = {}
    for train in (True, False):
        try:
            dataset = MNIST(str(root), train=train, download=download)
        except (RuntimeError, OSError) as exc:  # "Dataset not found", "Error downloading", socket
            raise MNISTDataUnavailable(root, exc, download) from exc
        images, labels = dataset.data, dataset.targets
        limit = limit_train if train else limit_test
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        splits[train] = (images, labels)
    return MNISTData(root, splits[True][0], splits[True][1], splits[False][0], splits[False][1])


# --------------------------------------------------------------------------------------------
# Model and training


def build_model(seed: Optional[int] = 0) -> "torch.nn.Module":
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


def _normalise(images_uint8: "torch.Tensor") -> "torch.Tensor":
    return ((images_uint8.float() / 255.0) - MEAN).div_(STD).unsqueeze(1)


def evaluate(
    model: "torch.nn.Module", images: "torch.Tensor", labels: "torch.Tensor", batch_size: int = 1000
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


def predict(model: "torch.nn.Module", images: "torch.Tensor") -> "torch.Tensor":
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
    root: "str | Path | None" = None,
    device: "str | torch.device | None" = None,
    limit_train: Optional[int] = None,
    limit_test: Optional[int] = None,
    progress: Optional[ProgressCallback] = None,
    should_stop: Optional[StopCheck] = None,
    *,
    data: Optional[MNISTData] = None,
    download: bool = True,
    seed: Optional[int] = 0,
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
        data = MNISTData(
            data.root,
            data.train_images[:limit_train] if limit_train is not None else data.train_images,
            data.train_labels[:limit_train] if limit_train is not None else data.train_labels,
            data.test_images[:limit_test] if limit_test is not None else data.test_images,
            data.test_labels[:limit_test] if limit_test is not None else data.test_labels,
        )
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


# --------------------------------------------------------------------------------------------
# Plots


def plot_history(result: MNISTResult) -> "Figure":
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
    fig.suptitle(f"MNIST on {result.device_name} · {result.images_per_s:,.0f} images/s")
    return fig


def plot_predictions(
    model: "torch.nn.Module",
    images: "torch.Tensor",
    labels: Optional[Sequence[int]] = None,
    count: int = 12,
) -> "Figure":
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
