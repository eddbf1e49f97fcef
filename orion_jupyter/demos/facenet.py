"""FaceNet on a vGPU: detect faces, embed them, compare them, and train a triplet embedding.

Built on facenet-pytorch:

* :func:`detect_faces` runs the real MTCNN detector (its three small networks ship inside the
  facenet-pytorch package, so nothing is downloaded) and returns boxes, probabilities and
  aligned 160x160 face crops, standardised the way InceptionResnetV1 expects.
* :func:`load_embedder` builds ``InceptionResnetV1(pretrained="vggface2")`` through
  facenet-pytorch's own loader, but only when the checkpoint is already on disk: facenet-pytorch
  would otherwise download ~110 MB from GitHub, which a kernel without internet cannot do.
  Without it, :class:`FaceNetWeightsMissing` says where to put the file and where to get it.
* :func:`embed`, :func:`distance_matrix`, :func:`plot_distances` and :func:`compare_folder`
  turn faces into 512-d unit vectors and a heatmap of pairwise distances.
* :func:`train_triplet` trains a small embedding net with a triplet loss on the vGPU (synthetic
  identities by default, or your labelled images) and reports images/s: the "face recognition
  training on a vGPU" tutorial.

torch, facenet-pytorch, PIL and matplotlib are imported inside the functions that need them.
"""

from __future__ import annotations

import inspect
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, Sequence

from .common import (
    EpochHistory,
    EpochStats,
    ProgressCallback,
    StopCheck,
    TrainingProgress,
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
    "CHECKPOINTS",
    "FaceNetWeightsMissing",
    "FaceDetection",
    "FolderComparison",
    "SyntheticIdentities",
    "LabeledImages",
    "EmbeddingNet",
    "Separation",
    "TripletResult",
    "checkpoint_path",
    "torch_home",
    "detect_faces",
    "load_image",
    "load_embedder",
    "embed",
    "distance_matrix",
    "plot_distances",
    "plot_detections",
    "plot_faces",
    "compare_folder",
    "sample_photos",
    "triplet_loss",
    "separation",
    "train_triplet",
    "plot_triplet",
]

#: The checkpoints facenet-pytorch knows: file name (as its loader caches it), release URL,
#: number of identities in the classifier layer the file carries.
CHECKPOINTS = {
    "vggface2": (
        "20180402-114759-vggface2.pt",
        "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt",
        8631,
    ),
    "casia-webface": (
        "20180408-102900-casia-webface.pt",
        "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180408-102900-casia-webface.pt",
        10575,
    ),
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
EMBEDDING_SIZE = 512


# --------------------------------------------------------------------------------------------
# Pretrained weights


class FaceNetWeightsMissing(FileNotFoundError):
    """The pretrained checkpoint is not on disk; nothing was downloaded."""

    def __init__(self, pretrained: str, path: Path, url: str, also_looked: Sequence[Path] = ()):
        self.pretrained = pretrained
        self.path = Path(path)
        self.url = url
        self.also_looked = [Path(p) for p in also_looked]
        looked = "".join(f"\n  (also looked in {p})" for p in self.also_looked)
        super().__init__(
            f"The FaceNet {pretrained!r} weights are not on this machine.\n"
            f"Put the checkpoint at:\n  {self.path}{looked}\n"
            f"Get it (about 110 MB) from:\n  {url}\n"
            f"e.g. on a machine with internet: curl -L -o {self.path.name} {url}\n"
            "and copy it there (or into $TORCH_HOME/checkpoints/ of the kernel image)."
            " Kernels here do not download weights."
        )


def torch_home() -> Path:
    """``$TORCH_HOME``, else ``$XDG_CACHE_HOME/torch``, else ``~/.cache/torch``: the folder
    facenet-pytorch's loader caches checkpoints under (in ``checkpoints/``)."""
    try:
        from facenet_pytorch.models.inception_resnet_v1 import get_torch_home

        return Path(get_torch_home())
    except ImportError:  # same rule, for error messages without facenet-pytorch
        return Path(
            os.path.expanduser(
                os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
            )
        )


def _checkpoint_info(pretrained: str) -> tuple[str, str, int]:
    try:
        return CHECKPOINTS[pretrained]
    except KeyError:
        raise ValueError(
            f"pretrained must be one of {sorted(CHECKPOINTS)} or None, not {pretrained!r}"
        ) from None


def checkpoint_path(pretrained: str = "vggface2") -> Path:
    """Where facenet-pytorch's ``load_weights`` reads the checkpoint: ``<torch_home>/checkpoints/<file>``.

    Note that this is ``$TORCH_HOME/checkpoints``, not ``torch.hub.get_dir()/checkpoints``
    (``$TORCH_HOME/hub/checkpoints``); :func:`load_embedder` accepts a file in either place.
    """
    filename, _, _ = _checkpoint_info(pretrained)
    return torch_home() / "checkpoints" / filename


def _hub_checkpoint_path(pretrained: str) -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / _checkpoint_info(pretrained)[0]


def _ensure_checkpoint(pretrained: str) -> Path:
    """The checkpoint at facenet-pytorch's path, linked there from torch hub's folder if needed."""
    filename, url, _ = _checkpoint_info(pretrained)
    target = checkpoint_path(pretrained)
    if target.is_file():
        return target
    hub = _hub_checkpoint_path(pretrained)
    if hub.is_file() and hub.resolve() != target.resolve():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.unlink(missing_ok=True)  # a dangling link
            target.symlink_to(hub.resolve())
            return target
        except OSError:
            pass
    raise FaceNetWeightsMissing(pretrained, target, url, also_looked=[hub] if hub != target else [])


def load_embedder(
    pretrained: Optional[str] = "vggface2",
    device: "str | torch.device | None" = None,
) -> "torch.nn.Module":
    """InceptionResnetV1 in eval mode, giving 512-d unit-norm embeddings of 160x160 faces.

    ``pretrained="vggface2"`` (or ``"casia-webface"``) loads the checkpoint through
    facenet-pytorch's own path (``InceptionResnetV1(pretrained=...)``) when the file is at
    :func:`checkpoint_path` (or in ``torch.hub.get_dir()/checkpoints``, which is linked to it);
    otherwise raises :class:`FaceNetWeightsMissing` before anything could be downloaded.
    ``pretrained=None`` gives random weights (for trying the pipeline only: distances are
    meaningless).
    """
    from facenet_pytorch import InceptionResnetV1

    dev = resolve_device(device)
    if pretrained is not None:
        _ensure_checkpoint(pretrained)
    model = InceptionResnetV1(pretrained=pretrained, classify=False)
    return model.to(dev).eval()


_EMBEDDERS: dict[tuple, Any] = {}
_EMBEDDERS_LOCK = threading.Lock()


def _default_embedder(device: "str | torch.device | None") -> "torch.nn.Module":
    dev = resolve_device(device)
    path = checkpoint_path("vggface2")
    key = (str(dev), str(path))
    with _EMBEDDERS_LOCK:
        if key not in _EMBEDDERS:
            _EMBEDDERS[key] = load_embedder("vggface2", dev)
        return _EMBEDDERS[key]


# --------------------------------------------------------------------------------------------
# Detection


class FaceDetection(NamedTuple):
    """Faces found in one image: boxes (k, 4) as x1, y1, x2, y2 pixels; probabilities (k,);
    aligned, standardised face crops (k, 3, 160, 160) ready for :func:`embed`."""

    boxes: "np.ndarray"
    probs: "np.ndarray"
    faces: "torch.Tensor"


def load_image(image: Any) -> Any:
    """A PIL RGB image from a PIL image, an (H, W, 3) uint8 array, or a file path."""
    import numpy as np
    from PIL import Image, ImageOps

    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as opened:
            return ImageOps.exif_transpose(opened).convert("RGB")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.dtype != np.uint8:
        array = np.clip(array * (255.0 if array.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return Image.fromarray(array[..., :3])


_DETECTORS: dict[tuple, Any] = {}
_DETECTORS_LOCK = threading.Lock()


def _detector(device: "torch.device", image_size: int, margin: int, min_face_size: int) -> Any:
    from facenet_pytorch import MTCNN

    key = (str(device), image_size, margin, min_face_size)
    with _DETECTORS_LOCK:
        if key not in _DETECTORS:
            _DETECTORS[key] = MTCNN(
                image_size=image_size,
                margin=margin,
                min_face_size=min_face_size,
                keep_all=True,
                post_process=True,
                device=device,
            ).eval()
        return _DETECTORS[key]


def detect_faces(
    images: Any,
    device: "str | torch.device | None" = None,
    *,
    min_prob: float = 0.9,
    image_size: int = 160,
    margin: int = 0,
    min_face_size: int = 20,
) -> list[FaceDetection]:
    """Find faces with facenet-pytorch's MTCNN; one :class:`FaceDetection` per image.

    ``images``: one image or a list (PIL images, uint8 arrays or paths; sizes may differ).
    Faces below ``min_prob`` are dropped. Each result unpacks as ``boxes, probs, faces``.
    """
    import numpy as np
    import torch

    if not isinstance(images, (list, tuple)):
        images = [images]
    dev = resolve_device(device)
    mtcnn = _detector(dev, image_size, margin, min_face_size)
    found = []
    for image in images:
        pil = load_image(image)
        with torch.inference_mode():
            boxes, probs = mtcnn.detect(pil)
        if boxes is None:
            boxes, probs = np.zeros((0, 4), dtype=np.float32), np.zeros((0,), dtype=np.float32)
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        probs = np.asarray(probs, dtype=np.float32).reshape(-1)
        keep = probs >= min_prob
        boxes, probs = boxes[keep], probs[keep]
        if len(boxes):
            with torch.inference_mode():
                faces = mtcnn.extract(pil, boxes, None)
            faces = faces.reshape(len(boxes), 3, image_size, image_size).float().cpu()
        else:
            faces = torch.zeros((0, 3, image_size, image_size))
        found.append(FaceDetection(boxes, probs, faces))
    return found


# --------------------------------------------------------------------------------------------
# Embeddings and distances


def _as_face_batch(faces: Any) -> "torch.Tensor":
    import torch

    if isinstance(faces, FaceDetection):
        return faces.faces
    if isinstance(faces, torch.Tensor):
        return faces.unsqueeze(0) if faces.dim() == 3 else faces
    parts = [_as_face_batch(f) for f in faces]
    parts = [p for p in parts if len(p)]
    return torch.cat(parts) if parts else torch.zeros((0, 3, 160, 160))


def embed(
    faces: Any,
    model: "torch.nn.Module | None" = None,
    *,
    device: "str | torch.device | None" = None,
    batch_size: int = 32,
) -> "torch.Tensor":
    """(n, 512) unit-norm embeddings (on the CPU) of aligned faces.

    ``faces``: a tensor (n, 3, 160, 160) or (3, 160, 160), a :class:`FaceDetection`, or a list
    of those. ``model`` defaults to the pretrained VGGFace2 embedder (loaded once per device;
    :class:`FaceNetWeightsMissing` without the checkpoint). The model runs in eval mode, so a
    face's embedding does not depend on what else is in the batch.
    """
    import torch
    import torch.nn.functional as F

    batch = _as_face_batch(faces)
    if model is None:
        model = _default_embedder(device)
    model_device = next(model.parameters()).device
    model.eval()
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(batch), batch_size):
            out = model(batch[start : start + batch_size].to(model_device))
            chunks.append(F.normalize(out.float(), dim=1).cpu())
    if not chunks:
        return torch.zeros((0, EMBEDDING_SIZE))
    return torch.cat(chunks)


def distance_matrix(embeddings: Any) -> "np.ndarray":
    """Pairwise Euclidean distances (n, n) between embeddings (0 on the diagonal).

    For unit vectors this lies in 0..2; with the VGGFace2 weights, pairs below about 1.0
    are usually the same person.
    """
    import numpy as np
    import torch

    x = torch.as_tensor(
        np.asarray(embeddings.detach().cpu() if hasattr(embeddings, "detach") else embeddings)
    )
    x = x.double()
    distances = torch.cdist(x, x).numpy()
    np.fill_diagonal(distances, 0.0)
    return distances


def plot_distances(
    matrix: Any,
    names: Sequence[str],
    *,
    threshold: Optional[float] = None,
    title: str = "distance between faces",
    ax: Any = None,
) -> "Figure":
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
                ax.text(
                    j,
                    i,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if dark_cell else "black",
                )
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
    images: Sequence[Any], detections: Sequence[FaceDetection], names: Optional[Sequence[str]] = None
) -> "Figure":
    """The photos with their face boxes and probabilities drawn on."""
    from matplotlib.patches import Rectangle

    fig = new_figure(3.2 * len(images), 3.4)
    axes = fig.subplots(1, len(images), squeeze=False)[0]
    for i, (ax, image, found) in enumerate(zip(axes, images, detections)):
        ax.imshow(load_image(image))
        for (x1, y1, x2, y2), p in zip(found.boxes, found.probs):
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="lime", lw=2))
            ax.text(x1, y1 - 4, f"{p:.3f}", color="lime", fontsize=8)
        ax.set_title(f"{names[i] if names else i}: {len(found.boxes)} face(s)", fontsize=9)
        ax.axis("off")
    return fig


def plot_faces(faces: Any, names: Optional[Sequence[str]] = None) -> "Figure":
    """Aligned face crops (as returned by :func:`detect_faces`) side by side."""
    batch = _as_face_batch(faces)
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


def sample_photos(folder: "str | Path", *, mirrored: bool = True) -> list[Path]:
    """Write public-domain portraits that ship inside installed packages into ``folder``.

    Eileen Collins (NASA, ``skimage.data.astronaut()``, if scikit-image is installed) and
    Grace Hopper (US Navy, matplotlib's ``grace_hopper.jpg``); with ``mirrored`` also their
    mirror images: the same person in a different picture. Returns the files written.
    """
    from PIL import Image, ImageOps

    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    photos: dict[str, Any] = {}
    try:
        from skimage import data as skdata

        photos["collins"] = Image.fromarray(skdata.astronaut())
    except ImportError:
        pass
    try:
        from matplotlib import cbook

        photos["hopper"] = load_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    except (ImportError, OSError, ValueError):
        pass
    if not photos:
        raise RuntimeError("no sample photos: install scikit-image or matplotlib, or use your own folder")
    written = []
    for name, image in photos.items():
        variants = [(name, image)] + ([(f"{name}-mirrored", ImageOps.mirror(image))] if mirrored else [])
        for stem, picture in variants:
            path = folder / f"{stem}.png"
            picture.save(path)
            written.append(path)
    return written


@dataclass
class FolderComparison:
    """Every face found in a folder of photos, its embedding, and all pairwise distances."""

    names: list[str]
    files: list[Path]
    faces: "torch.Tensor"
    embeddings: "torch.Tensor"
    distances: "np.ndarray"
    skipped: list[Path] = field(default_factory=list)

    def plot(self, threshold: Optional[float] = 1.0) -> "Figure":
        return plot_distances(self.distances, self.names, threshold=threshold)


def compare_folder(
    path: "str | Path",
    *,
    model: "torch.nn.Module | None" = None,
    device: "str | torch.device | None" = None,
    min_prob: float = 0.9,
) -> FolderComparison:
    """Detect the faces in every photo of a folder, embed them, and compute their distances.

    Faces are named after their file (``photo``, or ``photo#2`` for a second face in it).
    Photos with no face are listed in ``skipped``. ``model`` defaults to the pretrained
    VGGFace2 embedder (:class:`FaceNetWeightsMissing` without it).
    """
    import torch

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder of photos")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise FileNotFoundError(f"no photos ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    names, owners, crops, skipped = [], [], [], []
    for file, found in zip(files, detect_faces(files, device=device, min_prob=min_prob)):
        if not len(found.boxes):
            skipped.append(file)
            continue
        for k in range(len(found.boxes)):
            names.append(file.stem if k == 0 else f"{file.stem}#{k + 1}")
            owners.append(file)
        crops.append(found.faces)
    faces = torch.cat(crops) if crops else torch.zeros((0, 3, 160, 160))
    embeddings = embed(faces, model, device=device)
    return FolderComparison(names, owners, faces, embeddings, distance_matrix(embeddings), skipped)


# --------------------------------------------------------------------------------------------
# Triplet training


class SyntheticIdentities:
    """An endless supply of synthetic "people": each identity is a fixed random pattern
    (smooth colour blobs), and each photo of it is that pattern shifted by a few pixels, under
    random lighting, with contrast jitter and noise (see :meth:`photos`). Any integer is an identity, so unseen people are just
    other numbers: training draws from ``range(n_identities)``, evaluation from
    :meth:`unseen`."""

    def __init__(
        self,
        n_identities: int = 200,
        image_size: int = 32,
        channels: int = 3,
        *,
        noise: float = 0.3,
        max_shift: int = 2,
        lighting: float = 1.5,
        detail: int = 4,
        seed: int = 0,
    ):
        if n_identities < 2:
            raise ValueError("need at least 2 identities")
        self.n_identities = n_identities
        self.image_size = image_size
        self.channels = channels
        self.noise = noise
        self.max_shift = max_shift
        self.lighting = lighting
        self.detail = detail
        self.seed = seed
        self._patterns: dict[Any, Any] = {}

    def pattern(self, identity: int, device: "str | torch.device | None" = None) -> "torch.Tensor":
        """The identity's base pattern (channels, size + 2*shift, size + 2*shift), mean 0, std 1."""
        import torch
        import torch.nn.functional as F

        if device is not None and torch.device(device).type != "cpu":
            key = (str(device), identity)
            if key not in self._patterns:
                self._patterns[key] = self.pattern(identity).to(device)
            return self._patterns[key]
        if identity not in self._patterns:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(identity) + 1)
            coarse = torch.randn(1, self.channels, self.detail, self.detail, generator=g)
            side = self.image_size + 2 * self.max_shift
            fine = F.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False)[0]
            fine = (fine - fine.mean()) / fine.std().clamp_min(1e-6)
            self._patterns[identity] = fine
        return self._patterns[identity]

    def photos(
        self,
        identities: Sequence[int],
        per_identity: int,
        generator: "torch.Generator | None" = None,
        device: "str | torch.device | None" = None,
    ):
        """``per_identity`` photos of each identity: (images (n, c, s, s), labels (n,)).

        A photo is the identity's pattern, shifted by up to ``max_shift`` pixels, under random
        "lighting" (a colour cast and a brightness gradient in a random direction, as strong as
        the pattern itself, so raw pixels, or an untrained net, confuse people), scaled in
        contrast, plus pixel noise. The photos are made on ``device`` (default CPU), so a GPU
        is not held up by the CPU; ``generator`` (CPU) makes them reproducible.
        """
        import torch

        dev = torch.device(device) if device is not None else torch.device("cpu")
        labels = torch.tensor([int(i) for i in identities for _ in range(per_identity)], dtype=torch.long)
        n, c, s, m = len(labels), self.channels, self.image_size, self.max_shift
        if n == 0:
            return torch.zeros((0, c, s, s), device=dev), labels.to(dev)
        bases = torch.stack([self.pattern(int(i), dev) for i in identities]).repeat_interleave(
            per_identity, dim=0
        )
        # shift: crop an s x s window at a random offset in 0..2m of each (s + 2m) pattern
        dy, dx = torch.randint(0, 2 * m + 1, (2, n), generator=generator).to(dev)
        steps = torch.arange(s, device=dev)
        rows = (dy[:, None] + steps)[:, None, :, None]
        cols = (dx[:, None] + steps)[:, None, None, :]
        crops = bases[
            torch.arange(n, device=dev)[:, None, None, None],
            torch.arange(c, device=dev)[None, :, None, None],
            rows,
            cols,
        ]
        contrast = (0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=generator)).to(dev)
        angle = (2 * math.pi * torch.rand(n, generator=generator)).to(dev)
        strength = (self.lighting * torch.rand(n, generator=generator)).to(dev)
        ramp = torch.linspace(-1.0, 1.0, s, device=dev)
        gradient = strength[:, None, None] * (
            torch.cos(angle)[:, None, None] * ramp[None, None, :]
            + torch.sin(angle)[:, None, None] * ramp[None, :, None]
        )
        cast = (self.lighting * 0.5 * torch.randn(n, c, 1, 1, generator=generator)).to(dev)
        if dev.type == "cpu":
            noise = torch.randn(n, c, s, s, generator=generator)
        else:  # draw the big tensor where it is used, from a generator seeded by the CPU one
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            noise = torch.randn(
                n, c, s, s, device=dev, generator=torch.Generator(device=dev).manual_seed(seed)
            )
        return crops * contrast + gradient[:, None] + cast + self.noise * noise, labels.to(dev)

    def sample_batch(
        self,
        identities: int,
        per_identity: int,
        generator: "torch.Generator | None" = None,
        device: "str | torch.device | None" = None,
    ):
        """A P x K batch: ``identities`` distinct training identities, ``per_identity`` photos each."""
        import torch

        chosen = torch.randperm(self.n_identities, generator=generator)[:identities]
        return self.photos(chosen.tolist(), per_identity, generator, device)

    def unseen(self, count: int, per_identity: int, generator: "torch.Generator | None" = None):
        """Photos of ``count`` identities never used for training."""
        first = 1_000_000 + self.n_identities
        return self.photos(range(first, first + count), per_identity, generator)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)


class LabeledImages:
    """Your own images (n, c, h, w) float and labels (n,), sampled as P x K triplet batches."""

    def __init__(self, images: Any, labels: Any):
        import torch

        self.images = torch.as_tensor(images).float()
        self.labels = torch.as_tensor(labels).long()
        if self.images.dim() != 4 or len(self.images) != len(self.labels):
            raise ValueError("images must be (n, c, h, w) with one label each")
        self.by_label = {
            int(label): torch.nonzero(self.labels == label).flatten() for label in torch.unique(self.labels)
        }
        self.usable = [label for label, members in self.by_label.items() if len(members) >= 2]
        if len(self.usable) < 2:
            raise ValueError("triplets need at least 2 identities with 2 or more images each")
        self.n_identities = len(self.usable)
        self._on_device: dict[str, Any] = {}

    @classmethod
    def from_dataset(cls, dataset: Any) -> "LabeledImages":
        """From a map-style dataset of (image tensor, label) pairs."""
        import torch

        images, labels = zip(*(dataset[i] for i in range(len(dataset))))
        return cls(torch.stack([torch.as_tensor(im) for im in images]), torch.as_tensor(labels))

    def sample_batch(
        self,
        identities: int,
        per_identity: int,
        generator: "torch.Generator | None" = None,
        device: "str | torch.device | None" = None,
    ):
        import torch

        images, labels = self.images, self.labels
        if device is not None and torch.device(device).type != "cpu":
            key = str(device)
            if key not in self._on_device:  # copy once, then index there
                self._on_device[key] = (self.images.to(device), self.labels.to(device))
            images, labels = self._on_device[key]
        order = torch.randperm(len(self.usable), generator=generator)[:identities]
        picks = []
        for i in order.tolist():
            members = self.by_label[self.usable[i]]
            chosen = members[torch.randint(len(members), (per_identity,), generator=generator)]
            picks.append(chosen)
        index = torch.cat(picks).to(images.device)
        return images[index], labels[index]

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])


def _as_source(data: Any) -> Any:
    if data is None:
        return SyntheticIdentities()
    if hasattr(data, "sample_batch"):
        return data
    if isinstance(data, tuple) and len(data) == 2:
        return LabeledImages(*data)
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return LabeledImages.from_dataset(data)
    raise TypeError(
        "data must be a SyntheticIdentities, a LabeledImages, an (images, labels) pair or a dataset"
    )


def EmbeddingNet(
    in_channels: int = 3, embedding_dim: int = 64, width: int = 16, seed: Optional[int] = 0
) -> "torch.nn.Module":
    """A small CNN that maps an image to a unit-norm ``embedding_dim`` vector (~25 k weights at width 16)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class _Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()

            def block(cin: int, cout: int) -> nn.Sequential:
                return nn.Sequential(
                    nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
                )

            self.features = nn.Sequential(
                block(in_channels, width),
                nn.MaxPool2d(2),
                block(width, 2 * width),
                nn.MaxPool2d(2),
                block(2 * width, 4 * width),
                nn.AdaptiveAvgPool2d(2),
                nn.Flatten(),
            )
            self.head = nn.Linear(4 * width * 4, embedding_dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.normalize(self.head(self.features(x)), dim=1)

    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return _Net()


def triplet_loss(
    embeddings: "torch.Tensor",
    labels: "torch.Tensor",
    margin: float = 0.2,
    mining: str = "auto",
    reduction: str = "active",
) -> "torch.Tensor":
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

    distances: "np.ndarray"
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


def separation(model: "torch.nn.Module", images: "torch.Tensor", labels: Any) -> Separation:
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
    holdout: Optional[Separation] = None
    holdout_before: Optional[Separation] = None
    model: Any = field(default=None, repr=False)

    def summary(self) -> str:
        if not self.history:
            return f"triplet training stopped before the first epoch finished on {self.device_name}"
        text = (
            f"triplet training {'stopped early' if self.stopped else 'done'}: {len(self.history)}/{self.epochs_requested}"
            f" epochs on {self.device_name}, loss {self.losses[0]:.3f} -> {self.losses[-1]:.3f},"
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
    device: "str | torch.device | None" = None,
    progress: Optional[ProgressCallback] = None,
    should_stop: Optional[StopCheck] = None,
    *,
    lr: float = 3e-3,
    steps_per_epoch: Optional[int] = None,
    per_identity: int = 4,
    margin: float = 0.2,
    mining: str = "auto",
    embedding_dim: int = 64,
    width: int = 16,
    model: "torch.nn.Module | None" = None,
    holdout: Any = 4,
    holdout_per_identity: int = 3,
    seed: Optional[int] = 0,
) -> TripletResult:
    """Train a small embedding net with a triplet loss and report images/s on the (v)GPU.

    ``data``: ``None`` (synthetic identities, :class:`SyntheticIdentities`), a source with
    ``sample_batch(identities, per_identity, generator[, device=])``, an ``(images, labels)`` pair or a
    dataset of ``(image, label)``. Each step draws ``batch_size // per_identity`` people with
    ``per_identity`` photos each. ``steps_per_epoch`` defaults to 30 for synthetic data, else
    one pass over the images. The loss reported (progress, history) is the mean over all
    triplets of the batch; the one minimised averages over the still-violating ones. ``holdout``: a number of unseen synthetic identities (with
    ``holdout_per_identity`` photos each), an ``(images, labels)`` pair, or None; the result
    reports their separation before and after training. ``progress``/``should_stop`` as in
    :func:`orion_jupyter.demos.mnist.train`.
    """
    import torch

    if epochs < 1:
        raise ValueError("epochs must be at least 1")
    if per_identity < 2 or batch_size < 2 * per_identity:
        raise ValueError("need per_identity >= 2 and batch_size >= 2 * per_identity (two people at least)")
    started = time.perf_counter()
    dev = resolve_device(device)
    source = _as_source(data)
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


def plot_triplet(result: TripletResult) -> "Figure":
    """Triplet loss per epoch, and (if measured) the distance heatmap of unseen people."""
    has_holdout = result.holdout is not None
    fig = new_figure(9.0 if has_holdout else 4.5, 3.6)
    axes = fig.subplots(1, 2 if has_holdout else 1, squeeze=False)[0]
    epochs = [e.epoch for e in result.history]
    axes[0].plot(epochs, result.losses, "o-", color="tab:purple")
    axes[0].set_title("triplet loss (all triplets)")
    axes[0].set_xlabel("epoch")
    if result.losses and min(result.losses) > 0:
        axes[0].set_yscale("log")
    axes[0].xaxis.get_major_locator().set_params(integer=True)
    axes[0].grid(alpha=0.3)
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
