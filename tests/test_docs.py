"""The README documents every option, and CI runs the README's test command."""

from pathlib import Path

import pytest

from orion_jupyter.config import KernelPolicy
from orion_jupyter.local import LocalPool
from orion_jupyter.provisioner import VGPUProvisioner
from orion_jupyter.server.app import OrionJupyter

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("cls", [VGPUProvisioner, KernelPolicy, LocalPool, OrionJupyter], ids=lambda c: c.__name__)
def test_every_option_is_documented_with_help(cls):
    for name, trait in cls.class_own_traits(config=True).items():
        assert trait.help, f"{cls.__name__}.{name} has no help"
        assert f"`c.{cls.__name__}.{name}`" in README, f"README does not document {cls.__name__}.{name}"


def test_ci_runs_the_readme_test_command():
    assert "./scripts/test" in README and "./scripts/lab" in README
    assert "./scripts/test" in (ROOT / ".ci" / "run").read_text()
