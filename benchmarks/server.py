"""A real ``jupyter server`` (the venv's, a subprocess) on the simulated cluster, and a small client.

The server gets private Jupyter dirs, ``KUBECONFIG`` pointing at the in-process simulated cluster,
``VGPUProvisioner.cluster = kubernetes`` and the orion_jupyter extension; people are told apart
by their tokens (``TokenUsers``, loaded by the server from this package through PYTHONPATH).
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from jupyter_server.auth.identity import IdentityProvider, User

from . import common
from .common import NAMESPACE, ROOT, cpu_seconds, free_port, rss_bytes, stop_process

TOKENS_ENV = "ORION_BENCH_TOKENS"


class TokenUsers(IdentityProvider):
    """Token -> user name from $ORION_BENCH_TOKENS (JSON); runs inside the Jupyter server."""

    def _name(self, handler: Any) -> str | None:
        auth = handler.request.headers.get("Authorization", "")
        token = auth[6:] if auth.lower().startswith("token ") else ""
        return json.loads(os.environ.get(TOKENS_ENV, "{}")).get(token) if token else None

    def get_user(self, handler: Any) -> User | None:
        name = self._name(handler)
        return User(username=name) if name else None

    def is_token_authenticated(self, handler: Any) -> bool:
        return self._name(handler) is not None


class Client:
    """Blocking JSON client with one keep-alive connection per thread."""

    def __init__(self, port: int, tokens: dict[str, str]):
        self.port = port
        self.token_of = {user: token for token, user in tokens.items()}
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        return conn

    def request(self, method: str, path: str, body: Any = None, user: str = "alice") -> tuple[int, Any, float]:
        """(status, JSON body or None, seconds from sending to the whole reply read)."""
        headers = {"Authorization": f"token {self.token_of[user]}"}
        payload = None
        if body is not None or method in ("POST", "PUT"):
            payload = json.dumps(body if body is not None else {})
            headers["Content-Type"] = "application/json"
        for attempt in range(2):
            conn = self._connection()
            started = time.perf_counter()
            try:
                conn.request(method, path, body=payload, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except (ConnectionError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
                continue
            seconds = time.perf_counter() - started
            try:
                parsed = json.loads(data) if data else None
            except ValueError:  # an HTML error page, say
                parsed = {"message": data.decode(errors="replace")[:2000]}
            return response.status, parsed, seconds
        raise AssertionError("unreachable")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class JupyterServer:
    """``jupyter server`` with the orion_jupyter extension, as a subprocess in its own session."""

    def __init__(self, cluster: Any, dirs: dict[str, str], name: str, *, users: tuple[str, ...] = ("alice", "teacher"),
                 instructors: tuple[str, ...] = ("teacher",), launch_timeout: float = 240.0,
                 extra_config: dict[str, Any] | None = None):
        self.cluster = cluster
        self.dirs = dirs
        self.name = name
        self.port = free_port()
        self.tokens = {secrets.token_hex(16): user for user in users}
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(dirs["base"], "jupyter-server.log")
        self.root_dir = os.path.join(dirs["base"], "notebooks")
        os.makedirs(self.root_dir, exist_ok=True)
        self.config = {
            "ServerApp": {
                "jpserver_extensions": {"orion_jupyter": True},
                "identity_provider_class": "benchmarks.server.TokenUsers",
                "ip": "127.0.0.1",
                "port": self.port,
                "port_retries": 0,
                "open_browser": False,
                "root_dir": self.root_dir,
                "authenticate_prometheus": False,
                "allow_root": os.geteuid() == 0,  # CI and containers run as root
            },
            "VGPUProvisioner": {"cluster": "kubernetes", "namespace": NAMESPACE, "launch_timeout": launch_timeout},
            # The activity reporter writes one PATCH per active kernel per interval (not per launch):
            # off, so that the request counts are the launches' own.
            "OrionJupyter": {"instructors": list(instructors), "activity_report_interval": 0},
        }
        for app, values in (extra_config or {}).items():
            self.config.setdefault(app, {}).update(values)
        self.proc: subprocess.Popen | None = None
        self.client = Client(self.port, self.tokens)

    @staticmethod
    def command() -> list[str]:
        script = Path(sys.executable).parent / "jupyter-server"
        return [str(script)] if script.exists() else [sys.executable, "-m", "jupyter_server"]

    def start(self, timeout: float = 90.0) -> JupyterServer:
        with open(os.path.join(self.dirs["config"], "jupyter_server_config.json"), "w") as f:
            json.dump(self.config, f, indent=1)
        env = dict(os.environ)
        env.update({
            "KUBECONFIG": self.cluster.kubeconfig_path,
            "JUPYTER_DATA_DIR": self.dirs["data"],
            "JUPYTER_RUNTIME_DIR": self.dirs["runtime"],
            "JUPYTER_CONFIG_DIR": self.dirs["config"],
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
            TOKENS_ENV: json.dumps(self.tokens),
        })
        env.pop("JUPYTERHUB_USER", None)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), env=env, cwd=self.root_dir, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop(grace=5.0)  # __exit__ does not run when __enter__ fails
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter server exited with code {self.proc.returncode}:\n{self.log_tail()}")
            try:
                status, _, _ = self.client.request("GET", "/api/status")
            except OSError:
                status = 0
            if status == 200:
                status, body, _ = self.client.request("GET", "/orion/api/pool")
                if status != 200:
                    raise RuntimeError(f"the orion_jupyter extension is not serving (GET /orion/api/pool: {status} "
                                       f"{(body or {}).get('message', '')[:200]}):\n{self.log_tail()}")
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"jupyter server not up within {timeout:g} s:\n{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def rss(self) -> int:
        assert self.proc is not None
        return rss_bytes(self.proc.pid)

    def cpu(self) -> float:
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)

    def token(self, user: str) -> str:
        return self.client.token_of[user]

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM (the server shuts its kernels down), SIGKILL to its process group after ``grace``."""
        self.client.close()
        if self.proc is not None:
            stop_process(self.proc, grace=grace)
        keep = common.LOG_DIR
        if keep is not None and os.path.exists(self.log_path):
            os.makedirs(keep, exist_ok=True)
            shutil.copyfile(self.log_path, os.path.join(keep, f"{self.name}-jupyter-server.log"))

    def __enter__(self) -> JupyterServer:
        return self.start()

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        self.stop(30.0 if exc_type is None else 5.0)  # after a failure or Ctrl-C: do not linger


class Poller:
    """GET /api/status every ``interval`` seconds from a separate process (python -m benchmarks.poller),
    so that the measuring client shares no interpreter (and no GIL) with the simulated cluster."""

    def __init__(self, server: JupyterServer, user: str = "alice", interval: float = 0.02):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.poller", server.url + "/api/status", server.token(user), str(interval)],
            cwd=str(ROOT), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )
        line = self.proc.stdout.readline()  # "ready" once it has its first answer
        if line.strip() != "ready":
            err = self.proc.stderr.read() if self.proc.poll() is not None else ""
            self.close()
            raise RuntimeError(f"the status poller did not start: {line!r} {err}")

    def stop(self) -> dict[str, Any]:
        """Stops polling: {"latencies": [seconds, ...], "errors": {status: count}, "first_error": text}."""
        if self.proc.poll() is not None and self.proc.stdin.closed:
            raise RuntimeError("the status poller was already stopped")
        try:
            out, err = self.proc.communicate("stop\n", timeout=30)
        except subprocess.TimeoutExpired:
            self.close()
            raise RuntimeError("the status poller did not stop") from None
        if self.proc.returncode != 0:
            raise RuntimeError(f"the status poller failed: {err}")
        return json.loads(out)

    def close(self) -> None:
        stop_process(self.proc, grace=2.0)
