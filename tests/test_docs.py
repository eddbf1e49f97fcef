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

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("cls", [VGPUProvisioner, KernelPolicy, LocalPool, OrionJupyter, Broker, Snapshots],
                         ids=lambda c: c.__name__)
def test_every_option_is_documented_with_help(cls):
    for name, trait in cls.class_own_traits(config=True).items():
        assert trait.help, f"{cls.__name__}.{name} has no help"
        assert f"`c.{cls.__name__}.{name}`" in README, f"README does not document {cls.__name__}.{name}"


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
