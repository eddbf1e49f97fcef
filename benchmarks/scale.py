"""scale: the server extension's views on a large shared cluster: thousands of kernel pods and many
more pods of other workloads, on hundreds of nodes.

The simulated cluster gets K kernel pods (built by ``build_kernel_manifests`` for many users, so
labels and annotations are the product's own) and F pods of other teams (Deployment-like, in their
own namespaces, most holding GPUs: what the pool's cluster-wide watch counts) on M nodes whose
kubelet is the fake one (pods are Running and Ready at once, no process); pods are created bound to
their node (the scheduler is not what is measured). A real ``jupyter server`` (orion_jupyter
extension) watches them; its user alice also has a few kernels of her own. Reported:

* p50/p99 latency of GET /orion/api/allocations, /pool, /specs (alice) and /class (an
  instructor: every pod of the class), sequential requests on one keep-alive connection;
* Kubernetes API requests per HTTP request during those loops (the simulated API server's log:
  every non-watch request counts; the views must read the watch caches only);
* the server's resident memory for its watch caches (its kernel pods, every other pod holding
  extended resources, events, nodes): RSS once the caches hold every pod and node, minus RSS
  before any pod or node existed (the server up, its endpoints warmed); and, as a cross-check
  without allocator slack, the deep size (sys.getsizeof over every dict, list and string, each
  once) of the caches of a KubeCluster in this process that watched the same seeding.
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
    sim_cluster,
    summary,
    wait_until,
)
from .server import JupyterServer

SPEC = "orion-bench-1x4gi"
VGPU = "virtaitech.com/gpu"
P50_TARGET_MS = 5.0
MEMORY_TARGET_MB = 100.0
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


def _foreign_pod(i: int) -> tuple[str, dict]:
    """Pod number i of another team: (namespace, body). A quarter run on CPUs only (not counted by the
    pool), the rest hold one GPU, two vGPUs, or a GPU with HAMi memory."""
    team = f"team-{i % 40:02d}"
    app = f"svc-{i % 97}"
    kind = i % 4
    limits: dict[str, str] = {"cpu": "2", "memory": "8Gi"}
    if kind == 1:
        limits["nvidia.com/gpu"] = "1"
    elif kind == 2:
        limits[VGPU] = "2"
    elif kind == 3:
        limits.update({"nvidia.com/gpu": "1", "nvidia.com/gpumem": "20000"})
    body = {
        "metadata": {
            "name": f"{app}-7d9f8c6b5-{i:05d}", "labels": {"app": app, "pod-template-hash": "7d9f8c6b5", "team": team},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2024-05-01T10:00:00Z"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"{app}-7d9f8c6b5",
                                 "uid": f"00000000-0000-4000-8000-{i % 97:012d}", "controller": True,
                                 "blockOwnerDeletion": True}],
        },
        "spec": {
            "restartPolicy": "Always",
            "containers": [{
                "name": "server", "image": f"registry.example.org/{team}/{app}:1.{i % 13}",
                "command": ["python", "-m", "serve"], "args": ["--port", "8080", "--workers", "4"],
                "env": [{"name": k, "value": f"{k.lower()}-{i}"} for k in ("MODEL", "STAGE", "REGION", "LOG_LEVEL")],
                "ports": [{"containerPort": 8080, "name": "http"}],
                "resources": {"limits": limits, "requests": dict(limits)},
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 10},
                "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
            }],
            "volumes": [{"name": "cache", "emptyDir": {}}],
        },
    }
    return team, body


def _foreign_vgpus(count: int) -> int:
    return sum(2 for i in range(count) if i % 4 == 2)


def _pool_allocated(server: JupyterServer) -> tuple[int, int]:
    status, pool, _ = server.client.request("GET", "/orion/api/pool")
    if status != 200:
        return -1, -1
    return len(pool["nodes"]), pool["totals"].get(VGPU, {}).get("allocated", 0)


def _seed(cluster: Any, server: JupyterServer, n_nodes: int, n_pods: int, n_foreign: int, section: Section) -> None:
    started = time.perf_counter()
    for node in _nodes(n_nodes):
        cluster.add_node(node)
    kernels = foreign = 0
    for i in range(n_pods + n_foreign):  # kernels and other workloads arrive mixed
        if kernels < n_pods and (foreign >= n_foreign or kernels * (n_pods + n_foreign) <= i * n_pods):
            namespace, body = NAMESPACE, _pod(kernels)
            kernels += 1
        else:
            namespace, body = _foreign_pod(foreign)
            foreign += 1
        body["spec"]["nodeName"] = f"gpu-{i % n_nodes:03d}"
        cluster.create_object("pods", namespace, body)
    created = time.perf_counter()

    def all_running() -> bool:
        pods = cluster.store.list("pods")[0]  # the store's own objects: no copies of 10,000 pods every check
        return len(pods) == n_pods + n_foreign and all((p.get("status") or {}).get("phase") == "Running"
                                                      for p in pods)

    wait_until(all_running, 600, 0.5, "every seeded pod Running")
    running = time.perf_counter()
    want = (n_nodes, _expected_vgpus(n_pods) + _foreign_vgpus(n_foreign))
    wait_until(lambda: _pool_allocated(server) == want, 600, 0.5, "the server's cache holding every pod and node")
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
        self.kube = KubeCluster(self.api, NAMESPACE, watch_nodes=True, watch_others=True)
        self.kube.start(sync_timeout=60)

    def wait_for(self, pods: int, others: int, nodes: int, timeout: float = 600) -> None:
        def running(watch: Any) -> int:
            return sum(1 for p in watch.items() if (p.get("status") or {}).get("phase") == "Running")

        wait_until(lambda: running(self.kube.pods) == pods and running(self.kube.others) == others
                   and len(self.kube.nodes or []) == nodes, timeout, 0.5, "the in-process cache holding every pod")

    def measure(self) -> dict[str, Any]:
        watches = {"pods": self.kube.pods, "others": self.kube.others, "events": self.kube.events,
                   "nodes": self.kube.nodes}
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
    n_pods, n_foreign, n_nodes, n_requests = (200, 300, 10, 50) if quick else (2000, 8000, 500, 200)
    # what the others' watch keeps: foreign pods holding extended resources (this namespace's kernel pods are
    # the pod watch's alone)
    n_counted = sum(1 for i in range(n_foreign) if i % 4)
    section.data.update({"pods": n_pods, "foreign_pods": n_foreign, "nodes": n_nodes,
                         "requests_per_endpoint": n_requests})
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
                _seed(cluster, server, n_nodes, n_pods, n_foreign, section)
                cache.wait_for(n_pods, n_counted, n_nodes)
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
        "watch_cache_kb_per_pod": round(cache_size["bytes"] / 1e3 / max(n_pods + n_foreign, 1), 1),
    })
    lat = section.data["latency_ms"]
    total = n_pods + n_foreign
    for endpoint, _user in ENDPOINTS:
        stats = lat[endpoint]
        target, passed = "", None
        if endpoint in ("allocations", "pool"):
            target, passed = f"p50 <= {P50_TARGET_MS:g} ms", stats["median"] <= P50_TARGET_MS
        label = {"allocations": f"GET allocations (alice, {stats['items']} own kernels)",
                 "pool": f"GET pool ({stats['items']} nodes)",
                 "specs": "GET specs (1 spec)",
                 "class": f"GET class (instructor, {stats['items']} pods listed)"}[endpoint]
        section.row(f"{label}, {total:,} pods ({n_foreign:,} others')",
                    f"p50 {fmt_ms(stats['median'])}, p99 {fmt_ms(stats['p99'])} (n={stats['n']})", target, passed)
    per_call = section.data["api_requests_per_call"]
    section.row("Kubernetes API requests per HTTP request", f"{per_call:g} ({section.data['http_requests']} requests)",
                "0", per_call == 0)
    section.row(f"watch caches, server RSS delta ({total:,} pods, {n_nodes} nodes)", f"{delta_mb:.1f} MB",
                f"<= {MEMORY_TARGET_MB:g} MB", delta_mb <= MEMORY_TARGET_MB)
    objects = cache_size["objects"]
    by_watch = section.data["watch_cache_deep_size_by_watch_mb"]
    section.row("  cross-check: deep size of the caches",
                f"{cache_mb:.1f} MB ({objects['pods']:,} kernel pods {by_watch['pods']:.1f} MB, {objects['others']:,} "
                f"counted pods {by_watch['others']:.1f} MB, {objects['nodes']} nodes {by_watch['nodes']:.1f} MB, "
                f"{objects['events']} events)")
    section.row("  seeding: pods Running / server cache synced",
                f"{section.data['seed_running_s']:.1f} s / {section.data['server_cache_synced_s']:.1f} s")
    return section
