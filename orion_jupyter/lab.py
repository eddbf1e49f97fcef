"""`orion-jupyter lab`: JupyterLab with vGPU kernels on this machine or a cluster, in one command."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from .k8s.client import cluster_configured
from .kernelspecs import VGPUKernelSpec, install_all, lab_home, load_presets
from .vgpu import VGPURequest

DEFAULT_PRESETS = [
    VGPUKernelSpec(name="orion-1x2gi", request=VGPURequest(1, 2048), description="A small slice: quickstart and MNIST"),
    VGPUKernelSpec(name="orion-1x4gi", request=VGPURequest(1, 4096), description="A medium slice: FaceNet"),
    VGPUKernelSpec(name="orion-2x4gi", request=VGPURequest(2, 4096), description="Two vGPUs"),
]


def prepare(home: Path, kubernetes: bool, presets: str | None) -> dict[str, str]:
    """Kernel specs and server config in an isolated folder; returns the environment to run with."""
    data, config = home / "data", home / "config"
    (data / "kernels").mkdir(parents=True, exist_ok=True)
    config.mkdir(parents=True, exist_ok=True)
    specs = load_presets(presets) if presets else DEFAULT_PRESETS
    env = {**os.environ,
           # One person on their own machine: idle kernels are kept (OrionJupyter.cull_idle_seconds's default).
           "ORION_JUPYTER_LAB": "1",
           "JUPYTER_PATH": os.pathsep.join(filter(None, [str(data), os.environ.get("JUPYTER_PATH", "")])),
           "JUPYTER_CONFIG_PATH": os.pathsep.join(filter(None, [str(config),
                                                                os.environ.get("JUPYTER_CONFIG_PATH", "")]))}
    install_all(specs, user=True, manager=_manager(data))
    cluster = "kubernetes" if kubernetes or cluster_configured() else "local"
    server_config = {
        "ServerApp": {"jpserver_extensions": {"orion_jupyter": True}},
        "VGPUProvisioner": {"cluster": cluster},
    }
    (config / "jupyter_server_config.json").write_text(json.dumps(server_config, indent=1))
    # Classrooms are often offline: JupyterLab should not ask to fetch news or check for updates.
    (config / "labconfig").mkdir(exist_ok=True)
    (config / "labconfig" / "default_setting_overrides.json").write_text(json.dumps(
        {"@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False}}, indent=1))
    return env


def _manager(data: Path):
    from jupyter_client.kernelspec import KernelSpecManager

    class IsolatedSpecs(KernelSpecManager):
        @property
        def user_kernel_dir(self) -> str:  # type: ignore[override]
            return str(data / "kernels")

    return IsolatedSpecs()


WORKSPACE = "~/orion-notebooks"
#: What a new workspace starts with: the quickstart at its top, the demos where their launcher cards
#: open them (the server's demo_folder), so a card opens this copy rather than placing another.
STARTER_NOTEBOOKS = {"quickstart.ipynb": "quickstart.ipynb", "mnist.ipynb": "orion-demos/mnist.ipynb",
                     "facenet.ipynb": "orion-demos/facenet.ipynb"}
_ROOT_FLAGS = ("--ServerApp.root_dir", "--notebook-dir", "--ServerApp.notebook_dir")


def prepare_workspace(workspace: Path) -> list[str]:
    """The folder JupyterLab serves: created with the starter notebooks, never over a user's copy
    (so notebooks and demo copies land there, not in a git clone). Returns the notebooks copied."""
    from .server.demos import notebooks_dir

    copied = []
    for source, target in STARTER_NOTEBOOKS.items():
        path = workspace / target
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(notebooks_dir() / source, path)
            copied.append(target)
    return copied


def run_lab(kubernetes: bool = False, presets: str | None = None, home: str | None = None,
            jupyter_args: list[str] | None = None, workspace: str | None = None) -> int:
    root = Path(home).expanduser() if home else lab_home()
    say = lambda text: print(f"orion-jupyter lab: {text}", file=sys.stderr)  # noqa: E731
    env = prepare(root, kubernetes, presets)
    say(f"vGPU kernel specs in {root / 'data' / 'kernels'} (`orion-jupyter kernelspec list` shows them), "
        f"server config in {root / 'config'}; idle kernels are not stopped")
    argv = [sys.executable, "-m", "jupyterlab", *(jupyter_args or [])]
    if not any(a.split("=")[0] in _ROOT_FLAGS for a in argv):
        folder = Path(workspace or WORKSPACE).expanduser()
        copied = prepare_workspace(folder)
        say(f"serving {folder}" + (f" (new: {', '.join(copied)})" if copied else "")
            + "; pass --workspace DIR (or --ServerApp.root_dir=DIR) for another folder")
        argv.append(f"--ServerApp.root_dir={folder}")
    if hasattr(os, "geteuid") and os.geteuid() == 0 and "--allow-root" not in argv:
        print("orion-jupyter: running as root (a container or CI): passing --allow-root to JupyterLab", file=sys.stderr)
        argv.append("--allow-root")
    os.execve(sys.executable, argv, env)
    return 0  # not reached
