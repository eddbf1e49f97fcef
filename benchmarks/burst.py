"""burst: many vGPU kernels asked for at once through a real Jupyter server.

A ``jupyter server`` subprocess (orion_jupyter extension, VGPUProvisioner on the simulated
cluster) gets N concurrent ``POST /orion/api/kernels``; one node has room for all of them. The
node's kubelet is the process one: every kernel is a real ipykernel process on this machine, so
"ready" means what it means for a student (the kernel listens). Reported:

* the time until every POST has answered 201;
* Kubernetes API requests per launch (the simulated API server's own log: non-watch requests
  during the burst / N) and the watches opened during the burst (the shared ones are opened
  once, when the server starts);
* the server's event-loop latency: GET /api/status every 20 ms from a separate process during
  the burst, against the same measured while the server is idle;
* then every kernel is shut down through Jupyter's own API, and the cluster must hold no kernel
  pod and no kernel Secret.

One kernel is started and stopped first (warm-up), so one-time imports are not in the burst.
"""

from __future__ import annotations

import collections
import time
from typing import Any

from .common import (
    NAMESPACE,
    Section,
    concurrently,
    fmt_ms,
    fmt_s,
    install_vgpu_spec,
    jupyter_dirs,
    kernel_pods,
    sim_cluster,
    summary,
    wait_until,
)
from .server import JupyterServer, Poller

SPEC = "orion-bench-1x4gi"
REQUESTS_TARGET = 3.0
IDLE_SECONDS = 3.0


def _kernel_secrets(cluster: Any) -> list[dict]:
    return [s for s in cluster.objects("secrets", NAMESPACE)
            if (s["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by") == "orion-jupyter"]


def _burst(server: JupyterServer, cluster: Any, n: int, section: Section, idle_seconds: float) -> None:
    client = server.client
    # warm-up: one launch and shutdown, then the idle latency
    status, body, _ = client.request("POST", "/orion/api/kernels", {"spec": SPEC})
    if status != 201:
        raise RuntimeError(f"warm-up launch failed: {status} {body}")
    client.request("DELETE", f"/api/kernels/{body['id']}")
    wait_until(lambda: not kernel_pods(cluster) and not cluster.running_processes(), 60, what="warm-up kernel gone")
    time.sleep(1.0)
    poller = Poller(server)
    try:
        time.sleep(idle_seconds)
    finally:
        idle = poller.stop()

    requests_mark, connections_mark = len(cluster.requests), cluster.bench_connections.accepted
    poller = Poller(server)
    cpu_before = server.cpu()
    done: list[float] = [0.0] * n
    started = time.perf_counter()

    def launch(i: int) -> tuple[int, Any]:
        status, body, _ = client.request("POST", "/orion/api/kernels", {"spec": SPEC}, user="alice")
        done[i] = time.perf_counter()
        return status, body

    try:
        results = concurrently(n, launch)
    finally:
        during = poller.stop()
    all_ready = max(done) - started
    server_cpu = server.cpu() - cpu_before
    burst_requests = cluster.requests[requests_mark:]
    connections = cluster.bench_connections.accepted - connections_mark
    kernel_ids = [body["id"] for status, body in results if status == 201]
    failures = [(status, (body or {}).get("message")) for status, body in results if status != 201]

    non_watch = [r for r in burst_requests if not r.watch]
    watches = [r for r in burst_requests if r.watch]
    by_kind = collections.Counter(f"{r.verb} {r.resource}" for r in non_watch)
    per_launch = len(non_watch) / n
    idle_ms, during_ms = summary(idle["latencies"], 1000.0), summary(during["latencies"], 1000.0)
    ready_ms = summary([t - started for t in done], 1000.0)
    section.data.update({
        "kernels": n,
        "created_201": len(kernel_ids),
        "failures": failures,
        "all_ready_s": round(all_ready, 3),
        "ready_ms": ready_ms,
        "api_requests_per_launch": round(per_launch, 3),
        "api_requests_during_burst": dict(sorted(by_kind.items())),
        "watches_opened_during_burst": len(watches),
        "watches_open": sum(1 for r in cluster.requests if r.watch),
        "tcp_connections_per_launch": round(connections / n, 3),
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_ms_per_launch": round(server_cpu * 1000 / n, 1),
        "status_idle_ms": idle_ms,
        "status_during_burst_ms": during_ms,
        "status_errors_idle": idle["errors"],
        "status_errors_during_burst": during["errors"],
        "status_first_error_during_burst": during["first_error"],
    })
    section.row(f"{n} kernels: all 201 (ready)", f"{fmt_s(all_ready)} ({len(kernel_ids)}/{n} created)",
                f"{n}/{n} created", len(kernel_ids) == n, check=True)
    section.row("  per kernel, from the burst's start", f"median {fmt_s(ready_ms['median'] / 1000)}, "
                                                        f"p95 {fmt_s(ready_ms['p95'] / 1000)}")
    section.row("API requests per launch (+ watches opened)",
                f"{per_launch:.2f} (+{len(watches)}; {section.data['watches_open']} shared watches in all)",
                f"<= {REQUESTS_TARGET:g} + shared watch", per_launch <= REQUESTS_TARGET and not watches,
                check=section.name != "burst")
    section.row("  of which", ", ".join(f"{k}: {v}" for k, v in sorted(by_kind.items())) or "-")
    section.row("  new TCP connections to the API per launch", f"{connections / n:.2f}")
    section.row("server CPU per launch (user + system)", f"{server_cpu * 1000 / n:.1f} ms ({server_cpu:.2f} s in all)")
    section.row("event loop: GET /api/status idle", f"p50 {fmt_ms(idle_ms['median'])}, p99 {fmt_ms(idle_ms['p99'])} "
                                                     f"(n={idle_ms['n']})")
    section.row("event loop: GET /api/status during the burst",
                f"p50 {fmt_ms(during_ms['median'])}, p99 {fmt_ms(during_ms['p99'])}, max {fmt_ms(during_ms['max'])} "
                f"(n={during_ms['n']})")
    failed = sum(during["errors"].values())
    section.row("  GET /api/status answers other than 200 during the burst",
                f"{failed} of {during_ms['n']}" + (f" ({', '.join(f'{k}: {v}' for k, v in during['errors'].items())})"
                                                   if failed else ""), "0", failed == 0, check=True)


def _shutdown(server: JupyterServer, cluster: Any, section: Section) -> None:
    """Every kernel of the server (also after a failed burst) through DELETE /api/kernels/ID."""
    status, kernels, _ = server.client.request("GET", "/api/kernels")
    kernel_ids = [k["id"] for k in kernels or []] if status == 200 else []
    mark = len(cluster.requests)
    started = time.perf_counter()
    if kernel_ids:
        codes = concurrently(len(kernel_ids),
                             lambda i: server.client.request("DELETE", f"/api/kernels/{kernel_ids[i]}")[0])
    else:
        codes = []
    requests = [r for r in cluster.requests[mark:] if not r.watch]
    try:
        wait_until(lambda: not kernel_pods(cluster) and not _kernel_secrets(cluster), 120, what="no kernel pod left")
        left_pods, left_secrets = 0, 0
    except TimeoutError:
        left_pods, left_secrets = len(kernel_pods(cluster)), len(_kernel_secrets(cluster))
    seconds = time.perf_counter() - started
    section.data.update({
        "shutdown_s": round(seconds, 3),
        "shutdown_codes": dict(collections.Counter(codes)),
        "api_requests_per_shutdown": round(len(requests) / max(len(kernel_ids), 1), 3),
        "kernel_pods_left": left_pods,
        "kernel_secrets_left": left_secrets,
    })
    section.row("shut down through /api/kernels, then pods left",
                f"{fmt_s(seconds)}; {left_pods} pods, {left_secrets} Secrets left", "0 left",
                left_pods == 0 and left_secrets == 0, check=True)


def _run(name: str, kubelet: str, n: int, extra_config: dict | None = None) -> Section:
    from kubesim import SimNode

    section = Section(name)
    section.data["kubelet"] = kubelet
    node = SimNode("gpu-1", kubelet=kubelet, allocatable={
        "virtaitech.com/gpu": 64, "cpu": "256", "memory": "1024Gi", "pods": 110})
    with jupyter_dirs(name) as dirs, sim_cluster([node]) as cluster:
        install_vgpu_spec(SPEC, 1, "4Gi")
        with JupyterServer(cluster, dirs, name, extra_config=extra_config) as server:
            # On failure or Ctrl-C there is no graceful shutdown: the server is stopped, then the
            # simulated cluster, which kills every pod process.
            _burst(server, cluster, n, section, 1.0 if n < 10 else IDLE_SECONDS)
            _shutdown(server, cluster, section)
    return section


def run(quick: bool = False) -> Section:
    """The burst end to end: every kernel a real ipykernel process on this machine."""
    return _run("burst", "process", 5 if quick else 60)


def run_server_only(quick: bool = False) -> Section:
    """The same burst with the fake kubelet: pods are Ready at once and run nothing, so the time,
    CPU and event-loop latency are the server's and the API's own, not 60 ipykernels booting on
    this machine's cores. Nothing answers a shutdown request, so shutdown waits 1 s, then kills."""
    return _run("burst_server", "fake", 5 if quick else 60, extra_config={
        "KernelManager": {"shutdown_wait_time": 1.0}, "VGPUProvisioner": {"termination_grace_seconds": 0}})
