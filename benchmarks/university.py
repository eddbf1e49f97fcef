"""university: 1,000 students in 20 courses on 250 vGPUs through one broker (issue 22).

The broker runs as benchmarks/broker.py runs it (``BrokerProcess``, a subprocess; the stand-in hub
``FakeHub`` with each student in their course's hub group) on the simulated cluster with the fake
kubelet: 25 nodes of 10 vGPUs whose pods are Running and Ready at once and run nothing, so what is
measured is the broker (and the API server it talks to), not kernels booting. 20 courses of 50
students, each a quota of 12 or 13 vGPUs (250 in all) with its queue on. (``--quick``: 4 courses,
40 students, 10 vGPUs, 400 pods in the watch.)

1. **The burst.** Every student launches at once (``POST api/kernels``, 1 vGPU of 1Gi, their own
   token, all streams open together from one asyncio client in a thread of this process). 250 start,
   the others wait in their course's queue; each kernel is stopped (``DELETE api/kernels/{id}``)
   ``HOLD_SECONDS`` after its ready line, so the queues move until every student has had a kernel.
   Reported: every launch answered (its first line or refusal: time to it, p50/p99/max) and how it
   ended; the broker's CPU (user + system, /proc/PID/stat) from the burst's start until every kernel
   is gone, per launch, less what it uses idle at the same time (its timers and the GET metrics below, measured
   for a few seconds before the burst); the broker's event-loop lag from its own
   ``orion_jupyter_broker_loop_lag_seconds`` histogram (a timer due every 50 ms, how late it ran;
   p99 as the histogram's bucket bound), the target held against ``..._loop_busy_seconds`` (the same
   lateness less the time the loop's thread waited for a CPU: on this shared machine the simulated API
   server, the clients and the hub stand-in take the cores too) and, as a cross-check from outside,
   GET metrics every 100 ms from another process (response time p99; every 20 ms, as the other
   sections probe, the scrapes alone cost the broker ~1.5 ms per launch of CPU while the burst grows its metrics).
2. **20,000 pods in its watch.** Kernel pods of another 500 users (benchmarks.scale's, 1-2 vGPUs
   each, not the students') are created on 200 more nodes until the broker's pod watch holds 20,000;
   the broker's resident memory then (VmRSS) is the figure. Then 5 students per course launch at once
   and are stopped: the broker's CPU per launch with that many pods in its cache.

The machine is shared: the simulated API server, this process's client and the broker share its
cores, so the lag and the CPU figures are upper bounds of the broker's own.
"""

from __future__ import annotations

import asyncio
import collections
import http.client
import json
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from .broker import PREFIX, BrokerProcess, FakeHub, MetricsPoller, free_ports, launch_body, request
from .common import NAMESPACE, Section, fmt_ms, fmt_s, kernel_pods, rss_bytes, sim_cluster, summary, wait_until
from .scale import _pod as watch_pod

VGPU = "virtaitech.com/gpu"
NODE_VGPUS = 10
HOLD_SECONDS = 1.0  # a started kernel is stopped this long after its ready line
IDLE_SECONDS = 3.0
CONNECT_TIMEOUT = 300.0  # a thousand connections at once: the broker accepts them in turn
LAG_TARGET_MS = 50.0
CPU_TARGET_MS = 10.0
PROBE_SECONDS = 0.1  # the outside cross-check's GET metrics
MEMORY_TARGET_MB = 300.0
WATCH_NODE_PODS = 100  # pods per node of the watch's extra pods


def _courses(n_courses: int, vgpus: int) -> dict[str, int]:
    """Course name -> its vGPU quota, the pool shared out as evenly as whole vGPUs allow."""
    return {f"course-{i + 1:02d}": vgpus // n_courses + (1 if i < vgpus % n_courses else 0) for i in range(n_courses)}


# -- the students' side: every launch's stream at once, from one asyncio loop -----------------------------
class Students:
    """Launches, follows and stops the students' kernels from an asyncio loop in a thread of this process."""

    def __init__(self, port: int, hold: float):
        self.port = port
        self.hold = hold
        self.results: list[dict[str, Any]] = []

    def run(self, users: list[str], timeout: float) -> list[dict[str, Any]]:
        out: list[list[dict[str, Any]]] = []
        thread = threading.Thread(target=lambda: out.append(asyncio.run(self._all(users, timeout))), daemon=True,
                                  name="bench-university-students")
        thread.start()
        thread.join(timeout + 60)
        if not out:
            raise TimeoutError(f"the students' launches did not end within {timeout:g} s")
        return out[0]

    async def _all(self, users: list[str], timeout: float) -> list[dict[str, Any]]:
        from tornado.httpclient import AsyncHTTPClient

        client = AsyncHTTPClient(force_instance=True, max_clients=len(users) + 10)
        ports = free_ports(5)  # ports are the kernel's own (on its pod IP): the same five do for every launch
        started = time.perf_counter()
        try:
            return await asyncio.wait_for(asyncio.gather(*(self._one(client, user, launch_body(ports), started)
                                                           for user in users)), timeout)
        finally:
            client.close()

    async def _one(self, client: Any, user: str, body: dict[str, Any], started: float) -> dict[str, Any]:
        from tornado.httpclient import HTTPClientError, HTTPRequest

        result: dict[str, Any] = {"user": user, "kernel_id": body["kernel_id"], "outcome": "unanswered"}
        buffer = bytearray()

        def on_chunk(chunk: bytes) -> None:
            result.setdefault("first_s", time.perf_counter() - started)
            buffer.extend(chunk)
            while b"\n" in buffer:
                line, _, rest = bytes(buffer).partition(b"\n")
                buffer[:] = rest
                item = json.loads(line)
                if "queued" in item:
                    result["queued"] = True
                elif "ready" in item:
                    result.update(outcome="started", ready_s=time.perf_counter() - started)
                elif "error" in item:
                    result.update(outcome="failed", reason=item["error"].get("reason", ""),
                                  message=item["error"].get("message", ""))

        url = f"http://127.0.0.1:{self.port}{PREFIX}api/kernels"
        headers = {"Authorization": f"token tok-{user}", "Content-Type": "application/json"}
        try:
            await client.fetch(HTTPRequest(url, "POST", headers=headers, body=json.dumps(body), request_timeout=0,
                                           connect_timeout=CONNECT_TIMEOUT, streaming_callback=on_chunk))
        except OSError as err:  # never answered: counted as such
            result["message"] = f"{type(err).__name__}: {err}"
            return result
        except HTTPClientError as err:
            if err.response is None:
                result["message"] = str(err)
                return result
            result.setdefault("first_s", time.perf_counter() - started)
            try:
                reply = json.loads(err.response.body or b"{}")
            except ValueError:
                reply = {"message": (err.response.body or b"").decode(errors="replace")[:300]}
            result.update(outcome="refused", status=err.code, reason=reply.get("reason") or reply.get("field") or "",
                          message=reply.get("message") or str(err))
            return result
        if result["outcome"] == "started":
            await asyncio.sleep(self.hold)
            try:
                stop = await client.fetch(HTTPRequest(f"{url}/{body['kernel_id']}", "DELETE", headers=headers,
                                                      connect_timeout=CONNECT_TIMEOUT,
                                                      request_timeout=CONNECT_TIMEOUT), raise_error=False)
                result["stop_code"] = stop.code
            except OSError as err:
                result["stop_code"] = type(err).__name__
        return result


# -- what the broker says of itself --------------------------------------------------------------------
LAG_METRICS = ("orion_jupyter_broker_loop_lag_seconds", "orion_jupyter_broker_loop_busy_seconds")


def lag_buckets(port: int) -> dict[str, dict[float, float]]:
    """The broker's loop-lag histograms (lag, and lag less CPU waits): bucket bound (seconds) -> cumulative count."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", PREFIX + "metrics")  # from this machine: no token needed (c.Broker.metrics_allow)
        response = conn.getresponse()
        text = response.read().decode()
    finally:
        conn.close()
    if response.status != 200:
        raise RuntimeError(f"GET metrics answered {response.status}")
    out: dict[str, dict[float, float]] = {metric: {} for metric in LAG_METRICS}
    for match in re.finditer(r'^(\w+)_bucket{le="([^"]+)"} ([0-9.e+]+)$', text, re.MULTILINE):
        if match.group(1) in out:
            out[match.group(1)][float(match.group(2))] = float(match.group(3))
    return out


def lag_p(before: dict[float, float], after: dict[float, float], q: float) -> tuple[float | None, int]:
    """The bucket bound (ms) under which ``q`` of the samples between two readings fell (None: above the
    largest bound, or no samples), and how many samples."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0
    for bound, count in zip(bounds, counts, strict=True):
        if total and count >= q * total and bound != float("inf"):
            return bound * 1000, int(total)
    return None, int(total)


def _at_most(ms: float | None) -> str:
    return "above the largest bucket (5 s)" if ms is None else f"<= {ms:g} ms"


def _broker_pods(port: int, user: str) -> int:
    """vGPUs allocated on the pool as the broker's cache sees it (GET api/pool)."""
    status, body, _ = request(port, "GET", PREFIX + "api/pool", token=f"tok-{user}")
    return ((body or {}).get("totals") or {}).get(VGPU, {}).get("allocated", -1) if status == 200 else -1


def run_delay(pid: int) -> float:
    """Seconds the process's main thread (its event loop) has waited on a run queue: runnable, but no CPU."""
    try:
        return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


# -- the two parts ---------------------------------------------------------------------------------------
def _burst(broker: BrokerProcess, cluster: Any, students: list[str], section: Section) -> None:
    n = len(students)
    warm = Students(broker.port, 0.0).run([f"warmup-{i}" for i in range(3)], 60)  # imports, first connections
    if any(r["outcome"] != "started" for r in warm):
        raise RuntimeError(f"warm-up launches did not start: {warm}\n{broker.log_tail()}")
    wait_until(lambda: not kernel_pods(cluster), 60, what="warm-up kernels gone")
    poller = MetricsPoller(broker, PROBE_SECONDS)  # idle first: what the broker's timers and this measuring cost it
    idle_cpu, idle_started = broker.cpu(), time.perf_counter()
    time.sleep(IDLE_SECONDS)
    idle_rate = (broker.cpu() - idle_cpu) / (time.perf_counter() - idle_started)
    poller.stop()
    lag_before = lag_buckets(broker.port)
    poller = MetricsPoller(broker, PROBE_SECONDS)
    cpu_before, waited_before = broker.cpu(), run_delay(broker.proc.pid)
    started = time.perf_counter()
    try:
        results = Students(broker.port, HOLD_SECONDS).run(students, 600)
        wait_until(lambda: not kernel_pods(cluster), 120, what="every kernel pod gone")
    finally:
        outside = poller.stop()
    seconds = time.perf_counter() - started
    cpu = broker.cpu() - cpu_before
    waited = run_delay(broker.proc.pid) - waited_before
    net = max(cpu - idle_rate * seconds, 0.0)
    lag_after = lag_buckets(broker.port)
    lag, busy = LAG_METRICS
    lag99, samples = lag_p(lag_before[lag], lag_after[lag], 0.99)
    lag50, _ = lag_p(lag_before[lag], lag_after[lag], 0.50)
    busy99, _ = lag_p(lag_before[busy], lag_after[busy], 0.99)
    outcomes = collections.Counter(r["outcome"] for r in results)
    answered = [r for r in results if "first_s" in r]
    first_ms = summary([r["first_s"] for r in answered], 1000.0)
    queued = sum(1 for r in results if r.get("queued"))
    outside_ms = summary(outside["latencies"], 1000.0)
    samples_of = {f"{r['outcome']}: {r.get('reason')}": r.get("message", "") for r in results
                  if r["outcome"] != "started"}
    section.data.update({
        "students": n, "burst_s": round(seconds, 2), "outcomes": dict(outcomes), "queued": queued,
        "answered": len(answered), "first_answer_ms": first_ms,
        "stop_codes": dict(collections.Counter(str(r.get("stop_code")) for r in results if "stop_code" in r)),
        "samples": dict(list(samples_of.items())[:5]),
        "broker_cpu_s": round(cpu, 2), "broker_cpu_ms_per_launch": round(cpu * 1000 / n, 2),
        "broker_idle_cpu_per_s": round(idle_rate, 4), "broker_net_cpu_ms_per_launch": round(net * 1000 / n, 2),
        "loop_lag_p50_ms": lag50, "loop_lag_p99_ms": lag99, "loop_lag_samples": samples,
        "loop_busy_p99_ms": busy99,
        "metrics_during_burst_ms": outside_ms, "metrics_errors": outside["errors"],
        "loop_thread_cpu_wait_s": round(waited, 2),
    })
    section.row(f"{n} students launch at once, each kernel stopped {HOLD_SECONDS:g} s after ready",
                f"{outcomes.get('started', 0)} started ({queued} after waiting), "
                f"{n - outcomes.get('started', 0)} not; {fmt_s(seconds)} until every kernel was gone",
                f"{n} of {n} started", outcomes.get("started", 0) == n, check=True)
    section.row("  every launch answered (first line or refusal)",
                f"{len(answered)} of {n}; p50 {fmt_ms(first_ms.get('median', 0))}, p99 "
                f"{fmt_ms(first_ms.get('p99', 0))}, max {fmt_ms(first_ms.get('max', 0))}",
                f"{n} of {n}", len(answered) == n, check=True)
    section.row("broker event-loop lag during the burst, less the loop thread's waits for a CPU (p99 bucket)",
                f"p99 {_at_most(busy99)}; with the waits: p50 {_at_most(lag50)}, p99 {_at_most(lag99)} "
                f"({samples} samples)", f"p99 <= {LAG_TARGET_MS:g} ms", busy99 is not None and busy99 <= LAG_TARGET_MS)
    section.row("  the loop's thread waiting for a CPU (runnable, not running; /proc schedstat)",
                f"{waited:.1f} s of the {fmt_s(seconds)} (machine load {os.getloadavg()[0]:.1f} on "
                f"{os.cpu_count()} cores)")
    section.row(f"  cross-check: GET metrics from outside, every {PROBE_SECONDS * 1000:g} ms",
                f"p50 {fmt_ms(outside_ms.get('median', 0))}, p99 {fmt_ms(outside_ms.get('p99', 0))} "
                f"(n={outside_ms.get('n', 0)})")
    section.row("broker CPU per launch (user + system, launch to stop, queue included; less its idle rate)",
                f"{net * 1000 / n:.1f} ms ({cpu:.1f} s in all, {idle_rate * seconds:.1f} s of it idle: timers, "
                f"GET metrics every {PROBE_SECONDS * 1000:g} ms)", f"<= {CPU_TARGET_MS:g} ms",
                net * 1000 / n <= CPU_TARGET_MS)


def _watch(broker: BrokerProcess, cluster: Any, students: list[str], courses: dict[str, list[str]],
           watch_pods: int, section: Section) -> None:
    from kubesim import SimNode

    from .scale import _expected_vgpus

    extra = watch_pods - len(kernel_pods(cluster))
    nodes = -(-extra // WATCH_NODE_PODS)
    for i in range(nodes):
        cluster.add_node(SimNode(f"watch-{i:03d}", kubelet="fake", allocatable={
            VGPU: 2 * WATCH_NODE_PODS, "cpu": "512", "memory": "4096Gi", "pods": WATCH_NODE_PODS}))
    rss_before = rss_bytes(broker.proc.pid)
    started = time.perf_counter()
    for i in range(extra):
        body = watch_pod(i)
        body["spec"]["nodeName"] = f"watch-{i // WATCH_NODE_PODS:03d}"
        cluster.create_object("pods", NAMESPACE, body)
    want = _expected_vgpus(extra)
    wait_until(lambda: _broker_pods(broker.port, students[0]) == want, 900, 1.0,
               "the broker's cache holding every pod")
    seeded = time.perf_counter() - started
    time.sleep(2.0)
    rss = rss_bytes(broker.proc.pid)
    in_watch = len(kernel_pods(cluster))

    few = [user for members in courses.values() for user in members[:5]]
    cpu_before = broker.cpu()
    lag_before = lag_buckets(broker.port)
    results = Students(broker.port, 0.0).run(few, 300)
    wait_until(lambda: _broker_pods(broker.port, students[0]) == want, 120, 0.2, "the few kernels gone")
    cpu = broker.cpu() - cpu_before
    lag_after = lag_buckets(broker.port)
    lag99, _ = lag_p(lag_before[LAG_METRICS[0]], lag_after[LAG_METRICS[0]], 0.99)
    busy99, _ = lag_p(lag_before[LAG_METRICS[1]], lag_after[LAG_METRICS[1]], 0.99)
    started_few = sum(1 for r in results if r["outcome"] == "started")
    section.data.update({
        "watch_pods": in_watch, "watch_seed_s": round(seeded, 1), "broker_rss_mb": round(rss / 1e6, 1),
        "broker_rss_before_seed_mb": round(rss_before / 1e6, 1),
        "watch_launches": len(few), "watch_started": started_few,
        "watch_outcomes": dict(collections.Counter(f"{r['outcome']} {r.get('reason', '')}".strip() for r in results)),
        "watch_samples": {f"{r['outcome']} {r.get('status')}: {r.get('reason')}": r.get("message", "")[:300]
                          for r in results
                          if r["outcome"] != "started"},
        "watch_cpu_ms_per_launch": round(cpu * 1000 / len(few), 2), "watch_loop_lag_p99_ms": lag99,
        "watch_loop_busy_p99_ms": busy99,
    })
    section.row(f"broker memory (VmRSS) with {in_watch:,} pods in its watch",
                f"{rss / 1e6:.0f} MB ({rss_before / 1e6:.0f} MB before the pods)", f"<= {MEMORY_TARGET_MB:g} MB",
                rss / 1e6 <= MEMORY_TARGET_MB)
    section.row(f"  {len(few)} launches at once with {in_watch:,} pods in the watch",
                f"{started_few} started; broker CPU {cpu * 1000 / len(few):.1f} ms per launch, loop lag p99 "
                f"{_at_most(lag99)} ({_at_most(busy99)} less CPU waits)")


def run(quick: bool = False) -> Section:
    from kubesim import SimNode

    section = Section("university")
    n_courses, per_course, vgpus, watch_pods = (4, 10, 10, 400) if quick else (20, 50, 250, 20_000)
    quotas = _courses(n_courses, vgpus)
    courses = {course: [f"{course}-s{j + 1:02d}" for j in range(per_course)] for course in quotas}
    students = [user for members in courses.values() for user in members]
    groups = {user: [course] for course, members in courses.items() for user in members}
    section.data.update({"courses": n_courses, "vgpus": vgpus, "quotas": quotas})
    nodes = [SimNode(f"gpu-{i:03d}", kubelet="fake", allocatable={
        VGPU: NODE_VGPUS, "cpu": "256", "memory": "1024Gi", "pods": 110}) for i in range(-(-vgpus // NODE_VGPUS))]
    base = tempfile.mkdtemp(prefix="orion-bench-university-")
    course_lines = ", ".join(f"{c!r}: {{'vgpus': {q}, 'queue': True}}" for c, q in quotas.items())
    try:
        with ExitStack() as stack:
            cluster = stack.enter_context(sim_cluster(nodes))
            hub = FakeHub([*students, *(f"warmup-{i}" for i in range(3))], secrets.token_hex(16), groups).start()
            stack.callback(hub.stop)
            broker = BrokerProcess(cluster, hub, base, vgpus, [
                f"c.Broker.courses = {{{course_lines}}}",
                "c.VGPUProvisioner.termination_grace_seconds = 0",
            ]).start()
            stack.callback(broker.stop)
            _burst(broker, cluster, students, section)
            _watch(broker, cluster, students, courses, watch_pods, section)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return section
