"""`orion-jupyter lab`: JupyterLab with vGPU kernels on this machine or a cluster, in one command."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .k8s.client import cluster_configured
from .kernelspecs import VGPUKernelSpec, install_all, load_presets
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


def run_lab(kubernetes: bool = False, presets: str | None = None, home: str | None = None,
            jupyter_args: list[str] | None = None) -> int:
    root = Path(home or Path.home() / ".local" / "share" / "orion-jupyter").expanduser()
    env = prepare(root, kubernetes, presets)
    argv = [sys.executable, "-m", "jupyterlab", *(jupyter_args or [])]
    if hasattr(os, "geteuid") and os.geteuid() == 0 and "--allow-root" not in argv:
        print("orion-jupyter: running as root (a container or CI): passing --allow-root to JupyterLab", file=sys.stderr)
        argv.append("--allow-root")
    os.execve(sys.executable, argv, env)
    return 0  # not reached
