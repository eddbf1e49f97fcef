import pytest

from orion_jupyter import kernelspecs
from orion_jupyter.vgpu import VGPURequest

# pytest-jupyter runs async tests on the loop its Jupyter server fixtures use.
pytest_plugins = ["pytest_jupyter.jupyter_server", "tests.kubesim.fixtures"]


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
