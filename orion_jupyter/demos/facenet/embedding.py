"""Faces as vectors: embeddings, their pairwise distances, and the small net the triplet demo trains.

:func:`embed` turns aligned faces into 512-d unit vectors (pretrained InceptionResnetV1 by default),
:func:`distance_matrix` compares them, :func:`compare_folder` does both for a folder of photos.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .detection import FACE_SIZE, IMAGE_EXTENSIONS, as_face_batch, detect_faces
from .plots import plot_distances
from .weights import default_embedder

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import torch
    from matplotlib.figure import Figure

EMBEDDING_SIZE = 512


def embed(
    faces: Any,
    model: torch.nn.Module | None = None,
    *,
    device: str | torch.device | None = None,
    batch_size: int = 32,
) -> torch.Tensor:
    """(n, 512) unit-norm embeddings (on the CPU) of aligned faces.

    ``faces``: a tensor (n, 3, 160, 160) or (3, 160, 160), a :class:`FaceDetection`, or a list
    of those. ``model`` defaults to the pretrained VGGFace2 embedder (loaded once per device;
    :class:`FaceNetWeightsMissing` without the checkpoint). The model runs in eval mode, so a
    face's embedding does not depend on what else is in the batch.
    """
    import torch
    import torch.nn.functional as F

    batch = as_face_batch(faces)
    if model is None:
        model = default_embedder(device)
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


def distance_matrix(embeddings: Any) -> np.ndarray:
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


@dataclass
class FolderComparison:
    """Every face found in a folder of photos, its embedding, and all pairwise distances."""

    names: list[str]
    files: list[Path]
    faces: torch.Tensor
    embeddings: torch.Tensor
    distances: np.ndarray
    skipped: list[Path] = field(default_factory=list)

    def plot(self, threshold: float | None = 1.0) -> Figure:
        return plot_distances(self.distances, self.names, threshold=threshold)


def compare_folder(
    path: str | Path,
    *,
    model: torch.nn.Module | None = None,
    device: str | torch.device | None = None,
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
    for file, found in zip(files, detect_faces(files, device=device, min_prob=min_prob), strict=True):
        if not len(found.boxes):
            skipped.append(file)
            continue
        for k in range(len(found.boxes)):
            names.append(file.stem if k == 0 else f"{file.stem}#{k + 1}")
            owners.append(file)
        crops.append(found.faces)
    faces = torch.cat(crops) if crops else torch.zeros((0, 3, FACE_SIZE, FACE_SIZE))
    embeddings = embed(faces, model, device=device)
    return FolderComparison(names, owners, faces, embeddings, distance_matrix(embeddings), skipped)


def EmbeddingNet(
    in_channels: int = 3, embedding_dim: int = 64, width: int = 16, seed: int | None = 0
) -> torch.nn.Module:
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
