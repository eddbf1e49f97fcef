"""The pretrained InceptionResnetV1 checkpoints: where they are, and loading one without a download.

facenet-pytorch's own loader would fetch ~110 MB from GitHub when a checkpoint is missing, which a
kernel without internet cannot do; :func:`load_embedder` checks first and raises
:class:`FaceNetWeightsMissing`, which says where to put the file and where to get it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..common import resolve_device

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

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
    pretrained: str | None = "vggface2",
    device: str | torch.device | None = None,
) -> torch.nn.Module:
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


def default_embedder(device: str | torch.device | None = None) -> torch.nn.Module:
    """The VGGFace2 embedder, loaded once per device and checkpoint path."""
    dev = resolve_device(device)
    path = checkpoint_path("vggface2")
    key = (str(dev), str(path))
    with _EMBEDDERS_LOCK:
        if key not in _EMBEDDERS:
            _EMBEDDERS[key] = load_embedder("vggface2", dev)
        return _EMBEDDERS[key]
