"""classroom: warm kernels and the fair queue through the broker (hub mode), issue 14.

Both parts run the broker as benchmarks/broker.py does (``BrokerProcess``: a subprocess with a config
file, the stand-in hub API ``FakeHub`` in a thread) on the simulated cluster with the process kubelet:
every kernel is a real ipykernel process on this machine.

1. **A claimed warm kernel against a local one.** A warm pool (``c.Broker.warm_pools``) of one
   kernel per sample on a node with exactly that many vGPUs (so the pool does not refill while the
   samples run: nothing boots in the background). Once ``GET api/pool`` shows them all ready,
   samples alternate (after one warm-up of each):

   * *claimed*: ``POST api/kernels`` (benchmarks.broker's ``launch``), its ready line (``claimed``,
     the warm kernel's own key and ports), an AsyncKernelClient with that key, ports and ip, to the
     first ``kernel_info`` reply;
   * *claimed, kernel manager*: the same hand-over as a student's server does it: jupyter_client's
     ``AsyncKernelManager.start_kernel`` with the vGPU provisioner in broker mode
     (``c.VGPUProvisioner.broker_url``), to the first ``kernel_info`` reply;
   * *local*: jupyter_client's local provisioner starting the same ipykernel, as benchmarks/launch.py
     measures it.

   Claimed kernels stay until every sample is done. The broker's CPU per claim is its process's
   user + system CPU (/proc/PID/stat) over each claim, summed, over the number of claims.

2. **The 9:00 burst.** N students (60; 12 with ``--quick``) in course ``ai101`` with ``'queue':
   True`` on a node of V vGPUs (16; 4), a roster (``c.Broker.rosters``) for the course whose window
   opens a few seconds after the broker starts (``c.Broker.lab_timezone``: an Etc/GMT zone where it
   is about noon, so the window never crosses midnight), the stand-in hub listing the N students in
   group ai101. The roster pre-warms one kernel per student on V vGPUs: what happens to each of its
   pods is recorded. Once the roster is settled, all N launch at once (one thread each, as
   benchmarks.broker does). A student whose launch starts (a claim or a cold start) connects to
   the kernel and runs ``1+1``: the time to the first cell is from the launch's request to that
   ``execute_reply``. The others wait in the queue. Then the lab: every started kernel is stopped
   (``DELETE api/kernels/{id}``), one every 0.5 s in the order they started, until every student
   has started and been stopped. The queue's hand-over is from a stopped kernel's pod gone from
   the cluster (the store's own event, in this process; also from the DELETE's answer) to the next
   waiting launch's ``{"progress": "a vGPU is free: starting the kernel"}`` line; the broker's own
   ``orion_jupyter_broker_queue_handover_seconds`` histogram is read from ``GET metrics``.
   First come, first served is checked on the order the waiting launches started in against the
   order they joined (their first ``queued`` line's ``since`` and ``position``).

The roster's grace is short (it ends a few seconds after the burst), so the run ends in bounded
time whatever the queue does: a stall (launches waiting, no kernel started that could be stopped)
lasts until the grace ends and is reported as such.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import queue
import re
import secrets
import shutil
import tempfile
import threading
import time
import types
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from orion_jupyter.core.warm_config import roster_label
from orion_jupyter.names import LABEL_WARM

from .broker import (
    COURSE,
    PORT_NAMES,
    PREFIX,
    BrokerProcess,
    FakeHub,
    _kernel_objects,
    free_ports,
    launch,
    launch_body,
    request,
)
from .common import (
    Section,
    concurrently,
    fmt_ms,
    fmt_s,
    install_vgpu_spec,
    jupyter_dirs,
    kernel_pods,
    percentile,
    sim_cluster,
    summary,
    wait_until,
)
from .launch import first_kernel_info_reply

POOL = "bench-1x1gi"
SPEC = "orion-1x1gi"  # the kernel spec name launch_body sends; installed for the kernel-manager samples
LOCAL_SPEC = "python3"
CLAIM_RATIO_TARGET = 0.5
HANDOVER_TARGET_S = 1.0
STOP_PACE_S = 0.5
FCFS_TOLERANCE_S = 0.01
CELL_TIMEOUT_S = 30.0  # 1+1 on a live kernel answers in well under a second, even on 2 busy cores
ROSTER = roster_label(COURSE)

FREE_LINE = "a vGPU is free: starting the kernel"
KM_USER = "km-student"


def lab_zone() -> str:
    """An Etc/GMT zone where it is about noon now (as tests/test_hub_warm.py picks it)."""
    offset = 12 - datetime.now(UTC).hour
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"


def _ms(values: list[float]) -> dict[str, float]:
    return summary(values, 1000.0)


def _pool_state(broker: BrokerProcess, user: str) -> dict[str, Any]:
    status, body, _ = request(broker.port, "GET", PREFIX + "api/pool", token=f"tok-{user}")
    return (body or {}).get("warm", {}) if status == 200 else {}


def _metrics(broker: BrokerProcess) -> str:
    import urllib.request

    with urllib.request.urlopen(broker.url + PREFIX + "metrics", timeout=10) as response:
        return response.read().decode()


def _histogram(text: str, name: str) -> dict[str, Any]:
    """count, sum and buckets of a Prometheus histogram; p50/p95 as the upper bound of their bucket."""
    buckets: list[tuple[float, float]] = []
    count = total = 0.0
    for line in text.splitlines():
        match = re.match(rf'{name}_bucket\{{le="([^"]+)"\}} ([0-9.e+-]+)$', line)
        if match:
            buckets.append((math.inf if match.group(1) == "+Inf" else float(match.group(1)), float(match.group(2))))
        elif line.startswith(f"{name}_count "):
            count = float(line.split()[1])
        elif line.startswith(f"{name}_sum "):
            total = float(line.split()[1])

    def bound(q: float) -> float | str | None:  # "+Inf": above the largest bucket
        le = next((le for le, seen in buckets if count and seen >= q * count), None)
        return "+Inf" if le is not None and math.isinf(le) else le

    return {"count": int(count), "sum_s": round(total, 4), "mean_s": round(total / count, 4) if count else None,
            "p50_le_s": bound(0.5), "p95_le_s": bound(0.95),
            "buckets": {("+Inf" if math.isinf(le) else f"{le:g}"): int(seen) for le, seen in buckets}}


def _counter(text: str, name: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        match = re.match(rf"{name}_total(?:\{{(.*)\}})? ([0-9.e+-]+)$", line)
        if match:
            out[match.group(1) or ""] = float(match.group(2))
    return out


# -- 1. a claimed warm kernel against a local one ---------------------------------------------------
async def _local_sample() -> dict[str, float]:
    import subprocess

    from jupyter_client.manager import AsyncKernelManager

    km = AsyncKernelManager(kernel_name=LOCAL_SPEC)
    called = time.perf_counter()
    try:  # the local kernel's output (a warning about TCP without encryption) would clutter the table
        await km.start_kernel(kernel_id=str(uuid.uuid4()), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        replied = await first_kernel_info_reply(km)
    finally:
        if km.has_kernel:
            await km.shutdown_kernel(now=True)
    await asyncio.sleep(0.2)  # its process gone, nothing of it takes CPU from the next sample
    return {"total": replied - called}


async def _claim_sample(broker: BrokerProcess, user: str, context: Any, warm: set[str]) -> dict[str, Any]:
    """POST api/kernels served by a warm kernel, then the first kernel_info reply with the key and ports
    of its ready line."""
    from jupyter_client.asynchronous import AsyncKernelClient

    body = launch_body(free_ports(5))
    lines: list[dict[str, Any]] = []
    cpu = broker.cpu()
    called = time.perf_counter()
    result = await asyncio.to_thread(launch, broker.port, user, body, lines.append)
    answered = time.perf_counter()
    cpu_claim = broker.cpu() - cpu
    ready = next((item["ready"] for item in lines if "ready" in item), None)
    if result["outcome"] != "started" or ready is None:
        raise RuntimeError(f"a claim did not start: {result}\n{broker.log_tail()}")
    client = AsyncKernelClient(context=context)
    client.load_connection_info({"transport": "tcp", "ip": ready["ip"], "key": ready.get("key", body["key"]),
                                 "signature_scheme": "hmac-sha256",
                                 **{name: int(ready.get("ports", body["ports"])[name]) for name in PORT_NAMES}})
    replied = await first_kernel_info_reply(types.SimpleNamespace(client=lambda: client))
    return {"total": replied - called, "ready_line": answered - called, "cpu": cpu_claim,
            "claimed": ready.get("claimed") is True and ready["pod_name"] in warm,
            "kernel": (user, body["kernel_id"])}


async def _km_sample(config: Any, broker: BrokerProcess, cluster: Any, warm: set[str],
                     managers: list) -> dict[str, Any]:
    """jupyter_client's start_kernel with the broker-mode provisioner, to the first kernel_info reply."""
    from jupyter_client.manager import AsyncKernelManager

    km = AsyncKernelManager(kernel_name=SPEC, config=config)
    managers.append(km)
    kernel_id = str(uuid.uuid4())
    cpu = broker.cpu()
    called = time.perf_counter()
    await km.start_kernel(kernel_id=kernel_id)
    returned = time.perf_counter()
    cpu_claim = broker.cpu() - cpu
    replied = await first_kernel_info_reply(km)
    pods = [p["metadata"]["name"] for p in kernel_pods(cluster)
            if (p["metadata"].get("labels") or {}).get("orion-jupyter.io/kernel-id") == kernel_id]
    return {"total": replied - called, "start_kernel": returned - called, "cpu": cpu_claim,
            "claimed": len(pods) == 1 and pods[0] in warm}


async def _claims(n: int, broker: BrokerProcess, cluster: Any, users: list[str], warm: set[str],
                  section: Section) -> list[tuple[str, str]]:
    import zmq.asyncio
    from traitlets.config import Config

    from orion_jupyter.hubclient import BrokerClient

    config = Config()
    config.VGPUProvisioner.cluster = "broker"
    config.VGPUProvisioner.broker_url = broker.url + PREFIX
    config.VGPUProvisioner.broker_token = f"tok-{KM_USER}"
    config.VGPUProvisioner.user = KM_USER
    config.VGPUProvisioner.launch_timeout = 120.0
    context = zmq.asyncio.Context()
    managers: list = []
    runs: dict[str, list[dict[str, Any]]] = {"claimed": [], "km": [], "local": []}
    claimed_kernels: list[tuple[str, str]] = []
    users = list(users)

    async def sample(kind: str) -> dict[str, Any]:
        if kind == "local":
            return await _local_sample()
        if kind == "km":
            return await _km_sample(config, broker, cluster, warm, managers)
        out = await _claim_sample(broker, users.pop(0), context, warm)
        claimed_kernels.append(out["kernel"])
        return out

    try:
        warmup = {kind: await sample(kind) for kind in ("local", "claimed", "km")}  # one-time imports, the watch
        kinds = ("claimed", "local", "km")
        for i in range(n):
            for kind in kinds[i % 3:] + kinds[:i % 3]:
                runs[kind].append(await sample(kind))
    finally:
        for km in managers:
            if km.has_kernel:
                await km.shutdown_kernel(now=True)
        # the servers' watch streams, bound to this event loop: tornado logs each one's cancelled fetch
        logging.getLogger("tornado.application").disabled = True
        for client in BrokerClient._shared.values():
            if client._watching is not None:
                client._watching.cancel()
        BrokerClient._shared.clear()
        context.destroy(linger=0)

    claimed, km, local = (_ms([r["total"] for r in runs[k]]) for k in ("claimed", "km", "local"))
    ratio, km_ratio = claimed["median"] / local["median"], km["median"] / local["median"]
    all_claims = runs["claimed"] + runs["km"]
    cpu_claimed = sum(r["cpu"] for r in runs["claimed"]) / n
    cpu_km = sum(r["cpu"] for r in runs["km"]) / n
    handed_over = sum(1 for r in [*all_claims, warmup["claimed"], warmup["km"]] if r["claimed"])
    section.data.update({
        "claim_samples_each": n,
        "claimed_ms": claimed,
        "claimed_ready_line_ms": _ms([r["ready_line"] for r in runs["claimed"]]),
        "claimed_km_ms": km,
        "claimed_km_start_kernel_ms": _ms([r["start_kernel"] for r in runs["km"]]),
        "local_ms": local,
        "ratio_claimed_over_local": round(ratio, 3),
        "ratio_claimed_km_over_local": round(km_ratio, 3),
        "ratio_pairwise_median": round(percentile([a["total"] / b["total"] for a, b in
                                                   zip(runs["claimed"], runs["local"], strict=True)], 50), 3),
        "broker_cpu_ms_per_claim": round(cpu_claimed * 1000, 1),
        "broker_cpu_ms_per_claim_km": round(cpu_km * 1000, 1),
        "hand_overs": handed_over,
        "claims": len(all_claims) + 2,
        "warmup_ms": {k: round(v["total"] * 1000, 1) for k, v in warmup.items()},
    })
    section.row("claimed warm kernel: POST api/kernels to kernel_info reply",
                f"median {fmt_ms(claimed['median'])}, p95 {fmt_ms(claimed['p95'])} (n={n}; ready line "
                f"{fmt_ms(section.data['claimed_ready_line_ms']['median'])})")
    section.row("  the same claim through start_kernel (broker-mode provisioner)",
                f"median {fmt_ms(km['median'])}, p95 {fmt_ms(km['p95'])} (n={n})")
    section.row("local provisioner, same ipykernel, interleaved",
                f"median {fmt_ms(local['median'])}, p95 {fmt_ms(local['p95'])} (n={n})")
    section.row("ratio claimed / local (medians)", f"{ratio:.2f} (through start_kernel: {km_ratio:.2f})",
                f"<= {CLAIM_RATIO_TARGET}", ratio <= CLAIM_RATIO_TARGET)
    section.row("broker CPU per claim (user + system)",
                f"{cpu_claimed * 1000:.1f} ms (through start_kernel: {cpu_km * 1000:.1f} ms)")
    section.row("  every claim was a hand-over of a warm pod", f"{handed_over} of {len(all_claims) + 2}",
                f"{len(all_claims) + 2}", handed_over == len(all_claims) + 2, check=True)
    return claimed_kernels


def _run_claims(quick: bool, section: Section) -> None:
    from kubesim import SimNode

    n = 2 if quick else 15
    size = 2 * (n + 1)  # the claimed and kernel-manager samples, and one warm-up of each
    users = [f"student-{i + 1:02d}" for i in range(n + 1)]
    node = SimNode("gpu-1", kubelet="process", allocatable={
        "virtaitech.com/gpu": size, "cpu": "256", "memory": "1024Gi", "pods": 110})
    base = tempfile.mkdtemp(prefix="orion-bench-classroom-")
    try:
        with ExitStack() as stack:
            stack.enter_context(jupyter_dirs("classroom"))
            install_vgpu_spec(SPEC, 1, "1Gi")
            cluster = stack.enter_context(sim_cluster([node]))
            hub = FakeHub([*users, KM_USER], secrets.token_hex(16)).start()
            stack.callback(hub.stop)
            started = time.perf_counter()
            broker = BrokerProcess(cluster, hub, base, size, [
                "c.Broker.warm_interval = 0.5",
                f"c.Broker.warm_pools = [{{'name': {POOL!r}, 'vgpus': 1, 'memory': '1Gi', 'size': {size}}}]",
            ]).start()
            stack.callback(broker.stop)
            wait_until(lambda: _pool_state(broker, users[0]).get(POOL, {}).get("ready") == size, 120, 0.1,
                       f"a warm pool of {size} ready")
            filled = time.perf_counter() - started
            warm = {p["metadata"]["name"] for p in kernel_pods(cluster)}
            time.sleep(1.0)  # the last kernels to boot settle
            try:
                claimed = asyncio.run(_claims(n, broker, cluster, users, warm, section))
            finally:
                logging.getLogger("tornado.application").disabled = False
            for user, kernel_id in claimed:
                request(broker.port, "DELETE", f"{PREFIX}api/kernels/{kernel_id}", token=f"tok-{user}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    section.data["pool_size"] = size
    section.data["pool_filled_s"] = round(filled, 2)
    section.row(f"warm pool of {size} ready (broker start to GET api/pool)", fmt_s(filled))


# -- 2. the 9:00 burst ------------------------------------------------------------------------------
class PodTimes:
    """Each pod's life in the simulated store (this process's clock): created, bound to a node, gone."""

    def __init__(self, cluster: Any):
        self.store = cluster.store
        self.created: dict[str, float] = {}
        self.bound: dict[str, float] = {}
        self.gone: dict[str, float] = {}
        self.warm: dict[str, str] = {}  # pod -> its warm label, as created
        self.owner: dict[str, str] = {}  # pod -> the user it was created for
        self.pending = 0
        self.max_pending = 0
        self._lock = threading.Lock()
        self.store.subscribers.append(self._on_change)

    def _on_change(self, plural: str, etype: str, obj: dict, _old: dict | None) -> None:
        if plural != "pods":
            return
        now = time.perf_counter()
        meta = obj["metadata"]
        name = meta["name"]
        with self._lock:
            if etype == "ADDED":
                self.created[name] = now
                self.warm[name] = (meta.get("labels") or {}).get(LABEL_WARM, "")
                self.owner[name] = (meta.get("annotations") or {}).get("orion-jupyter.io/user", "")
                if not obj["spec"].get("nodeName"):
                    self.pending += 1
            if obj["spec"].get("nodeName") and name not in self.bound and etype != "DELETED":
                self.bound[name] = now
                self.pending -= 1
            if etype == "DELETED":
                self.gone[name] = now
                if name not in self.bound:
                    self.pending -= 1
            self.max_pending = max(self.max_pending, self.pending)

    def close(self) -> None:
        if self._on_change in self.store.subscribers:
            self.store.subscribers.remove(self._on_change)


def _first_cell(ready: dict[str, Any], body: dict[str, Any]) -> float:
    """perf_counter() at the execute_reply of ``1+1`` on the kernel of a ready line."""
    from jupyter_client.blocking import BlockingKernelClient

    client = BlockingKernelClient()
    client.load_connection_info({"transport": "tcp", "ip": ready["ip"], "key": ready.get("key", body["key"]),
                                 "signature_scheme": "hmac-sha256",
                                 **{name: int(ready.get("ports", body["ports"])[name]) for name in PORT_NAMES}})
    client.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=False)
    try:
        msg_id = client.execute("1+1", store_history=False)
        deadline = time.monotonic() + CELL_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                msg = client.get_shell_msg(timeout=1)
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                if msg["content"].get("status") != "ok":
                    raise RuntimeError(f"1+1 answered {msg['content']}")
                return time.perf_counter()
        raise TimeoutError(f"no execute_reply to 1+1 within {CELL_TIMEOUT_S:g} s")
    finally:
        client.stop_channels()


class Student:
    """One student's launch: every line of its stream with the time it arrived, and the first cell."""

    def __init__(self, user: str, ports: list[int]):
        self.user = user
        self.body = launch_body(ports)
        self.lines: list[tuple[float, dict[str, Any]]] = []
        self.sent = 0.0
        self.result: dict[str, Any] | None = None
        self.cell: float | None = None
        self.cell_error = ""
        self.stopped = False
        self.done = False  # its launch answered and, if it started, its kernel handed to the lab

    def on_line(self, item: dict[str, Any]) -> None:
        self.lines.append((time.perf_counter(), item))

    def run(self, port: int, started: queue.Queue) -> dict[str, Any]:
        self.sent = time.perf_counter()
        try:
            self.result = launch(port, self.user, self.body, self.on_line)
            if self.result["outcome"] == "started":
                try:
                    self.cell = _first_cell(self.ready, self.body)
                except Exception as err:  # noqa: BLE001 - reported, the kernel is stopped all the same
                    self.cell_error = f"{type(err).__name__}: {err}"
                started.put(self)
        finally:
            self.done = True
        return self.result

    # what its stream said
    @property
    def ready(self) -> dict[str, Any]:
        return next((item["ready"] for _, item in self.lines if "ready" in item), {})

    @property
    def ready_at(self) -> float | None:
        return next((t for t, item in self.lines if "ready" in item), None)

    @property
    def first_queued(self) -> dict[str, Any] | None:
        return next((item["queued"] for _, item in self.lines if "queued" in item), None)

    @property
    def freed_at(self) -> float | None:
        return next((t for t, item in self.lines if item.get("progress") == FREE_LINE), None)

    @property
    def waiting(self) -> bool:
        return self.first_queued is not None and self.freed_at is None and self.result is None

    @property
    def served(self) -> bool:  # started, first cell answered (or failed)
        return self.result is not None and (self.cell is not None or bool(self.cell_error)
                                            or self.result["outcome"] != "started")


def _lab(broker: BrokerProcess, students: list[Student], started: queue.Queue, pods: PodTimes,
         deadline: float, log: dict[str, Any]) -> None:
    """The lab, in a thread: once every launch started or waits, stop the started kernels one every
    STOP_PACE_S seconds in the order they started, until every student's kernel was stopped."""
    try:
        wait_until(lambda: all(s.served or s.waiting for s in students), max(deadline - time.monotonic(), 1), 0.01,
                   "every launch started or waiting")
    except TimeoutError:
        log["settle_timeout"] = True
    log["settled"] = time.perf_counter()
    log["served_before_lab"] = [s.user for s in students if s.result is not None and s.result["outcome"] == "started"]
    ready: list[Student] = []
    stops: list[dict[str, Any]] = []
    last = 0.0
    stall_since: float | None = None
    stalls: list[tuple[float, float]] = []
    while time.monotonic() < deadline:
        while True:
            try:
                ready.append(started.get_nowait())
            except queue.Empty:
                break
        if not ready:
            if all(s.done for s in students) and started.empty():
                break
            if stall_since is None and any(s.waiting for s in students):
                stall_since = time.perf_counter()
            time.sleep(0.005)
            continue
        if stall_since is not None:
            stalls.append((stall_since, time.perf_counter()))
            stall_since = None
        ready.sort(key=lambda s: s.ready_at or 0.0)
        wait = last + STOP_PACE_S - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        student = ready.pop(0)
        pod = student.ready.get("pod_name", "")
        waiting_then = sum(1 for s in students if s.waiting)
        before = time.perf_counter()
        status, _, _ = request(broker.port, "DELETE", f"{PREFIX}api/kernels/{student.body['kernel_id']}",
                               token=f"tok-{student.user}")
        answered = time.perf_counter()
        last = before
        student.stopped = status == 200
        stops.append({"user": student.user, "pod": pod, "status": status, "sent": before, "answered": answered,
                      "waiting": waiting_then})
    if stall_since is not None:
        stalls.append((stall_since, time.perf_counter()))
    log["stops"] = stops
    log["stalls"] = stalls
    log["lab_ended"] = time.perf_counter()


def _handovers(stops: list[dict[str, Any]], pods: PodTimes, students: list[Student]) -> list[dict[str, Any]]:
    """For each stop with someone waiting: the first 'a vGPU is free' line after its pod went (and before
    the next stop's pod went), attributed once."""
    freed = sorted(t for s in students if (t := s.freed_at) is not None)
    used: set[float] = set()
    out = []
    gone = [pods.gone.get(stop["pod"], stop["answered"]) for stop in stops]
    for i, stop in enumerate(stops):
        if not stop["waiting"]:
            continue
        until = gone[i + 1] if i + 1 < len(stops) else math.inf
        nxt = next((t for t in freed if t >= gone[i] and t not in used), None)
        if nxt is None or nxt >= until:  # its vGPU went to nobody; the next start came (with a later release) after
            later = next((t for t in freed if t >= gone[i]), None)
            out.append({"stop": i, "from_gone": None, "from_answer": None,
                        "next_start": None if later is None else later - gone[i]})
            continue
        used.add(nxt)
        out.append({"stop": i, "from_gone": nxt - gone[i], "from_answer": nxt - stop["answered"]})
    return out


def _by_stop(handovers: list[dict[str, Any]], stops: int) -> list[dict[str, Any] | None]:
    by = {h["stop"]: h for h in handovers}
    return [by.get(i) for i in range(stops)]


def _burst(n: int, vgpus: int, section: Section) -> None:
    from kubesim import SimNode

    ports = free_ports(5 * n)  # all at once, so none repeats: every process-kubelet kernel binds on this machine
    students = [Student(f"student-{i + 1:02d}", ports[5 * i:5 * i + 5]) for i in range(n)]
    names = [s.user for s in students]
    node = SimNode("gpu-1", kubelet="process", allocatable={
        "virtaitech.com/gpu": vgpus, "cpu": "256", "memory": "1024Gi", "pods": 250})
    zone = lab_zone()
    opens_in = 4.0  # seconds after the config is written (the broker serves ~1.5 s after it starts)
    grace = 12.0 if n <= 12 else 30.0  # ends some seconds after the burst: a stall cannot last the hour
    base = tempfile.mkdtemp(prefix="orion-bench-classroom-")
    log: dict[str, Any] = {}
    try:
        with ExitStack() as stack:
            cluster = stack.enter_context(sim_cluster([node]))
            pods = PodTimes(cluster)
            stack.callback(pods.close)
            hub = FakeHub(names, secrets.token_hex(16)).start()
            stack.callback(hub.stop)
            now = datetime.now(ZoneInfo(zone))
            start, end = now + timedelta(seconds=opens_in), now + timedelta(minutes=30)
            opens_at = time.perf_counter() + opens_in
            broker = BrokerProcess(cluster, hub, base, vgpus, [
                f"c.Broker.courses = {{{COURSE!r}: {{'vgpus': {vgpus}, 'queue': True}}}}",
                "c.Broker.warm_interval = 0.5",
                f"c.Broker.lab_timezone = {zone!r}",
                f"c.Broker.rosters = {{{COURSE!r}: {{'vgpus': 1, 'memory': '1Gi', 'grace': {grace!r}, "
                f"'hours': {{'start': {start.strftime('%H:%M:%S')!r}, 'end': {end.strftime('%H:%M:%S')!r}}}}}}}",
            ]).start()
            stack.callback(broker.stop)
            cpu_start = broker.cpu()

            def roster_settled() -> bool:  # the roster's pods created, each either ready or gone
                created = [p for p, label in pods.warm.items() if label == ROSTER]
                state = _pool_state(broker, names[0]).get(ROSTER, {})
                return bool(created) and not state.get("starting") and state.get("ready", 0) > 0 and all(
                    p in pods.gone or p in pods.bound for p in created)

            wait_until(roster_settled, 120, 0.05, "the roster pre-warmed")
            settled_at = time.perf_counter()
            roster_pods = [p for p, label in pods.warm.items() if label == ROSTER]
            warm_ready = {pods.owner[p]: p for p in roster_pods if p not in pods.gone}
            roster_state = _pool_state(broker, names[0]).get(ROSTER, {})
            failed_roster = [p for p in roster_pods if p in pods.gone]
            pending_s = [pods.gone[p] - pods.created[p] for p in failed_roster]
            time.sleep(0.5)

            started: queue.Queue = queue.Queue()
            timeout = 120.0 + grace + n * 2 * STOP_PACE_S
            deadline = time.monotonic() + timeout
            lab = threading.Thread(target=_lab, args=(broker, students, started, pods, deadline, log),
                                   name="bench-lab", daemon=True)
            lab.start()
            burst_at = time.perf_counter()
            concurrently(n, lambda i: students[i].run(broker.port, started), timeout=timeout + 30)
            lab.join(max(deadline - time.monotonic(), 0) + 5)
            left = _kernel_objects(cluster)
            try:
                left = wait_until(lambda: (lambda o: o if not any(o.values()) else None)(_kernel_objects(cluster)),
                                  60, 0.1, "no kernel object left")
            except TimeoutError:
                left = _kernel_objects(cluster)
            leftovers = [[p["metadata"]["name"], (p["metadata"].get("labels") or {}).get(LABEL_WARM, ""),
                          (p.get("status") or {}).get("phase"), round(pods.created.get(p["metadata"]["name"], 0)
                                                                     - burst_at, 2)]
                         for p in kernel_pods(cluster)]
            broker_cpu = broker.cpu() - cpu_start
            metrics = _metrics(broker)
            broker_log = open(broker.log_path, errors="replace").read()  # noqa: SIM115 - read once
    finally:
        shutil.rmtree(base, ignore_errors=True)

    # -- what happened ---------------------------------------------------------------------------
    outcomes = collections.Counter((s.result or {}).get("outcome", "unanswered") for s in students)
    served = [s for s in students if s.user in log.get("served_before_lab", [])]
    waited = [s for s in students if s.first_queued is not None]
    claims = [s for s in students if s.ready.get("claimed")]
    cells = [s.cell - s.sent for s in served if s.cell is not None]
    waited_cells = [s.cell - s.sent for s in waited if s.cell is not None]
    cell_errors = [s.cell_error for s in students if s.cell_error]
    refused = [s for s in students if (s.result or {}).get("outcome") in ("refused", "failed")]
    unanswered = [s for s in students if (s.result or {}).get("outcome", "unanswered") == "unanswered"]
    stops = log.get("stops", [])
    handovers = _handovers(stops, pods, students)
    from_gone = [h["from_gone"] for h in handovers if h["from_gone"] is not None]
    from_answer = [h["from_answer"] for h in handovers if h["from_answer"] is not None]
    missed = [h for h in handovers if h["from_gone"] is None]
    missed_next = [h["next_start"] for h in missed if h.get("next_start") is not None]
    # first come, first served: the order the waiting launches started in against the order they joined
    joined = sorted((s for s in waited if s.freed_at is not None),
                    key=lambda s: (s.first_queued["since"], s.first_queued["position"]))
    # Lines of different launches are read by different threads: two heads admitted in one step of the
    # queue (microseconds apart in the broker) may be seen a few ms apart in either order. A later joiner
    # seen starting more than FCFS_TOLERANCE_S before an earlier one is out of order.
    inversions = sorted(((a.user, b.user, round((a.freed_at - b.freed_at) * 1000, 2))
                         for i, a in enumerate(joined) for b in joined[i + 1:] if b.freed_at < a.freed_at),
                        key=lambda item: -item[2])
    fcfs = not any(gap > FCFS_TOLERANCE_S * 1000 for _, _, gap in inversions)
    waits = [s.freed_at - s.sent for s in waited if s.freed_at is not None]
    estimates = [s.first_queued.get("estimate_seconds") for s in waited]
    warm_but_waited = [s for s in waited if s.user in warm_ready]
    claimed_after_wait = [s for s in warm_but_waited if s.ready.get("claimed")]
    stalls = [b - a for a, b in log.get("stalls", [])]
    longest_stall = max(stalls, default=0.0)
    first_queued_start = min((s.freed_at for s in waited if s.freed_at is not None), default=None)
    grace_ends = opens_at + grace
    histogram = _histogram(metrics, "orion_jupyter_broker_queue_handover_seconds")
    wait_histogram = _histogram(metrics, "orion_jupyter_broker_queue_wait_seconds")
    roster_failures = re.findall(r"a warm kernel of roster-\S+ did not start: (.*)", broker_log)
    unclaimed_stopped = re.findall(r"stopping the unclaimed roster kernel (\S+) of (\S+)", broker_log)
    stopped_waiting = [user for _, user in unclaimed_stopped if user in {s.user for s in waited}]
    # a roster kernel the broker stopped as unclaimed although a launch had claimed it (a race at the grace's end)
    claimed_pods = {s.ready.get("pod_name") for s in claims}
    stopped_claimed = [pod for pod, _ in unclaimed_stopped if pod in claimed_pods]
    every_ok = outcomes.get("started", 0) == n and not unanswered and not refused
    roster_claims = _counter(metrics, "orion_jupyter_broker_warm_claims").get('kind="roster"', 0)

    section.data.update({
        "students": n, "vgpus": vgpus, "lab_timezone": zone, "roster_grace_s": grace,
        "roster_pods_created": len(roster_pods), "roster_ready": len(warm_ready),
        "roster_pool_state": roster_state, "roster_failed": len(failed_roster),
        "roster_failed_pending_ms": _ms(pending_s), "roster_failure_sample": roster_failures[:1],
        "roster_settled_after_open_s": round(settled_at - opens_at, 2),
        "max_pending_pods": pods.max_pending,
        "outcomes": dict(outcomes),
        "served_before_lab": len(served), "served_claims": sum(1 for s in served if s.ready.get("claimed")),
        "waited": len(waited), "burst_claims": len(claims),
        "warm_but_waited": len(warm_but_waited), "claimed_after_waiting": len(claimed_after_wait),
        "time_to_first_cell_ms": _ms(cells), "waited_time_to_first_cell_ms": _ms(waited_cells),
        "cell_errors": cell_errors[:5],
        "refusals": [[s.user, (s.result or {}).get("reason", ""), (s.result or {}).get("message", "")[:300]]
                     for s in refused + unanswered][:5],
        "queue_wait_ms": _ms(waits), "first_estimates_s": collections.Counter(map(str, estimates)).most_common(5),
        "stops": len(stops), "stop_codes": dict(collections.Counter(s["status"] for s in stops)),
        "handovers": len(from_gone), "handover_misses": len(missed),
        "handover_misses_next_start_ms": _ms(missed_next),
        "handover_from_pod_gone_ms": _ms(from_gone), "handover_from_delete_answer_ms": _ms(from_answer),
        "broker_handover_histogram": histogram, "broker_queue_wait_histogram": wait_histogram,
        "broker_warm_claims": _counter(metrics, "orion_jupyter_broker_warm_claims"),
        "broker_launches": _counter(metrics, "orion_jupyter_broker_launches"),
        "fcfs": fcfs, "fcfs_inversions": inversions[:10],
        "stalls_s": [round(s, 2) for s in stalls], "longest_stall_s": round(longest_stall, 2),
        "first_queued_start_after_burst_s": round(first_queued_start - burst_at, 2) if first_queued_start else None,
        "grace_ends_after_burst_s": round(grace_ends - burst_at, 2),
        "unclaimed_roster_stopped": len(unclaimed_stopped),
        "unclaimed_stopped_while_owner_waited": len(stopped_waiting),
        "unclaimed_stopped_but_claimed": stopped_claimed,
        "lab_s": round(log.get("lab_ended", burst_at) - burst_at, 2),
        "broker_cpu_s": round(broker_cpu, 2),
        "kernel_pods_left_detail": leftovers[:10],  # name, warm label, phase, created (s after the burst)
        "kernel_pods_left": left["pods"], "kernel_secrets_left": left["secrets"],
        "network_policies_left": left["networkpolicies"],
        "settle_timeout": bool(log.get("settle_timeout")),
        # when things happened, in seconds after the burst: each stop (sent, answered, its pod gone, the
        # hand-over it was credited with) and each student (queued at, freed at, ready at, claimed or cold)
        "timeline": {
            "stops": [[stop["user"], *(round(t - burst_at, 4) for t in (
                stop["sent"], stop["answered"], pods.gone.get(stop["pod"], stop["answered"]))), stop["waiting"],
                       None if h is None or h["from_gone"] is None else round(h["from_gone"] * 1000, 2)]
                      for stop, h in zip(stops, _by_stop(handovers, len(stops)), strict=True)],
            "students": [[s.user, *(None if t is None else round(t - burst_at, 4) for t in (
                s.lines[0][0] if s.first_queued else None, s.freed_at, s.ready_at)),
                          "claim" if s.ready.get("claimed") else "cold", s.user in warm_ready]
                         for s in sorted(students, key=lambda s: s.ready_at or math.inf)],
        },
    })
    section.row(f"roster pre-warm: {n} students, {vgpus} vGPUs",
                f"{len(roster_pods)} pods created, {len(warm_ready)} ready after "
                f"{fmt_s(settled_at - opens_at)}, {len(failed_roster)} failed"
                + (f" (deleted after {fmt_ms(section.data['roster_failed_pending_ms']['median'])} median)"
                   if failed_roster else "") + f"; most pods Pending at once: {pods.max_pending}")
    section.row(f"{n} students launch at once",
                f"{len(served)} started at once ({section.data['served_claims']} claims), {len(waited)} queued "
                f"({len(warm_but_waited)} of them with their roster kernel ready)")
    section.row("  every launch ended started (at once or after its wait)",
                f"{outcomes.get('started', 0)} of {n}; refused {len(refused)}, unanswered {len(unanswered)}",
                f"{n} of {n}", every_ok, check=True)
    answered = sum(1 for s in students if s.cell is not None)
    section.row("  every started kernel answered 1+1 (and was there for the lab's DELETE)",
                f"{answered} of {outcomes.get('started', 0)}; DELETE answers: "
                + ", ".join(f"{code}: {count}" for code, count in sorted(section.data["stop_codes"].items())),
                f"{n} of {n}, all 200", answered == n and set(section.data["stop_codes"]) == {200}, check=True)
    section.row("time to first cell (request to 1+1 reply), started at once",
                f"p50 {fmt_s(percentile(cells, 50))}, p95 {fmt_s(percentile(cells, 95))} (n={len(cells)})"
                if cells else "- (none started at once)")
    section.row("  after waiting in the queue (wait included)",
                f"p50 {fmt_s(percentile(waited_cells, 50))}, p95 {fmt_s(percentile(waited_cells, 95))} "
                f"(n={len(waited_cells)})" if waited_cells else "-")
    section.row("queue: first queued launch started after the burst",
                (f"{fmt_s(first_queued_start - burst_at)} (roster grace ends at {fmt_s(grace_ends - burst_at)}); "
                 f"longest stall {fmt_s(longest_stall)}" if first_queued_start else "never"))
    section.row(f"lab: a kernel stopped every {STOP_PACE_S:g} s; hand-over, pod gone to the next 'vGPU is free'",
                f"p50 {fmt_ms(percentile(from_gone, 50) * 1000)}, p95 {fmt_ms(percentile(from_gone, 95) * 1000)}, "
                f"max {fmt_ms(max(from_gone, default=math.nan) * 1000)} "
                f"(n={len(from_gone)}; {len(missed)} stops with launches waiting started none before the next "
                f"stop" + (f": the next start came {fmt_s(percentile(missed_next, 50))} later, median" if missed_next
                           else "") + ")",
                f"p95 <= {HANDOVER_TARGET_S:g} s",
                bool(from_gone) and percentile(from_gone, 95) <= HANDOVER_TARGET_S and not missed)
    section.row("  from the DELETE's answer",
                f"p50 {fmt_ms(percentile(from_answer, 50) * 1000)}, p95 {fmt_ms(percentile(from_answer, 95) * 1000)}")
    section.row("  broker's orion_jupyter_broker_queue_handover_seconds",
                f"n={histogram['count']}, mean {fmt_ms((histogram['mean_s'] or math.nan) * 1000)}, "
                f"p50 <= {histogram['p50_le_s']} s, p95 <= {histogram['p95_le_s']} s")
    section.row(f"  queue first come, first served (start order = join order, within {FCFS_TOLERANCE_S * 1000:g} ms)",
                f"{'yes' if fcfs else 'no'} ({len(joined)} waited; seen in another order: {len(inversions)} "
                f"pairs, at most {inversions[0][2] if inversions else 0:g} ms apart)",
                "yes", fcfs and len(joined) == len(waited), check=True)
    section.row("  queue wait, and the first estimate it gave",
                f"p50 {fmt_s(percentile(waits, 50))}, p95 {fmt_s(percentile(waits, 95))}; estimates: "
                + ", ".join(f"{k}: {v}" for k, v in section.data["first_estimates_s"]))
    section.row("  roster kernels: claimed / stopped as unclaimed at the grace's end (owner waiting; claimed)",
                f"{roster_claims:.0f} / {len(unclaimed_stopped)} ({len(stopped_waiting)}; {len(stopped_claimed)})")
    section.row("kernel pods, Secrets, NetworkPolicies left", f"{left['pods']}, {left['secrets']}, "
                f"{left['networkpolicies']}", "0", not any(left.values()), check=True)


def run(quick: bool = False) -> Section:
    section = Section("classroom")
    _run_claims(quick, section)
    n, vgpus = (12, 4) if quick else (60, 16)
    _burst(n, vgpus, section)
    return section


__all__ = ["run"]
