"""The FaceNet demo as the vGPU panel runs it: triplet training on synthetic people, with the loss
plotted after every epoch and the unseen people's distances at the end."""

from __future__ import annotations

from ..registry import DemoRun
from .plots import plot_losses, plot_triplet
from .sources import SyntheticIdentities
from .triplet import TripletResult, train_triplet


def run_demo(job: DemoRun) -> TripletResult:
    """Train with ``job``'s epochs, batch size and :class:`~orion_jupyter.demos.registry.DemoSettings`."""
    from ..common import device_name, resolve_device

    s = job.settings
    device = device_name(resolve_device(s.device))

    def show_losses(done: list) -> None:
        fig = plot_losses([r.epoch for r in done], [r.loss for r in done], f"triplet loss · {device}")
        job.show(fig, f"triplet loss after epoch {done[-1].epoch}")

    kwargs = {"steps_per_epoch": s.facenet_steps_per_epoch, "holdout": s.facenet_holdout, "seed": None,
              **s.facenet_kwargs}
    result = train_triplet(SyntheticIdentities(s.facenet_identities), epochs=job.epochs, batch_size=job.batch_size,
                           device=s.device, progress=job.epoch_reports(show_losses), should_stop=job.should_stop,
                           **kwargs)
    if result.history:
        job.show(plot_triplet(result), result.summary())
    return result
