"""docker/kernel.Dockerfile and docker/broker.Dockerfile (the README's images as files): every package their
`pip install` lines name is one this project declares (itself with a real extra, or one of its dependencies)."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[([^\]]+)\])?")
_OPTIONS_WITH_VALUES = {"--find-links", "-f", "--index-url", "-i", "--extra-index-url", "-c", "--constraint", "-w",
                        "--wheel-dir", "-r", "--requirement"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    requirements = list(PROJECT["dependencies"]) + [r for extra in PROJECT["optional-dependencies"].values()
                                                    for r in extra]
    return {normalize(_NAME.match(r).group(1)) for r in requirements}


def pip_requirements(dockerfile: Path) -> list[str]:
    """The requirements of every `pip install` in the file's RUN lines (continuations joined, options dropped)."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    found = []
    for line in text.splitlines():
        if not line.startswith("RUN "):
            continue
        for command in re.split(r"&&|;", line[4:]):
            words = shlex.split(command)
            for i, word in enumerate(words[:-1]):
                if word.endswith("pip") and words[i + 1] == "install":
                    args, skip = words[i + 2:], False
                    for arg in args:
                        if skip:
                            skip = False
                        elif arg in _OPTIONS_WITH_VALUES:
                            skip = True
                        elif not arg.startswith("-"):
                            found.append(arg)
    return found


@pytest.mark.parametrize("name", ["kernel.Dockerfile", "broker.Dockerfile"])
def test_pip_installs_name_only_what_the_project_declares(name):
    requirements = pip_requirements(ROOT / "docker" / name)
    assert any(normalize(_NAME.match(r).group(1)) == "orion-jupyter" for r in requirements), requirements
    for requirement in requirements:
        match = _NAME.match(requirement)
        assert match, f"{name}: {requirement!r} is not a package name"
        package, extras = normalize(match.group(1)), match.group(3)
        if package == normalize(PROJECT["name"]):
            for extra in (extras or "").split(","):
                assert not extra or extra.strip() in PROJECT["optional-dependencies"], f"{name}: no extra {extra}"
        else:
            assert package in declared(), f"{name}: pip installs {package}, which pyproject.toml does not declare"


def test_the_parser_sees_what_is_there(tmp_path):
    dockerfile = tmp_path / "x.Dockerfile"
    dockerfile.write_text('RUN apt-get update && pip install --no-cache-dir --find-links /w numpy "a-b[c]" \\\n'
                          "    && /build/bin/pip wheel --no-deps /src -w /wheels\n")
    assert pip_requirements(dockerfile) == ["numpy", "a-b[c]"]


def test_the_readme_points_at_the_files():
    readme = (ROOT / "README.md").read_text()
    assert "docker build -f docker/kernel.Dockerfile" in readme and "docker build -f docker/broker.Dockerfile" in readme
