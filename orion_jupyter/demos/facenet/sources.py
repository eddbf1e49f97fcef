"""Where the FaceNet demo's pictures come from: packaged public-domain photos, synthetic people for
triplet training, or your own labelled images.

A training source has ``sample_batch(identities, per_identity, generator[, device=])`` returning a
P x K batch (images, labels), ``n_identities`` and ``image_shape``; :func:`as_source` makes one from
what :func:`train_triplet` is given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .detection import load_image

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch


def sample_photos(folder: str | Path, *, mirrored: bool = True) -> list[Path]:
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


class SyntheticIdentities:
    """An endless supply of synthetic "people": each identity is a fixed random pattern
    (smooth colour blobs), and each photo of it is that pattern shifted by a few pixels, under
    random lighting, with contrast jitter and noise (see :meth:`photos`). Any integer is an
    identity, so unseen people are just other numbers: training draws from
    ``range(n_identities)``, evaluation from :meth:`unseen`."""

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

    def pattern(self, identity: int, device: str | torch.device | None = None) -> torch.Tensor:
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
        generator: torch.Generator | None = None,
        device: str | torch.device | None = None,
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
        generator: torch.Generator | None = None,
        device: str | torch.device | None = None,
    ):
        """A P x K batch: ``identities`` distinct training identities, ``per_identity`` photos each."""
        import torch

        chosen = torch.randperm(self.n_identities, generator=generator)[:identities]
        return self.photos(chosen.tolist(), per_identity, generator, device)

    def unseen(self, count: int, per_identity: int, generator: torch.Generator | None = None):
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
    def from_dataset(cls, dataset: Any) -> LabeledImages:
        """From a map-style dataset of (image tensor, label) pairs."""
        import torch

        images, labels = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
        return cls(torch.stack([torch.as_tensor(im) for im in images]), torch.as_tensor(labels))

    def sample_batch(
        self,
        identities: int,
        per_identity: int,
        generator: torch.Generator | None = None,
        device: str | torch.device | None = None,
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


def as_source(data: Any) -> Any:
    """A training source from ``None`` (synthetic people), a source, an (images, labels) pair or a dataset."""
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
