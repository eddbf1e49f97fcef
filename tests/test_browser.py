"""The vGPU widget renders in JupyterLab and in Notebook 7, in a real browser (Debian's chromium via
playwright-core), its chart moving while another cell runs."""

import json
import subprocess
from pathlib import Path

import nbformat

BROWSER_DIR = Path(__file__).parent / "browser"


def _widget_notebook(root):
    """A notebook on the 2 GiB vGPU spec: the widget, then a cell that takes memory for 12 s."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "from orion_jupyter.widgets import VGPUPanel\npanel = VGPUPanel()\npanel"), nbformat.v4.new_code_cell(
        "import time\nblob = []\nfor _ in range(12):\n    blob.append(bytearray(40_000_000))\n    time.sleep(1)")])
    notebook.metadata["kernelspec"] = {"name": "orion-1x2gi", "language": "python",
                                       "display_name": "Python\u00a03 · 1\u00a0vGPU · 2\u00a0GiB"}
    nbformat.write(notebook, root / "widget.ipynb")


def _run_widget(server, tmp_path, ui):
    """widget.mjs in `ui` ("lab" or "notebook"); its result, after what both UIs show alike."""
    _widget_notebook(server.root)
    screenshot = tmp_path / f"widget-{ui}.png"
    run = subprocess.run(["node", str(BROWSER_DIR / "widget.mjs"), server.base, server.token, "widget.ipynb",
                          str(screenshot), ui], capture_output=True, text=True, timeout=240, cwd=BROWSER_DIR)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["ok"], result
    text = result["text"]
    assert "vGPU kernel" in text
    assert "local · orion · 1 vGPU · 2 GiB" in text and "memory cap cooperative" in text  # vgpu.format_allocation
    assert "no GPU: running on CPU" in text
    assert any("Run" in b for b in result["buttons"]) and result["progress_bars"] >= 1
    assert screenshot.stat().st_size > 10_000
    # The card: a chart of RAM (a CPU-only pool here) that moves while a cell runs, the CPU figure and
    # no GPU figures (no NVML here), and how it updates.
    before, after = result["chart_during"]
    assert before and after and before != after and result["running_after"], result
    assert result["chart_caption"].startswith("RAM used (no GPU: a CPU-only pool): "), result["chart_caption"]
    [load] = [t for t in result["load_text"] if t.startswith("CPU ")]
    assert "GPU" not in load and "temp" not in load, load
    assert "from a background thread (comm messages), also while a cell runs" in text
    return result


def test_widget_renders_in_jupyterlab(lab_server, tmp_path):
    _run_widget(lab_server, tmp_path, "lab")


def test_widget_chart_moves_in_notebook7(notebook7_server, tmp_path):
    _run_widget(notebook7_server, tmp_path, "notebook")
