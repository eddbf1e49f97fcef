"""Demos that run in a vGPU kernel: MNIST (small CNN) and FaceNet (detection, embeddings, triplets).

``mnist`` and ``facenet`` are packages (one module per step); ``registry`` lists the demos the
vGPU panel's runner offers and what each runs; ``common`` holds what they share.

Importing this package is cheap: torch, torchvision, facenet-pytorch and matplotlib are
imported by the functions that need them, so a kernel image without them can still import
``orion_jupyter.widgets``.
"""

from .common import (
    DATA_DIR_ENV,
    DeviceInfo,
    EpochStats,
    TrainingProgress,
    cuda_devices,
    default_data_dir,
    device_name,
    resolve_device,
)

__all__ = [
    "DATA_DIR_ENV",
    "DeviceInfo",
    "EpochStats",
    "TrainingProgress",
    "cuda_devices",
    "default_data_dir",
    "device_name",
    "resolve_device",
]
