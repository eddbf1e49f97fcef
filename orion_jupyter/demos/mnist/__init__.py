"""MNIST on a vGPU: a small CNN, trained with progress reports and a loss/accuracy plot.

Data comes from ``torchvision.datasets.MNIST(root, download=True)``: with the four IDX files
already under ``<root>/MNIST/raw`` nothing is downloaded, so a classroom without internet (or a
test) can plant them with :func:`write_idx_dataset` (or :func:`write_digits_dataset`, which
writes scikit-learn's small 8x8 digits in MNIST's format). :func:`load_data_or_digits` falls
back to those digits, and says so, when MNIST is absent and cannot be downloaded.

Typical use in a notebook::

    from orion_jupyter.demos import mnist
    result = mnist.train(epochs=3)
    print(result.summary())
    mnist.plot_history(result)

Modules: :mod:`.data` (files, download, offline stand-in), :mod:`.model` (the CNN and its
training), :mod:`.plots`, :mod:`.demo` (what the vGPU panel runs). torch, torchvision and
matplotlib are imported inside the functions that need them.
"""

from ..common import default_data_dir
from .data import (
    DIGITS_SOURCE,
    IDX_FILES,
    MIRROR_ENV,
    MNISTData,
    MNISTDataUnavailable,
    digits_as_mnist,
    how_to_get_mnist,
    load_data,
    load_data_or_digits,
    mnist_mirrors,
    write_digits_dataset,
    write_idx_dataset,
)
from .demo import run_demo
from .model import MEAN, STD, MNISTResult, build_model, evaluate, predict, train
from .plots import plot_history, plot_predictions

__all__ = [
    "MNISTDataUnavailable",
    "MNISTData",
    "MNISTResult",
    "IDX_FILES",
    "MIRROR_ENV",
    "DIGITS_SOURCE",
    "MEAN",
    "STD",
    "build_model",
    "load_data",
    "load_data_or_digits",
    "how_to_get_mnist",
    "mnist_mirrors",
    "train",
    "evaluate",
    "predict",
    "plot_history",
    "plot_predictions",
    "write_idx_dataset",
    "write_digits_dataset",
    "digits_as_mnist",
    "default_data_dir",
    "run_demo",
]
