"""Finding faces: facenet-pytorch's MTCNN, and the images and face batches it works on.

MTCNN's three small networks ship inside the facenet-pytorch package, so nothing is downloaded.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any, NamedTuple

from ..common import resolve_device

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import torch

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
FACE_SIZE = 160


class FaceDetection(NamedTuple):
    """Faces found in one image: boxes (k, 4) as x1, y1, x2, y2 pixels; probabilities (k,);
    aligned, standardised face crops (k, 3, 160, 160) ready for :func:`embed`."""

    boxes: np.ndarray
    probs: np.ndarray
    faces: torch.Tensor


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


def as_face_batch(faces: Any) -> torch.Tensor:
    """Aligned faces as one (n, 3, 160, 160) tensor: from a tensor (batch or one face), a
    :class:`FaceDetection`, or a list of those."""
    import torch

    if isinstance(faces, FaceDetection):
        return faces.faces
    if isinstance(faces, torch.Tensor):
        return faces.unsqueeze(0) if faces.dim() == 3 else faces
    parts = [as_face_batch(f) for f in faces]
    parts = [p for p in parts if len(p)]
    return torch.cat(parts) if parts else torch.zeros((0, 3, FACE_SIZE, FACE_SIZE))


_DETECTORS: dict[tuple, Any] = {}
_DETECTORS_LOCK = threading.Lock()


def _detector(device: torch.device, image_size: int, margin: int, min_face_size: int) -> Any:
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
    device: str | torch.device | None = None,
    *,
    min_prob: float = 0.9,
    image_size: int = FACE_SIZE,
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
