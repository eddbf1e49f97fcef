"""launch: start_kernel to the first kernel_info reply, a vGPU kernel against a local one; and the
first launch in a fresh Jupyter server against later ones.

The vGPU kernel runs on the simulated cluster (process kubelet: its pod is an ipykernel process
on this machine, started as soon as the pod is bound; readiness probed as a kubelet does, once a
second); the local one is jupyter_client's own LocalProvisioner starting the venv's ``python3``
spec, the same ipykernel. Launches alternate (vGPU, local, local, vGPU, ...) after one warm-up of
each, in one event loop, one at a time.

The simulated cluster runs in this process, so its store changes are timestamped with the same
clock as the launches (a store subscriber, no hook in the product); a separate process
(``benchmarks/knocker.py``) connects to the kernel's shell port every 0.5 ms from the moment its
container runs, and tells when the kernel first listens. A vGPU launch is then cut into: call to
Pod create (the provisioner's own work and three API requests), create to container running
(scheduling, the kubelet), running to listening (the kernel process starting: the cluster's and
the kernel's time) and listening to start_kernel returning (the provisioner noticing it, by its own
knock). The provisioner's overhead is the first part plus the last. Launches no longer wait for the
pod's Ready condition (the kubelet probes once a second), so the table also says how much later
Ready came than the launch returned: what the knock saves.
"""

from __future__ import annotations

import asyncio
import queue
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

from .common import (
    NAMESPACE,
    ROOT,
    Section,
    fmt_ms,
    install_vgpu_spec,
    jupyter_dirs,
    kernel_pods,
    sim_cluster,
    stop_process,
    summary,
    wait_until,
)

SPEC = "orion-bench-1x4gi"
LOCAL_SPEC = "python3"
OVERHEAD_TARGET_MS = 50.0
RATIO_TARGET = 1.15
FIRST_LAUNCH_TARGET = 1.2
LABEL_KERNEL_ID = "orion-jupyter.io/kernel-id"


def _ready(pod: dict | None) -> bool:
    conditions = ((pod or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _running(pod: dict) -> bool:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return bool((pod.get("status") or {}).get("podIP")) and any("running" in (s.get("state") or {}) for s in statuses)


class Knocker:
    """``python -m benchmarks.knocker``: when each kernel first accepted a connection on its shell port."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.knocker"], cwd=str(ROOT), text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        if self.proc.stdout.readline().strip() != "ready":
            self.close()
            raise RuntimeError("the knocker did not start")
        self.listening: dict[str, float] = {}
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True, name="bench-knocker")
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            key, _, value = line.strip().partition(" ")
            if value and value != "timeout":
                with self._lock:
                    self.listening[key] = float(value)

    def knock(self, key: str, ip: str, port: int) -> None:
        with self._lock:
            self.proc.stdin.write(f"{key} {ip} {port}\n")
            self.proc.stdin.flush()

    def wait(self, key: str, timeout: float = 10.0) -> float:
        return wait_until(lambda: self.listening.get(key), timeout, 0.002, f"kernel {key} listening")

    def close(self) -> None:
        stop_process(self.proc, grace=1.0)


class PodClock:
    """Times of each kernel pod's creation, container start and first readiness, taken inside the
    simulated store; the knocker is told where to knock as soon as the container runs."""

    def __init__(self, cluster: Any, knocker: Knocker):
        self.store = cluster.store
        self.knocker = knocker
        self.created: dict[str, float] = {}
        self.running: dict[str, float] = {}
        self.ready: dict[str, float] = {}
        self._lock = threading.Lock()
        self.store.subscribers.append(self._on_change)

    def _on_change(self, plural: str, etype: str, obj: dict, old: dict | None) -> None:
        if plural != "pods":
            return
        now = time.perf_counter()
        kernel_id = (obj["metadata"].get("labels") or {}).get(LABEL_KERNEL_ID)
        if not kernel_id:
            return
        with self._lock:
            if etype == "ADDED":
                self.created.setdefault(kernel_id, now)
            elif etype == "MODIFIED":
                if _running(obj) and kernel_id not in self.running:
                    self.running[kernel_id] = now
                    probe = obj["spec"]["containers"][0]["readinessProbe"]["tcpSocket"]["port"]
                    self.knocker.knock(kernel_id, obj["status"]["podIP"], int(probe))
                if _ready(obj) and not _ready(old):
                    self.ready.setdefault(kernel_id, now)

    def close(self) -> None:
        if self._on_change in self.store.subscribers:
            self.store.subscribers.remove(self._on_change)


async def first_kernel_info_reply(km: Any, timeout: float = 120.0) -> float:
    """perf_counter() when the kernel first answers kernel_info (asked again every second)."""
    client = km.client()
    client.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=False)
    try:
        asked = {client.kernel_info()}
        deadline = time.monotonic() + timeout
        next_ask = time.monotonic() + 1.0
        while True:
            try:
                msg = await client.get_shell_msg(timeout=0.25)
            except queue.Empty:
                now = time.monotonic()
                if now > deadline:
                    raise TimeoutError(f"no kernel_info reply within {timeout:g} s") from None
                if now > next_ask:
                    asked.add(client.kernel_info())
                    next_ask = now + 1.0
                continue
            if msg["parent_header"].get("msg_id") in asked:
                return time.perf_counter()
    finally:
        client.stop_channels()


async def _settle(cluster: Any) -> None:
    """Waits until the last kernel is gone (no pod, no process), so it takes no CPU from the next."""
    deadline = time.monotonic() + 30
    while kernel_pods(cluster) or cluster.running_processes():
        if time.monotonic() > deadline:
            raise TimeoutError("the previous kernel pod did not go away within 30 s")
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)


async def _launch(kind: str, config: Any, cluster: Any, clock: PodClock) -> dict[str, float]:
    from jupyter_client.manager import AsyncKernelManager

    km = AsyncKernelManager(kernel_name=SPEC if kind == "vgpu" else LOCAL_SPEC, config=config)
    kernel_id = str(uuid.uuid4())
    requests_before = len(cluster.requests)
    connections_before = cluster.bench_connections.accepted
    # the local kernel's output (a warning about TCP without encryption) would clutter the table
    quiet = {} if kind == "vgpu" else {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    called = time.perf_counter()
    try:
        await km.start_kernel(kernel_id=kernel_id, **quiet)
        returned = time.perf_counter()
        if kind == "local":
            clock.knocker.knock(kernel_id, km.ip, km.shell_port)
        requests = [r for r in cluster.requests[requests_before:] if not r.watch]
        connections = cluster.bench_connections.accepted - connections_before
        replied = await first_kernel_info_reply(km)
        listening = clock.knocker.wait(kernel_id)
        if kind == "vgpu":  # the kubelet's own probe, once a second: how much later it would have said Ready
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: wait_until(lambda: clock.ready.get(kernel_id), 5.0, 0.01, "the pod's Ready condition"))
    finally:
        if km.has_kernel:
            await km.shutdown_kernel(now=True)
    out = {"total": replied - called, "start_kernel": returned - called, "reply_after_return": replied - returned,
           "listening": listening - called}
    if kind == "vgpu":
        created, running, ready = clock.created[kernel_id], clock.running[kernel_id], clock.ready[kernel_id]
        out.update(
            before_create=created - called,  # provisioner: pre_launch, Secret create, Pod create request
            to_running=running - created,  # the cluster: scheduling, the kubelet's volumes, the process spawned
            to_listen=listening - running,  # the kernel process: Python, the entrypoint, ipykernel binding its ports
            after_listen=returned - listening,  # the provisioner's knock, the watch, jupyter_client's return
            ready_after_return=ready - returned,  # what waiting for the kubelet's readiness probe would have cost
            api_requests=len(requests),
            tcp_connections=connections,
        )
        out["overhead"] = out["before_create"] + out["after_listen"]
    await _settle(cluster)
    return out


async def _run(n: int, cluster: Any, section: Section) -> None:
    from traitlets.config import Config

    config = Config()
    config.VGPUProvisioner.cluster = "kubernetes"
    config.VGPUProvisioner.namespace = NAMESPACE
    config.VGPUProvisioner.kubeconfig = cluster.kubeconfig_path
    config.VGPUProvisioner.launch_timeout = 120.0
    config.VGPUProvisioner.user = "bench"
    knocker = Knocker()
    clock = PodClock(cluster, knocker)
    try:
        # warm-up: the first vGPU launch also starts the shared watches (lists + watches)
        cold = await _launch("vgpu", config, cluster, clock)
        await _launch("local", config, cluster, clock)
        runs: dict[str, list[dict[str, float]]] = {"vgpu": [], "local": []}
        for i in range(n):
            order = ("vgpu", "local") if i % 2 == 0 else ("local", "vgpu")
            for kind in order:
                runs[kind].append(await _launch(kind, config, cluster, clock))
    finally:
        clock.close()
        knocker.close()

    def ms(kind: str, key: str) -> dict[str, float]:
        return summary([r[key] for r in runs[kind]], 1000.0)

    vgpu, local = ms("vgpu", "total"), ms("local", "total")
    overhead = ms("vgpu", "overhead")
    ratio = vgpu["median"] / local["median"]
    pairwise = sorted(a["total"] / b["total"] for a, b in zip(runs["vgpu"], runs["local"], strict=True))
    requests = sorted({r["api_requests"] for r in runs["vgpu"]})
    section.data.update({
        "launches_each": n,
        "probe_period_s": 1,
        "vgpu_ms": vgpu,
        "local_ms": local,
        "ratio_vgpu_over_local": round(ratio, 3),
        "ratio_p95": round(vgpu["p95"] / local["p95"], 3),
        "ratio_pairwise_median": round(pairwise[len(pairwise) // 2], 3),
        "overhead_ms": overhead,
        "overhead_before_create_ms": ms("vgpu", "before_create"),
        "overhead_after_listen_ms": ms("vgpu", "after_listen"),
        "pod_create_to_running_ms": ms("vgpu", "to_running"),
        "pod_running_to_listening_ms": ms("vgpu", "to_listen"),
        "pod_ready_after_return_ms": ms("vgpu", "ready_after_return"),
        "vgpu_listening_ms": ms("vgpu", "listening"),
        "local_listening_ms": ms("local", "listening"),
        "vgpu_start_kernel_ms": ms("vgpu", "start_kernel"),
        "vgpu_reply_after_return_ms": ms("vgpu", "reply_after_return"),
        "local_start_kernel_ms": ms("local", "start_kernel"),
        "local_reply_after_return_ms": ms("local", "reply_after_return"),
        "api_requests_per_launch": max(requests),
        "tcp_connections_per_launch": summary([r["tcp_connections"] for r in runs["vgpu"]]),
        "cold_first_vgpu_launch_ms": round(cold["total"] * 1000, 1),
        "cold_first_vgpu_overhead_ms": round(cold["overhead"] * 1000, 1),
    })
    data = section.data
    section.row("vGPU kernel: start_kernel to kernel_info reply",
                f"median {fmt_ms(vgpu['median'])}, p95 {fmt_ms(vgpu['p95'])} (n={n}; probes every 1 s)")
    section.row("local provisioner, same ipykernel",
                f"median {fmt_ms(local['median'])}, p95 {fmt_ms(local['p95'])} (n={n})")
    section.row("ratio vGPU / local (medians)", f"{ratio:.2f} (p95: {vgpu['p95'] / local['p95']:.2f})",
                f"<= {RATIO_TARGET}", ratio <= RATIO_TARGET)
    section.row("provisioner overhead (call to Pod create + listening to return)",
                f"median {fmt_ms(overhead['median'])}, p95 {fmt_ms(overhead['p95'])}",
                f"< {OVERHEAD_TARGET_MS:g} ms median", overhead["median"] < OVERHEAD_TARGET_MS)
    section.row("  of which: call to Pod create / listening to return",
                f"{fmt_ms(data['overhead_before_create_ms']['median'])} / "
                f"{fmt_ms(data['overhead_after_listen_ms']['median'])} (medians)")
    section.row("  pod create to running / running to listening",
                f"{fmt_ms(data['pod_create_to_running_ms']['median'])} / "
                f"{fmt_ms(data['pod_running_to_listening_ms']['median'])} (sim: kubelet; the kernel process)")
    section.row("  kernel listening, from the call: vGPU / local",
                f"{fmt_ms(data['vgpu_listening_ms']['median'])} / {fmt_ms(data['local_listening_ms']['median'])}")
    section.row("pod Ready (kubelet probe) after start_kernel returned",
                f"median {fmt_ms(data['pod_ready_after_return_ms']['median'])} (what the launch's own knock saves)")
    connections = data["tcp_connections_per_launch"]
    section.row("API requests per launch (new TCP connections)", f"{max(requests)} ({connections['mean']:.1f})")
    section.row("first vGPU launch in this process (starts the shared watches)", fmt_ms(cold["total"] * 1000))


def run(quick: bool = False) -> Section:
    from kubesim import SimNode

    section = Section("launch")
    n = 2 if quick else 15
    node = SimNode("gpu-1", allocatable={"virtaitech.com/gpu": 8, "cpu": "16", "memory": "64Gi"}, kubelet="process")
    with jupyter_dirs("launch"), sim_cluster([node]) as cluster:
        install_vgpu_spec(SPEC, 1, "4Gi")
        asyncio.run(_run(n, cluster, section))
    return section


def run_server(quick: bool = False) -> Section:
    """The first vGPU launch in a fresh ``jupyter server`` process against the later ones: POST
    /orion/api/kernels until its 201 (the kernel listening), each kernel deleted before the next;
    each launch cut into the same parts as above, the server's own work being the first and last."""
    from kubesim import SimNode

    from .server import JupyterServer

    section = Section("launch_server")
    later = 3 if quick else 10
    node = SimNode("gpu-1", allocatable={"virtaitech.com/gpu": 8, "cpu": "16", "memory": "64Gi"}, kubelet="process")
    runs: list[dict[str, float]] = []
    with jupyter_dirs("launch-server") as dirs, sim_cluster([node]) as cluster:
        install_vgpu_spec(SPEC, 1, "4Gi")
        knocker = Knocker()
        clock = PodClock(cluster, knocker)
        try:
            with JupyterServer(cluster, dirs, "launch_server") as server:
                for _ in range(1 + later):
                    called = time.perf_counter()
                    status, body, _ = server.client.request("POST", "/orion/api/kernels", {"spec": SPEC})
                    returned = time.perf_counter()
                    if status != 201:
                        raise RuntimeError(f"POST /orion/api/kernels: {status} {body}\n{server.log_tail()}")
                    kernel_id = body["id"]
                    listening = knocker.wait(kernel_id)
                    created, running = clock.created[kernel_id], clock.running[kernel_id]
                    runs.append({"total": returned - called, "server_before_create": created - called,
                                 "to_running": running - created, "to_listen": listening - running,
                                 "server_after_listen": returned - listening})
                    server.client.request("DELETE", f"/api/kernels/{kernel_id}")
                    wait_until(lambda: not kernel_pods(cluster) and not cluster.running_processes(), 30, 0.02,
                               "the kernel pod gone")
                    time.sleep(0.3)
        finally:
            clock.close()
            knocker.close()
    first = {k: round(v * 1000, 1) for k, v in runs[0].items()}
    rest = {k: summary([r[k] for r in runs[1:]], 1000.0) for k in runs[0]}
    ratio = first["total"] / rest["total"]["median"]
    section.data.update({"first_ms": first, "later_ms": rest, "first_over_later": round(ratio, 3),
                         "later_launches": later})
    section.row("first launch in a fresh server (POST /orion/api/kernels to 201)", fmt_ms(first["total"]))
    section.row("later launches", f"median {fmt_ms(rest['total']['median'])}, p95 {fmt_ms(rest['total']['p95'])} "
                                  f"(n={later})")
    section.row("first / later (median)", f"{ratio:.2f}", f"<= {FIRST_LAUNCH_TARGET}", ratio <= FIRST_LAUNCH_TARGET)
    parts = ("server_before_create", "to_running", "to_listen", "server_after_listen")
    section.row("  first: server to Pod create / running / listening / server to 201",
                " / ".join(fmt_ms(first[k]) for k in parts))
    section.row("  later (medians), the same parts", " / ".join(fmt_ms(rest[k]["median"]) for k in parts))
    return section
