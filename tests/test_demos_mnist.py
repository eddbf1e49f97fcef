"""The MNIST demo, on scikit-learn's digits written as MNIST IDX files (CPU, no network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from orion_jupyter.demos import common, mnist


def digits_as_28x28(test_every: int = 4):
    """load_digits: 8x8 of 0..16 -> 28x28 uint8 (each pixel 3x3, 2-pixel border), 1 in 4 held out."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    big = np.kron(digits.images, np.ones((3, 3)))  # (n, 24, 24)
    images = np.zeros((len(big), 28, 28), dtype=np.uint8)
    images[:, 2:26, 2:26] = np.rint(big * 255.0 / 16.0).astype(np.uint8)
    labels = digits.target.astype(np.uint8)
    test = np.arange(len(labels)) % test_every == 0
    return images[~test], labels[~test], images[test], labels[test]


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mnist-digits")
    mnist.write_idx_dataset(root, *digits_as_28x28())
    return root


def test_training_on_planted_digits_reaches_high_accuracy_without_downloading(digits_root, no_network):
    reports = []
    result = mnist.train(
        epochs=3, batch_size=32, lr=1e-3, root=digits_root, device="cpu", progress=reports.append
    )

    assert no_network == []  # torchvision found the files: no download was tried
    raw = digits_root / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(mnist.IDX_FILES.values())
    assert result.train_size == 1347 and result.test_size == 450
    assert result.device == "cpu" and result.device_name.startswith("CPU")
    assert len(result.history) == 3 and not result.stopped
    # accuracy on held-out digits, and a loss that falls every epoch
    assert result.final_accuracy > 0.8, result.summary()
    assert all(b < a for a, b in zip(result.losses, result.losses[1:], strict=False)), result.losses
    assert all(e.images_per_s > 0 for e in result.history)

    steps = reports[0].steps
    assert steps == -(-1347 // 32)
    step_reports = [r for r in reports if not r.epoch_done]
    assert len(step_reports) == 3 * steps
    fractions = [r.fraction for r in step_reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    done = [r for r in reports if r.epoch_done]
    assert [r.accuracy for r in done] == result.accuracies
    assert "final test accuracy" in result.summary()


def test_idx_files_round_trip_through_torchvision(tmp_path):
    from torchvision.datasets import MNIST

    rng = np.random.default_rng(1)
    train_x = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    test_x = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    train_y, test_y = np.array([0, 1, 2, 3, 9], np.uint8), np.array([4, 5, 6], np.uint8)
    raw = mnist.write_idx_dataset(tmp_path, train_x, train_y, torch.from_numpy(test_x), test_y.tolist())

    assert raw == tmp_path / "MNIST" / "raw"
    header = (raw / "train-images-idx3-ubyte").read_bytes()[:16]
    assert header == bytes([0, 0, 8, 3]) + (5).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    train = MNIST(str(tmp_path), train=True, download=False)
    test = MNIST(str(tmp_path), train=False, download=False)
    assert np.array_equal(train.data.numpy(), train_x) and train.targets.tolist() == train_y.tolist()
    assert np.array_equal(test.data.numpy(), test_x) and test.targets.tolist() == test_y.tolist()

    data = mnist.load_data(tmp_path, download=False, limit_train=2)
    assert data.sizes == (2, 3)


@pytest.mark.parametrize(
    "bad",
    [
        dict(train_images=np.zeros((2, 8, 8), np.uint8)),
        dict(train_labels=np.array([0, 10], np.uint8)),
        dict(train_labels=np.array([0], np.uint8)),
        dict(test_images=np.full((1, 28, 28), 300)),
    ],
)
def test_write_idx_dataset_rejects_bad_arrays(tmp_path, bad):
    arrays = dict(
        train_images=np.zeros((2, 28, 28), np.uint8),
        train_labels=np.array([0, 1], np.uint8),
        test_images=np.zeros((1, 28, 28), np.uint8),
        test_labels=np.array([2], np.uint8),
    )
    arrays.update(bad)
    with pytest.raises(ValueError):
        mnist.write_idx_dataset(tmp_path, **arrays)


def test_missing_data_without_internet_says_what_to_do(tmp_path, no_network):
    with pytest.raises(mnist.MNISTDataUnavailable) as caught:
        mnist.load_data(tmp_path / "empty")
    message = str(caught.value)
    assert str(tmp_path / "empty" / "MNIST" / "raw") in message
    assert "could not be downloaded" in message and "write_digits_dataset" in message
    assert common.DATA_DIR_ENV in message
    assert no_network, "the loader should have tried torchvision's download"

    with pytest.raises(mnist.MNISTDataUnavailable):
        mnist.load_data(tmp_path / "empty", download=False)


def test_stop_limits_and_reuse_of_loaded_data(digits_root):
    data = mnist.load_data(digits_root)
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 3

    result = mnist.train(
        epochs=5, batch_size=16, data=data, device="cpu", should_stop=should_stop, limit_train=200
    )
    assert result.stopped and result.history == [] and result.train_size == 200
    assert len(calls) == 4  # three steps ran, the fourth check stopped it
    assert "stopped" in result.summary()


def test_digits_stand_in_and_default_data_dir(tmp_path, monkeypatch):
    raw = mnist.write_digits_dataset(tmp_path)
    data = mnist.load_data(tmp_path, download=False)
    assert raw == tmp_path / "MNIST" / "raw"
    assert sum(data.sizes) == 1797 and 400 < data.sizes[1] < 500
    assert set(data.test_labels.tolist()) == set(range(10))
    assert data.train_images.dtype == torch.uint8 and data.train_images.shape[1:] == (28, 28)
    # a centred digit with MNIST's empty border
    assert int(data.train_images[:, :4, :].max()) == 0 and int(data.train_images.max()) > 200

    monkeypatch.setenv(common.DATA_DIR_ENV, str(tmp_path))
    assert common.default_data_dir() == tmp_path
    monkeypatch.delenv(common.DATA_DIR_ENV)
    assert common.default_data_dir() == Path("~/.cache/orion-jupyter/mnist").expanduser()


def test_plot_history_and_predictions(digits_root):
    from matplotlib.figure import Figure

    result = mnist.train(
        epochs=2, batch_size=64, root=digits_root, device="cpu", limit_train=300, limit_test=100
    )
    fig = mnist.plot_history(result)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    loss_line, acc_line = fig.axes[0].lines[0], fig.axes[1].lines[0]
    assert list(loss_line.get_ydata()) == result.losses
    assert np.allclose(acc_line.get_ydata(), [100 * a for a in result.accuracies])
    assert common.figure_png(fig)[:8] == b"\x89PNG\r\n\x1a\n"

    data = mnist.load_data(digits_root, limit_test=6)
    fig = mnist.plot_predictions(result.model, data.test_images, data.test_labels, count=6)
    assert len(fig.axes) == 6
    assert mnist.predict(result.model, data.test_images).shape == (6,)


def test_device_choice():
    assert common.resolve_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert common.resolve_device().type == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no GPU"):
            common.resolve_device("cuda")


def test_gzipped_files_put_there_by_hand_are_used(tmp_path, no_network):
    import gzip

    raw = mnist.write_idx_dataset(tmp_path, *[a[:50] for a in digits_as_28x28()])
    expected = {name: (raw / name).read_bytes() for name in mnist.IDX_FILES.values()}
    for name, content in expected.items():
        with gzip.open(raw / f"{name}.gz", "wb") as packed:
            packed.write(content)
        (raw / name).unlink()

    data = mnist.load_data(tmp_path)
    assert data.sizes == (50, 50) and no_network == []
    assert {name: (raw / name).read_bytes() for name in expected} == expected


def test_offline_fallback_writes_digits_beside_mnist_and_says_why(tmp_path, no_network):
    root = tmp_path / "data"
    data = mnist.load_data_or_digits(root, limit_test=100)
    assert data.stand_in and data.source == mnist.DIGITS_SOURCE and data.sizes == (1347, 100)
    assert data.root == root / "sklearn-digits"
    assert data.notice.startswith(f"MNIST is not in {root / 'MNIST' / 'raw'} and could not be downloaded")
    assert "Continuing OFFLINE with scikit-learn's digits (not MNIST)" in data.notice
    assert mnist.MIRROR_ENV in data.advice and common.DATA_DIR_ENV in data.advice
    assert mnist.MIRROR_ENV not in data.notice  # the advice is said once, not twice in other words
    assert not any((root / "MNIST" / "raw" / name).exists() for name in mnist.IDX_FILES.values())
    result = mnist.train(epochs=1, batch_size=64, data=data, device="cpu", limit_train=200)
    assert result.dataset == mnist.DIGITS_SOURCE and result.summary().startswith(mnist.DIGITS_SOURCE)

    with pytest.raises(mnist.MNISTDataUnavailable):
        mnist.load_data_or_digits(root, fallback=False)
    with pytest.raises(mnist.MNISTDataUnavailable, match="downloading is turned off"):
        mnist.load_data_or_digits(root, download=False)  # the files were meant to be there

    planted = mnist.load_data_or_digits(root / "sklearn-digits")  # real files (here the digits): read as is
    assert not planted.stand_in and planted.source == "MNIST" and planted.notice == ""


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_mnist_downloads_from_the_mirror_setting(tmp_path, monkeypatch, how):
    import http.server
    import threading

    requested = []

    class Mirror(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requested.append(self.path)
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Mirror)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    url = f"http://127.0.0.1:{server.server_address[1]}/mnist"  # no trailing slash: added
    if how == "environment":
        monkeypatch.setenv(mnist.MIRROR_ENV, url)
        mirror = None
    else:
        monkeypatch.delenv(mnist.MIRROR_ENV, raising=False)
        mirror = url
    try:
        assert mnist.mnist_mirrors(mirror) == [url + "/"]
        with pytest.raises(mnist.MNISTDataUnavailable, match="could not be downloaded"):
            mnist.load_data(tmp_path, mirror=mirror)
    finally:
        server.shutdown()
        server.server_close()
    assert requested and requested[0] == "/mnist/train-images-idx3-ubyte.gz"
