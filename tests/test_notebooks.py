"""The notebooks run top to bottom in a real kernel, with small settings from the environment.

``execute_notebook(path, kernel_name=..., env=...)`` is the one way they are run here; pass another
kernel name (e.g. a vGPU kernel spec on the simulated cluster) to run them through it. The default
kernel is ``$ORION_TEST_KERNEL`` or ``python3``; for ``python3`` a kernel spec that points at this
interpreter is installed into a temporary folder first, so the kernel has the same packages.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
NOTEBOOK_NAMES = ("quickstart", "mnist", "facenet")
KERNEL_NAME = os.environ.get("ORION_TEST_KERNEL", "python3")
# Any HTTP(S) request from the kernel goes to a closed local port and fails at once.
NO_INTERNET = {
    name: "http://127.0.0.1:9"
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")
}


def kernel_env(**overrides: str | None) -> dict[str, str]:
    """This process's environment for a kernel: the repo importable, no internet, ``overrides``
    applied (None removes a variable)."""
    env = dict(os.environ)
    for name in ("NO_PROXY", "no_proxy", "MPLBACKEND"):
        env.pop(name, None)
    env.update(NO_INTERNET)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def execute_notebook(
    path: Path,
    *,
    kernel_name: str = KERNEL_NAME,
    env: Mapping[str, str] | None = None,
    timeout: int = 300,
    startup_timeout: int = 120,
    cwd: Path | None = None,
):
    """Run every cell of ``path`` in a fresh ``kernel_name`` kernel; return the executed notebook.

    ``env`` is the kernel's whole environment (see :func:`kernel_env`). A failing cell raises
    ``nbclient.exceptions.CellExecutionError`` with the cell's traceback.
    """
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        kernel_name=kernel_name,
        timeout=timeout,
        startup_timeout=startup_timeout,
        resources={"metadata": {"path": str(cwd or path.parent)}},
    )
    client.execute(env=dict(env if env is not None else kernel_env()))
    return notebook


def output_text(notebook) -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                parts.append(output.get("text", ""))
            elif "data" in output:
                parts.append(output["data"].get("text/plain", ""))
    return "\n".join(parts)


def outputs_with(notebook, mime: str) -> list:
    return [o for c in notebook.cells for o in c.get("outputs", []) if mime in o.get("data", {})]


@pytest.fixture(scope="module", autouse=True)
def python3_kernelspec(tmp_path_factory) -> Iterator[None]:
    """A ``python3`` kernel spec for this interpreter, found first through JUPYTER_PATH
    (for this module's tests only)."""
    if KERNEL_NAME != "python3":
        yield
        return
    from ipykernel.kernelspec import install

    prefix = tmp_path_factory.mktemp("kernelspec")
    install(kernel_name="python3", prefix=str(prefix))
    data_dir = prefix / "share" / "jupyter"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(
            "JUPYTER_PATH",
            os.pathsep.join(p for p in (str(data_dir), os.environ.get("JUPYTER_PATH", "")) if p),
        )
        from jupyter_client.kernelspec import KernelSpecManager

        spec = KernelSpecManager().get_kernel_spec("python3")
        assert spec.argv[0] == sys.executable
        yield


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory) -> Path:
    from orion_jupyter.demos import mnist

    root = tmp_path_factory.mktemp("digits")
    mnist.write_digits_dataset(root)
    return root


@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_notebooks_are_stored_clean_with_a_parameters_cell(name):
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(notebook)
    assert notebook.nbformat == 4
    assert notebook.metadata.kernelspec.name == "python3"
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code), (
        "clear the outputs before committing"
    )
    assert code[0].metadata.get("tags") == ["parameters"]
    assert "os.environ" in code[0].source
    assert notebook.cells[0].cell_type == "markdown" and notebook.cells[0].source.startswith("# ")
    assert sum(c.cell_type == "markdown" for c in notebook.cells) >= 4


def test_quickstart_notebook(monkeypatch):
    from orion_jupyter.allocation import ENV_NAMES

    fake = {
        ENV_NAMES["cluster"]: "local",
        ENV_NAMES["backend"]: "local",
        ENV_NAMES["vgpus"]: "1",
        ENV_NAMES["memory_mib"]: "2048",
        ENV_NAMES["memory_cap"]: "cooperative",
    }
    notebook = execute_notebook(
        NOTEBOOKS / "quickstart.ipynb", env=kernel_env(ORION_DEMO_REFRESH_S="0.5", **fake)
    )
    text = output_text(notebook)
    assert "local · local · 1 vGPU · 2 GiB" in text
    assert "cooperative: the framework was asked" in text
    assert ("no GPU: running on CPU" in text) or ("cuda:0" in text)
    assert "2048 x 2048 matrix product on" in text
    assert outputs_with(notebook, "application/vnd.jupyter.widget-view+json"), "the panel was not displayed"


def test_mnist_notebook_reports_final_accuracy(digits_root):
    env = kernel_env(
        ORION_JUPYTER_DATA_DIR=str(digits_root), ORION_DEMO_EPOCHS="2", ORION_DEMO_BATCH_SIZE="32"
    )
    notebook = execute_notebook(NOTEBOOKS / "mnist.ipynb", env=env)
    text = output_text(notebook)
    assert f"MNIST read from {digits_root / 'MNIST' / 'raw'}" in text
    assert "OFFLINE" not in text
    match = re.search(r"final test accuracy: ([\d.]+)% on 450 held-out images", text)
    assert match, text
    assert float(match.group(1)) > 80.0
    assert "epoch 2/2" in text and "images/s" in text
    assert len(outputs_with(notebook, "image/png")) >= 3  # samples, curves, predictions
    assert not list((digits_root / "MNIST" / "raw").glob("*.gz"))


def test_mnist_notebook_without_data_or_internet_says_so_and_goes_on(tmp_path):
    env = kernel_env(
        ORION_JUPYTER_DATA_DIR=str(tmp_path / "empty"), ORION_DEMO_EPOCHS="1", ORION_DEMO_LIMIT="300"
    )
    notebook = execute_notebook(NOTEBOOKS / "mnist.ipynb", env=env)
    text = output_text(notebook)
    assert f"MNIST is not in {tmp_path / 'empty' / 'MNIST' / 'raw'} and could not be downloaded" in text
    assert "Continuing OFFLINE with scikit-learn's digits" in text
    assert "final test accuracy:" in text


def test_facenet_notebook(tmp_path):
    from facenet_pytorch import InceptionResnetV1

    from orion_jupyter.demos.facenet import CHECKPOINTS

    checkpoint = tmp_path / "torch" / "checkpoints" / CHECKPOINTS["vggface2"][0]
    checkpoint.parent.mkdir(parents=True)
    stand_in = InceptionResnetV1(classify=True, num_classes=8631).state_dict()
    torch.save(stand_in, checkpoint)
    env = kernel_env(
        TORCH_HOME=str(tmp_path / "torch"),
        ORION_DEMO_EPOCHS="2",
        ORION_DEMO_STEPS="10",
        ORION_DEMO_BATCH_SIZE="32",
        ORION_DEMO_PHOTOS=None,
    )
    try:
        notebook = execute_notebook(NOTEBOOKS / "facenet.ipynb", env=env)
    finally:
        checkpoint.unlink()  # 112 MB
    text = output_text(notebook)
    for photo in ("collins.png", "collins-mirrored.png", "hopper.png", "hopper-mirrored.png"):
        assert f"{photo}: 1 face(s)" in text
    assert f"InceptionResnetV1 with the vggface2 weights from {checkpoint}" in text
    assert "4 faces, embeddings (4, 512)" in text
    assert "epoch 2/2: triplet loss" in text and "triplet training done" in text
    assert len(outputs_with(notebook, "image/png")) >= 4  # detections, crops, heatmap, training


def test_facenet_notebook_without_weights_explains_and_still_trains(tmp_path):
    env = kernel_env(
        TORCH_HOME=str(tmp_path / "torch"),
        ORION_DEMO_EPOCHS="1",
        ORION_DEMO_STEPS="5",
        ORION_DEMO_BATCH_SIZE="32",
        ORION_DEMO_PHOTOS=None,
    )
    notebook = execute_notebook(NOTEBOOKS / "facenet.ipynb", env=env)
    text = output_text(notebook)
    assert "The FaceNet 'vggface2' weights are not on this machine." in text
    assert str(tmp_path / "torch" / "checkpoints" / "20180402-114759-vggface2.pt") in text
    assert "Skipping the comparison of real faces" in text
    assert "triplet training done: 1/1 epochs" in text
    assert not (tmp_path / "torch" / "checkpoints" / "20180402-114759-vggface2.pt").exists()
