"""The vGPU widget renders in JupyterLab in a real browser (Debian's chromium via playwright-core)."""

import json
import subprocess
from pathlib import Path

import nbformat

BROWSER_DIR = Path(__file__).parent / "browser"


def test_widget_renders_in_jupyterlab(lab_server, tmp_path):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "from orion_jupyter.widgets import VGPUPanel\npanel = VGPUPanel()\npanel")])
    notebook.metadata["kernelspec"] = {"name": "orion-1x2gi", "display_name": "Python 3 · 1 vGPU · 2 GiB",
                                       "language": "python"}
    nbformat.write(notebook, lab_server.root / "widget.ipynb")
    screenshot = tmp_path / "widget.png"
    run = subprocess.run(["node", str(BROWSER_DIR / "widget.mjs"), lab_server.base, lab_server.token, "widget.ipynb",
                          str(screenshot)], capture_output=True, text=True, timeout=240, cwd=BROWSER_DIR)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["ok"], result
    text = result["text"]
    assert "vGPU kernel" in text
    assert "local · orion · 1 vGPU · 2 GiB" in text and "memory cap cooperative" in text  # vgpu.format_allocation
    assert "no GPU: running on CPU" in text
    assert any("Run" in b for b in result["buttons"]) and result["progress_bars"] >= 1
    assert screenshot.stat().st_size > 10_000
