"""scale: the server extension's views with thousands of kernel pods and a hundred nodes.

The simulated cluster gets N kernel pods (built by ``build_kernel_manifests`` for many users, so
labels and annotations are the product's own) on M nodes whose kubelet is the fake one (pods are
Running and Ready at once, no process). A real ``jupyter server`` (orion_jupyter extension) watches
them; its user alice also has a few kernels of her own. Reported:

* p50/p99 latency of GET /orion/api/allocations, /pool, /specs (alice) and /class (an
  instructor: every pod of the class), sequential requests on one keep-alive connection;
* Kubernetes API requests per HTTP request during those loops (the simulated API server's log:
  every non-watch request counts; the views must read the watch caches only);
* the server's resident memory for its watch cache: RSS once the cache holds every pod and node,
  minus RSS before any pod or node existed (the server up, its endpoints warmed); and, as a
  cross-check without allocator slack, the deep size (sys.getsizeof over every dict, list and
  string, each once) of the caches of a KubeCluster in this process that watched the same
  seeding.
"""

from __future__ import annotations

import secrets
import sys
import time
import uuid
from typing import Any

from .common import (
    NAMESPACE,
    Section,
    concurrently,
    fmt_ms,
    install_vgpu_spec,
    jupyter_dirs,
    kernel_pods,
    sim_cluster,
    summary,
    wait_until,
)
from .server import JupyterServer

SPEC = "orion-bench-1x4gi"
VGPU = "virtaitech.com/gpu"
P50_TARGET_MS = 5.0
MEMORY_TARGET_MB = 50.0
OWN_KERNELS = 4
ENDPOINTS = (("allocations", "alice"), ("pool", "alice"), ("specs", "alice"), ("class", "teacher"))
MEMORIES = ("2Gi", "4Gi", "4Gi", "8Gi")


def _nodes(count: int) -> list[Any]:
    from kubesim import SimNode

    return [SimNode(f"gpu-{i:03d}", kubelet="fake", labels={"gpu": "a100"}, allocatable={
        VGPU: 64, "nvidia.com/gpu": 8, "nvidia.com/gpumem": 81920, "cpu": "128", "memory": "1024Gi", "pods": 110,
    }) for i in range(count)]


def _pod(i: int) -> dict:
    """Kernel pod number i, as VGPUProvisioner would build it for one of many students."""
    from orion_jupyter.backends import get_backend
    from orion_jupyter.k8s.manifests import KernelPodOptions, build_kernel_manifests
    from orion_jupyter.vgpu import VGPURequest

    ports = [40000 + (5 * i + k) % 20000 for k in range(5)]
    connection = {"transport": "tcp", "ip": "0.0.0.0", "key": secrets.token_hex(16), "signature_scheme": "hmac-sha256",
                  "kernel_name": SPEC, "shell_port": ports[0], "iopub_port": ports[1], "stdin_port": ports[2],
                  "control_port": ports[3], "hb_port": ports[4]}
    manifests = build_kernel_manifests(KernelPodOptions(
        kernel_id=str(uuid.uuid4()),
        user=f"student-{i % 500:03d}",
        request=VGPURequest.parse(2 if i % 10 == 0 else 1, MEMORIES[i % len(MEMORIES)]),
        backend=get_backend("orion"),
        image="quay.io/jupyter/pytorch-notebook:cuda12-python-3.11",
        namespace=NAMESPACE,
        connection_info=connection,
        name_suffix=secrets.token_hex(3),
        kernel_spec_name=SPEC,
        course=f"ai{101 + i % 3}",
        extra_env={"JPY_SESSION_NAME": f"lab{i % 7}.ipynb"},
    ))
    return manifests.pod


def _expected_vgpus(pods: int) -> int:
    return sum(2 if i % 10 == 0 else 1 for i in range(pods))


def _pool_allocated(server: JupyterServer) -> tuple[int, int]:
    status, pool, _ = server.client.request("GET", "/orion/api/pool")
    if status != 200:
        return -1, -1
    return len(pool["nodes"]), pool["totals"].get(VGPU, {}).get("allocated", 0)


def _seed(cluster: Any, server: JupyterServer, n_nodes: int, n_pods: int, section: Section) -> None:
    started = time.perf_counter()
    for node in _nodes(n_nodes):
        cluster.add_node(node)
    for i in range(n_pods):
        cluster.create_object("pods", NAMESPACE, _pod(i))
    created = time.perf_counter()

    def all_running() -> bool:
        pods = kernel_pods(cluster)
        return len(pods) == n_pods and all((p.get("status") or {}).get("phase") == "Running" for p in pods)

    wait_until(all_running, 300, 0.5, "every seeded pod Running")
    running = time.perf_counter()
    want = (n_nodes, _expected_vgpus(n_pods))
    wait_until(lambda: _pool_allocated(server) == want, 300, 0.5, "the server's cache holding every pod and node")
    synced = time.perf_counter()
    section.data.update({
        "seed_create_s": round(created - started, 2),
        "seed_running_s": round(running - started, 2),
        "server_cache_synced_s": round(synced - started, 2),
    })


def deep_size(root: Any) -> int:
    """Bytes of ``root`` and everything it holds (dicts, lists, strings...), each object once."""
    seen: set[int] = set()
    stack, total = [root], 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
    return total


class InProcessCache:
    """A KubeCluster in this process, started with the server, so its caches fill the same way
    (from watch events); their deep size is the watch cache without allocator slack."""

    def __init__(self, cluster: Any):
        from orion_jupyter.k8s.cluster import KubeCluster

        self.api = cluster.api_client()
        self.kube = KubeCluster(self.api, NAMESPACE, watch_nodes=True)
        self.kube.start(sync_timeout=60)

    def wait_for(self, pods: int, nodes: int, timeout: float = 300) -> None:
        def running() -> int:
            return sum(1 for p in self.kube.pods.items() if (p.get("status") or {}).get("phase") == "Running")

        wait_until(lambda: running() == pods and len(self.kube.nodes or []) == nodes, timeout, 0.2,
                   "the in-process cache holding every pod")

    def measure(self) -> dict[str, Any]:
        watches = {"pods": self.kube.pods, "events": self.kube.events, "nodes": self.kube.nodes}
        sizes = {name: deep_size(watch.items()) - sys.getsizeof(watch.items()) for name, watch in watches.items()}
        return {"bytes": sum(sizes.values()), "bytes_by_watch": sizes,
                "objects": {name: len(watch) for name, watch in watches.items()}}

    def close(self) -> None:
        self.kube.close()
        self.api.close()


def _latencies(server: JupyterServer, cluster: Any, requests: int, section: Section) -> None:
    mark = len(cluster.requests)
    total = 0
    results = {}
    for endpoint, user in ENDPOINTS:
        path = f"/orion/api/{endpoint}"
        for _ in range(10):  # warm-up
            server.client.request("GET", path, user=user)
        seconds = []
        size = 0
        for _ in range(requests):
            status, body, elapsed = server.client.request("GET", path, user=user)
            if status != 200:
                raise RuntimeError(f"GET {path} as {user}: {status} {body}")
            seconds.append(elapsed)
        total += requests + 10
        if endpoint == "class" or endpoint == "allocations":
            size = len(body["kernels"])
        elif endpoint == "pool":
            size = len(body["nodes"])
        results[endpoint] = {**summary(seconds, 1000.0), "items": size}
    api_requests = [r for r in cluster.requests[mark:] if not r.watch]
    section.data["latency_ms"] = results
    section.data["http_requests"] = total
    section.data["api_requests_during_loop"] = len(api_requests)
    section.data["api_requests_per_call"] = len(api_requests) / total


def run(quick: bool = False) -> Section:
    section = Section("scale")
    n_pods, n_nodes, n_requests = (200, 10, 50) if quick else (2000, 100, 200)
    section.data.update({"pods": n_pods, "nodes": n_nodes, "requests_per_endpoint": n_requests})
    with jupyter_dirs("scale") as dirs, sim_cluster([]) as cluster:
        install_vgpu_spec(SPEC, 1, "4Gi")
        with JupyterServer(cluster, dirs, "scale") as server:
            for endpoint, user in ENDPOINTS:  # warm the code paths before the baseline
                for _ in range(5):
                    server.client.request("GET", f"/orion/api/{endpoint}", user=user)
            time.sleep(1.0)
            rss_before = server.rss()
            cache = InProcessCache(cluster)
            try:
                _seed(cluster, server, n_nodes, n_pods, section)
                cache.wait_for(n_pods, n_nodes)
                cache_size = cache.measure()
            finally:
                cache.close()
            status, body, _ = server.client.request("GET", "/orion/api/class", user="teacher")
            seen = len(body["kernels"]) if status == 200 else -1
            time.sleep(1.0)
            rss_after = server.rss()
            own = []
            for _ in range(OWN_KERNELS):
                status, body, _ = server.client.request("POST", "/orion/api/kernels", {"spec": SPEC}, user="alice")
                if status != 201:
                    raise RuntimeError(f"starting alice's kernel: {status} {body}")
                own.append(body["id"])
            _latencies(server, cluster, n_requests, section)
            concurrently(len(own), lambda i: server.client.request("DELETE", f"/api/kernels/{own[i]}"))
            rss_end = server.rss()

    delta_mb = (rss_after - rss_before) / 1e6
    cache_mb = cache_size["bytes"] / 1e6
    section.data.update({
        "class_view_pods_seen": seen,
        "server_rss_before_mb": round(rss_before / 1e6, 1),
        "server_rss_synced_mb": round(rss_after / 1e6, 1),
        "server_rss_end_mb": round(rss_end / 1e6, 1),
        "watch_cache_rss_mb": round(delta_mb, 1),
        "watch_cache_deep_size_mb": round(cache_mb, 1),
        "watch_cache_deep_size_by_watch_mb": {k: round(v / 1e6, 2) for k, v in cache_size["bytes_by_watch"].items()},
        "watch_cache_objects": cache_size["objects"],
        "watch_cache_kb_per_pod": round(cache_size["bytes"] / 1e3 / max(n_pods, 1), 1),
    })
    lat = section.data["latency_ms"]
    for endpoint, _user in ENDPOINTS:
        stats = lat[endpoint]
        target, passed = "", None
        if endpoint in ("allocations", "pool"):
            target, passed = f"p50 < {P50_TARGET_MS:g} ms", stats["median"] < P50_TARGET_MS
        label = {"allocations": f"GET allocations (alice, {stats['items']} own kernels)",
                 "pool": f"GET pool ({stats['items']} nodes)",
                 "specs": "GET specs (1 spec)",
                 "class": f"GET class (instructor, {stats['items']} pods listed)"}[endpoint]
        section.row(f"{label}, {n_pods} pods", f"p50 {fmt_ms(stats['median'])}, p99 {fmt_ms(stats['p99'])} "
                                               f"(n={stats['n']})", target, passed)
    per_call = section.data["api_requests_per_call"]
    section.row("Kubernetes API requests per HTTP request", f"{per_call:g} ({section.data['http_requests']} requests)",
                "0", per_call == 0)
    section.row(f"watch cache, server RSS delta ({n_pods} pods, {n_nodes} nodes)", f"{delta_mb:.1f} MB",
                f"< {MEMORY_TARGET_MB:g} MB", delta_mb < MEMORY_TARGET_MB)
    objects = cache_size["objects"]
    section.row("  cross-check: deep size of the caches",
                f"{cache_mb:.1f} MB ({section.data['watch_cache_kb_per_pod']} kB/pod; "
                f"{objects['pods']} pods, {objects['events']} events, {objects['nodes']} nodes)")
    section.row("  seeding: pods Running / server cache synced",
                f"{section.data['seed_running_s']:.1f} s / {section.data['server_cache_synced_s']:.1f} s")
    return section
