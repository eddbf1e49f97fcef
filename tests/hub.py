"""A real JupyterHub for tests: `jupyterhub` from this venv, configurable-http-proxy from tests/hub (npm).

    hub = hub_factory(services=[hub_service("broker", [sys.executable, "broker.py"], scopes=[...])],
                      users=["alice"], groups={"instructors": {"users": ["teacher"]}})
    await hub.start_server("alice")
    kernel = await hub.server_api("alice", "POST", "api/kernels", {})
    assert await hub.kernel_ws_execute("alice", kernel["id"], "print(1+1)") == "2"

`start_hub` (and the `hub_factory` fixture, which stops every hub it started at the end of the test) is
synchronous; the Hub's HTTP methods are coroutines (tornado's AsyncHTTPClient). Single-user servers are
`jupyterhub.singleuser` processes of this OS user (SimpleLocalProcessSpawner), HOME under
tmp_path/"home"/<user>, so this venv's Jupyter config (the orion-jupyter server extension included) loads.
Every wait is bounded; a failure quotes the tail of the hub's log (the single-user servers log there too).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

ROOT = Path(__file__).resolve().parent.parent
CHP = ROOT / "tests" / "hub" / "node_modules" / ".bin" / "configurable-http-proxy"

# The harness's own identity: a service with an API token and admin-like scopes (api_tokens is deprecated).
ADMIN_SERVICE = "test-admin"
ADMIN_SCOPES = ["admin:users", "admin:servers", "admin:groups", "tokens", "list:users", "read:users",
                "access:servers", "list:services", "read:services", "read:hub", "proxy"]
# JupyterHub's default scopes of a single-user server's $JUPYTERHUB_API_TOKEN: the `server` role in
# jupyterhub/roles.py (kept as they are; access to the test's services is added to them).
SERVER_TOKEN_DEFAULT_SCOPES = ["users:activity!user", "access:servers!server"]


class HubHTTPError(AssertionError):
    """A non-2xx answer from the hub, a service or a single-user server; the body is in the message."""

    def __init__(self, method: str, url: str, code: int, body: bytes):
        self.method, self.url, self.code, self.body = method, url, code, body
        super().__init__(f"{method} {url}: HTTP {code}: {body.decode(errors='replace')[:2000]}")

    def json(self) -> Any:
        return json.loads(self.body)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (picked by the kernel; free when returned)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def hub_service(name: str, command: list[str] | None = None, *, scopes: list[str] | None = None,
                port: int | None = None, **extra: Any) -> dict:
    """A `c.JupyterHub.services` entry: managed (with `command`) on a free loopback port.

    The service finds its address in $JUPYTERHUB_SERVICE_URL (JupyterHub sets it to `url`); the proxy
    routes /services/<name>/ to it. `scopes` (not a JupyterHub key: start_hub turns it into a role for
    the service) are what the service's own $JUPYTERHUB_API_TOKEN may do, e.g. ["list:users",
    "read:users:groups", "read:servers", "delete:servers"]. `extra`: any other service keys
    ("environment", "cwd", "oauth_no_confirm", "display", ...).
    """
    spec: dict[str, Any] = {"name": name, **extra}
    if command is not None:
        spec["command"] = list(command)
    if command is not None or port is not None:
        spec.setdefault("url", f"http://127.0.0.1:{port or free_port()}")
    if scopes is not None:
        spec["scopes"] = list(scopes)
    return spec


@dataclass
class Hub:
    """A running JupyterHub. `port`: the proxy (public) port; `hub_port`: the hub's own API."""

    process: subprocess.Popen
    dir: Path
    log_path: Path
    port: int
    hub_port: int
    proxy_api_port: int
    admin_token: str
    password: str
    services: dict[str, dict]
    home_template: str
    _tokens: dict[str, str] = field(default_factory=dict)
    _stopped: bool = False

    # --- addresses -----------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The proxy's public URL (http://127.0.0.1:<port>)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        """The hub's REST API, straight to the hub (not through the proxy)."""
        return f"http://127.0.0.1:{self.hub_port}/hub/api"

    def service_url(self, name: str) -> str:
        """A service's public URL through the proxy: http://127.0.0.1:<port>/services/<name>/."""
        assert name in self.services, f"no service {name!r}; have {sorted(self.services)}"
        return f"{self.url}/services/{name}/"

    def service_direct_url(self, name: str) -> str:
        """Where the service itself listens (its `url`), bypassing the proxy."""
        return self.services[name]["url"]

    def user_url(self, user: str, path: str = "") -> str:
        """The user's single-user server through the proxy: http://127.0.0.1:<port>/user/<user>/<path>."""
        return f"{self.url}/user/{user}/{path.lstrip('/')}"

    def home(self, user: str) -> Path:
        return Path(self.home_template.format(username=user))

    # --- diagnostics -------------------------------------------------------------------------------------
    def log_tail(self, lines: int = 80) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no hub log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def _fail(self, message: str) -> AssertionError:
        return AssertionError(f"{message}\n--- tail of {self.log_path} ---\n{self.log_tail()}")

    # --- HTTP --------------------------------------------------------------------------------------------
    async def fetch(self, method: str, url: str, body: Any = None, token: str | None = None, *,
                    headers: dict | None = None, timeout: float = 30) -> Any:
        """One request: JSON in (dicts/lists) and out (None for an empty body); HubHTTPError if not 2xx."""
        if self.process.poll() is not None and not self._stopped:
            raise self._fail(f"the hub exited with {self.process.returncode}")
        all_headers = {"Authorization": f"token {token}"} if token else {}
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
            all_headers["Content-Type"] = "application/json"
        if body is None and method in ("POST", "PUT", "PATCH"):
            body = ""
        all_headers.update(headers or {})
        request = HTTPRequest(url, method=method, body=body, headers=all_headers, request_timeout=timeout,
                              connect_timeout=timeout, follow_redirects=False,
                              allow_nonstandard_methods=method == "DELETE" and body is not None)
        try:
            response = await AsyncHTTPClient().fetch(request)
        except HTTPClientError as exc:
            if exc.response is None:  # 599: timeout or connection error
                raise HubHTTPError(method, url, exc.code, str(exc).encode()) from None
            raise HubHTTPError(method, url, exc.code, exc.response.body or b"") from None
        if not response.body:
            return None
        try:
            return json.loads(response.body)
        except ValueError:
            return response.body.decode(errors="replace")

    async def api(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        """The hub's REST API (`path` after /hub/api/), as the test-admin service unless `token` is given."""
        return await self.fetch(method, f"{self.api_url}/{path.lstrip('/')}", body, token or self.admin_token)

    async def ensure_user(self, user: str) -> dict:
        try:
            return await self.api("GET", f"users/{user}")
        except HubHTTPError as exc:
            if exc.code != 404:
                raise
        try:
            return await self.api("POST", f"users/{user}")
        except HubHTTPError as exc:
            if exc.code != 409:  # created meanwhile
                raise
            return await self.api("GET", f"users/{user}")

    async def user_model(self, user: str) -> dict:
        return await self.api("GET", f"users/{user}")

    async def start_server(self, user: str, options: dict | None = None, timeout: float = 90) -> dict:
        """Starts the user's default server (creating the user if needed); returns its model once ready.

        The model's "state" holds the spawner's "pid" (the test-admin service reads server state).
        """
        await self.ensure_user(user)
        try:
            await self.api("POST", f"users/{user}/server", options or {})
        except HubHTTPError as exc:
            if exc.code >= 500:
                raise self._fail(f"{user}'s server failed to start: {exc}") from None
            if exc.code != 400 or b"already running" not in exc.body:
                raise
        deadline, seen_pending = time.monotonic() + timeout, False
        while True:
            model = await self.user_model(user)
            server = model.get("servers", {}).get("")
            if server and server.get("ready"):
                return server
            if server or model.get("pending"):
                seen_pending = True
            elif seen_pending:
                raise self._fail(f"{user}'s server failed to start")
            if time.monotonic() > deadline:
                raise self._fail(f"{user}'s server was not ready after {timeout:g} s: {model}")
            await asyncio.sleep(0.2)

    async def server_pid(self, user: str) -> int:
        """The pid of the user's running single-user server (from the spawner's state)."""
        server = (await self.user_model(user)).get("servers", {}).get("")
        assert server and server.get("state", {}).get("pid"), f"{user} has no running server: {server}"
        return int(server["state"]["pid"])

    async def server_env(self, user: str) -> dict[str, str]:
        """The environment of the user's single-user server (/proc/<pid>/environ; same OS user)."""
        pid = await self.server_pid(user)
        raw = Path(f"/proc/{pid}/environ").read_bytes()
        return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)

    async def server_token(self, user: str) -> str:
        """The single-user server's own $JUPYTERHUB_API_TOKEN (Spawner.server_token_scopes)."""
        return (await self.server_env(user))["JUPYTERHUB_API_TOKEN"]

    async def stop_server(self, user: str, timeout: float = 60) -> None:
        """Stops the user's default server and waits until the hub says it is gone."""
        try:
            await self.api("DELETE", f"users/{user}/server")
        except HubHTTPError as exc:
            if exc.code not in (400, 404):  # not running
                raise
        deadline = time.monotonic() + timeout
        while True:
            model = await self.user_model(user)
            if "" not in model.get("servers", {}) and not model.get("pending"):
                return
            if time.monotonic() > deadline:
                raise self._fail(f"{user}'s server did not stop in {timeout:g} s: {model}")
            await asyncio.sleep(0.2)

    async def user_token(self, user: str, scopes: list[str] | None = None, note: str = "tests/hub.py") -> str:
        """A new API token of the user (POST users/<user>/tokens); scopes default to all the user's own."""
        await self.ensure_user(user)
        body: dict[str, Any] = {"note": note}
        if scopes is not None:
            body["scopes"] = list(scopes)
        return (await self.api("POST", f"users/{user}/tokens", body))["token"]

    async def _token_for(self, user: str) -> str:
        if user not in self._tokens:
            self._tokens[user] = await self.user_token(user)
        return self._tokens[user]

    async def server_api(self, user: str, method: str, path: str, body: Any = None, *,
                         token: str | None = None, timeout: float = 60) -> Any:
        """The user's single-user server THROUGH THE PROXY (/user/<user>/<path>), with a token of the user."""
        return await self.fetch(method, self.user_url(user, path), body, token or await self._token_for(user),
                                timeout=timeout)

    async def service_api(self, name: str, method: str, path: str = "", body: Any = None, *,
                          token: str | None = None, timeout: float = 30) -> Any:
        """A service through the proxy (/services/<name>/<path>); no Authorization header without `token`."""
        return await self.fetch(method, self.service_url(name) + path.lstrip("/"), body, token, timeout=timeout)

    async def wait_for_service(self, name: str, path: str = "", timeout: float = 30) -> None:
        """Waits until the proxy routes to the service and it answers (anything but a 5xx/599)."""
        deadline, last = time.monotonic() + timeout, None
        while True:
            try:
                await self.service_api(name, "GET", path, timeout=5)
                return
            except HubHTTPError as exc:
                if exc.code < 500:
                    return
                last = exc
            if time.monotonic() > deadline:
                raise self._fail(f"service {name} did not answer in {timeout:g} s: {last}")
            await asyncio.sleep(0.2)

    async def kernel_ws_execute(self, user: str, kernel_id: str, code: str, *, token: str | None = None,
                                timeout: float = 60) -> str:
        """Runs `code` in a kernel of the user's server over the proxy's websocket; returns its stdout (stripped).

        An error in the kernel raises AssertionError with the traceback.
        """
        url = self.user_url(user, f"api/kernels/{kernel_id}/channels").replace("http://", "ws://", 1)
        headers = {"Authorization": f"token {token or await self._token_for(user)}"}
        ws = await asyncio.wait_for(websocket_connect(HTTPRequest(url, headers=headers)), timeout)
        try:
            msg_id = uuid.uuid4().hex
            await ws.write_message(json.dumps({
                "header": {"msg_id": msg_id, "msg_type": "execute_request", "session": uuid.uuid4().hex,
                           "username": user, "version": "5.3", "date": ""},
                "parent_header": {}, "metadata": {}, "channel": "shell",
                "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                            "allow_stdin": False},
            }))
            output, deadline = "", time.monotonic() + timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._fail(f"no idle status from kernel {kernel_id} in {timeout:g} s; stdout so far "
                                     f"{output!r}")
                raw = await asyncio.wait_for(ws.read_message(), remaining)
                if raw is None:
                    raise self._fail(f"the websocket of kernel {kernel_id} closed; stdout so far {output!r}")
                msg = json.loads(raw)
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                if msg["msg_type"] == "stream" and msg["content"].get("name") == "stdout":
                    output += msg["content"]["text"]
                elif msg["msg_type"] == "error":
                    raise AssertionError("\n".join(msg["content"].get("traceback", [])) or msg["content"])
                elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    return output.strip()
        finally:
            ws.close()

    # --- shutdown ----------------------------------------------------------------------------------------
    def processes(self) -> list[psutil.Process]:
        """The hub and everything under it now (proxy, services, single-user servers, kernels)."""
        try:
            hub = psutil.Process(self.process.pid)
            return [hub, *hub.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM to the hub (it stops its servers, services and the proxy); then SIGKILL whatever is left.

        Idempotent. Kills the hub's process group and every process that was under the hub when stop began
        (spawners and the proxy start their children in new sessions, so the group alone is not enough).
        """
        if self._stopped:
            return
        self._stopped = True
        tree = [p for p in self.processes() if p.pid != self.process.pid]
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        _, alive = psutil.wait_procs(tree, timeout=5)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)


def _wait_until_up(hub: Hub, timeout: float) -> None:
    """The hub answers /hub/api/user with the test-admin token, directly and through the proxy."""
    deadline, last = time.monotonic() + timeout, None
    urls = [f"{hub.api_url}/user", f"{hub.url}/hub/api/user"]
    while urls:
        if hub.process.poll() is not None:
            raise hub._fail(f"jupyterhub exited with {hub.process.returncode} while starting")
        request = urllib.request.Request(urls[0], headers={"Authorization": f"token {hub.admin_token}"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                json.loads(response.read())
            urls.pop(0)
            continue
        except (OSError, ValueError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise hub._fail(f"jupyterhub did not answer {urls[0]} in {timeout:g} s: {last!r}")
        time.sleep(0.1)


def start_hub(tmp_path: Path, *, services: list[dict] = (), users: list[str] = (), groups: dict | None = None,
              singleuser_env: dict[str, str] | None = None, extra_config: str = "", roles: list[dict] = (),
              admin_users: list[str] = (), user_scopes: list[str] | None = None,
              server_token_scopes: list[str] | None = None, start_timeout: float = 60,
              timeout: float = 60) -> Hub:
    """Starts JupyterHub with a generated jupyterhub_config.py under tmp_path/"jupyterhub[-N]"; returns once up.

    - services: `c.JupyterHub.services` entries (see hub_service); a "scopes" key becomes a role of that
      service. A "test-admin" service (ADMIN_SCOPES, token in Hub.admin_token) is added for the harness.
    - users: allowed users (created at start); `allow_all` is on as well, so any name may log in
      (DummyAuthenticator, password Hub.password) or be created through the API.
    - groups: `c.JupyterHub.load_groups`, {"instructors": {"users": ["teacher"], "properties": {...}}}
      (a plain list of names is accepted as {"users": [...]}).
    - singleuser_env: `c.Spawner.environment` (JUPYTER_PATH, JUPYTER_CONFIG_DIR, ...); KUBECONFIG defaults
      to a missing file. The spawner passes on only PATH, VIRTUAL_ENV, LANG, ... of this process's env.
    - roles: more `c.JupyterHub.load_roles` entries. user_scopes: the "user" role (default: "self" and
      access to every service given); server_token_scopes: default the server role's scopes plus
      "access:services!service=<name>" for each service given (a user's server can reach the services).
    - extra_config: Python appended to jupyterhub_config.py (`c` is the config).
    """
    assert CHP.exists(), f"{CHP} is missing: (cd tests/hub && npm ci --no-audit --no-fund)"
    index, state = 0, tmp_path / "jupyterhub"
    while state.exists():
        index += 1
        state = tmp_path / f"jupyterhub-{index}"
    state.mkdir(parents=True)
    home_template = str(tmp_path / "home" / "{username}")
    port, hub_port, proxy_api_port = free_port(), free_port(), free_port()
    while len({port, hub_port, proxy_api_port}) < 3:
        hub_port, proxy_api_port = free_port(), free_port()
    admin_token, password = uuid.uuid4().hex, uuid.uuid4().hex[:12]

    hub_services, service_roles = [], []
    for spec in services:
        spec = dict(spec)
        scopes = spec.pop("scopes", None)
        if scopes is not None:
            service_roles.append({"name": f"service-{spec['name']}", "scopes": scopes, "services": [spec["name"]]})
        hub_services.append(spec)
    hub_services.append({"name": ADMIN_SERVICE, "api_token": admin_token})
    service_names = [s["name"] for s in hub_services if s["name"] != ADMIN_SERVICE]
    access = [f"access:services!service={name}" for name in service_names]
    load_roles = [
        {"name": "user", "scopes": user_scopes if user_scopes is not None else ["self", *access]},
        {"name": "test-admin", "scopes": ADMIN_SCOPES, "services": [ADMIN_SERVICE]},
        *service_roles, *roles,
    ]
    load_groups = {name: ({"users": list(g)} if isinstance(g, (list, tuple, set)) else g)
                   for name, g in (groups or {}).items()}
    environment = {"KUBECONFIG": str(tmp_path / "no-kubeconfig"), **(singleuser_env or {})}
    settings = {
        "JupyterHub.bind_url": f"http://127.0.0.1:{port}",
        "JupyterHub.hub_ip": "127.0.0.1",
        "JupyterHub.hub_port": hub_port,
        "ConfigurableHTTPProxy.api_url": f"http://127.0.0.1:{proxy_api_port}",
        "ConfigurableHTTPProxy.command": [str(CHP)],
        "ConfigurableHTTPProxy.pid_file": str(state / "jupyterhub-proxy.pid"),
        "JupyterHub.db_url": f"sqlite:///{state / 'jupyterhub.sqlite'}",
        "JupyterHub.cookie_secret_file": str(state / "jupyterhub_cookie_secret"),
        "JupyterHub.pid_file": str(state / "jupyterhub.pid"),
        "JupyterHub.authenticator_class": "dummy",
        "DummyAuthenticator.password": password,
        "Authenticator.allowed_users": sorted(users),
        "Authenticator.allow_all": True,
        "Authenticator.admin_users": sorted(admin_users),
        "JupyterHub.spawner_class": "simple",
        "SimpleLocalProcessSpawner.home_dir_template": home_template,
        "Spawner.cmd": [sys.executable, "-m", "jupyterhub.singleuser"],
        # Jupyter Server refuses to run as root without it (CI containers run tests as root).
        "Spawner.args": ["--allow-root"] if os.geteuid() == 0 else [],
        "Spawner.environment": environment,
        "Spawner.start_timeout": int(start_timeout),
        "Spawner.http_timeout": int(start_timeout),
        "Spawner.server_token_scopes": (server_token_scopes if server_token_scopes is not None
                                        else [*SERVER_TOKEN_DEFAULT_SCOPES, *access]),
        "JupyterHub.services": hub_services,
        "JupyterHub.load_roles": load_roles,
        "JupyterHub.load_groups": load_groups,
        "JupyterHub.cleanup_servers": True,
        "JupyterHub.cleanup_proxy": True,
        "JupyterHub.log_level": "DEBUG",
    }
    lines = ["# Written by tests/hub.py:start_hub.", "import json", "c = get_config()  # noqa: F821"]
    lines += [f"c.{key} = json.loads({json.dumps(value)!r})" for key, value in settings.items()]
    config = state / "jupyterhub_config.py"
    config.write_text("\n".join(lines) + "\n\n" + extra_config + "\n")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "JPY_", "CONFIGPROXY"))}
    # The spawner keeps PATH: the venv's bin first, so `jupyter`, `python` in a kernel are this venv's.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', os.defpath)}"
    env["HOME"] = str(state)
    log_path = state / "jupyterhub.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", str(config)], cwd=state, env=env,
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    hub = Hub(process=process, dir=state, log_path=log_path, port=port, hub_port=hub_port,
              proxy_api_port=proxy_api_port, admin_token=admin_token, password=password,
              services={s["name"]: s for s in hub_services}, home_template=home_template)
    try:
        _wait_until_up(hub, timeout)
    except BaseException:
        hub.stop()
        raise
    return hub


@pytest.fixture
def hub_factory(tmp_path):
    """`hub_factory(**start_hub keywords) -> Hub` in this test's tmp_path; every hub is stopped afterwards."""
    hubs: list[Hub] = []

    def factory(**kwargs: Any) -> Hub:
        hub = start_hub(tmp_path, **kwargs)
        hubs.append(hub)
        return hub

    yield factory
    for hub in reversed(hubs):
        hub.stop()
