"""Kubernetes access through the official client: in-cluster config in a pod, else kubeconfig."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from kubernetes import client, config

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_clients: dict[tuple[str, str], client.ApiClient] = {}
_lock = threading.Lock()


def in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and (SERVICE_ACCOUNT_DIR / "token").exists()


def kubeconfig_path(explicit: str = "") -> str | None:
    """The kubeconfig that would be used, or None when there is none."""
    for candidate in (explicit, *os.environ.get("KUBECONFIG", "").split(os.pathsep), "~/.kube/config"):
        if candidate and Path(candidate).expanduser().is_file():
            return str(Path(candidate).expanduser())
    return None


def cluster_configured(kubeconfig: str = "") -> bool:
    return in_cluster() or kubeconfig_path(kubeconfig) is not None


def api_client(kubeconfig: str = "", context: str = "") -> client.ApiClient:
    """One shared ApiClient per kubeconfig and context (its connection pool is reused)."""
    path = "" if in_cluster() and not kubeconfig else (kubeconfig_path(kubeconfig) or "")
    key = (path, context)
    with _lock:
        if key not in _clients:
            configuration = client.Configuration()
            if not path:
                config.load_incluster_config(client_configuration=configuration)
            else:
                config.load_kube_config(config_file=path, context=context or None, client_configuration=configuration)
            # Room for a classroom burst of concurrent creates and the shared watches.
            configuration.connection_pool_maxsize = 32
            _clients[key] = client.ApiClient(configuration)
        return _clients[key]


def default_namespace(kubeconfig: str = "", context: str = "") -> str:
    """POD_NAMESPACE, the service account's namespace, the kubeconfig context's, or 'default'."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    namespace_file = SERVICE_ACCOUNT_DIR / "namespace"
    if in_cluster() and namespace_file.exists():
        return namespace_file.read_text().strip()
    path = kubeconfig_path(kubeconfig)
    if path:
        try:
            contexts, active = config.list_kube_config_contexts(config_file=path)
            chosen = next((c for c in contexts if c["name"] == context), active) if context else active
            return (chosen or {}).get("context", {}).get("namespace") or "default"
        except (config.ConfigException, OSError):
            pass
    return "default"
