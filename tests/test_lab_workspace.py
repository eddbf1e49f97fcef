"""`./scripts/lab` as a newcomer runs it in a fresh clone: it serves a workspace of its own
(~/orion-notebooks, with the quickstart and demo notebooks), so a new notebook and both demos, run to
the end, leave the clone's `git status` clean; `orion-jupyter kernelspec list` shows the specs `lab`
installed; idle kernels are not stopped."""

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.test_notebooks import NO_INTERNET


def _git_status(clone) -> list[str]:
    """What `git status` says of the clone: every file new or changed (a fresh clone: nothing)."""
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=clone,
                          capture_output=True, text=True, check=True).stdout.splitlines()


@pytest.fixture
def small_demos(monkeypatch):
    """Kernels the server starts inherit these: short demo runs, and no internet (offline fallbacks)."""
    for name, value in {**NO_INTERNET, "ORION_DEMO_EPOCHS": "1", "ORION_DEMO_STEPS": "2",
                        "ORION_DEMO_LIMIT": "256", "ORION_DEMO_BATCH_SIZE": "32",
                        # ... but this test's own requests to the server go straight to it
                        "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost"}.items():
        monkeypatch.setenv(name, value)


def _call(lab, method, path, body=None):
    request = urllib.request.Request(f"{lab.base}{path}", method=method, headers=lab.headers,
                                     data=None if body is None else json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read() or b"null")


def test_scripts_lab_serves_its_workspace_not_the_clone(small_demos, fresh_clone, lab_workspace_server, tmp_path):
    lab, workspace = lab_workspace_server, lab_workspace_server.root
    assert _git_status(fresh_clone) == []
    assert sorted(str(p.relative_to(workspace)) for p in workspace.rglob("*.ipynb")) == [
        "orion-demos/facenet.ipynb", "orion-demos/mnist.ipynb", "quickstart.ipynb"]

    notebook = _call(lab, "POST", "/api/contents", {"type": "notebook"})
    assert (workspace / notebook["path"]).is_file()
    runs = {name: _call(lab, "POST", f"/orion/api/demos/{name}", {"run": True}) for name in ("mnist", "facenet")}
    # The demo cards open the workspace's copies (placed by lab), run headless to the end.
    assert {name: run["path"] for name, run in runs.items()} == {
        "mnist": "orion-demos/mnist.ipynb", "facenet": "orion-demos/facenet.ipynb"}
    # MNIST on the smallest spec, FaceNet on one large enough for it (4 GiB).
    assert {name: run["kernel"]["name"] for name, run in runs.items()} == {
        "mnist": "orion-1x2gi", "facenet": "orion-1x4gi"}
    executed = [workspace / "orion-demos" / f"{name}.executed.ipynb" for name in runs]
    deadline = time.monotonic() + 900
    while not all(p.is_file() for p in executed):
        events = [_call(lab, "GET", f"/orion/api/events?kernel={run['kernel_id']}") for run in runs.values()]
        failed = [e for found in events for e in (found.get("events") or []) if e.get("level") == "error"]
        assert not failed, failed
        assert time.monotonic() < deadline, events
        time.sleep(2)
    # A finished demo run gives its kernel back: nothing holds a slot for it.
    demo_kernels = {run["kernel_id"] for run in runs.values()}
    while demo_kernels & {r["kernel_id"] for r in _call(lab, "GET", "/orion/api/allocations")["kernels"]}:
        assert time.monotonic() < deadline, "the finished demos' kernels still hold their slots"
        time.sleep(1)
    # One person's own machine: an idle kernel is never stopped.
    kernel = _call(lab, "POST", "/api/kernels", {"name": "orion-1x2gi"})
    rows = _call(lab, "GET", "/orion/api/allocations")["kernels"]
    assert {r["kernel_id"]: r["cull_at"] for r in rows} == {kernel["id"]: None}
    _call(lab, "DELETE", f"/api/kernels/{kernel['id']}")

    assert _git_status(fresh_clone) == []  # nothing new or changed in the clone

    # The CLI lists the specs `lab` installed (in its own folder, not Jupyter's default path).
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER")}
    listed = subprocess.run([sys.executable, "-c", "import sys; from orion_jupyter.cli import main; "
                             "sys.exit(main(['kernelspec', 'list']))"], env={**env, "HOME": str(tmp_path)},
                            capture_output=True, text=True, check=True).stdout
    assert [line.split()[0] for line in listed.splitlines()[1:4]] == ["orion-1x2gi", "orion-1x4gi", "orion-2x4gi"]
    assert f"Installed in {tmp_path}/.local/share/orion-jupyter/data/kernels" in listed
