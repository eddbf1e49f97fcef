"""The checks that start something: a NetworkPolicy probe (two short-lived pods) and a canary kernel pod.

Both are made as the real thing is: the probe's policy is hub mode's own (`kernel_network_policy`),
the canary goes through `KubeCluster.launch` with the kernel pod this configuration builds. Whatever
they create carries the project's labels and is deleted in a ``finally`` (interrupts included: the
CLI turns SIGTERM into a cancellation), so a check leaves nothing; `orion-jupyter gc` would collect
anything a killed process left.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import queue
import secrets
import time
import uuid
from typing import Any

from jupyter_client.asynchronous import AsyncKernelClient
from kubernetes import client
from kubernetes.client.rest import ApiException

from ..errors import KernelLaunchError
from ..k8s.cluster import KubeCluster
from ..k8s.driver import pod_options
from ..k8s.hub_manifests import kernel_network_policy
from ..k8s.manifests import build_kernel_manifests
from ..launch import KernelLaunch
from ..names import LABEL_COMPONENT, LABEL_KERNEL_ID, LABEL_MANAGED_BY, MANAGED_BY
from ..vgpu import VGPURequest
from ..wire import connection_info, fresh_ports
from .cluster_checks import CheckSettings, _api_error
from .report import Report

CHECK_USER = "orion-jupyter-check"
PROBE_PORT = 45123
# The probe's client: exit 0 when it reached the server despite the policy, 3 when it could not.
_CLIENT = ("import os, socket, sys, time\n"
           "time.sleep(2)\n"  # a CNI applies a new policy within moments
           "s = socket.socket()\n"
           "s.settimeout(3)\n"
           "try:\n"
           "    s.connect((os.environ['TARGET'], int(os.environ['PORT'])))\n"
           "except OSError:\n"
           "    sys.exit(3)\n"
           "sys.exit(0)\n")
_SERVER = ("import os, socket\n"
           "s = socket.socket()\n"
           "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
           "s.bind((os.environ.get('POD_IP', '0.0.0.0'), int(os.environ['PORT'])))\n"
           "s.listen(8)\n"
           "while True:\n"
           "    s.accept()[0].close()\n")


def _probe_pod(name: str, settings: CheckSettings, code: str, env: dict[str, str], labels: dict[str, str]) -> dict:
    pod = settings.provisioner.pod_settings()
    container = {
        "name": "probe", "image": pod.image, "imagePullPolicy": pod.image_pull_policy,
        "command": [pod.python, "-c", code],
        "env": [{"name": k, "value": v} for k, v in env.items()]
        + [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                            "runAsNonRoot": True, "runAsUser": pod.run_as_user, "runAsGroup": pod.run_as_group,
                            "seccompProfile": {"type": "RuntimeDefault"}},
    }
    spec: dict[str, Any] = {"restartPolicy": "Never", "automountServiceAccountToken": False,
                            "enableServiceLinks": False, "containers": [container],
                            "activeDeadlineSeconds": 300}  # a probe left by a killed check ends by itself
    if pod.node_selector:
        spec["nodeSelector"] = dict(pod.node_selector)
    if pod.tolerations:
        spec["tolerations"] = [dict(t) for t in pod.tolerations]
    labels = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_COMPONENT: "check", **labels}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}, "spec": spec}


async def _wait_pod(core: client.CoreV1Api, namespace: str, name: str, done: Any, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        pod = (await asyncio.to_thread(core.read_namespaced_pod, name, namespace)).to_dict()
        if done(pod) or time.monotonic() > deadline:
            return pod
        await asyncio.sleep(0.2)


def _running_ip(pod: dict) -> bool:
    status = pod.get("status") or {}
    return status.get("phase") in ("Running", "Succeeded", "Failed") and bool(status.get("pod_ip"))


def _finished(pod: dict) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


async def check_network_policy(report: Report, api: client.ApiClient, settings: CheckSettings) -> None:
    """Hub mode fences every kernel's ports with a NetworkPolicy: does this cluster enforce it?"""
    category = "Network policy"
    core = client.CoreV1Api(api)
    networking = client.NetworkingV1Api(api)
    ns, tag = settings.namespace, secrets.token_hex(3)
    server_name, client_name = f"orion-check-target-{tag}", f"orion-check-probe-{tag}"
    created: list[tuple[Any, str]] = []
    try:
        try:
            target_pod = _probe_pod(server_name, settings, _SERVER, {"PORT": str(PROBE_PORT)},
                                    {LABEL_KERNEL_ID: server_name})
            server = core.create_namespaced_pod(ns, target_pod)
            created.append((core.delete_namespaced_pod, server_name))
            policy = kernel_network_policy(server_name, ns, server_name, CHECK_USER, [PROBE_PORT],
                                           owner_pod=server.to_dict())
            networking.create_namespaced_network_policy(ns, policy)
            created.append((networking.delete_namespaced_network_policy, server_name))
        except ApiException as err:
            report.warn(category, "NetworkPolicy enforcement was not probed", "hub mode needs to create pods and "
                        "NetworkPolicies (orion-jupyter manifests --hub); direct mode makes no policies",
                        error=_api_error(err))
            return
        server_pod = await _wait_pod(core, ns, server_name, _running_ip, settings.timeout)
        if not _running_ip(server_pod):
            report.warn(category, "NetworkPolicy enforcement was not probed: the probe's target pod did not start",
                        "see the canary's result below", phase=(server_pod.get("status") or {}).get("phase"))
            return
        target = server_pod["status"]["pod_ip"]
        core.create_namespaced_pod(ns, _probe_pod(client_name, settings, _CLIENT,
                                                  {"TARGET": target, "PORT": str(PROBE_PORT)}, {}))
        created.append((core.delete_namespaced_pod, client_name))
        probe = await _wait_pod(core, ns, client_name, _finished, settings.timeout)
        code = _exit_code(probe)
        if code == 3:
            report.ok(category, "NetworkPolicy is enforced: a pod outside the policy could not reach a fenced port")
        elif code == 0:
            report.warn(category, "NetworkPolicy is not enforced: a pod outside the policy reached a fenced port",
                        "kernel ports are then guarded by the connection key alone; use a CNI that enforces "
                        "NetworkPolicy (Calico, Cilium)")
        else:
            report.warn(category, "NetworkPolicy enforcement is unknown: the probe did not finish",
                        "run the check again; see kubectl describe pod " + client_name, exit_code=code)
    finally:
        for delete, name in reversed(created):
            try:
                delete(name, ns, grace_period_seconds=0)
            except ApiException:
                pass  # gone already


def _exit_code(pod: dict) -> int | None:
    for status in (pod.get("status") or {}).get("container_statuses") or []:
        terminated = (status.get("state") or {}).get("terminated")
        if terminated:
            return terminated.get("exit_code")
    return None


def _canary_launch(settings: CheckSettings, key: str) -> KernelLaunch:
    provisioner = settings.provisioner
    pod = provisioner.pod_settings()
    pod = dataclasses.replace(pod, labels={**pod.labels, LABEL_COMPONENT: "kernel"})
    return KernelLaunch(kernel_id=str(uuid.uuid4()), user=CHECK_USER,
                        request=VGPURequest.parse(1, provisioner.vgpu_memory), backend=settings.backend, pod=pod,
                        key=key, timeout=settings.timeout, orion_controller=provisioner.orion_controller or None)


async def check_canary(report: Report, api: client.ApiClient, settings: CheckSettings) -> bool:
    """A kernel pod from the configured image, as a launch makes it: pulled, ipykernel answering, ORION_GMEM inside."""
    category = "Canary kernel"
    image = settings.provisioner.image
    key = secrets.token_hex(16)
    launch = _canary_launch(settings, key)
    connection = connection_info(fresh_ports(), key)
    manifests = build_kernel_manifests(pod_options(launch, settings.namespace, connection, "check"))
    cluster = KubeCluster(api, settings.namespace, watch_nodes=False, watch_dra=settings.backend.uses_claims)
    started = time.monotonic()
    kernel = None
    try:
        try:
            kernel = await cluster.launch(manifests, timeout=settings.timeout,
                                          count_resource=settings.backend.count_resource)
        except KernelLaunchError as err:
            report.fail(category, f"the canary kernel pod from {image} did not start ({err.reason})",
                        _canary_hint(err), error=str(err))
            return False
        ready = time.monotonic() - started
        report.ok(category, f"image {image} pulled and the kernel pod ready in {ready:.1f} s", seconds=round(ready, 2))
        return await _talk_to_canary(report, dict(connection, ip=kernel.ip), launch)
    finally:
        await asyncio.shield(cluster.delete_kernel_objects(manifests.name))
        cluster.close()


def _canary_hint(err: KernelLaunchError) -> str:
    text = str(err)
    if err.reason == "image":
        return "check the image name and tag, and the registry's pull secret; or set c.VGPUProvisioner.image"
    if "ipykernel" in text:
        return "the image has no ipykernel: add `pip install ipykernel` to it (see docker/kernel.Dockerfile)"
    if err.reason == "unschedulable":
        return "no node can take a kernel of 1 vGPU now: see vGPU capacity above"
    return "see the error; kubectl describe pod shows the kernel pod's events while it exists"


async def _talk_to_canary(report: Report, connection: dict[str, Any], launch: KernelLaunch) -> bool:
    category = "Canary kernel"
    kc = AsyncKernelClient()
    kc.load_connection_info({**connection, "key": connection["key"].encode()})
    kc.start_channels()
    try:
        reply = await _connected(kc)
        info = reply["content"]
        version = (info.get("language_info") or {}).get("version", "?")
        implementation = f"{info.get('implementation', '?')} {info.get('implementation_version', '')}".rstrip()
        report.ok(category, f"kernel_info answered: Python {version} ({implementation})", python=version)
        expected = launch.backend.env(launch.request, launch.orion_controller)
        code = f"import json, os; print(json.dumps({{k: os.environ.get(k) for k in {list(expected)!r}}}))"
        seen = await _run(kc, code)
        got = json.loads(seen or "{}")
        if got != expected:
            report.fail(category, "the kernel does not see its vGPU variables", "check the kernel image's "
                        "entrypoint: it must not reset the environment", error=f"expected {expected}, saw {got}")
            return False
        shown = ", ".join(f"{k}={v}" for k, v in got.items()) or "no vGPU variables (this backend sets none)"
        report.ok(category, f"the kernel sees {shown}")
        return True
    except (TimeoutError, RuntimeError, ValueError, queue.Empty) as err:
        report.fail(category, "the canary kernel did not answer", "the kernel port may be blocked between this "
                    "machine and the pod network; run the check from inside the cluster", error=str(err) or repr(err))
        return False
    finally:
        kc.stop_channels()


async def _connected(kc: AsyncKernelClient, timeout: float = 30) -> dict:
    """kernel_info until its reply and an IOPub message both came: a SUB socket that joins late never sees what
    the kernel published before it, so an execute sent earlier would wait for output that is already gone."""
    deadline = time.monotonic() + timeout
    while True:
        reply = await kc.kernel_info(reply=True, timeout=max(deadline - time.monotonic(), 0.1))
        try:
            await kc.get_iopub_msg(timeout=0.5)
        except queue.Empty:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the kernel answered on its shell port, but nothing came on IOPub in "
                                   f"{timeout:g} s") from None
            continue
        while True:  # the rest of this request's IOPub messages: the execute's output starts on a clean channel
            try:
                await kc.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                return reply


async def _run(kc: AsyncKernelClient, code: str, timeout: float = 30) -> str:
    msg_id = kc.execute(code, store_history=False)
    out: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        msg = await kc.get_iopub_msg(timeout=max(deadline - time.monotonic(), 0.1))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            raise RuntimeError(f"{msg['content']['ename']}: {msg['content']['evalue']}")
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return "".join(out).strip()
