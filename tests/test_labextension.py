"""The orion-jupyter JupyterLab extension, installed by the wheel, in a real browser (Debian's chromium).

The README's run command starts JupyterLab (local backend, CPU-only pool of 4 slots); the browser
opens the vGPU sidebar, starts a kernel with "New vGPU notebook…" (2 GiB spec, 3 GiB asked for),
reads the status bar, stops the kernel from the sidebar and asks for more memory than the pool has.
"""

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

BROWSER_DIR = Path(__file__).parent / "browser"
NAME = "@orion-jupyter/labextension"


def _get(lab, path):
    request = urllib.request.Request(f"{lab.base}{path}", headers=lab.headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


def _page_config(lab):
    """The JupyterLab page's config: which prebuilt extensions the page loads, which are disabled."""
    html = _get(lab, "/lab")
    found = re.search(r'<script id="jupyter-config-data" type="application/json">(.*?)</script>', html, re.S)
    return json.loads(found.group(1))


def test_labextension_in_jupyterlab(lab_server, tmp_path):
    # Installed with the package (share/jupyter/labextensions, as a wheel installs it) ...
    installed = Path(sys.prefix) / "share" / "jupyter" / "labextensions" / NAME
    assert json.loads((installed / "install.json").read_text())["packageName"] == "orion-jupyter"
    assert json.loads((installed / "package.json").read_text())["jupyterlab"]["_build"]["load"].startswith("static/")
    # ... loaded by the page JupyterLab serves, and not disabled.
    config = _page_config(lab_server)
    assert NAME in [e["name"] for e in config["federated_extensions"]]
    assert not any(d.startswith(NAME) for d in config["disabledExtensions"])
    assert json.loads(_get(lab_server, "/api/kernels")) == []

    run = subprocess.run(["node", str(BROWSER_DIR / "labextension.mjs"), lab_server.base, lab_server.token, str(tmp_path)],
                         capture_output=True, text=True, timeout=150, cwd=BROWSER_DIR)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["ok"], result

    assert result["launcher_items"] == 1

    # The sidebar shows the CPU-only local pool: 4 slots, all free.
    assert "4 of 4 vGPUs free" in result["pool_text"], result["pool_text"]
    assert "No vGPU kernels" in result["mine_text_before"]

    # The dialog lists the three specs; 3Gi reads back as 3 GiB.
    assert [s.splitlines()[0] for s in result["specs"]] == [
        "Python 3 · 1 vGPU · 2 GiB", "Python 3 · 1 vGPU · 4 GiB", "Python 3 · 2 vGPUs × 4 GiB"]
    assert result["memory_hint"] == "= 3 GiB"

    # A new notebook opened on the kernel the dialog started: the 2 GiB spec, 3 GiB asked for.
    assert result["kernel_name"] == "Python 3 · 1 vGPU · 2 GiB"
    [session] = result["sessions"]
    assert session["path"].startswith("Untitled") and session["path"].endswith(".ipynb")
    assert session["kernel"]["name"] == "orion-1x2gi"
    kernel_id = session["kernel"]["id"]
    assert result["kernel_card_id"] == kernel_id
    assert result["status_text"] == "vGPU: 1 × 3 GiB · vm", result["status_text"]
    assert "memory cap 3 GiB per vGPU" in result["status_tooltip"] and "backend: orion" in result["status_tooltip"]
    card = result["kernel_card"]
    assert "orion-1x2gi" in card and session["path"] in card and "1 × 3 GiB" in card, card

    # Stop in the sidebar shut the kernel down.
    assert result["kernels_after_stop"] == []
    assert "No vGPU kernels" in result["mine_text_after_stop"]

    # 64Gi: the dialog stays open with the server's own message, and no kernel was created.
    assert result["dialog_open_after_refusal"]
    assert result["refused_text"].startswith(
        "Not enough vGPU memory: this kernel asks 64 GiB per vGPU, and the largest device here has 16 GiB."), result["refused_text"]
    assert result["kernels_after_refusal"] == []
    assert json.loads(_get(lab_server, "/api/kernels")) == []

    for shot in ("panel", "dialog", "notebook", "refused"):
        assert (tmp_path / f"{shot}.png").stat().st_size > 10_000, shot
