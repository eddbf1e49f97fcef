"""A class on a real JupyterHub: the vGPU broker as an external hub service on the simulated cluster,
students in group AI_101 (a course whose hub group is not its own DNS slug), an instructor in group
instructors (tests/test_hub*.py)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from orion_jupyter import kernelspecs
from orion_jupyter.vgpu import VGPURequest
from tests.hub import HubHTTPError, free_port, hub_service

NS = "hub-class"
BROKER = "orion-broker"
BROKER_SCOPES = ["list:users", "read:users", "read:users:groups", "read:servers"]
SPEC = "orion-1x1gi"
COURSE = "AI_101"  # the students' hub group; its label value on pods is only a slug of it


class BrokerProcess:
    """The broker as an external hub service, so a test can SIGKILL and restart it."""

    def __init__(self, tmp_path: Path, kubeconfig: str, home_root: Path, token: str, port: int,
                 config: list[str] | Callable[[], list[str]]):
        self.config = tmp_path / "broker_config.py"
        self.home_root = home_root
        self.extra_config = config
        self.env = {**os.environ, "KUBECONFIG": kubeconfig, "JUPYTERHUB_SERVICE_NAME": BROKER,
                    "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{port}", "JUPYTERHUB_API_TOKEN": token,
                    "JUPYTERHUB_SERVICE_PREFIX": f"/services/{BROKER}/"}
        self.log = tmp_path / "broker.log"
        self.process: subprocess.Popen | None = None

    def write_config(self) -> None:
        """The config file, written at each start (``config`` may be a function of the time it is called)."""
        home_root, extra = self.home_root, self.extra_config
        self.config.write_text("\n".join([
            f"c.VGPUProvisioner.namespace = {NS!r}",
            "c.VGPUProvisioner.launch_timeout = 60.0",
            f"c.Broker.volumes = [{{'name': 'home', 'hostPath': {{'path': {str(home_root)!r} + '/{{username}}'}}}}]",
            "c.Broker.volume_mounts = [{'name': 'home', 'mountPath': '/home/jovyan'}]",
            "c.Broker.home_mount_path = '/home/jovyan'",
            "c.Broker.reap_interval = 1.0",
            "c.Broker.reap_grace = 0.0",
            *(extra() if callable(extra) else extra),
        ]))

    def start(self, hub_api_url: str) -> None:
        self.write_config()
        self.env["JUPYTERHUB_API_URL"] = hub_api_url
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "orion_jupyter.cli", "broker", "--config",
                                             str(self.config)], env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@contextmanager
def class_hub_with(hub_factory, sim_cluster, tmp_path: Path, broker_config: list[str] | Callable[[], list[str]], *,
                   users: list[str], instructors: tuple[str, ...] = ("teacher",),
                   groups: dict[str, list[str]] | None = None,
                   singleuser_env: dict[str, str] | None = None) -> Iterator[tuple]:
    """A hub with ``users`` (those not in ``instructors`` in group COURSE, or as ``groups`` says) and the
    broker configured by ``broker_config`` (lines of its config file); yields (hub, broker)."""
    specs = tmp_path / "specs"
    kernelspecs.install(kernelspecs.VGPUKernelSpec(name=SPEC, request=VGPURequest.parse(1, "1Gi")), prefix=str(specs))
    port, token = free_port(), secrets.token_hex(16)
    broker = BrokerProcess(tmp_path, sim_cluster.kubeconfig_path, tmp_path / "home", token, port, broker_config)
    hub = hub_factory(
        services=[hub_service(BROKER, port=port, api_token=token, scopes=BROKER_SCOPES)],
        users=users,
        groups={"instructors": {"users": list(instructors)},
                **{group: {"users": members} for group, members in (
                    groups or {COURSE: [u for u in users if u not in instructors]}).items()}},
        singleuser_env={"JUPYTER_PATH": str(specs / "share" / "jupyter"),
                        "ORION_JUPYTER_BROKER_URL": f"http://127.0.0.1:{port}/services/{BROKER}/",
                        **(singleuser_env or {})})
    broker.start(hub.api_url)
    try:
        yield hub, broker
    finally:
        broker.stop()
        print(broker.log.read_text(errors="replace")[-4000:])


def culling_course(vgpus: int, idle: int, warning: int, keeps: int) -> list[str]:
    """Broker config of course COURSE with a queue and quick idle culling (checked every 0.5 s)."""
    return [f"c.Broker.courses = {{{COURSE!r}: {{'vgpus': {vgpus}, 'queue': True, 'cull_idle_seconds': {idle}, "
            f"'cull_warning_seconds': {warning}, 'cull_max_keeps': {keeps}}}}}",
            "c.Broker.cull_interval_seconds = 0.5", "c.Broker.queue_keepalive = 1.0"]


def kernel_objects(cluster) -> dict[str, list[str]]:
    return {plural: [o["metadata"]["name"] for o in cluster.objects(plural, NS)]
            for plural in ("pods", "secrets", "networkpolicies")}


async def start_vgpu_kernel(hub, user: str, **fields) -> dict:
    return await hub.server_api(user, "POST", "orion/api/kernels", {"spec": SPEC, **fields})


def pod_users(cluster) -> list[str]:
    """The users of the kernel pods in the class namespace, sorted."""
    return sorted(p["metadata"]["annotations"]["orion-jupyter.io/user"] for p in cluster.objects("pods", NS))


async def refused(call) -> tuple[int, dict]:
    """The status and JSON body of a hub request that must be refused."""
    with pytest.raises(HubHTTPError) as caught:
        await call
    return caught.value.code, json.loads(caught.value.body)
