"""What every section shares: statistics, the machine, results and targets, clean-up, private dirs."""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

NAMESPACE = "bench"
LOG_DIR: str | None = None  # where the Jupyter servers' logs are kept (set by __main__)


# -- statistics ---------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary(values: Sequence[float], scale: float = 1.0) -> dict[str, float]:
    """n, median, p95, p99, min, max, mean of ``values`` times ``scale`` (1000: seconds to ms)."""
    values = [v * scale for v in values]
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "median": round(percentile(values, 50), 3),
        "p95": round(percentile(values, 95), 3),
        "p99": round(percentile(values, 99), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "mean": round(sum(values) / len(values), 3),
    }


# -- the machine ---------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    if not commit:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True, timeout=5, check=False).stdout.strip()
    return commit + ("+uncommitted changes" if dirty else "")


def machine_info() -> dict[str, Any]:
    return {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "packages": {name: _version(name) for name in (
            "orion-jupyter", "jupyter_client", "jupyter_server", "ipykernel", "kubernetes", "tornado", "pyzmq",
            "torch")},
    }


# -- results -------------------------------------------------------------------------------------
@dataclass
class Row:
    """One line of the table: a measurement, and the target it is held against (if any)."""

    section: str
    metric: str
    value: str
    target: str = ""
    passed: bool | None = None  # None: nothing to hold it against
    kind: str = ""  # "target": one of the project's performance targets; "check": a sanity check

    @property
    def mark(self) -> str:
        """pass/MISS against a target, ok/FAIL for a sanity check, nothing otherwise."""
        if self.passed is None:
            return ""
        if self.kind == "check":
            return "ok" if self.passed else "FAIL"
        return "pass" if self.passed else "MISS"


@dataclass
class Section:
    name: str
    data: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)

    def row(self, metric: str, value: str, target: str = "", passed: bool | None = None, check: bool = False) -> None:
        kind = "" if passed is None else ("check" if check else "target")
        self.rows.append(Row(self.name, metric, value, target, passed, kind))

    def skipped(self, why: str, metric: str = "") -> Section:
        self.data["skipped"] = why
        self.rows.append(Row(self.name, metric or self.name, why))
        return self


def fmt_ms(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.1f} ms"


def fmt_s(value: float) -> str:
    return f"{value:,.2f} s"


# -- clean-up ------------------------------------------------------------------------------------
class Interrupted(KeyboardInterrupt):
    """SIGTERM (or SIGHUP): unwound like Ctrl-C, so every ``finally`` runs."""


def raise_on_termination() -> None:
    def handler(signum: int, _frame: Any) -> None:
        raise Interrupted(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def stop_process(proc: subprocess.Popen, grace: float = 20.0, sig: int = signal.SIGTERM) -> None:
    """Stops a process that we started in its own session: ``sig``, then SIGKILL to its group."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        except (KeyboardInterrupt, OSError):
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
        os.killpg(proc.pid, signal.SIGKILL)  # its group: the process itself and anything it left
    with contextlib.suppress(subprocess.TimeoutExpired, OSError):
        proc.wait(5)


class ConnectionCounter:
    """Counts the TCP connections the simulated API server accepts, and the ones clients reset.

    Wraps the server object's own methods at run time (nothing in kubesim changes). A reset
    is a client closing a connection with a response it never read; socketserver would print a
    traceback for each, which only clutters the table.
    """

    def __init__(self, cluster: Any):
        server = cluster._server
        self.accepted = 0
        self.resets = 0
        accept = server.get_request

        def get_request() -> Any:
            request = accept()
            self.accepted += 1
            return request

        def handle_error(_request: Any, _address: Any) -> None:
            self.resets += 1

        server.get_request = get_request
        server.handle_error = handle_error
        cluster.bench_connections = self


@contextlib.contextmanager
def sim_cluster(nodes: list, **kwargs: Any) -> Iterator[Any]:
    """A started kubesim cluster, stopped (pod processes killed) however the block ends."""
    from kubesim import SimCluster

    cluster = SimCluster(nodes=nodes, python=sys.executable, **kwargs).start()
    ConnectionCounter(cluster)
    kernel_ids: set[str] = set()

    def remember(plural: str, etype: str, obj: dict, _old: Any) -> None:
        if plural == "pods" and etype == "ADDED":
            kernel_ids.add((obj["metadata"].get("labels") or {}).get("orion-jupyter.io/kernel-id", ""))

    cluster.store.subscribers.append(remember)
    try:
        yield cluster
    finally:
        from orion_jupyter.k8s.cluster import KubeCluster

        KubeCluster.close_all()  # our own in-process watches on this cluster, if any
        cluster.stop()
        left = cluster.running_processes()
        for pgid in left:  # should not happen: SimCluster.stop kills them; never leave one behind
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)
        # The kernel entrypoint writes its connection file to the pod's temp dir, which for a
        # process-kubelet pod is this machine's: remove those of our kernels.
        for kernel_id in kernel_ids - {""}:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(tempfile.gettempdir(), f"orion-kernel-{kernel_id}.json"))


@contextlib.contextmanager
def jupyter_dirs(prefix: str) -> Iterator[dict[str, str]]:
    """Private JUPYTER_{DATA,RUNTIME,CONFIG}_DIR (set in this process), removed afterwards."""
    base = tempfile.mkdtemp(prefix=f"orion-bench-{prefix}-")
    dirs = {name: os.path.join(base, name) for name in ("data", "runtime", "config", "home")}
    for path in dirs.values():
        os.makedirs(path)
    names = {"data": "JUPYTER_DATA_DIR", "runtime": "JUPYTER_RUNTIME_DIR", "config": "JUPYTER_CONFIG_DIR"}
    saved = {var: os.environ.get(var) for var in names.values()}
    for key, var in names.items():
        os.environ[var] = dirs[key]
    dirs["base"] = base
    try:
        yield dirs
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        shutil.rmtree(base, ignore_errors=True)


def install_vgpu_spec(name: str, vgpus: int = 1, memory: str = "4Gi", **options: Any) -> str:
    """A vGPU kernel spec in the current JUPYTER_DATA_DIR, as ``orion-jupyter kernelspec`` installs it."""
    from orion_jupyter import kernelspecs
    from orion_jupyter.vgpu import VGPURequest

    spec = kernelspecs.VGPUKernelSpec(name=name, request=VGPURequest.parse(vgpus, memory), options=options)
    kernelspecs.install(spec, user=True)
    return name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kernel_pods(cluster: Any, namespace: str = NAMESPACE) -> list[dict]:
    return [p for p in cluster.objects("pods", namespace)
            if (p["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by") == "orion-jupyter"]


def wait_until(condition: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:g} s")
        time.sleep(interval)


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (VmRSS in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def concurrently(n: int, fn: Any, timeout: float = 600) -> list[Any]:
    """fn(i) for i < n, all released at once from n (daemon) threads; results in order. A thread
    still waiting when we are interrupted does not hold up the clean-up (stopping the server)."""
    gate = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def call(i: int) -> None:
        gate.wait()
        try:
            results[i] = fn(i)
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            errors.append(err)

    threads = [threading.Thread(target=call, args=(i,), daemon=True, name=f"bench-client-{i}") for i in range(n)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0))
    if any(thread.is_alive() for thread in threads):
        raise TimeoutError(f"{n} concurrent requests did not all finish within {timeout:g} s")
    if errors:
        raise errors[0]
    return results
