"""jupyter_client's and jupyter_server's own kernel and session tests, as they are and through the provisioner.

Their sdists at the installed versions come from PyPI (cached in ~/.cache/orion-jupyter/upstream); their
test files run unedited, once as they are and once with every kernel routed through
orion-vgpu-provisioner on the local backend (``tests/upstream/orion_routing.py``). The test fails listing
each test that fails only through the provisioner. Marked ``upstream``: ``pytest -m "not upstream"`` skips it.
"""

import os
import shutil
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from importlib.metadata import version
from pathlib import Path

import pytest

pytestmark = [pytest.mark.upstream, pytest.mark.slow]

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "orion-jupyter" / "upstream"
ROUTING = Path(__file__).parent / "upstream"
REPO = Path(__file__).resolve().parents[1]
# The kernel and session tests: kernel managers, restarts, env templates, ports, interrupts, encryption.
SUITES = {
    "jupyter_client": ["tests/test_kernelmanager.py", "tests/test_multikernelmanager.py",
                       "tests/test_transport_security.py"],
    "jupyter_server": ["tests/services/kernels/test_api.py", "tests/services/kernels/test_transport_encryption.py",
                       "tests/services/sessions/test_api.py"],
}
# On the simulated cluster: jupyter_server's kernel and session API. A pod always runs ipykernel through
# its entrypoint with the configured kernel_python, never a spec's argv, so the tests that make a kernel
# fail to start with a spec whose command does not exist ("bad") do not apply there.
KUBESIM = (["tests/services/kernels/test_api.py", "tests/services/sessions/test_api.py"],
           ["-k", "not startup_error and not create_bad"])
CASES = [("jupyter_client", "local"), ("jupyter_server", "local"), ("jupyter_server", "kubesim")]


def sdist(name: str) -> Path:
    """The unpacked sdist of the installed version of ``name``."""
    release = f"{name}-{version(name)}"
    folder = CACHE / release
    if not (folder / "tests").is_dir():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
                        f"{name}=={version(name)}", "-d", str(CACHE)], check=True, timeout=600)
        with tarfile.open(CACHE / f"{release}.tar.gz") as archive:
            archive.extractall(CACHE, filter="data")
    return folder


def pytest_run(folder: Path, files: list[str], report: Path, routed: str = "") -> subprocess.Popen:
    """Their tests in a copy of their folder of its own (ipc kernels make sockets in the working folder)."""
    work = report.with_suffix("")
    if not work.exists():
        shutil.copytree(folder, work)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(ROUTING)])}
    # their own settings, less addopts (coverage, doctests) and their "flaky" mark's plugin, not installed here
    args = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-o", "addopts=",
            "-W", "ignore::pytest.PytestUnknownMarkWarning", f"--junitxml={report}", *files]
    if routed:  # "local" or "kubesim"
        env.update(JUPYTER_DEFAULT_PROVISIONER_NAME="orion-vgpu-provisioner", ORION_UPSTREAM_CLUSTER=routed)
        args[3:3] = ["-p", "orion_routing"]
    return subprocess.Popen(args, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def outcomes(report: Path) -> dict[str, str]:
    found = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        kinds = {child.tag for child in case}
        outcome = "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
        found[f"{case.get('classname')}::{case.get('name')}"] = outcome
    return found


def node_id(test: str) -> str:
    """'tests.test_x.TestY::test_z[a]' (junit) -> 'tests/test_x.py::TestY::test_z[a]' (pytest)."""
    classname, name = test.split("::", 1)
    parts = classname.split(".")
    for cut in range(len(parts), 0, -1):
        if parts[cut - 1].startswith("test_"):
            return "/".join(parts[:cut]) + ".py::" + "::".join([*parts[cut:], name])
    raise AssertionError(f"cannot tell the file of {test}")


@pytest.mark.timeout(3600)
@pytest.mark.parametrize("package, cluster", CASES)
def test_no_upstream_test_fails_only_through_the_provisioner(package, cluster, tmp_path):
    folder = sdist(package)
    files, options = KUBESIM if cluster == "kubesim" else (SUITES[package], [])
    runs = [pytest_run(folder, [*options, *files], tmp_path / "plain.xml"),  # at once: they mostly wait for kernels
            pytest_run(folder, [*options, *files], tmp_path / "routed.xml", cluster)]
    for run in runs:
        run.wait(timeout=3000)
    plain, routed = outcomes(tmp_path / "plain.xml"), outcomes(tmp_path / "routed.xml")
    assert plain and set(plain) == set(routed), "both runs must collect the same tests"
    for file in files:  # every file ran (a collection error would make both runs equal)
        module = file.removesuffix(".py").replace("/", ".")
        ran = [t for t, outcome in plain.items() if t.startswith(module) and outcome != "failed"]
        assert ran, f"{file}: no test of it ran"
    suspects = sorted(test for test, outcome in routed.items() if outcome == "failed" and plain[test] != "failed")
    if suspects:  # timing tests can fail once on a busy machine: a failure counts when it fails again, alone
        pytest_run(folder, [node_id(t) for t in suspects], tmp_path / "routed-again.xml", cluster).wait(3000)
        again = outcomes(tmp_path / "routed-again.xml")
        suspects = [test for test in suspects if again.get(test) != "passed"]
    assert suspects == [], f"{package} ({cluster}): fail only through orion-vgpu-provisioner: {suspects}"
