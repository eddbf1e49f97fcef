"""The orion-jupyter JupyterLab extension, installed by the wheel, in a real browser (Debian's chromium).

The README's run command starts JupyterLab (local backend, CPU-only pool of 4 slots); the browser
opens the vGPU sidebar, starts a kernel with "New vGPU notebook…" (2 GiB spec, 3 GiB asked for),
reads the status bar (and, from a mocked allocations answer, the memory used), stops the kernel from
the sidebar, asks for more memory than the pool has, starts one in the file browser's folder and
opens the MNIST demo from its launcher card. Notebook 7 (`jupyter notebook`) loads the extension too.
"""

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from datetime import datetime
from pathlib import Path

import nbformat
import pytest

BROWSER_DIR = Path(__file__).parent / "browser"
NAME = "@orion-jupyter/labextension"
# The display names of the specs `orion-jupyter lab` installs: no-break spaces inside each phrase, so
# a launcher tile wraps between phrases only (vgpu.unbroken_phrases).
SPEC_1X2GI = "Python\u00a03 · 1\u00a0vGPU · 2\u00a0GiB"
SPEC_1X4GI = "Python\u00a03 · 1\u00a0vGPU · 4\u00a0GiB"
SPEC_2X4GI = "Python\u00a03 · 2\u00a0vGPUs × 4\u00a0GiB"


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
    # Its settings (refresh interval, the dialog's slider maximum) are in the settings editor.
    settings = json.loads(_get(lab_server, f"/lab/api/settings/{NAME}:model"))
    assert settings["schema"]["jupyter.lab.setting-icon"] == "orion-jupyter:vgpu"
    assert {"refreshInterval", "sliderMaxMemory"} <= set(settings["schema"]["properties"])
    (lab_server.root / "labs").mkdir()

    run = subprocess.run(["node", str(BROWSER_DIR / "labextension.mjs"), lab_server.base, lab_server.token,
                          str(tmp_path)], capture_output=True, text=True, timeout=240, cwd=BROWSER_DIR)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["ok"], (result["step"], result.get("error"), result)
    # Kernels from the dialog and the demo card connect as stock ones do: no websocket opened and
    # dropped while the server prepares it (an uncaught exception and a 500, jupyter_server#1265).
    assert "Uncaught exception" not in lab_server.log.read_text(), lab_server.log.read_text()[-4000:]

    assert result["launcher_items"] == 1
    assert sorted(result["demo_cards"]) == ["FaceNet on vGPU", "MNIST on vGPU"], result["demo_cards"]

    # The sidebar shows the CPU-only local pool: 4 slots, all free.
    assert "4 of 4 vGPUs free" in result["pool_text"], result["pool_text"]
    assert "No vGPU kernels" in result["mine_text_before"]

    # The dialog lists the three specs; 3Gi reads back as 3 GiB.
    assert [s.splitlines()[0] for s in result["specs"]] == [SPEC_1X2GI, SPEC_1X4GI, SPEC_2X4GI]
    assert result["memory_hint"] == "= 3 GiB"
    # "4G" is 4·10⁹ bytes, as the server reads it (tests/memory_cases.json); the slider's maximum
    # is the sliderMaxMemory setting's default, 32 GiB.
    assert result["memory_hint_4g"] == "= 3814 MiB"
    assert result["slider_max"] == str(32 * 1024)

    # A new notebook opened on the kernel the dialog started: the 2 GiB spec, 3 GiB asked for.
    assert result["kernel_name"] == "Python\u00a03 · 1\u00a0vGPU · 3\u00a0GiB", result["kernel_name"]  # its grant
    [session] = result["sessions"]
    assert session["path"].startswith("Untitled") and session["path"].endswith(".ipynb")
    assert session["kernel"]["name"] == "orion-1x2gi"
    kernel_id = session["kernel"]["id"]
    assert result["kernel_card_id"] == kernel_id
    # (" · 45 MiB used" when the server has measured the kernel's memory by then)
    assert re.fullmatch(r"vGPU: 1 × 3 GiB( · [\d.]+ [MG]iB used)? · vm", result["status_text"]), result["status_text"]
    assert "memory cap 3 GiB per vGPU" in result["status_tooltip"] and "backend: orion" in result["status_tooltip"]
    card = result["kernel_card"]
    assert "orion-1x2gi" in card and session["path"] in card and "1 × 3 GiB" in card, card

    # Memory used (allocations mocked in the browser with memory_used = 1.2 GiB): the status bar and
    # a bar of used / granted on the kernel's card.
    assert result["status_text_used"] == "vGPU: 1 × 3 GiB · 1.2 GiB used · vm", result["status_text_used"]
    assert "vGPU memory in use: 1.2 GiB" in result["status_tooltip_used"], result["status_tooltip_used"]
    assert result["kernel_usage"] == "1.2 GiB of 3 GiB used", result["kernel_usage"]

    # The class (mocked for an instructor) by waste: bob holds 15.5 GiB unused (2 × 8 GiB granted),
    # ada and di 0.5 GiB each (di idle longer), cy's use is not known.
    assert result["class_by_user"] == ["ada", "bob", "cy", "di"]
    assert result["class_by_waste"] == ["bob", "di", "ada", "cy"], result["class_by_waste"]
    assert "15.5 GiB unused" in result["class_first_card"], result["class_first_card"]
    assert "512 MiB of 16 GiB used" in result["class_first_card"], result["class_first_card"]
    # Each class kernel has Exempt (from idle stopping); it toggles to Un-exempt and back.
    assert result["class_exempt_buttons"] == ["Exempt"] * 4, result["class_exempt_buttons"]
    assert result["bob_after_exempt"] == "Un-exempt"
    assert result["exempt_requests"] == [{"kernel_id": "k-bob", "exempt": True},
                                         {"kernel_id": "k-bob", "exempt": False}]
    # Park beside Stop on each vGPU kernel, "Park all of" the course, and per student what was parked;
    # Park asks first and shows the server's sentence when it refuses.
    assert result["class_park_buttons"] == 4
    assert result["class_course_parks"] == ["Park all of ai101"], result["class_course_parks"]
    [count] = result["class_parked_counts"]  # ada's 2; eve's none is not shown
    assert count.startswith("ada") and count.endswith("2 parked"), count
    assert result["park_question"].startswith("Park bob's kernel?"), result["park_question"]
    assert result["park_requests"] == ["k-bob"]
    assert result["park_refusal"] == "kernel k-bob is running a cell; park it once it is idle", result["park_refusal"]

    # Stop in the sidebar asks first (Cancel keeps the kernel), then shuts the kernel down.
    assert result["stop_question"].startswith("Stop Untitled") and "variables and any running cell are lost" in \
        result["stop_question"], result["stop_question"]
    assert result["kernels_after_cancel"] == 1
    assert result["kernels_after_stop"] == []
    assert "No vGPU kernels" in result["mine_text_after_stop"]

    # 64Gi: the dialog stays open with the server's own message, and no kernel was created.
    assert result["dialog_open_after_refusal"]
    assert result["refused_text"].startswith(
        "Not enough vGPU memory: this kernel asks 64 GiB per vGPU, and the largest device here has 16 GiB."
    ), result["refused_text"]
    assert result["kernels_after_refusal"] == []

    # In the file browser's folder "labs": the kernel starts there and the notebook is created there.
    assert result["folder_request"]["path"] == "labs", result["folder_request"]
    assert result["folder_request"]["spec"] == "orion-1x2gi" and result["folder_request"]["memory"] == "2Gi"
    [in_labs] = [s for s in result["folder_sessions"] if s["path"].startswith("labs/")]
    assert re.fullmatch(r"labs/Untitled\d*\.ipynb", in_labs["path"]), in_labs
    assert (lab_server.root / in_labs["path"]).is_file()

    # "MNIST on vGPU": the demo notebook, opened on the kernel the server started for it (the
    # smallest vGPU spec), and no other kernel started for it.
    assert result["demo_status"] == 201, result["demo"]
    demo = result["demo"]
    assert demo["path"] == "orion-demos/mnist.ipynb" and (lab_server.root / demo["path"]).is_file()
    [demo_session] = [s for s in result["demo_sessions"] if s["path"] == demo["path"]]
    assert demo_session["kernel"] == demo["kernel_id"] and demo_session["name"] == "orion-1x2gi"
    assert sorted(result["demo_kernels"]) == sorted([in_labs["kernel"], demo["kernel_id"]])
    assert result["demo_kernel_name"] == SPEC_1X2GI
    assert result["demo_status_text"].startswith("vGPU: 1 × 2 GiB"), result["demo_status_text"]

    for shot in ("panel", "dialog", "notebook", "memory-used", "class", "refused", "demo"):
        assert (tmp_path / f"{shot}.png").stat().st_size > 10_000, shot


CULL_IDLE_SECONDS, CULL_WARNING_SECONDS = 30, 25


@pytest.fixture
def short_culling(tmp_path):
    """Before lab_server starts (its HOME is tmp_path): idle vGPU kernels stopped after 30 s, warned
    after 5 s idle, one keep, checked every second (~/.jupyter, which Jupyter reads beside the config
    `orion-jupyter lab` writes); and the page's vGPU model refreshing every second."""
    config = tmp_path / ".jupyter"
    config.mkdir()
    (config / "jupyter_server_config.json").write_text(json.dumps({"OrionJupyter": {
        "cull_idle_seconds": CULL_IDLE_SECONDS, "cull_warning_seconds": CULL_WARNING_SECONDS,
        "cull_max_keeps": 1, "cull_interval_seconds": 1}}))
    settings = config / "lab" / "user-settings" / NAME
    settings.mkdir(parents=True)
    (settings / "model.jupyterlab-settings").write_text(json.dumps({"refreshInterval": 1}))


def _iso(stamp):
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_classroom_capacity_in_jupyterlab(short_culling, lab_server, tmp_path):
    """The fair queue (its answers stood in for in the browser) and idle culling (the real server)."""
    nbformat.write(nbformat.v4.new_notebook(), lab_server.root / "queued.ipynb")
    run = subprocess.run(["node", str(BROWSER_DIR / "capacity.mjs"), lab_server.base, lab_server.token,
                          str(tmp_path), "queued.ipynb"], capture_output=True, text=True, timeout=240, cwd=BROWSER_DIR)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["ok"], (result["step"], result.get("error"), result)
    assert result["errors"] == [], result["errors"]

    # 1. A launch that waited across the page load: the status bar's place, the queue dialog, then,
    #    once its kernel runs, the notification's "Open notebook" opened queued.ipynb on that kernel.
    assert result["reload_queue_status"] == "vGPU queue: 1st"
    dialog = result["reload_queue_dialog"]
    assert "Waiting for a vGPU: 1st in line, about 30 s" in dialog and "course ai101" in dialog, dialog
    assert "Cancel" in dialog and "queued.ipynb" in dialog, dialog
    assert result["reload_started_status"] == 201
    assert "left the queue and runs: open queued.ipynb on it?" in result["reload_offer"], result["reload_offer"]
    assert "Open notebook" in result["reload_offer_actions"]
    assert {"path": "queued.ipynb", "kernel": result["reload_kernel"]} in result["reload_sessions"]
    assert result["queue_status_hidden_after_reload"]

    # 2. "New vGPU notebook…" while queued: its place in the notification (with Cancel) and the status
    #    bar, 2nd then 1st; then the notebook opened on the kernel the (real) launch started.
    assert "Waiting for a vGPU: 2nd in line, about 45 s" in result["toast_2nd"], result["toast_2nd"]
    assert "Cancel" in result["toast_2nd_buttons"], result["toast_2nd_buttons"]
    assert result["queue_status_2nd"] == "vGPU queue: 2nd"
    assert "Waiting for a vGPU: 1st in line, about 10 s" in result["toast_1st"], result["toast_1st"]
    assert result["queue_status_1st"] == "vGPU queue: 1st"
    queued_id = result["queued_kernel"]
    assert result["queued_request"]["spec"] == "orion-1x2gi" and result["queued_request"]["kernel_id"] == queued_id
    [opened] = [s for s in result["queued_sessions"] if s["kernel"] == queued_id]
    assert re.fullmatch(r"Untitled\d*\.ipynb", opened["path"]), opened
    assert result["queued_status_text"].startswith("vGPU: 1 × 2 GiB"), result["queued_status_text"]
    assert result["queue_status_hidden"]

    # 3. Idle culling, the real server's: the warning says when (local HH:MM of cull_at) with Keep,
    #    in the status bar and the kernel's sidebar row; Keep restarted the idle clock (cull_at later).
    before, after = result["before_keep"], result["after_keep"]
    assert before["cull_warning"] and before["keeps_left"] == 1 and not before["exempt"], before
    assert re.fullmatch(r"idle: parks at \d\d:\d\d · Keep", result["warning_text"]), result["warning_text"]
    assert "to free its vGPU unless kept (1 keep left)" in result["warning_title"], result["warning_title"]
    assert re.fullmatch(r"idle: parks at \d\d:\d\d · Keep", result["panel_warning"]), result["panel_warning"]
    assert result["keep_status"] == 200 and result["keep_answer"]["keeps_left"] == 0, result["keep_answer"]
    assert result["status_after_keep"].startswith("vGPU: 1 × 2 GiB"), result["status_after_keep"]
    assert not after["cull_warning"] and after["keeps_left"] == 0, after
    moved = (_iso(after["cull_at"]) - _iso(before["cull_at"])).total_seconds()
    assert moved >= CULL_IDLE_SECONDS - CULL_WARNING_SECONDS - 1, (before["cull_at"], after["cull_at"])
    # After the last keep: no Keep, and the page says so.
    assert re.fullmatch(r"idle: parks at \d\d:\d\d · no keeps left", result["no_keeps_text"]), result["no_keeps_text"]
    assert result["no_keeps_buttons"] == 0
    assert result["panel_no_keeps"].endswith("no keeps left"), result["panel_no_keeps"]

    # 4. Cancel in the notification: DELETE queue/{id}, and the launch's 409 "cancelled" ended quietly.
    assert "Waiting for a vGPU: 3rd in line, about 2 min" in result["toast_3rd"], result["toast_3rd"]
    assert result["deleted"] == [result["cancelled_kernel"]]
    assert result["dialogs_after_cancel"] == 0
    assert result["kernels_after_cancel"] == 0

    for shot in ("queue-dialog", "queue-reload", "queue-2nd", "idle-warning", "no-keeps", "cancelled"):
        assert (tmp_path / f"{shot}.png").stat().st_size > 10_000, shot


def test_labextension_in_notebook7(notebook7_server, tmp_path):
    server = notebook7_server
    config = json.loads(re.search(r'<script id="jupyter-config-data" type="application/json">(.*?)</script>',
                                  _get(server, "/tree"), re.S).group(1))
    assert NAME in [e["name"] for e in config["federated_extensions"]]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")])
    notebook.metadata["kernelspec"] = {"name": "orion-1x2gi", "display_name": SPEC_1X2GI,
                                       "language": "python"}
    nbformat.write(notebook, server.root / "vgpu.ipynb")

    run = subprocess.run(["node", str(BROWSER_DIR / "notebook7.mjs"), server.base, server.token, "vgpu.ipynb",
                          str(tmp_path)], capture_output=True, text=True, timeout=240, cwd=BROWSER_DIR)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["ok"], (result["step"], result.get("error"), result)
    # No console error comes from the extension (Notebook 7 has its own; they are in result["errors"]).
    assert result["extension_errors"] == [], result["extension_errors"]

    # Every plugin activates on both pages (the status bar plugin finds no status bar and stands aside).
    plugins = [f"{NAME}:{p}" for p in ("model", "panel", "new-notebook", "status")]
    assert result["tree"]["activated"] == plugins and result["notebook"]["activated"] == plugins
    assert len(result["tree"]["commands"]) == 3
    assert "vGPU Notebook…" in result["file_new_items"], result["file_new_items"]
    # The tree's New dropdown: after the kernels, New vGPU notebook…, the demos and the vGPU panel,
    # which opens on the tree page with the pool.
    items = result["tree_new_items"]
    assert items.index(SPEC_1X2GI) < items.index("New vGPU notebook…"), items
    assert items[-4:] == ["New vGPU notebook…", "MNIST on vGPU", "FaceNet on vGPU", "Show the vGPU panel"], items
    assert "4 of 4 vGPUs free" in result["tree_panel_pool"], result["tree_panel_pool"]
    assert result["status_items"] == 0

    # The sidebar: the notebook's vGPU kernel and the pool with one slot held.
    assert "orion-1x2gi" in result["panel_mine"] and "vgpu.ipynb" in result["panel_mine"], result["panel_mine"]
    assert "3 of 4 vGPUs free" in result["panel_pool"], result["panel_pool"]

    # "New vGPU notebook…": a new tab with the new notebook, on the kernel the dialog started.
    assert re.fullmatch(r"/notebooks/Untitled\d*\.ipynb", result["new_tab"]), result["new_tab"]
    # (3 GiB asked of the 2 GiB spec: the toolbar names the kernel's grant)
    assert result["new_tab_kernel_name"] == "Python\u00a03 · 1\u00a0vGPU · 3\u00a0GiB", result["new_tab_kernel_name"]
    [new] = [s for s in result["sessions"] if s["path"] != "vgpu.ipynb"]
    assert result["new_tab"].endswith(new["path"]) and new["name"] == "orion-1x2gi"
    assert result["kernels"] == 2

    # A full pool (two more kernels over the REST API): the dialog says why, its Start disabled.
    assert result["blocked_text"].startswith("No vGPU kernel can start now. Not enough vGPUs free: "), result
    assert result["start_disabled"]
    # The tree's New menu: its vGPU spec item starts the kernel first, so the refusal is the server's
    # sentence in a dialog that wraps it, and no notebook is made and no tab opened.
    assert result["refusal_title"] == f"Could not start {SPEC_1X2GI}"
    assert result["refusal"]["text"].startswith("Not enough vGPUs free: ") and "Stop a kernel" in \
        result["refusal"]["text"] and result["refusal"]["fits"], result["refusal"]
    assert result["tabs_opened"] == 0 and result["untitled_after"] == result["untitled_before"], result
    assert result["refusals_logged"] == 1  # (the browser's console line for the 409, and nothing else)
    # The sidebar's Stop asks first; Cancel keeps the kernel.
    assert "Its variables and any running cell are lost" in result["stop_question"], result["stop_question"]
    assert result["kernels_after_cancel"] == 4
    for shot in ("nb7-tree", "nb7-notebook", "nb7-new", "nb7-full-pool-dialog", "nb7-refused", "nb7-stop"):
        assert (tmp_path / f"{shot}.png").stat().st_size > 10_000, shot


def test_first_hour_launcher_and_full_pool(lab_server, tmp_path):
    """The launcher's vGPU cards each with its own icon, the demos after the kernels, their labels
    wrapped between phrases only; a full pool: the dialog's reason and disabled Start; a refused kernel
    card's message wrapped, no notebook left; an 8 GiB kernel of the 4 GiB spec named by its grant."""
    run = subprocess.run(["node", str(BROWSER_DIR / "firsthour.mjs"), lab_server.base, lab_server.token,
                          str(tmp_path)], capture_output=True, text=True, timeout=240, cwd=BROWSER_DIR)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["ok"], (result["step"], result.get("error"), result)

    # Launcher: the Notebook section (kernels, then New vGPU notebook…), right after it the demos.
    titles = [s["title"] for s in result["sections"]]
    assert titles.index("vGPU demos") == titles.index("Notebook") + 1, titles
    cards = {s["title"]: s["cards"] for s in result["sections"]}
    notebook, demos = cards["Notebook"], cards["vGPU demos"]
    assert [c["label"] for c in demos] == ["MNIST on vGPU", "FaceNet on vGPU"]
    icons = {c["label"]: c["icon"] for c in notebook + demos}
    kernel_icon = icons[SPEC_1X2GI]
    assert kernel_icon.endswith("/kernelspecs/orion-1x2gi/logo-svg.svg"), kernel_icon
    mine = [icons["New vGPU notebook…"], icons["MNIST on vGPU"], icons["FaceNet on vGPU"]]
    assert icons["New vGPU notebook…"].startswith("data:image/svg+xml,")
    assert len(set(mine)) == 3 and all("<svg" in i for i in mine[1:]), mine

    # Full pool: every spec refused with the pool's reason; the dialog says why and what to do.
    assert result["fill_0"] == result["fill_1"] == 201, result
    assert all(can is False and why for _, can, why in result["specs_full"]), result["specs_full"]
    blocked = result["blocked_text"]
    # (the pool's reason, with its advice, as the server words it)
    assert blocked.startswith("No vGPU kernel can start now. Not enough vGPUs free: ") and "Stop a kernel" in blocked
    assert result["start_disabled"] and result["start_title"] == blocked
    assert all(d.endswith("unavailable: not enough vGPUs free right now") for d in result["spec_details"]), \
        result["spec_details"]

    # A kernel card on the full pool: the server's sentence wrapped in JupyterLab's error dialog; the
    # empty notebook it made is removed once the error is closed, and a notification says so.
    refusal = result["refusal"]
    assert refusal["text"] and refusal["whiteSpace"] == "pre-wrap" and refusal["fits"], refusal
    assert result["untitled_while_error"], result
    assert result["untitled_after"] == [] and result["notebook_panels_after"] == 0, result
    assert "was removed: its kernel could not start" in result["removed_notice"], result["removed_notice"]
    # (ipywidgets' manager throws on a notebook whose session never came: its error, not ours)
    assert not [e for e in result["errors"] if "@orion-jupyter" in e], result["errors"]
    # The 4 GiB spec launched with 8 GiB: JupyterLab's toolbar and kernel status name the kernel by its
    # grant, as ours does, and nothing on the page says 4 GiB (the launcher's tiles are not shown then).
    granted = "Python\u00a03 · 1\u00a0vGPU · 8\u00a0GiB"
    assert result["grant_toolbar"] == granted, result["grant_toolbar"]
    # (the kernel status item: "<name> | <status>", the status as it was then)
    assert result["grant_kernel_status"].split(" | ")[0] == granted, result["grant_kernel_status"]
    assert result["grant_status"].startswith("vGPU: 1 × 8 GiB"), result["grant_status"]
    assert "1 × 8 GiB" in result["grant_card"], result["grant_card"]
    [(path, spec, _)] = result["grant_sessions"]
    assert spec == "orion-1x4gi" and re.fullmatch(r"Untitled\d*\.ipynb", path), result["grant_sessions"]
    assert not re.search(r"(?<![\d.])4\s*GiB", result["grant_page_text"]), result["grant_page_text"]
    assert result["grant_picker"] == "Select Kernel"  # the toolbar's kernel name still opens the picker
    # After a page reload (the notebook restored before the page knows the kernel's allocation).
    assert result["reload_toolbar"] == granted, result["reload_toolbar"]
    assert result["reload_kernel_status"].split(" | ")[0] == granted, result["reload_kernel_status"]

    # Every vGPU kernel tile (Notebook and Console) wraps between phrases only, and shows all its lines.
    assert len(result["tile_lines"]) == 6, result["tile_lines"]
    for tile in result["tile_lines"]:
        lines = tile["lines"]
        assert re.sub(r"\s", "", "".join(lines)) == re.sub(r"\s", "", tile["label"]), tile  # every line read
        assert all(a.rstrip().endswith(("·", "×")) or b.lstrip().startswith(("·", "×"))
                   for a, b in itertools.pairwise(lines)), tile
        assert tile["shown_whole"], tile

    for shot in ("launcher", "full-pool-dialog", "refused-card", "real-grant"):
        assert (tmp_path / f"{shot}.png").stat().st_size > 10_000, shot
    update_screenshots(tmp_path, "launcher", "full-pool-dialog")


def update_screenshots(shots, *names):
    """ORION_UPDATE_SCREENSHOTS=1: the README's screenshots (docs/screenshots) are this run's."""
    if os.environ.get("ORION_UPDATE_SCREENSHOTS") == "1":
        docs = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
        docs.mkdir(parents=True, exist_ok=True)
        for shot in names:
            shutil.copyfile(shots / f"{shot}.png", docs / f"{shot}.png")


def test_park_and_resume_in_jupyterlab(short_culling, lab_server, tmp_path):
    """Park in the status bar → "parked HH:MM · Resume" → Resume → the variable is back; idle culling
    parks too and the notebook says so; the sidebar's parked notebooks with Resume and Delete."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in (
        "answer = 42", "print(answer)", "print(answer * 2)")])
    notebook.metadata["kernelspec"] = {"name": "orion-1x2gi", "display_name": SPEC_1X2GI,
                                       "language": "python"}
    nbformat.write(notebook, lab_server.root / "park.ipynb")
    run = subprocess.run(["node", str(BROWSER_DIR / "park.mjs"), lab_server.base, lab_server.token, str(tmp_path),
                          "park.ipynb"], capture_output=True, text=True, timeout=420, cwd=BROWSER_DIR)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["ok"], (result["step"], result.get("error"), result)
    assert not [e for e in result["errors"] if "@orion-jupyter" in e], result["errors"]
    # The notebook moves onto each resumed kernel over its own connection: no websocket dropped half-made.
    assert "Uncaught exception" not in lab_server.log.read_text(), lab_server.log.read_text()[-4000:]
    assert result["kernel_item"].startswith(SPEC_1X2GI), result["kernel_item"]

    # 1. Park: the kernel is gone (its vGPU free), the notebook stays open and says "parked".
    assert "save this notebook's variables and stop its kernel" in result["park_title"], result["park_title"]
    assert re.fullmatch(r"parked \d\d:\d\d · Resume", result["parked_text"]), result["parked_text"]
    assert "parked at" in result["parked_title"] and "1 variable" in result["parked_title"], result["parked_title"]
    assert "Parked park.ipynb: 1 variable saved" in result["park_toast"], result["park_toast"]
    assert result["kernels_parked"] == [] and result["sessions_parked"] == []
    [parked] = result["snapshots_parked"]
    assert parked["path"] == "park.ipynb" and parked["saved"] == ["answer"] and parked["spec"] == "orion-1x2gi"
    panel = result["panel_parked"]
    assert "park.ipynb" in panel and "Resume" in panel and "Delete" in panel and "KiB" in panel, panel
    assert re.search(r"parked \d\d:\d\d · \d+ s ago · \d+ KiB", panel), panel

    # 2. Resume: a new kernel for the same notebook, `answer` back, the snapshot gone (all came back).
    assert "Resumed park.ipynb: answer came back." in result["resume_toast"], result["resume_toast"]
    [resumed] = result["sessions_resumed"]
    assert resumed["path"] == "park.ipynb" and resumed["kernel"] != result["kernel_before"], resumed
    assert result["answer_output"] == "42"
    assert result["snapshots_resumed"] == []

    # 3. Idle culling parked the resumed kernel: the notebook shows "parked · Resume", not only "No Kernel";
    #    the sidebar's Resume brings the variables back.
    assert re.fullmatch(r"idle: parks at \d\d:\d\d · Keep", result["cull_warning_text"]), result["cull_warning_text"]
    assert re.fullmatch(r"parked \d\d:\d\d · Resume", result["culled_text"]), result["culled_text"]
    assert result["kernels_culled"] == []
    [culled] = result["snapshots_culled"]
    assert culled["path"] == "park.ipynb" and culled["saved"] == ["answer"]
    assert "park.ipynb" in result["panel_culled"], result["panel_culled"]
    # ... on another kernel the user picked (every spec offered, the parked one first): a bigger slice.
    assert result["resume_on_selected"] == "orion-1x2gi" and result["resume_on_options"][0] == "orion-1x2gi"
    assert {"python3", "orion-1x4gi"} <= set(result["resume_on_options"]), result["resume_on_options"]
    [bigger] = result["sessions_resumed_on"]
    assert bigger["path"] == "park.ipynb" and bigger["kernel_name"] == "orion-1x4gi", bigger
    assert result["answer_twice_output"] == "84"

    # 4. Delete asks; Cancel keeps the snapshot; Delete removes it and the status bar item hides.
    assert result["delete_question"].startswith("Delete the snapshot of park.ipynb"), result["delete_question"]
    assert result["snapshots_after_cancel"] == 1 and result["snapshots_after_delete"] == 0
    assert result["park_item_hidden"]

    assert (tmp_path / "park.png").stat().st_size > 10_000
    update_screenshots(tmp_path, "park")
