"""The vGPU panel, built and driven from Python with a fake allocation in the environment."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from orion_jupyter import widgets as w
from orion_jupyter.allocation import ENV_NAMES, KernelAllocation
from orion_jupyter.widgets import allocation as widget_allocation

REPO = Path(__file__).resolve().parents[1]

FAKE = {
    "cluster": "kubernetes",
    "backend": "orion",
    "vgpus": "1",
    "memory_mib": "4096",
    "compute_percent": "50",
    "kernel_id": "k-1234",
    "user": "ada",
    "memory_cap": "enforced",
    "pod_name": "kernel-k-1234",
    "namespace": "class-a",
    "node_name": "gpu-node-7",
    "pod_ip": "10.1.2.3",
}


@pytest.fixture
def fake_allocation(monkeypatch):
    for name in ENV_NAMES.values():
        monkeypatch.delenv(name, raising=False)
    for key, value in FAKE.items():
        monkeypatch.setenv(ENV_NAMES[key], value)
    return KernelAllocation.from_env()


@pytest.fixture
def no_allocation(monkeypatch):
    for name in ENV_NAMES.values():
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory) -> Path:
    from orion_jupyter.demos import mnist

    root = tmp_path_factory.mktemp("digits")
    mnist.write_digits_dataset(root)
    return root


@pytest.fixture
def panel(fake_allocation, digits_root):
    created = w.VGPUPanel(
        settings=w.DemoSettings(data_root=digits_root, device="cpu", download=False), refresh_s=0.05
    )
    yield created
    created.close()


def test_kernel_side_modules_import_without_torch_or_server_packages():
    code = (
        "import sys\n"
        "import orion_jupyter.widgets, orion_jupyter.demos, orion_jupyter.demos.mnist, orion_jupyter.demos.facenet\n"
        "heavy = {'torch', 'torchvision', 'facenet_pytorch', 'matplotlib', 'kubernetes', 'jupyter_server',"
        " 'tornado.web'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_panel_shows_the_allocation(panel):
    labels = {key: label.value for key, label in panel.allocation_labels.items()}
    assert labels["cluster"] == "kubernetes"
    assert labels["backend"] == "orion"
    assert labels["vgpus"] == "1"
    assert labels["memory"].startswith("4096 MiB per vGPU")
    assert labels["compute"] == "50% of a GPU"
    assert labels["node"] == "gpu-node-7"
    assert labels["pod"] == "class-a/kernel-k-1234"
    assert labels["memory_cap"].startswith("enforced")
    assert "k-1234" in labels["kernel"] and "ada" in labels["kernel"]
    assert panel.summary.value.startswith("kubernetes · orion · 1 vGPU · 4 GiB · 50% compute")

    # sliders follow the rule for 4096 MiB per vGPU
    runner = panel.runner
    assert runner.epochs.max == 20 and max(runner.batch_size.options) == 2048
    assert runner.batch_size.value == 128 and runner.epochs.value == 2
    assert "4096 MiB" in runner.rule.value


def test_panel_shows_devices_and_memory(panel):
    import torch

    if torch.cuda.is_available():
        assert "cuda:0" in panel.devices_label.value
        assert "vGPU memory" in panel.memory_label.value
    else:
        assert "no GPU: running on CPU" in panel.devices_label.value
        assert "granted 1 vGPU" in panel.devices_label.value
        assert "RSS" in panel.memory_label.value and "no vGPU memory" in panel.memory_label.value
        assert panel.memory_bar.layout.display == "none"


def test_without_allocation_the_panel_says_so(no_allocation):
    panel = w.VGPUPanel(monitor=False)
    try:
        assert panel.allocation is None
        assert panel.summary.value == w.NOT_ORION
        assert "not started by orion-jupyter" in panel.summary.value
        assert panel.allocation_labels == {}
        assert not panel.monitoring
    finally:
        panel.close()


def test_run_button_trains_mnist_with_progress_plot_and_throughput(panel):
    runner = panel.runner
    runner.epochs.value = 1
    runner.batch_size.value = 64
    seen_running = []
    runner.on_progress = lambda report: seen_running.append(
        runner.run_button.disabled and not runner.stop_button.disabled
    )

    runner.run_button.click()
    result = runner.wait(timeout=120)

    assert result is not None and not result.stopped and len(result.history) == 1
    assert runner.progress.value == runner.progress.max == 100
    assert runner.progress.bar_style == "success"
    assert seen_running and all(seen_running)  # Run was disabled and Stop enabled while it ran
    assert not runner.run_button.disabled and runner.stop_button.disabled
    (output,) = runner.plot.outputs
    assert output["output_type"] == "display_data"
    png = base64.b64decode(output["data"]["image/png"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    match = re.fullmatch(r"images/s: ([\d,]+) on CPU.*", runner.throughput.value)
    assert match and int(match.group(1).replace(",", "")) > 0, runner.throughput.value
    assert "final test accuracy" in runner.status.value
    assert len(runner.history) == 1 and runner.history[0].accuracy == result.final_accuracy


def test_stop_button_ends_a_run_early(panel):
    runner = panel.runner
    runner.epochs.value = runner.epochs.max
    runner.batch_size.value = 16
    reports = []

    def click_stop_once(report):
        reports.append(report)
        if len(reports) == 1:
            runner.stop_button.click()

    runner.on_progress = click_stop_once
    runner.run_button.click()
    result = runner.wait(timeout=60)

    assert result.stopped and result.history == []
    assert len(reports) <= 2  # the step in flight, then it stopped
    assert runner.progress.value < runner.progress.max
    assert runner.progress.bar_style == "warning"
    assert runner.status.value.startswith("stopped")
    assert not runner.run_button.disabled and not runner.demo.disabled


def test_facenet_demo_from_the_runner(panel):
    runner = panel.runner
    runner.settings.facenet_steps_per_epoch = 5
    runner.settings.facenet_identities = 40
    runner.demo.value = "FaceNet"
    runner.epochs.value = 2
    runner.batch_size.value = 32

    result = runner.run(wait=True, timeout=120)

    assert len(result.history) == 2 and result.holdout is not None
    assert runner.progress.value == 100
    assert "images/s" in runner.throughput.value and "triplet" in runner.status.value
    assert "image/png" in runner.plot.outputs[0]["data"]


def test_errors_are_shown_and_raised(panel, tmp_path):
    runner = panel.runner
    runner.settings = w.DemoSettings(data_root=tmp_path / "nothing", device="cpu", download=False)
    runner.epochs.value = 1
    from orion_jupyter.demos.mnist import MNISTDataUnavailable

    with pytest.raises(MNISTDataUnavailable):
        runner.run(wait=True, timeout=60)
    assert runner.status.value.startswith("error: MNIST is not in")
    assert runner.progress.bar_style == "danger"
    assert "write_digits_dataset" in runner.plot.outputs[0]["text"]
    assert not runner.run_button.disabled


def test_monitor_refreshes_only_while_shown_and_stops_on_close(fake_allocation):
    panel = w.VGPUPanel(refresh_s=0.02)
    assert panel.monitoring and panel._view_count == 0 and not panel.visible
    start = panel.refreshes
    time.sleep(0.2)
    assert panel.refreshes == start  # no view: nothing re-read

    panel._view_count = 1  # what the front end sets when it shows the panel
    deadline = time.monotonic() + 5
    while panel.refreshes < start + 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert panel.refreshes >= start + 3

    children = [panel.runner, panel.memory_bar, panel.runner.run_button]
    panel.close()
    assert not panel.monitoring
    assert panel.comm is None and all(child.comm is None for child in children)
    assert not any(
        t.name == "orion-vgpu-monitor" and t.is_alive() for t in threading.enumerate() if t is panel._monitor
    )


@pytest.mark.parametrize(
    "memory_mib, batch_max, epochs_max",
    [
        (None, 256, 5),
        (0, 256, 5),
        (600, 64, 5),
        (1024, 512, 5),
        (2048, 1024, 10),
        (4096, 2048, 20),
        (16384, 2048, 50),
    ],
)
def test_slider_rule(memory_mib, batch_max, epochs_max):
    limits = w.slider_limits(memory_mib)
    assert (limits.batch_max, limits.epochs_max) == (batch_max, epochs_max)
    assert limits.batch_options[0] == 16 and limits.batch_options[-1] == batch_max
    assert limits.batch_default == min(128, batch_max) and limits.epochs_default == 2


def test_gpu_memory_reading_against_the_vgpu(monkeypatch, fake_allocation):
    gib = 1024**3
    cuda = types.SimpleNamespace(
        is_available=lambda: True,
        device_count=lambda: 1,
        memory_allocated=lambda i: 1 * gib,
        memory_reserved=lambda i: 2 * gib,
        get_device_properties=lambda i: types.SimpleNamespace(total_memory=80 * gib, name="Fake GPU"),
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    monkeypatch.setattr(widget_allocation, "_TOTALS", [])  # device totals are cached per process

    reading = w.read_memory(fake_allocation)
    assert reading.on_gpu and reading.limit == 4 * gib and reading.fraction == 0.5
    assert reading.text == "PyTorch: 1.0 GiB allocated, 2.0 GiB reserved of 4.0 GiB vGPU memory (50%)"
    bare = w.read_memory(None)
    assert bare.limit == 80 * gib and "of 80.0 GiB GPU memory" in bare.text
    assert w.vgpu_memory_mib(None) == 80 * 1024 and w.vgpu_memory_mib(fake_allocation) == 4096


def test_mnist_without_files_or_network_trains_on_digits_and_says_so(fake_allocation, tmp_path, no_network):
    from orion_jupyter.demos import mnist

    root = tmp_path / "no-mnist-here"
    panel = w.VGPUPanel(settings=w.DemoSettings(data_root=root, device="cpu"), monitor=False)
    runner = panel.runner
    statuses = []
    runner.status.observe(lambda change: statuses.append(change["new"]), names="value")
    runner.epochs.value = 2
    runner.batch_size.value = 64
    try:
        result = runner.run(wait=True, timeout=120)
    finally:
        panel.close()

    assert no_network, "the download should have been tried"
    assert not result.stopped and len(result.history) == 2 and result.final_accuracy > 0.5
    assert result.dataset == mnist.DIGITS_SOURCE == "scikit-learn digits (MNIST not available offline)"
    assert result.test_size == 450
    # the progress text and the final line say what it trained on
    assert any(s.startswith(f"{mnist.DIGITS_SOURCE} · epoch 2/2 · step") for s in statuses), statuses
    assert runner.status.value.startswith(f"{mnist.DIGITS_SOURCE} done")
    assert "final test accuracy" in runner.status.value
    assert runner.progress.bar_style == "success"
    # the plot (titled so) and how to get real MNIST
    figure, notes = runner.plot.outputs
    assert base64.b64decode(figure["data"]["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert figure["data"]["text/plain"].startswith(mnist.DIGITS_SOURCE)
    assert mnist.plot_history(result)._suptitle.get_text().startswith(f"{mnist.DIGITS_SOURCE} on CPU")
    assert notes["output_type"] == "stream"
    for hint in (str(root / "MNIST" / "raw"), "ORION_JUPYTER_DATA_DIR", "ORION_JUPYTER_MNIST_MIRROR", "mnist_mirror"):
        assert hint in notes["text"]
    # the stand-in lives beside MNIST's folder, never in it
    assert sorted(p.name for p in (root / "sklearn-digits" / "MNIST" / "raw").iterdir()) == sorted(
        mnist.IDX_FILES.values()
    )
    assert not any((root / "MNIST" / "raw" / name).exists() for name in mnist.IDX_FILES.values())


def test_runner_demos_come_from_the_registry(monkeypatch, no_allocation):
    from orion_jupyter.demos import registry
    from orion_jupyter.demos.common import EpochHistory, EpochStats, TrainingProgress

    assert registry.names()[:2] == ["MNIST", "FaceNet"]
    monkeypatch.setattr(registry, "_DEMOS", dict(registry._DEMOS))
    seen = {}

    class Result(EpochHistory):
        def __init__(self, history):
            self.history, self.stopped, self.device_name = history, False, "nowhere"

        def summary(self):
            return f"toy done: {len(self.history)} epochs"

    def toy(job):
        seen.update(epochs=job.epochs, batch_size=job.batch_size, settings=job.settings)
        history = []
        for epoch in range(1, job.epochs + 1):
            history.append(EpochStats(epoch, 1.0 / epoch, 100.0, 0.1))
            job.progress(TrainingProgress.epoch_end(history[-1], job.epochs, 1))
        return Result(history)

    registry.register("Toy", toy, "a demo without torch")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("Toy", toy)
    runner = w.DemoRunner(w.slider_limits(None), w.DemoSettings(device="cpu"))
    try:
        assert list(runner.demo.options) == ["MNIST", "FaceNet", "Toy"]
        runner.demo.value = "Toy"
        runner.epochs.value = 3
        result = runner.run(wait=True, timeout=30)
    finally:
        runner.close()
    assert seen == {"epochs": 3, "batch_size": runner.batch_size.value, "settings": runner.settings}
    assert len(result.history) == 3 and len(runner.history) == 3
    assert runner.status.value == "toy done: 3 epochs" and runner.progress.value == 100
    assert runner.throughput.value == "images/s: 100 on nowhere"


def test_listing_the_demos_imports_no_demo_and_no_torch():
    code = (
        "import sys\n"
        "from orion_jupyter.demos import registry\n"
        "print(registry.names(), sorted(m for m in sys.modules if m.startswith(('torch', 'orion_jupyter.demos.'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['MNIST', 'FaceNet'] ['orion_jupyter.demos.common', 'orion_jupyter.demos.registry']"


def test_cpu_only_pool_is_named_as_intended(monkeypatch):
    """A local kernel on the CPU-only pool (its slots hide every GPU): the widget says it runs on the
    CPU as intended, with RAM, and gives no CUDA advice; a kernel that was meant to see a GPU gets it."""
    monkeypatch.setattr(widget_allocation, "_torch_module", lambda import_it=False: types.SimpleNamespace(
        __version__="2.14.1", get_num_threads=lambda: 2, cuda=types.SimpleNamespace(is_available=lambda: False)))
    local = KernelAllocation.from_env({ENV_NAMES[k]: v for k, v in {**FAKE, "cluster": "local"}.items()})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    lines = w.describe_devices(local)
    assert "granted 1 vGPU(s) of a CPU-only pool (no GPU on this machine): it runs on the CPU, as intended" in lines[1]
    assert not any("CUDA build" in line for line in lines)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert "check that the image has a CUDA build of PyTorch" in w.describe_devices(local)[1]
