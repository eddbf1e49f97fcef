"""tests/hub.py: a real JupyterHub (proxy, a managed service, users, groups, single-user servers) works."""

import sys

import psutil

from tests.helpers import eventually_async
from tests.hub import HubHTTPError, hub_service

# A managed service: answers GET on $JUPYTERHUB_SERVICE_URL with 200 and the service's name.
SERVICE = """\
import os
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import urlsplit


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = (os.environ["JUPYTERHUB_SERVICE_NAME"] + " " + self.path).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


url = urlsplit(os.environ["JUPYTERHUB_SERVICE_URL"])
HTTPServer((url.hostname, url.port), Handler).serve_forever()
"""


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_hub_service_users_groups_and_a_kernel_through_the_proxy(hub_factory, tmp_path):
    script = tmp_path / "echo_service.py"
    script.write_text(SERVICE)
    hub = hub_factory(services=[hub_service("echo", [sys.executable, str(script)], scopes=["list:users"])],
                      users=["alice", "bob"], groups={"instructors": {"users": ["teacher"]}})

    users = {u["name"]: u for u in await hub.api("GET", "users")}
    assert {"alice", "bob", "teacher"} <= set(users)
    assert (await hub.api("GET", "groups/instructors"))["users"] == ["teacher"]
    await hub.wait_for_service("echo")
    assert await hub.service_api("echo", "GET", "ping") == "echo /services/echo/ping"

    server = await hub.start_server("alice")
    server_pid = server["state"]["pid"]
    assert psutil.pid_exists(server_pid)
    kernel = await hub.server_api("alice", "POST", "api/kernels", {})
    assert kernel["name"] == "python3"
    assert await hub.kernel_ws_execute("alice", kernel["id"], "print(1+1)") == "2"
    kernel_pid = int(await hub.kernel_ws_execute("alice", kernel["id"], "import os; print(os.getpid())"))
    home = await hub.kernel_ws_execute("alice", kernel["id"], "print(os.environ['HOME'], os.getcwd())")
    assert home == f"{hub.home('alice')} {hub.home('alice')}"

    # Her server's own token reaches the service and the hub only as far as server_token_scopes allow.
    token = await hub.server_token("alice")
    assert (await hub.api("GET", "user", token=token))["name"] == "alice"
    try:
        await hub.api("GET", "users", token=token)
        raise AssertionError("alice's server token listed users")
    except HubHTTPError as exc:
        assert exc.code == 403, exc
    scopes = set((await hub.api("GET", "user", token=token))["scopes"])
    assert "access:services!service=echo" in scopes, scopes
    # Bob's token cannot reach alice's server.
    try:
        await hub.server_api("alice", "GET", "api/kernels", token=await hub.user_token("bob"))
        raise AssertionError("bob reached alice's server")
    except HubHTTPError as exc:
        assert exc.code == 403, exc

    await hub.stop_server("alice")
    await eventually_async(lambda: gone(server_pid) and gone(kernel_pid), timeout=15, interval=0.1,
                           message="alice's server or kernel survived stop_server")
    assert "" not in (await hub.user_model("alice"))["servers"]

    hub.stop()
    assert hub.process.returncode is not None
    assert not hub.processes()
