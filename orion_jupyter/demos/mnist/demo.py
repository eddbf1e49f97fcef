"""The MNIST demo as the vGPU panel runs it: load the data once (or, offline, scikit-learn's
digits, said so), train with the sliders' settings, plot loss and accuracy after every epoch."""

from __future__ import annotations

from ..common import EpochStats
from ..registry import DemoRun
from .data import load_data_or_digits
from .model import MNISTResult, train
from .plots import plot_history


def run_demo(job: DemoRun) -> MNISTResult:
    """Train with ``job``'s epochs, batch size and :class:`~orion_jupyter.demos.registry.DemoSettings`."""
    from ..common import device_name, resolve_device

    s = job.settings
    key = ("MNIST", str(s.data_root), s.limit_train, s.limit_test, s.download, s.mnist_mirror, s.offline_fallback)
    if key not in job.cache:
        job.status("loading MNIST…")
        job.cache[key] = load_data_or_digits(s.data_root, download=s.download, fallback=s.offline_fallback,
                                             limit_train=s.limit_train, limit_test=s.limit_test,
                                             mirror=s.mnist_mirror)
    data = job.cache[key]
    if data.stand_in:
        job.label = data.source
        job.notes.append(data.advice)
        job.status(f"training on {data.source}")
    device = device_name(resolve_device(s.device))

    def show_history(done: list) -> None:
        partial = MNISTResult(
            history=[EpochStats(r.epoch, r.loss, r.images_per_s, 0.0, r.accuracy) for r in done],
            device="",
            device_name=device,
            train_size=0,
            test_size=0,
            batch_size=job.batch_size,
            epochs_requested=done[-1].epochs,
            dataset=data.source,
        )
        job.show(plot_history(partial), f"{data.source} after epoch {done[-1].epoch}")

    kwargs = {"lr": s.mnist_lr, "data": data, "seed": None, **s.mnist_kwargs}
    result = train(epochs=job.epochs, batch_size=job.batch_size, device=s.device,
                   progress=job.epoch_reports(show_history), should_stop=job.should_stop, **kwargs)
    if result.history:
        job.show(plot_history(result), result.summary())
    return result
