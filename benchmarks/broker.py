"""broker: a 60-student burst through the vGPU broker (hub mode).

The broker (``python -m orion_jupyter.cli broker --config FILE``, a subprocess in its own session,
as tests/test_hub.py starts it) runs against the simulated cluster: one process-kubelet node with
16 ``virtaitech.com/gpu`` (every kernel a real ipykernel process on this machine), and the course
``ai101`` allowed 16 vGPUs (``c.Broker.courses``). Then N students (60; 12 with ``--quick``, node
and course 4 vGPUs) launch at once: N concurrent ``POST api/kernels``, each with its own hub
token, a UUID kernel_id, 1 vGPU of 1Gi, a key and 5 ports, each streamed answer read to its
``ready`` or ``error`` line, or to a 400/409 refusal. Reported:

* how many started and how many were refused, and why (a check, not a timed target: every
  launch must end with a kernel or a reason, and only the quota's worth may start);
* the time to answer (p50, p95), for started and for refused launches;
* the broker's CPU per launch (user + system of its process, /proc/PID/stat, over the burst);
* Kubernetes API requests per started launch (the simulated API server's own log: non-watch
  requests during the burst / launches that started), and the hub API requests per launch;
* the broker's event-loop lag, measured from outside: a separate process GETs
  ``<broker>/services/orion-broker/metrics`` every 20 ms, idle and during the burst; the response
  time's p99 is a proxy for the lag (a slow answer is the loop busy with something else, or the
  broker waiting for a core: on a machine with few cores the kernels booting at once take them);
* a single-user server's event loop: student-01's launch goes through their own server, a real
  ``jupyter server`` with the orion_jupyter extension in hub mode (``VGPUProvisioner.cluster =
  broker``, ``broker_url`` this broker, ``broker_token`` the student's hub token, as
  ``ORION_JUPYTER_BROKER_URL`` and ``JUPYTERHUB_API_TOKEN`` set them in a hub) with ``POST
  /orion/api/kernels``, released with the others and counted with them (whether it is among the
  ones that start is the race's: it has one more hop to go); another process GETs that server's
  ``/orion/api/allocations`` every 20 ms, idle and during the burst (the same proxy). The other
  students' servers are left out (one jupyter server per student would be 60 more processes on
  this machine's cores): in hub mode a server only forwards its own student's launch, so one is
  representative of each;
* then every started kernel is stopped through ``DELETE api/kernels/{id}`` (student-01's through
  their server's ``DELETE /api/kernels/{id}``), and the cluster must hold no kernel pod, Secret or
  NetworkPolicy.

The hub here is a stand-in: a tiny tornado app in this process that answers the three hub API
calls the broker makes (``GET /hub/api/user`` for a token ``tok-<user>``, ``GET
/hub/api/users/{name}`` with the group ``ai101``, ``GET /hub/api/users`` with every student's
server running, so nothing is reaped). The broker against a real JupyterHub (tokens, scopes,
groups, single-user servers, reaping) is exercised by tests/test_hub.py.

One kernel is started and stopped first (warm-up), straight through the broker and then through
the server, so one-time imports are not in the burst.
"""

from __future__ import annotations

import asyncio
import collections
import http.client
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from . import common
from .common import (
    NAMESPACE,
    ROOT,
    Section,
    concurrently,
    cpu_seconds,
    fmt_ms,
    fmt_s,
    free_port,
    install_vgpu_spec,
    jupyter_dirs,
    kernel_pods,
    sim_cluster,
    stop_process,
    summary,
    wait_until,
)
from .server import JupyterServer, Poller

SERVICE = "orion-broker"
PREFIX = f"/services/{SERVICE}/"
COURSE = "ai101"
LAUNCH_TIMEOUT = 120.0
PORT_NAMES = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
IDLE_SECONDS = 3.0
WARMUP_USER = "warmup"
SPEC = "orion-1x1gi"  # the students' kernel spec (1 vGPU, 1Gi), in the server's data dir


# -- a stand-in for the hub's API -------------------------------------------------------------------
class FakeHub:
    """The hub API calls the broker makes, on a free loopback port, served from a thread of this process.

    ``GET /hub/api/user`` (token ``tok-<user>``): who the token is, with access to the broker;
    ``GET /hub/api/users/{name}``: their groups (``groups[name]``, default ``ai101``); ``GET /hub/api/users``:
    every user with their default server running (so the broker reaps nothing). The last two need the broker's own
    service token, as the hub's do. ``counts``: requests answered, by endpoint.
    """

    def __init__(self, users: list[str], service_token: str, groups: dict[str, list[str]] | None = None):
        from tornado.netutil import bind_sockets

        self.users = list(users)
        self.groups = dict(groups or {})
        self.service_token = service_token
        self.counts: collections.Counter[str] = collections.Counter()
        self._sockets = bind_sockets(0, "127.0.0.1")
        self.port = self._sockets[0].getsockname()[1]
        self.api_url = f"http://127.0.0.1:{self.port}/hub/api"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), name="bench-fake-hub", daemon=True)

    def _app(self) -> Any:
        from tornado import web

        hub = self

        class Base(web.RequestHandler):
            def token(self) -> str:
                auth = self.request.headers.get("Authorization", "")
                return auth.split(None, 1)[1] if auth.lower().startswith(("token ", "bearer ")) else ""

            def answer(self, endpoint: str, body: Any) -> None:
                hub.counts[endpoint] += 1
                self.set_header("Content-Type", "application/json")
                self.finish(json.dumps(body))

            def refuse(self, endpoint: str, code: int) -> None:
                hub.counts[f"{endpoint} {code}"] += 1
                self.set_status(code)
                self.finish(json.dumps({"status": code, "message": "not allowed"}))

        class Whoami(Base):
            def get(self) -> None:
                token = self.token()
                name = token[4:] if token.startswith("tok-") else ""
                if name not in hub.users:
                    return self.refuse("user", 403)
                self.answer("user", {"name": name, "kind": "user",
                                     "scopes": [f"access:services!service={SERVICE}"]})

        class User(Base):
            def get(self, name: str) -> None:
                if self.token() != hub.service_token:
                    return self.refuse("users/{name}", 403)
                if name not in hub.users:
                    return self.refuse("users/{name}", 404)
                self.answer("users/{name}", hub.model(name))

        class Users(Base):
            def get(self) -> None:
                if self.token() != hub.service_token:
                    return self.refuse("users", 403)
                items = [hub.model(name) for name in hub.users]
                self.answer("users", {"items": items, "_pagination": {"offset": 0, "limit": len(items),
                                                                      "total": len(items), "next": None}})

        return web.Application([(r"/hub/api/user", Whoami), (r"/hub/api/users/([^/]+)", User),
                                (r"/hub/api/users", Users)])

    def model(self, name: str) -> dict[str, Any]:
        return {"name": name, "kind": "user", "groups": self.groups.get(name, [COURSE]), "servers": {"": {}}}

    async def _serve(self) -> None:
        from tornado.httpserver import HTTPServer

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = HTTPServer(self._app())
        server.add_sockets(self._sockets)
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.stop()
            await server.close_all_connections()

    def start(self) -> FakeHub:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the stand-in hub API did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)


# -- the broker, a subprocess -----------------------------------------------------------------------
class BrokerProcess:
    """``python -m orion_jupyter.cli broker --config FILE`` in its own session, env as the hub sets it."""

    def __init__(self, cluster: Any, hub: FakeHub, base: str, vgpus: int, extra_config: Sequence[str] = ()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base = base
        self.config_path = os.path.join(base, "broker_config.py")
        self.log_path = os.path.join(base, "broker.log")
        Path(self.config_path).write_text("\n".join([
            f"c.VGPUProvisioner.namespace = {NAMESPACE!r}",
            f"c.VGPUProvisioner.launch_timeout = {LAUNCH_TIMEOUT!r}",
            f"c.Broker.courses = {{{COURSE!r}: {{'vgpus': {vgpus}}}}}",
            *extra_config,  # more lines of the config file (a later line wins, e.g. c.Broker.courses)
        ]) + "\n")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB_")}
        self.env.update({
            "KUBECONFIG": cluster.kubeconfig_path,
            "JUPYTERHUB_SERVICE_NAME": SERVICE,
            "JUPYTERHUB_SERVICE_URL": self.url,
            "JUPYTERHUB_SERVICE_PREFIX": PREFIX,
            "JUPYTERHUB_API_URL": hub.api_url,
            "JUPYTERHUB_API_TOKEN": hub.service_token,
        })
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> BrokerProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "orion_jupyter.cli", "broker", "--config",
                                          self.config_path], env=self.env, cwd=str(ROOT), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the broker exited with code {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    status, _, _ = request(self.port, "GET", PREFIX + "metrics", token=None, timeout=5)
                except OSError:
                    status = 0
                if status == 200:
                    return self
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the broker did not serve within {timeout:g} s:\n{self.log_tail()}")
                time.sleep(0.2)
        except BaseException:
            self.stop(grace=5.0)
            raise

    def cpu(self) -> float:
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace: float = 20.0) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=grace)
        if common.LOG_DIR is not None and os.path.exists(self.log_path):
            os.makedirs(common.LOG_DIR, exist_ok=True)
            shutil.copyfile(self.log_path, os.path.join(common.LOG_DIR, "broker.log"))


class MetricsPoller(Poller):
    """benchmarks.poller on the broker's GET metrics (a separate process, no GIL shared with the cluster)."""

    def __init__(self, broker: BrokerProcess, interval: float = 0.02):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.poller", broker.url + PREFIX + "metrics", "unused", str(interval)],
            cwd=str(ROOT), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            err = self.proc.stderr.read() if self.proc.poll() is not None else ""
            self.close()
            raise RuntimeError(f"the metrics poller did not start: {line!r} {err}")


class AllocationsPoller(Poller):
    """benchmarks.poller on a single-user server's GET /orion/api/allocations (its own student's token)."""

    def __init__(self, server: JupyterServer, user: str, interval: float = 0.02):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.poller", server.url + "/orion/api/allocations", server.token(user),
             str(interval)],
            cwd=str(ROOT), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            err = self.proc.stderr.read() if self.proc.poll() is not None else ""
            self.close()
            raise RuntimeError(f"the allocations poller did not start: {line!r} {err}")


def student_server(cluster: Any, dirs: dict[str, str], broker: BrokerProcess, user: str) -> JupyterServer:
    """``user``'s single-user server in hub mode: the orion_jupyter extension with the broker as its cluster
    and the student's hub token (what ORION_JUPYTER_BROKER_URL and JUPYTERHUB_API_TOKEN give it in a hub)."""
    install_vgpu_spec(SPEC, 1, "1Gi")
    # "alice": the name benchmarks.server's readiness checks use (this server answers them as its own)
    return JupyterServer(cluster, dirs, f"broker-{user}", users=(user, "alice"), instructors=(),
                         launch_timeout=LAUNCH_TIMEOUT, extra_config={"VGPUProvisioner": {
                             "cluster": "broker", "broker_url": broker.url + PREFIX, "broker_token": f"tok-{user}",
                             "user": user}})


# -- the students' side -----------------------------------------------------------------------------
def request(port: int, method: str, path: str, body: Any = None, token: str | None = None,
            timeout: float = 60.0) -> tuple[int, Any, float]:
    """(status, JSON body or None, seconds) of one request on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Authorization": f"token {token}"} if token else {}
    payload = None
    if body is not None:
        payload = json.dumps(body)
        headers["Content-Type"] = "application/json"
    try:
        started = time.perf_counter()
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        data = response.read()
        seconds = time.perf_counter() - started
    finally:
        conn.close()
    try:
        parsed = json.loads(data) if data and response.getheader("Content-Type", "").startswith("application/json") \
            else None
    except ValueError:
        parsed = None
    return response.status, parsed, seconds


def free_ports(count: int) -> list[int]:
    """``count`` different free TCP ports (held open together while picked, so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def launch_body(ports: list[int]) -> dict[str, Any]:
    return {"kernel_id": str(uuid.uuid4()), "vgpus": 1, "memory": "1Gi", "key": secrets.token_hex(16),
            "kernel_spec_name": "orion-1x1gi", "ports": dict(zip(PORT_NAMES, ports, strict=True))}


def launch(port: int, user: str, body: dict[str, Any],
           on_line: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """One student's POST api/kernels, read to its end: {"outcome": started|refused|failed|unanswered, ...}.
    ``on_line``: called with each line of the stream as it arrives (queued, progress, ready, error)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=LAUNCH_TIMEOUT + 60)
    headers = {"Authorization": f"token tok-{user}", "Content-Type": "application/json"}
    result: dict[str, Any] = {"user": user, "kernel_id": body["kernel_id"], "progress": 0}
    started = time.perf_counter()
    try:
        conn.request("POST", PREFIX + "api/kernels", body=json.dumps(body), headers=headers)
        response = conn.getresponse()
        result["status"] = response.status
        if response.status != 200:
            data = response.read()
            result["seconds"] = time.perf_counter() - started
            try:
                reply = json.loads(data)
            except ValueError:
                reply = {"message": data.decode(errors="replace")[:500]}
            result.update(outcome="refused" if response.status in (400, 409) else "unanswered",
                          message=reply.get("message", ""), reason=reply.get("reason") or reply.get("field") or "")
            return result
        while True:
            line = response.readline()
            if not line:
                result.update(outcome="unanswered", seconds=time.perf_counter() - started,
                              message="the stream ended with no ready or error line")
                return result
            if not line.strip():
                continue
            item = json.loads(line)
            if on_line is not None:
                on_line(item)
            if "progress" in item:
                result["progress"] += 1
            elif "ready" in item:
                result.update(outcome="started", seconds=time.perf_counter() - started, pod=item["ready"]["pod_name"])
                response.read()
                return result
            elif "error" in item:
                result.update(outcome="failed", seconds=time.perf_counter() - started,
                              reason=item["error"].get("reason", ""), message=item["error"].get("message", ""))
                response.read()
                return result
    except (OSError, http.client.HTTPException, ValueError) as err:
        result.update(outcome="unanswered", seconds=time.perf_counter() - started,
                      message=f"{type(err).__name__}: {err}")
        return result
    finally:
        conn.close()


def server_launch(server: JupyterServer, user: str) -> dict[str, Any]:
    """``user``'s launch through their server's ``POST /orion/api/kernels``: the same result as ``launch``."""
    result: dict[str, Any] = {"user": user, "kernel_id": "", "route": "server"}
    started = time.perf_counter()
    try:
        status, body, _ = server.client.request("POST", "/orion/api/kernels", {"spec": SPEC}, user=user)
    except (OSError, http.client.HTTPException) as err:
        result.update(outcome="unanswered", seconds=time.perf_counter() - started,
                      message=f"{type(err).__name__}: {err}")
        return result
    body = body or {}
    result.update(status=status, seconds=time.perf_counter() - started)
    if status == 201:
        result.update(outcome="started", kernel_id=body.get("id", ""))
    elif status in (400, 409):
        result.update(outcome="refused", message=body.get("message", ""),
                      reason=body.get("reason") or body.get("field") or "")
    elif status == 503:  # the server's answer to a launch that failed (KernelLaunchError)
        result.update(outcome="failed", message=body.get("message", ""), reason=body.get("reason", ""))
    else:
        result.update(outcome="unanswered", message=f"{status}: {body.get('message', '')}"[:500])
    return result


def refusal_kind(result: dict[str, Any]) -> str:
    """quota (the course's or the user's), capacity (the pool has no room), or other."""
    message = result.get("message") or ""
    if result.get("reason") == "vgpus" and ("course" in message or "for you" in message):
        return "quota"
    if result.get("reason") == "unschedulable":
        return "capacity"
    return "other"


def _kernel_objects(cluster: Any) -> dict[str, int]:
    def managed(plural: str) -> int:
        return sum(1 for o in cluster.objects(plural, NAMESPACE)
                   if (o["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by") == "orion-jupyter")

    policies = {p["metadata"]["name"] for p in cluster.objects("networkpolicies", NAMESPACE)}
    return {"pods": len(kernel_pods(cluster)), "secrets": managed("secrets"), "networkpolicies": len(policies)}


def _stop_kernels(broker: BrokerProcess, cluster: Any, kernels: list[tuple[str, str]],
                  server: JupyterServer | None = None,
                  server_kernels: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """DELETE api/kernels/{id} on the broker for each (user, kernel_id) of ``kernels``, and DELETE
    /api/kernels/{id} on ``server`` for each of ``server_kernels``, all at once; then wait for the
    cluster to hold none of them. ``codes``: "broker 200", "server 204"... counted."""
    work = [("broker", user, kernel_id) for user, kernel_id in kernels]
    work += [("server", user, kernel_id) for user, kernel_id in server_kernels]

    def stop(i: int) -> str:
        route, user, kernel_id = work[i]
        if route == "server":
            assert server is not None
            return f"server {server.client.request('DELETE', f'/api/kernels/{kernel_id}', user=user)[0]}"
        return f"broker {request(broker.port, 'DELETE', f'{PREFIX}api/kernels/{kernel_id}', token=f'tok-{user}')[0]}"

    started = time.perf_counter()
    codes = concurrently(len(work), stop) if work else []
    try:
        wait_until(lambda: not any(_kernel_objects(cluster).values()), 60, what="no kernel object left")
    except TimeoutError:
        pass
    return {"seconds": time.perf_counter() - started, "codes": dict(collections.Counter(codes)),
            "left": _kernel_objects(cluster)}


def _broker_sees_none(broker: BrokerProcess, user: str) -> None:
    """Waits until the broker's watch cache (which the quota counts) holds no kernel of ``user``."""
    def none_left() -> bool:
        status, body, _ = request(broker.port, "GET", PREFIX + "api/kernels", token=f"tok-{user}")
        return status == 200 and not (body or {}).get("kernels")

    wait_until(none_left, 30, what=f"the broker's cache without {user}'s warm-up kernel")


def _warm_up(broker: BrokerProcess, cluster: Any, server: JupyterServer | None = None,
             server_user: str = "") -> None:
    """One launch and stop straight through the broker, then (with ``server``) one through the server."""
    result = launch(broker.port, WARMUP_USER, launch_body(free_ports(5)))
    if result["outcome"] != "started":
        raise RuntimeError(f"warm-up launch did not start: {result}\n{broker.log_tail()}")
    stopped = _stop_kernels(broker, cluster, [(WARMUP_USER, result["kernel_id"])])
    if any(stopped["left"].values()):
        raise RuntimeError(f"warm-up kernel not gone: {stopped}")
    _broker_sees_none(broker, WARMUP_USER)
    if server is None:
        return
    result = server_launch(server, server_user)
    if result["outcome"] != "started":
        raise RuntimeError(f"warm-up launch through the server did not start: {result}\n{server.log_tail()}")
    stopped = _stop_kernels(broker, cluster, [], server, [(server_user, result["kernel_id"])])
    if any(stopped["left"].values()) or set(stopped["codes"]) != {"server 204"}:
        raise RuntimeError(f"warm-up kernel of the server not gone: {stopped}\n{server.log_tail()}")
    _broker_sees_none(broker, server_user)


def _p(values: list[float]) -> dict[str, float]:
    return summary(values, 1000.0)


def _loop_rows(section: Section, what: str, idle_ms: dict[str, float], during_ms: dict[str, float],
               errors: dict[str, int]) -> None:
    section.row(f"event loop (proxy): {what} idle",
                f"p50 {fmt_ms(idle_ms['median'])}, p99 {fmt_ms(idle_ms['p99'])} (n={idle_ms['n']})")
    section.row(f"event loop (proxy): {what} during the burst",
                f"p50 {fmt_ms(during_ms['median'])}, p99 {fmt_ms(during_ms['p99'])}, max {fmt_ms(during_ms['max'])} "
                f"(n={during_ms['n']})")
    failed = sum(errors.values())
    section.row("  answers other than 200 during the burst",
                f"{failed} of {during_ms['n']}" + (f" ({', '.join(f'{k}: {v}' for k, v in errors.items())})"
                                                   if failed else ""), "0", failed == 0, check=True)


class _Pollers:
    """The broker's metrics poller and (with a server) the server's allocations poller, together."""

    def __init__(self, broker: BrokerProcess, server: JupyterServer | None, server_user: str):
        self.broker = MetricsPoller(broker)
        try:
            self.server = AllocationsPoller(server, server_user) if server is not None else None
        except BaseException:
            self.broker.close()
            raise

    def stop(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        try:
            broker = self.broker.stop()
        finally:
            server = self.server.stop() if self.server is not None else None
        return broker, server


def _burst(broker: BrokerProcess, hub: FakeHub, cluster: Any, students: list[str], vgpus: int,
           section: Section, idle_seconds: float, server: JupyterServer | None = None) -> None:
    """The burst; with ``server``, students[0]'s launch goes through it (their single-user server)."""
    n = len(students)
    server_user = students[0] if server is not None else ""
    _warm_up(broker, cluster, server, server_user)
    time.sleep(0.5)
    pollers = _Pollers(broker, server, server_user)
    try:
        time.sleep(idle_seconds)
    finally:
        idle, server_idle = pollers.stop()

    bodies = [launch_body(ports) for ports in (lambda p: [p[i:i + 5] for i in range(0, len(p), 5)])(
        free_ports(5 * n))]
    hub_mark = collections.Counter(hub.counts)
    requests_mark = len(cluster.requests)
    pollers = _Pollers(broker, server, server_user)
    cpu_before = broker.cpu()
    server_cpu_before = server.cpu() if server is not None else 0.0

    def one(i: int) -> dict[str, Any]:
        if server is not None and i == 0:
            return server_launch(server, students[i])
        return launch(broker.port, students[i], bodies[i])

    burst_started = time.perf_counter()
    try:
        results = concurrently(n, one, timeout=LAUNCH_TIMEOUT + 120)
    finally:
        during, server_during = pollers.stop()
    burst_seconds = time.perf_counter() - burst_started
    broker_cpu = broker.cpu() - cpu_before
    server_cpu = server.cpu() - server_cpu_before if server is not None else 0.0
    burst_requests = cluster.requests[requests_mark:]
    hub_requests = collections.Counter(hub.counts)
    hub_requests.subtract(hub_mark)

    by_outcome = collections.Counter(r["outcome"] for r in results)
    started = [r for r in results if r["outcome"] == "started"]
    refused = [r for r in results if r["outcome"] == "refused"]
    failed = [r for r in results if r["outcome"] == "failed"]
    unanswered = [r for r in results if r["outcome"] == "unanswered"]
    kinds = collections.Counter(refusal_kind(r) for r in refused)
    with_reason = [r for r in refused + failed if (r.get("message") or "").strip()]
    expected_started = min(n, vgpus)
    non_watch = [r for r in burst_requests if not r.watch]
    watches = [r for r in burst_requests if r.watch]
    by_kind = collections.Counter(f"{r.verb} {r.resource}" for r in non_watch)
    api_per_started = len(non_watch) / len(started) if started else 0.0
    started_ms, refused_ms = _p([r["seconds"] for r in started]), _p([r["seconds"] for r in refused])
    idle_ms, during_ms = _p(idle["latencies"]), _p(during["latencies"])
    pods_seen = len(kernel_pods(cluster))
    samples: dict[str, str] = {}
    for r in refused + failed:
        samples.setdefault(refusal_kind(r) if r["outcome"] == "refused" else f"failed: {r.get('reason')}",
                           r.get("message", ""))

    section.data.update({
        "students": n,
        "vgpus": vgpus,
        "kubelet": "process",
        "outcomes": dict(by_outcome),
        "started": len(started),
        "refused": len(refused),
        "failed": len(failed),
        "unanswered": len(unanswered),
        "refusals_by_kind": dict(kinds),
        "refused_with_reason": sum(1 for r in refused if (r.get("message") or "").strip()),
        "refusal_codes": dict(collections.Counter(r["status"] for r in refused)),
        "sample_messages": samples,
        "unanswered_detail": [r.get("message", "") for r in unanswered][:5],
        "kernel_pods_after_burst": pods_seen,
        "burst_s": round(burst_seconds, 3),
        "started_answer_ms": started_ms,
        "refused_answer_ms": refused_ms,
        "broker_cpu_s": round(broker_cpu, 3),
        "broker_cpu_ms_per_launch": round(broker_cpu * 1000 / n, 1),
        "broker_cpu_ms_per_started": round(broker_cpu * 1000 / len(started), 1) if started else 0.0,
        "api_requests_during_burst": dict(sorted(by_kind.items())),
        "api_requests_per_started_launch": round(api_per_started, 3),
        "watches_opened_during_burst": len(watches),
        "hub_requests_during_burst": {k: v for k, v in sorted(hub_requests.items()) if v},
        "hub_requests_per_launch": round(sum(hub_requests.values()) / n, 3),
        "metrics_idle_ms": idle_ms,
        "metrics_during_burst_ms": during_ms,
        "metrics_errors_idle": idle["errors"],
        "metrics_errors_during_burst": during["errors"],
        "metrics_first_error_during_burst": during["first_error"],
    })
    section.row(f"{n} students launch at once ({vgpus} vGPUs)",
                f"{len(started)} started, {len(refused)} refused, {len(failed)} failed, {len(unanswered)} unanswered "
                f"({fmt_s(burst_seconds)})",
                f"{expected_started} started, {n - expected_started} refused",
                len(started) == expected_started and len(refused) == n - expected_started, check=True)
    section.row("  every launch ended with a kernel or a reason",
                f"{len(started) + len(with_reason)} of {n}; refused: "
                + (", ".join(f"{k}: {v}" for k, v in sorted(kinds.items())) or "none"),
                f"{n} of {n}, refusals quota/capacity",
                len(started) + len(with_reason) == n and not unanswered and kinds.get("other", 0) == 0, check=True)
    section.row("  kernel pods in the cluster after the burst", str(pods_seen), str(len(started)),
                pods_seen == len(started), check=True)
    section.row("time to answer: started (ready line)",
                f"p50 {fmt_s(started_ms['median'] / 1000)}, p95 {fmt_s(started_ms['p95'] / 1000)} "
                f"(n={started_ms['n']})" if started else "-")
    section.row("time to answer: refused (400/409)",
                f"p50 {fmt_ms(refused_ms['median'])}, p95 {fmt_ms(refused_ms['p95'])} (n={refused_ms['n']})"
                if refused else "-")
    section.row("broker CPU per launch (user + system)",
                f"{broker_cpu * 1000 / n:.1f} ms ({broker_cpu:.2f} s in all; "
                f"{section.data['broker_cpu_ms_per_started']:.1f} ms per started)")
    section.row("Kubernetes API requests per started launch (+ watches opened)",
                f"{api_per_started:.2f} (+{len(watches)})")
    section.row("  of which", ", ".join(f"{k}: {v}" for k, v in sorted(by_kind.items())) or "-")
    section.row("  hub API requests per launch",
                f"{section.data['hub_requests_per_launch']:.2f} ("
                + ", ".join(f"{k}: {v}" for k, v in section.data["hub_requests_during_burst"].items()) + ")")
    _loop_rows(section, "broker GET metrics", idle_ms, during_ms, during["errors"])

    if server is not None and server_idle is not None and server_during is not None:
        mine = results[0]
        server_idle_ms, server_during_ms = _p(server_idle["latencies"]), _p(server_during["latencies"])
        section.data.update({
            "server_user": server_user,
            "server_launch": {"answer_ms": round(mine["seconds"] * 1000, 1),
                              **{k: v for k, v in mine.items() if k in ("outcome", "status", "reason", "message")}},
            "server_cpu_s": round(server_cpu, 3),
            "server_allocations_idle_ms": server_idle_ms,
            "server_allocations_during_burst_ms": server_during_ms,
            "server_allocations_errors_idle": server_idle["errors"],
            "server_allocations_errors_during_burst": server_during["errors"],
            "server_allocations_first_error_during_burst": server_during["first_error"],
        })
        if mine["outcome"] == "started":
            how = f"started (201) in {fmt_s(mine['seconds'])}"
        else:
            how = (f"{mine['outcome']} ({mine.get('status', '-')}, {refusal_kind(mine)}) "
                   f"in {fmt_ms(mine['seconds'] * 1000)}")
        section.row(f"  {server_user}'s launch through their server (POST /orion/api/kernels)",
                    f"{how}; server CPU {server_cpu * 1000:.0f} ms during the burst")
        _loop_rows(section, f"{server_user}'s server GET /orion/api/allocations", server_idle_ms, server_during_ms,
                   server_during["errors"])

    direct = [(r["user"], r["kernel_id"]) for r in started if r.get("route") != "server"]
    through_server = [(r["user"], r["kernel_id"]) for r in started if r.get("route") == "server"]
    stopped = _stop_kernels(broker, cluster, direct, server, through_server)
    left = stopped["left"]
    section.data.update({
        "shutdown_s": round(stopped["seconds"], 3),
        "shutdown_codes": stopped["codes"],
        "kernel_pods_left": left["pods"],
        "kernel_secrets_left": left["secrets"],
        "network_policies_left": left["networkpolicies"],
    })
    section.row("stopped through DELETE api/kernels/{id}, then left",
                f"{fmt_s(stopped['seconds'])}; {left['pods']} pods, {left['secrets']} Secrets, "
                f"{left['networkpolicies']} NetworkPolicies", "0 left",
                not any(left.values()) and set(stopped["codes"]) <= {"broker 200", "server 204"}, check=True)


def run(quick: bool = False) -> Section:
    from kubesim import SimNode

    section = Section("broker")
    n, vgpus = (12, 4) if quick else (60, 16)
    students = [f"student-{i + 1:02d}" for i in range(n)]
    node = SimNode("gpu-1", kubelet="process", allocatable={
        "virtaitech.com/gpu": vgpus, "cpu": "256", "memory": "1024Gi", "pods": 110})
    base = tempfile.mkdtemp(prefix="orion-bench-broker-")
    try:
        with ExitStack() as stack:
            dirs = stack.enter_context(jupyter_dirs("broker"))
            cluster = stack.enter_context(sim_cluster([node]))
            hub = FakeHub([*students, WARMUP_USER], secrets.token_hex(16)).start()
            stack.callback(hub.stop)
            broker = BrokerProcess(cluster, hub, base, vgpus).start()
            stack.callback(broker.stop)  # before the cluster stops: it kills every pod process left
            server = stack.enter_context(student_server(cluster, dirs, broker, students[0]))  # stops first
            _burst(broker, hub, cluster, students, vgpus, section, 1.0 if quick else IDLE_SECONDS, server)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return section
