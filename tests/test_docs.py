"""The README documents every option, CI runs the README's test command, and the version lives in one place."""

import json
import tomllib
from pathlib import Path

import pytest

import orion_jupyter
from orion_jupyter.broker.service import Broker
from orion_jupyter.config import KernelPolicy
from orion_jupyter.local import LocalPool
from orion_jupyter.provisioner import VGPUProvisioner
from orion_jupyter.server.app import OrionJupyter
from orion_jupyter.server.snapshots import Snapshots
from orion_jupyter.settings import ClassSettings, KernelSettings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


# Where each settings class is documented: KernelSettings as c.VGPUProvisioner (its section), the shared
# class settings under both apps that inherit them.
SECTIONS = {KernelSettings: ("VGPUProvisioner",), ClassSettings: ("OrionJupyter", "Broker")}


@pytest.mark.parametrize("cls", [KernelSettings, ClassSettings, VGPUProvisioner, KernelPolicy, LocalPool, OrionJupyter,
                                 Broker, Snapshots], ids=lambda c: c.__name__)
def test_every_option_is_documented_with_help(cls):
    for name, trait in cls.class_own_traits(config=True).items():
        assert trait.help, f"{cls.__name__}.{name} has no help"
        for section in SECTIONS.get(cls, (cls.__name__,)):
            assert f"`c.{section}.{name}`" in README, f"README does not document {section}.{name}"


def test_the_settings_are_declared_once_and_configured_where_documented():
    assert issubclass(VGPUProvisioner, KernelSettings) and issubclass(OrionJupyter, ClassSettings)
    assert issubclass(Broker, ClassSettings)
    from traitlets.config import Config

    config = Config({"VGPUProvisioner": {"image": "example/kernel:1"}, "Broker": {"cull_max_keeps": 1}})
    assert KernelSettings(config=config).image == "example/kernel:1"  # c.VGPUProvisioner reaches the settings
    assert Broker(config=config).cull_max_keeps == 1 and OrionJupyter(config=config).cull_max_keeps == 3


def test_ci_runs_the_readme_test_command():
    assert "./scripts/test" in README and "./scripts/lab" in README
    assert "./scripts/test" in (ROOT / ".ci" / "run").read_text()


def test_one_version():
    """pyproject takes orion_jupyter.__version__ (hatch); the JupyterLab extension's package.json matches it."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and pyproject["project"]["dynamic"] == ["version"]
    assert pyproject["tool"]["hatch"]["version"]["path"] == "orion_jupyter/__init__.py"
    package = json.loads((ROOT / "labextension" / "package.json").read_text())
    assert package["version"] == orion_jupyter.__version__


def test_wheel_ships_only_orion_jupyter():
    """kubesim, benchmarks and tests are dev-only."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == ["orion_jupyter"]
