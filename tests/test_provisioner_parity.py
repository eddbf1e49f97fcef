"""The provisioner on the local backend behaves as jupyter_client's LocalProvisioner does (the upstream
conformance module checks it with jupyter_client's own tests; these are the findings that started it)."""

import json

from jupyter_client.connect import LocalPortCache
from jupyter_client.manager import AsyncKernelManager
from traitlets.config import Config

from tests.kernel_io import run_in_kernel


def local_config() -> Config:
    config = Config()
    config.VGPUProvisioner.cluster = "local"
    config.LocalPool.gpus = 0
    config.LocalPool.cpu_slots = 4
    return config


def with_spec_env(jupyter_dirs, name, env):
    path = jupyter_dirs["data"] / "kernels" / name / "kernel.json"
    spec = json.loads(path.read_text())
    spec["env"] = env
    path.write_text(json.dumps(spec))


async def test_spec_env_templates_apply_once_and_paths_resolve_in_the_kernels_folder(vgpu_spec, jupyter_dirs,
                                                                                      tmp_path, monkeypatch):
    monkeypatch.setenv("ORION_PARITY", "there")
    name = vgpu_spec("parity-env", 1, "1Gi")
    with_spec_env(jupyter_dirs, name, {"PATH": "${PATH}:/orion-x", "GREETING": "hi ${ORION_PARITY}"})
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "data.csv").write_text("a,b\n")
    km = AsyncKernelManager(kernel_name=name, config=local_config())
    await km.start_kernel(cwd=str(tmp_path / "work"))
    try:
        out = await run_in_kernel(km, "import os; print(os.environ['PATH'].count('/orion-x'), os.environ['GREETING'])")
        assert out == "1 hi there"
        assert km.resolve_path("data.csv") == (tmp_path / "work" / "data.csv").as_posix()
        assert km.resolve_path("missing.csv") is None
        assert km.kernel_spec.interrupt_mode == "signal"  # a local process takes SIGINT
    finally:
        await km.shutdown_kernel()


async def test_restart_keeps_its_ports_held_in_jupyter_clients_port_cache(vgpu_spec):
    km = AsyncKernelManager(kernel_name=vgpu_spec("parity-ports", 1, "1Gi"), config=local_config())
    await km.start_kernel()
    try:
        ports = [km.shell_port, km.iopub_port, km.stdin_port, km.hb_port, km.control_port]
        await km.restart_kernel()
        assert [km.shell_port, km.iopub_port, km.stdin_port, km.hb_port, km.control_port] == ports
        held = LocalPortCache.instance().currently_used_ports
        assert set(ports) <= held  # as with LocalProvisioner: no other kernel may take them
    finally:
        await km.shutdown_kernel()
    assert not set(ports) & LocalPortCache.instance().currently_used_ports


async def test_users_exec_lines_stay_and_the_hook_only_for_vgpu_kernels(vgpu_spec, tmp_path, monkeypatch):
    profile = tmp_path / "ipython" / "profile_default"
    profile.mkdir(parents=True)
    (profile / "ipython_kernel_config.py").write_text("c.IPKernelApp.exec_lines = ['USER_LINE = 7']\n")
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    probe = "print(USER_LINE, 'orion_jupyter.memory_cap' in get_ipython().extension_manager.loaded)"
    for vgpus, hooked in ((1, True), (0, False)):
        km = AsyncKernelManager(kernel_name=vgpu_spec(f"parity-hook-{vgpus}", vgpus, "1Gi"), config=local_config())
        await km.start_kernel()
        try:
            assert await run_in_kernel(km, probe) == f"7 {hooked}"
        finally:
            await km.shutdown_kernel()
