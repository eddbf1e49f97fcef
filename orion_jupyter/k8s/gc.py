"""`orion-jupyter gc`: remove what a crashed server or an unreachable API left behind."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from kubernetes import client

from ..names import MANAGED_SELECTOR, TERMINAL_PHASES


def _age_seconds(obj: dict, now: datetime) -> float:
    stamp = obj["metadata"].get("creationTimestamp")
    try:
        return (now - datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))).total_seconds()
    except ValueError:
        return 0.0  # unknown age: as young as can be


def collect_garbage(api: client.ApiClient, namespace: str, dry_run: bool = False,
                    min_age: float = 600.0) -> list[tuple[str, str, str]]:
    """Delete finished kernel pods and connection Secrets whose pod is gone; returns (kind, name, why).

    Nothing younger than ``min_age`` seconds is touched: a launch creates its Secret before its
    Pod, so a young Secret without a Pod is a launch in progress, not garbage.
    """
    core = client.CoreV1Api(api)
    pods = json.loads(core.list_namespaced_pod(namespace, label_selector=MANAGED_SELECTOR,
                                               _preload_content=False).data)["items"]
    secrets = json.loads(core.list_namespaced_secret(namespace, label_selector=MANAGED_SELECTOR,
                                                     _preload_content=False).data)["items"]
    now = datetime.now(UTC)
    live_pods = set()
    doomed: list[tuple[str, str, str]] = []
    for pod in pods:
        name, phase = pod["metadata"]["name"], (pod.get("status") or {}).get("phase")
        if phase in TERMINAL_PHASES and _age_seconds(pod, now) >= min_age:
            doomed.append(("Pod", name, f"the kernel has ended ({phase})"))
        elif phase not in TERMINAL_PHASES:
            live_pods.add(name)
    for secret in secrets:
        name = secret["metadata"]["name"]
        if name not in live_pods and _age_seconds(secret, now) >= min_age:
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
