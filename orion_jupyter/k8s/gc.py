"""`orion-jupyter gc`: remove what a crashed server or an unreachable API left behind."""

from __future__ import annotations

import json

from kubernetes import client

from ..names import MANAGED_SELECTOR


def collect_garbage(api: client.ApiClient, namespace: str, dry_run: bool = False) -> list[tuple[str, str, str]]:
    """Delete finished kernel pods and connection Secrets whose pod is gone; returns (kind, name, why)."""
    core = client.CoreV1Api(api)
    pods = json.loads(core.list_namespaced_pod(namespace, label_selector=MANAGED_SELECTOR, _preload_content=False).data)["items"]
    secrets = json.loads(core.list_namespaced_secret(namespace, label_selector=MANAGED_SELECTOR, _preload_content=False).data)["items"]
    live_pods = set()
    doomed: list[tuple[str, str, str]] = []
    for pod in pods:
        name, phase = pod["metadata"]["name"], (pod.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            doomed.append(("Pod", name, f"the kernel has ended ({phase})"))
        else:
            live_pods.add(name)
    for secret in secrets:
        name = secret["metadata"]["name"]
        if name not in live_pods:
            doomed.append(("Secret", name, "its kernel pod is gone"))
    if not dry_run:
        for kind, name, _ in doomed:
            delete = core.delete_namespaced_pod if kind == "Pod" else core.delete_namespaced_secret
            try:
                delete(name, namespace, grace_period_seconds=0, _preload_content=False)
            except client.exceptions.ApiException as err:
                if err.status != 404:
                    raise
    return doomed
