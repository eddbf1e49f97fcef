import os
import shutil
import socket
import subprocess
import sys
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from orion_jupyter import kernelspecs
from orion_jupyter.lab import prepare
from orion_jupyter.vgpu import VGPURequest
from tests.helpers import eventually

# pytest-jupyter runs async tests on the loop its Jupyter server fixtures use.
# tests.hub: `hub_factory`, a real JupyterHub.
pytest_plugins = ["pytest_jupyter.jupyter_server", "kubesim.fixtures", "tests.hub"]

# Markers (declared in pyproject.toml) by test module; a test using `lab_server` or `hub_factory` is slow as well.
MODULE_MARKERS = {
    "test_browser.py": ("browser", "slow"),
    "test_labextension.py": ("browser", "slow"),
    "test_budget_browser.py": ("browser", "slow"),
    "test_demos_facenet.py": ("torch", "slow"),
    "test_demos_mnist.py": ("torch", "slow"),
    "test_notebooks.py": ("torch", "slow"),
    "test_widgets.py": ("torch",),
    "test_usage.py": ("torch",),
    "test_park.py": ("torch",),
    "test_benchmarks_smoke.py": ("slow",),
    "test_hub_fixture.py": ("slow",),
}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups (its own hook of the same name)
def pytest_collection_modifyitems(config, items):
    for item in items:
        for marker in MODULE_MARKERS.get(item.path.name, ()):
            item.add_marker(marker)
        if {"lab_server", "notebook7_server", "hub_factory"} & set(getattr(item, "fixturenames", ())):
            item.add_marker("slow")
        markers = {m.name for m in item.iter_markers()}
        # with pytest-xdist (scripts/test: -n 2 --dist loadgroup) each group runs one test after another on one
        # worker: the real hubs, the JupyterLab / browser / torch tests, and jupyter's own suites apart, so the
        # two workers share the heavy work while no two hubs (or two JupyterLabs) compete for the cores
        if "upstream" in markers:
            item.add_marker(pytest.mark.xdist_group("upstream"))
        elif "hub_factory" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("hub"))
        elif {"slow", "browser"} & markers:
            item.add_marker(pytest.mark.xdist_group("lab"))


@pytest.fixture
def jupyter_dirs(tmp_path, monkeypatch):
    """Private Jupyter data, runtime and config dirs (kernel specs and the local slot table)."""
    dirs = {name: tmp_path / f"jupyter-{name}" for name in ("data", "runtime", "config")}
    for path in dirs.values():
        path.mkdir()
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(dirs["data"]))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(dirs["runtime"]))
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(dirs["config"]))
    return dirs


@pytest.fixture
def vgpu_spec(jupyter_dirs):
    """Installs a vGPU kernel spec for the test: vgpu_spec('name', vgpus=1, memory='4Gi', **options)."""

    def install(name: str, vgpus: int = 1, memory: str = "4Gi", backend: str | None = None, **options) -> str:
        spec = kernelspecs.VGPUKernelSpec(
            name=name, request=VGPURequest.parse(vgpus, memory), backend=backend, options=options)
        kernelspecs.install(spec, user=True)
        return name

    return install


@pytest.fixture(autouse=True)
def _close_shared_watches():
    """Close the previous test's shared watches (after its server, whose cleanup may still use them)."""
    from orion_jupyter.k8s.cluster import KubeCluster

    KubeCluster.close_all()
    yield


ROOT = Path(__file__).resolve().parent.parent


@dataclass
class LabServer:
    base: str
    token: str
    root: Path
    log: Path | None = None  # the server's output, for a test to read (no uncaught exceptions)

    @property
    def headers(self) -> dict:
        return {"Authorization": f"token {self.token}"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def lab_server(tmp_path):
    """The README's run command (`scripts/lab`) on a free loopback port, local backend, own HOME."""
    root = tmp_path / "notebooks"
    root.mkdir()
    yield from _serve_lab(tmp_path, root, [f"--ServerApp.root_dir={root}"])


@pytest.fixture
def fresh_clone(tmp_path) -> Path:
    """This checkout as a newcomer's fresh clone: the files git has or would add (as they are now,
    committed or not; nothing ignored, nothing built) in a new repository, committed."""
    clone = tmp_path / "clone"
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout
    for name in filter(None, listed.split(b"\0")):
        source, target = ROOT / os.fsdecode(name), clone / os.fsdecode(name)
        if source.is_file() or source.is_symlink():  # (a file deleted but not yet committed is not)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target, follow_symlinks=False)
    git = ["git", "-c", "user.name=newcomer", "-c", "user.email=newcomer@example.org", "-c", "init.defaultBranch=main"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "fresh clone"]):
        subprocess.run([*git, *args], cwd=clone, check=True, capture_output=True)
    return clone


@pytest.fixture
def lab_workspace_server(tmp_path, fresh_clone):
    """`scripts/lab` as a newcomer runs it in a fresh clone: no folder given, so it serves its workspace
    (~/orion-notebooks). The clone's own code runs, in this test environment (no bootstrap there)."""
    yield from _serve_lab(tmp_path, tmp_path / "orion-notebooks", [], checkout=fresh_clone,
                          env={"ORION_JUPYTER_PYTHON": sys.executable})


def _serve_lab(tmp_path, root, args, checkout=ROOT, env=None):
    port, token = _free_port(), uuid.uuid4().hex
    # JUPYTER_PATH stays: a developer's own labextension build, put first on it, is the one served.
    extra = env or {}
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("JUPYTER") and k != "JUPYTER_PATH") and k != "KUBECONFIG"}
    env.update(HOME=str(tmp_path), KUBECONFIG=str(tmp_path / "no-kubeconfig"), **extra)
    log = tmp_path / "lab-server.log"
    with log.open("w") as output:  # a file, not a pipe nobody reads (a full pipe would block the server)
        server = subprocess.Popen(
            [str(checkout / "scripts" / "lab"), "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.token={token}", *args],
            env=env, stdout=output, stderr=subprocess.STDOUT, text=True)
    yield from _until_stopped(server, LabServer(f"http://127.0.0.1:{port}", token, root, log), "JupyterLab")


def _until_stopped(server: subprocess.Popen, served: LabServer, what: str):
    """Yields `served` once its server answers (within 120 s), and stops the server afterwards."""

    def up() -> bool:
        try:
            urllib.request.urlopen(urllib.request.Request(f"{served.base}/api/status", headers=served.headers),
                                   timeout=5)
            return True
        except OSError:
            assert server.poll() is None, served.log.read_text()
            return False

    try:
        eventually(up, timeout=120, interval=0.3, message=f"{what} did not come up in 120 s")
        yield served
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture
def notebook7_server(tmp_path, monkeypatch):
    """Notebook 7 (`jupyter notebook`) as lab_server runs JupyterLab: a free loopback port, the local
    backend, its own HOME, and the kernel specs and server config `orion-jupyter lab` prepares."""
    if not os.environ.get("ORION_JUPYTER_PYTHON"):  # an environment given as it is (scripts/lab) needs none
        subprocess.run([str(ROOT / "scripts" / "bootstrap")], check=True, capture_output=True)
    for name in [n for n in os.environ if n.startswith("JUPYTER") and n != "JUPYTER_PATH"]:  # (as lab_server)
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    env = prepare(tmp_path / "orion-jupyter", kubernetes=False, presets=None)
    port, token = _free_port(), uuid.uuid4().hex
    root = tmp_path / "notebooks"
    root.mkdir()
    argv = [sys.executable, "-m", "notebook", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}",
            # window.jupyterapp, for the browser to ask which plugins activated
            "--JupyterNotebookApp.expose_app_in_browser=True"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        argv.append("--allow-root")
    log = tmp_path / "notebook-server.log"
    with log.open("w") as output:  # a file, not a pipe nobody reads
        server = subprocess.Popen(argv, env=env, stdout=output, stderr=subprocess.STDOUT, text=True)
    yield from _until_stopped(server, LabServer(f"http://127.0.0.1:{port}", token, root, log), "Notebook 7")


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to resolve or connect fails at once, and is recorded."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError("network access is blocked in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts
