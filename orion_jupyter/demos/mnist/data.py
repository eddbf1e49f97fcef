"""MNIST's files: reading them through torchvision, writing IDX files, and the offline stand-in.

``torchvision.datasets.MNIST(root, download=True)`` reads the four IDX files under
``<root>/MNIST/raw`` and downloads only what is missing (from ``$ORION_JUPYTER_MNIST_MIRROR`` when
set). A classroom without internet (or a test) can plant them with :func:`write_idx_dataset`, or
:func:`write_digits_dataset`, which writes scikit-learn's small 8x8 digits in MNIST's format.
:func:`load_data_or_digits` is the one home of the offline fallback the notebook and the panel use.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..common import DATA_DIR_ENV, default_data_dir

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import torch

#: torchvision's names for the uncompressed files it looks for under ``<root>/MNIST/raw``.
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
#: A mirror (URL of a folder with the four ``.gz`` files) to download MNIST from instead of torchvision's.
MIRROR_ENV = "ORION_JUPYTER_MNIST_MIRROR"
#: What the demos call the data when they train on scikit-learn's digits because MNIST is missing.
DIGITS_SOURCE = "scikit-learn digits (MNIST not available offline)"
#: Subfolder of the data folder the offline stand-in is written to (never ``MNIST/raw``, where it
#: would pass for MNIST once the machine is online).
DIGITS_FOLDER = "sklearn-digits"


class MNISTDataUnavailable(RuntimeError):
    """The MNIST files are not in the data folder and could not be downloaded."""

    def __init__(self, root: Path, cause: BaseException | None = None, download: bool = True):
        self.root = Path(root)
        self.raw_folder = self.root / "MNIST" / "raw"
        self.download = download
        names = ", ".join(IDX_FILES.values())
        why = (
            "could not be downloaded (is there no internet access from this kernel?)"
            if download
            else "downloading is turned off"
        )
        message = (
            f"MNIST is not in {self.raw_folder} and {why}.\n"
            f"Put the four files ({names}, .gz or uncompressed) in that folder, point"
            f" ${DATA_DIR_ENV} at a folder that has MNIST/raw/ in it, set ${MIRROR_ENV} to a mirror"
            " that serves them, or, to work offline, write scikit-learn's small digits there with"
            " orion_jupyter.demos.mnist.write_digits_dataset(root)."
        )
        if cause is not None and download:
            lines = str(cause).strip().splitlines() or [type(cause).__name__]
            message += "\nDownload error: " + " ".join(line.strip() for line in lines[:3])
        super().__init__(message)


@dataclass
class MNISTData:
    """Images as uint8 tensors (N, 28, 28) and labels (N,), as torchvision's MNIST read them.

    ``source`` names what they are (``"MNIST"``, or :data:`DIGITS_SOURCE` for the offline
    stand-in); then ``notice`` says why (for a notebook to print) and ``advice`` how to get
    real MNIST.
    """

    root: Path
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str = "MNIST"
    notice: str = ""
    advice: str = ""

    @property
    def sizes(self) -> tuple[int, int]:
        return len(self.train_labels), len(self.test_labels)

    @property
    def stand_in(self) -> bool:
        """Not MNIST: scikit-learn's digits, written in MNIST's format."""
        return self.source != "MNIST"

    def limited(self, limit_train: int | None = None, limit_test: int | None = None) -> MNISTData:
        """The first ``limit_train`` / ``limit_test`` images of each split (None: all)."""
        return dataclasses.replace(
            self,
            train_images=self.train_images[:limit_train],
            train_labels=self.train_labels[:limit_train],
            test_images=self.test_images[:limit_test],
            test_labels=self.test_labels[:limit_test],
        )



def _raw_folder(root: Path) -> Path:
    return Path(root) / "MNIST" / "raw"


def _idx_bytes(array: np.ndarray) -> bytes:
    """An IDX (SN3 "Pascal Vincent") file of unsigned bytes: magic, big-endian sizes, data."""
    import numpy as np

    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.tobytes()


def _as_uint8(name: str, values: Any, ndim: int) -> np.ndarray:
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
    root: str | Path,
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
    root: str | Path | None = None, test_fraction: float = 0.25, seed: int = 0
) -> Path:
    """Offline stand-in for MNIST: write scikit-learn's digits as MNIST IDX files under ``root``.

    About 1,350 training and 450 test images: enough to watch the CNN learn (and for tests),
    with nothing downloaded. Returns the raw folder. ``root`` defaults to :func:`default_data_dir`.
    """
    root = default_data_dir() if root is None else Path(root)
    return write_idx_dataset(root, *digits_as_mnist(test_fraction=test_fraction, seed=seed))


def _unreachable(mirrors: Sequence[str], timeout: float = 5.0) -> OSError | None:
    """None when some mirror accepts a TCP connection (or a proxy is configured), else the error."""
    import socket
    import urllib.parse
    import urllib.request

    if any(key in urllib.request.getproxies() for key in ("http", "https", "all")):
        return None  # the proxy decides; torchvision goes through it
    error: OSError | None = None
    for mirror in mirrors:
        url = urllib.parse.urlsplit(mirror)
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            socket.create_connection((url.hostname, port), timeout=timeout).close()
            return None
        except OSError as exc:
            error = OSError(f"cannot reach {url.hostname}:{port} ({exc})")
    return error


def mnist_mirrors(mirror: str | None = None) -> list[str]:
    """Where torchvision downloads MNIST from: ``mirror`` (a URL, or several separated by spaces or
    commas), else ``$ORION_JUPYTER_MNIST_MIRROR``, else torchvision's own mirrors."""
    value = mirror or os.environ.get(MIRROR_ENV, "")
    urls = [url if url.endswith("/") else url + "/" for url in re.split(r"[\s,]+", value.strip()) if url]
    if urls:
        return urls
    from torchvision.datasets import MNIST

    return list(MNIST.mirrors)


def _mnist_class(mirrors: list[str]) -> Any:
    """torchvision's MNIST, downloading from ``mirrors`` (it reads the class attribute, and
    names the data folder after the class)."""
    from torchvision.datasets import MNIST

    if not mirrors or mirrors == list(MNIST.mirrors):
        return MNIST
    return type("MNIST", (MNIST,), {"mirrors": mirrors})


def load_data(
    root: str | Path | None = None,
    *,
    download: bool = True,
    limit_train: int | None = None,
    limit_test: int | None = None,
    mirror: str | None = None,
) -> MNISTData:
    """Read MNIST with ``torchvision.datasets.MNIST(root, train=..., download=download)``.

    ``root`` defaults to ``$ORION_JUPYTER_DATA_DIR`` or ``~/.cache/orion-jupyter/mnist``; the
    files live in ``<root>/MNIST/raw``. ``limit_train``/``limit_test`` keep the first N images.
    Missing files are downloaded from :func:`mnist_mirrors` (``mirror``). Raises
    :class:`MNISTDataUnavailable` (with what to do) when the files are absent and the download
    fails.
    """
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
    missing = not all((raw / name).is_file() for name in IDX_FILES.values())
    mirrors = mnist_mirrors(mirror) if download and missing else []
    if mirrors:
        # torchvision's download has no timeout: without internet it can hang for minutes
        problem = _unreachable(mirrors)
        if problem is not None:
            raise MNISTDataUnavailable(root, problem)
    dataset_class = _mnist_class(mirrors)
    splits = {}
    for train in (True, False):
        try:
            dataset = dataset_class(str(root), train=train, download=download)
        except (RuntimeError, OSError) as exc:  # "Dataset not found", "Error downloading", socket
            raise MNISTDataUnavailable(root, exc, download) from exc
        splits[train] = (dataset.data, dataset.targets)
    data = MNISTData(root, splits[True][0], splits[True][1], splits[False][0], splits[False][1])
    return data.limited(limit_train, limit_test)


def how_to_get_mnist(root: str | Path | None = None) -> str:
    """What to do to train on real MNIST instead of the offline stand-in."""
    raw = _raw_folder((default_data_dir() if root is None else Path(root)).expanduser())
    return (
        f"To train on real MNIST: put its four IDX files ({', '.join(IDX_FILES.values())}, .gz or"
        f" uncompressed) in {raw}, or in <folder>/MNIST/raw with ${DATA_DIR_ENV}=<folder>; or set"
        f" ${MIRROR_ENV} (the panel: DemoSettings(mnist_mirror=...)) to the URL of a mirror that serves them."
    )


def _digits_root(root: Path) -> Path:
    """``<root>/sklearn-digits`` with the stand-in written there (once), or a temporary folder when
    ``root`` is read-only."""
    target = root / DIGITS_FOLDER
    if all((_raw_folder(target) / name).is_file() for name in IDX_FILES.values()):
        return target
    try:
        write_digits_dataset(target)
    except OSError:
        target = Path(tempfile.mkdtemp(prefix="orion-digits-"))
        write_digits_dataset(target)
    return target


def load_data_or_digits(
    root: str | Path | None = None,
    *,
    download: bool = True,
    fallback: bool = True,
    limit_train: int | None = None,
    limit_test: int | None = None,
    mirror: str | None = None,
) -> MNISTData:
    """:func:`load_data`, or, when MNIST is absent and cannot be downloaded, scikit-learn's digits.

    The one home of the offline fallback (the notebook and the panel use it). The stand-in is
    written as MNIST IDX files under ``<root>/sklearn-digits`` (a temporary folder if ``root`` is
    read-only), never into ``<root>/MNIST/raw``, where it would pass for MNIST later; its
    ``source`` is :data:`DIGITS_SOURCE`, its ``notice`` says why (starting with the
    :class:`MNISTDataUnavailable` message) and its ``advice`` how to get real MNIST. With
    ``fallback=False``, or ``download=False`` (the files were meant to be there), the error is
    raised instead.
    """
    root = (default_data_dir() if root is None else Path(root)).expanduser()
    try:
        return load_data(root, download=download, limit_train=limit_train, limit_test=limit_test, mirror=mirror)
    except MNISTDataUnavailable as error:
        if not (fallback and error.download):
            raise
        unavailable = error
    digits = _digits_root(root)
    data = load_data(digits, download=False, limit_train=limit_train, limit_test=limit_test)
    n_train, n_test = data.sizes
    # why, in its first line (and the download's error); how to get real MNIST is the advice, said once
    why = [line for line in str(unavailable).splitlines() if not line.startswith("Put the four files")]
    notice = (
        "\n".join(why) + f"\n\nContinuing OFFLINE with scikit-learn's digits (not MNIST): {n_train:,} training"
        f" and {n_test:,} test images, written as MNIST files in {digits}."
    )
    return dataclasses.replace(data, source=DIGITS_SOURCE, notice=notice, advice=how_to_get_mnist(root))
