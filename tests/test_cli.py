"""`orion-jupyter kernelspec` in a temporary JUPYTER_DATA_DIR, seen by Jupyter itself."""

import json
import subprocess
import sys

import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.provisioning import KernelProvisionerFactory

from orion_jupyter.cli import main
from orion_jupyter.provisioner import VGPUProvisioner


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "data"))
    return tmp_path / "data"


def test_install_list_remove(data_dir, capsys):
    assert main(["kernelspec", "install", "--user", "--name", "orion-1x4gi", "--vgpus", "1", "--memory", "4Gi"]) == 0
    spec = json.loads((data_dir / "kernels" / "orion-1x4gi" / "kernel.json").read_text())
    assert spec["display_name"] == "Python\u00a03 · 1\u00a0vGPU · 4\u00a0GiB"
    assert spec["interrupt_mode"] == "message"  # a pod by default; local processes take signals
    assert spec["metadata"]["supported_encryption"] == ["curve"]
    assert spec["metadata"]["kernel_provisioner"] == {
        "provisioner_name": "orion-vgpu-provisioner", "config": {"vgpus": 1, "vgpu_memory": "4096Mi"}}

    assert main(["kernelspec", "install", "--user", "--name", "orion-2x8gi", "--vgpus", "2", "--memory", "8Gi",
                 "--backend", "hami", "--image", "example.org/kernel:1"]) == 0
    capsys.readouterr()
    assert main(["kernelspec", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["NAME", "VGPU", "MEMORY", "BACKEND"]
    assert out[1].split()[:5] == ["orion-1x4gi", "1", "4", "GiB", "(default)"]
    assert out[2].split()[:5] == ["orion-2x8gi", "2", "8", "GiB", "hami"]

    # Jupyter's own listing sees them
    listed = subprocess.run([sys.executable, "-m", "jupyter_client.kernelspecapp", "list", "--json"],
                            capture_output=True, text=True, check=True)
    assert {"orion-1x4gi", "orion-2x8gi"} <= set(json.loads(listed.stdout)["kernelspecs"])

    # and the provisioner resolves through jupyter_client's factory, with the spec's config
    manager = KernelSpecManager()
    kernel_spec = manager.get_kernel_spec("orion-2x8gi")
    factory = KernelProvisionerFactory.instance()
    assert factory.is_provisioner_available(kernel_spec)
    provisioner = factory.create_provisioner_instance("k1", kernel_spec, parent=None)
    assert isinstance(provisioner, VGPUProvisioner)
    assert (provisioner.vgpus, provisioner.vgpu_memory, provisioner.backend, provisioner.image) == (
        2, "8192Mi", "hami", "example.org/kernel:1")

    assert main(["kernelspec", "remove", "orion-1x4gi", "orion-2x8gi"]) == 0
    assert not (data_dir / "kernels" / "orion-1x4gi").exists()


def test_presets_define_the_class_menu(data_dir, tmp_path, capsys):
    presets = tmp_path / "class.yaml"
    presets.write_text(
        "- display_name: Small GPU (MNIST)\n  description: for the MNIST lab\n  vgpus: 1\n  memory: 2Gi\n"
        "- name: facenet\n  display_name: FaceNet lab\n  vgpus: 1\n  memory: 6Gi\n  image: example.org/facenet:1\n"
        "- display_name: CPU only\n  vgpus: 0\n"
    )
    assert main(["kernelspec", "install", "--user", "--presets", str(presets)]) == 0
    specs = KernelSpecManager().find_kernel_specs()
    assert {"orion-small-gpu-mnist", "facenet", "orion-cpu-only"} <= set(specs)
    facenet = KernelSpecManager().get_kernel_spec("facenet")
    assert facenet.metadata["kernel_provisioner"]["config"]["image"] == "example.org/facenet:1"
    assert facenet.display_name == "FaceNet lab"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--name", "x", "--memory", "lots"],
         'vGPU memory "lots" is not a size; use a number of MiB or a value like 4Gi'),
        (["--name", "x", "--vgpus", "-2"], 'vGPU count "-2" is negative; use 0 for CPU only, or 1, 2, ...'),
        (["--name", "Bad Name"],
         'kernel spec name "Bad Name" is not valid; use at most 64 lower-case letters, digits, ".", "_" and "-"'),
        (["--name", "x", "--backend", "gaudi"],
         'vGPU backend "gaudi" is not known; use one of orion, hami, nvidia, dra, kai'),
        ([], "kernel spec name is missing; give --name NAME or --presets FILE"),
    ],
)
def test_bad_install_says_why_and_installs_nothing(data_dir, capsys, argv, message):
    assert main(["kernelspec", "install", "--user", *argv]) == 2
    assert capsys.readouterr().err.strip() == f"orion-jupyter: error: {message}"
    assert not (data_dir / "kernels").exists() or not any((data_dir / "kernels").iterdir())


def test_bad_preset_file_installs_nothing(data_dir, tmp_path, capsys):
    presets = tmp_path / "bad.yaml"
    presets.write_text("- display_name: ok\n  memory: 2Gi\n- display_name: broken\n  memory: 2 GB?\n")
    assert main(["kernelspec", "install", "--user", "--presets", str(presets)]) == 2
    assert 'vGPU memory "2 GB?" is not a size' in capsys.readouterr().err
    assert not (data_dir / "kernels").exists()


def test_manifests_rbac_prints_yaml(capsys):
    import yaml

    assert main(["manifests", "--namespace", "class-ai101"]) == 0
    kinds = [d["kind"] for d in yaml.safe_load_all(capsys.readouterr().out)]
    assert kinds == ["ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"]


def test_installed_specs_carry_the_vgpu_logo(tmp_path):
    from orion_jupyter import kernelspecs
    from orion_jupyter.vgpu import VGPURequest

    folder = kernelspecs.install(kernelspecs.VGPUKernelSpec(name="orion-logo", request=VGPURequest(1, 2048)),
                                 prefix=str(tmp_path))
    logo = tmp_path / "share" / "jupyter" / "kernels" / "orion-logo" / "logo-svg.svg"
    assert str(logo.parent) == folder and logo.read_text().lstrip().startswith("<svg")


@pytest.mark.parametrize(("config", "message"), [
    ("c.Broker.courses = {'ai101': {'vgpus': 2, 'qeue': True}}",
     "c.Broker.courses['ai101'] has no setting \"qeue\"; use budget, cull_idle_seconds"),
    ("c.Broker.warm_pools = [{'name': 'gpu', 'vgpus': 1, 'memory': '1Gi', 'size': -1}]",
     "c.Broker.warm_pools[0].size must be a whole number"),
    ("c.Broker.warm_pools = [{'name': 'gpu', 'vgpus': 1, 'memory': '1Gi', 'size': 2, "
     "'volumes': [{'name': 'home', 'persistentVolumeClaim': {'claimName': 'claim-{username}'}}]}]",
     "cannot name the user; use c.Broker.rosters"),
    ("c.Broker.rosters = {'ai101': {'vgpus': 1, 'hours': {'start': '9am'}}}", "must be a time of day like"),
    ("c.Broker.budgets = {'student': 10, 'reset': {'weekly': 'tuesday 9am'}}",
     "c.Broker.budgets.reset.weekly must be a time of day like"),
    ("c.Broker.courses = {'ai101': {'budget': {'student': -1}}}",
     "c.Broker.courses['ai101'].budget.student must be a number of hours"),
    ("c.Broker.courses = {'ai101': {'weight': 0}}", "c.Broker.courses['ai101'].weight must be a number more than 0"),
    ("c.Broker.courses = {'ai101': {'vgpus': 2}}", "no Kubernetes cluster to use"),
])
def test_the_broker_refuses_a_bad_setting_in_one_line(tmp_path, config, message):
    path = tmp_path / "broker_config.py"
    path.write_text(config + "\n")
    env = {"PATH": "/usr/bin:/bin", "KUBECONFIG": str(tmp_path / "missing"), "HOME": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "orion_jupyter.cli", "broker", "--config", str(path)], env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 2, run.stderr
    assert message in run.stderr and "Traceback" not in run.stderr, run.stderr
