"""demos: MNIST images/s through the widget's demo runner against a plain training loop.

Same process, same device, same model (``mnist.build_model``), same data on the device, same
batch size. Three ways: a plain PyTorch loop written here (no progress, no widgets), the library's
``mnist.train`` without a progress callback, and ``widgets.DemoRunner`` (background thread,
progress reports every ~2% of an epoch, widget updates, a plot after every epoch). Each runs a
few epochs; the first is a warm-up, the rest give the median images/s. The data is MNIST-shaped
(60,000 + 10,000 random 28x28 images): throughput does not depend on the pixels, and nothing is
downloaded.

Needs CUDA; elsewhere the section is one "skipped: no CUDA" row. ``--demos-device cpu`` runs it
on the CPU anyway (small sizes), to check the section itself works.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any

from .common import Section

EPOCHS = 3
BATCH = 128
METRIC = "MNIST images/s: DemoRunner vs plain loop"


def _plain_loop(mnist: Any, data: Any, device: Any, epochs: int, batch_size: int) -> list[float]:
    """images/s of each epoch of the simplest loop that trains the same model on the same data."""
    import torch
    from torch import nn

    model = mnist.build_model(0).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    images, labels = data.train_images.to(device), data.train_labels.to(device)
    n = len(labels)
    rates = []
    for _ in range(epochs):
        model.train()
        order = torch.randperm(n).to(device)
        _sync(device)
        started = time.perf_counter()
        for start in range(0, n, batch_size):
            index = order[start:start + batch_size]
            batch = ((images[index].float() / 255.0) - mnist.MEAN).div_(mnist.STD).unsqueeze(1)
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(model(batch), labels[index])
            loss.backward()
            optimiser.step()
        _sync(device)
        rates.append(n / (time.perf_counter() - started))
    return rates


def _sync(device: Any) -> None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize(device)


def _median_after_warmup(rates: list[float]) -> float:
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


def run(quick: bool = False, device: str | None = None) -> Section:
    section = Section("demos")
    try:
        import torch
    except ImportError:
        return section.skipped("skipped: no PyTorch", METRIC)
    if device is None:
        if not torch.cuda.is_available():
            return section.skipped("skipped: no CUDA", METRIC)
        device = "cuda"
    try:
        from orion_jupyter import widgets
        from orion_jupyter.demos import mnist

        for name in ("write_idx_dataset", "load_data", "build_model", "train", "MEAN", "STD"):
            getattr(mnist, name)
        for name in ("DemoRunner", "DemoSettings", "slider_limits"):
            getattr(widgets, name)
    except (ImportError, AttributeError) as err:
        return section.skipped(f"skipped: the demos' API is not there ({err})", METRIC)

    small = quick or device == "cpu"
    n_train, n_test = (4096, 1024) if small else (60000, 10000)
    epochs = 2 if small else EPOCHS
    dev = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="orion-bench-mnist-") as root:
        mnist.write_idx_dataset(
            root,
            torch.randint(0, 256, (n_train, 28, 28), dtype=torch.uint8, generator=generator).numpy(),
            torch.randint(0, 10, (n_train,), dtype=torch.uint8, generator=generator).numpy(),
            torch.randint(0, 256, (n_test, 28, 28), dtype=torch.uint8, generator=generator).numpy(),
            torch.randint(0, 10, (n_test,), dtype=torch.uint8, generator=generator).numpy(),
        )
        data = mnist.load_data(root, download=False)
        memory_mib = (torch.cuda.get_device_properties(dev).total_memory // 2**20) if dev.type == "cuda" else None
        limits = widgets.slider_limits(memory_mib)
        batch = BATCH if BATCH in limits.batch_options else limits.batch_default

        _plain_loop(mnist, data, dev, 1, batch)  # warm-up: CUDA context, kernels, allocator
        plain = _plain_loop(mnist, data, dev, epochs, batch)
        library = [e.images_per_s for e in mnist.train(epochs=epochs, batch_size=batch, device=device, data=data,
                                                       seed=0).history]
        runner = widgets.DemoRunner(limits, widgets.DemoSettings(device=device, data_root=root, download=False))
        try:
            runner.demo.value = "MNIST"
            runner.epochs.value = min(epochs, runner.epochs.max)
            runner.batch_size.value = batch
            result = runner.run(wait=True, timeout=1800)
        finally:
            runner.close()
        widget = [e.images_per_s for e in result.history]

    rates = {"plain_loop": plain, "mnist_train": library, "demo_runner": widget}
    medians = {name: _median_after_warmup(values) for name, values in rates.items()}
    ratio = medians["demo_runner"] / medians["plain_loop"]
    section.data.update({
        "device": device,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "train_images": n_train,
        "batch_size": batch,
        "epochs": epochs,
        "images_per_s_by_epoch": {k: [round(v, 1) for v in vs] for k, vs in rates.items()},
        "images_per_s": {k: round(v, 1) for k, v in medians.items()},
        "runner_over_plain": round(ratio, 3),
    })
    on = section.data["device_name"]
    section.row(f"MNIST plain loop ({on}, batch {batch})", f"{medians['plain_loop']:,.0f} images/s")
    section.row("MNIST mnist.train(), no progress", f"{medians['mnist_train']:,.0f} images/s "
                                                    f"({medians['mnist_train'] / medians['plain_loop']:.2f} of plain)")
    section.row("MNIST through the widget's DemoRunner", f"{medians['demo_runner']:,.0f} images/s "
                                                          f"({ratio:.2f} of plain)")
    return section
