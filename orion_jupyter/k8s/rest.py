"""A kernel's own objects read and written as plain JSON over the Kubernetes client's connection pool.

The generated client spends about a millisecond of CPU on each call before a byte is sent: pydantic
validates every argument, each call rebuilds its URL and headers from the Configuration, and with a
kubeconfig the credentials are reloaded (and the environment scanned for proxies) every time. A broker
makes about ten calls per kernel (its Pod, Secret and NetworkPolicy created, patched and deleted), so
those go through :class:`Rest`: the same host, TLS, proxy and connection pool, the configuration's own
credentials (refreshed every ``AUTH_SECONDS``, and at once when the API server answers 401), and the same
``ApiException`` on an error status. Lists and watches stay with the client (k8s/watch.py).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any
from urllib.parse import quote

from kubernetes import client
from kubernetes.client.exceptions import ApiException

AUTH_SECONDS = 10.0  # in-cluster tokens rotate hourly; exec-plugin tokens live minutes at least
JSON_PATCH = "application/json-patch+json"  # a list of operations
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"  # an object, as the client sends one


def pods(namespace: str, name: str = "") -> str:
    return _path("/api/v1", namespace, "pods", name)


def secrets(namespace: str, name: str = "") -> str:
    return _path("/api/v1", namespace, "secrets", name)


def network_policies(namespace: str, name: str = "") -> str:
    return _path("/apis/networking.k8s.io/v1", namespace, "networkpolicies", name)


def _path(group: str, namespace: str, plural: str, name: str) -> str:
    path = f"{group}/namespaces/{quote(namespace, safe='')}/{plural}"
    return f"{path}/{quote(name, safe='')}" if name else path


def delete_options(grace_seconds: int | None = None, propagation: str | None = None) -> dict[str, Any]:
    """A DeleteOptions body (what ``client.V1DeleteOptions`` serializes to)."""
    body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
    if grace_seconds is not None:
        body["gracePeriodSeconds"] = grace_seconds
    if propagation is not None:
        body["propagationPolicy"] = propagation
    return body


class Rest:
    """Blocking JSON requests to the API server of ``api`` (call them off the event loop)."""

    def __init__(self, api: client.ApiClient):
        self.api = api
        self._auth: dict[str, str] = {}
        self._auth_at = float("-inf")
        self._lock = threading.Lock()

    def __call__(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """``method`` ``path`` with a JSON ``body`` (a list is a JSON patch, an object patch a strategic merge);
        the answer's JSON. Raises ApiException for an error status, urllib3's HTTPError when unreachable."""
        response = self._send(method, path, body, fresh=False)
        if response.status == 401:  # a token rotated since the last refresh
            response.release_conn()
            response = self._send(method, path, body, fresh=True)
        try:
            data = response.data
            if not 200 <= response.status <= 299:
                raise ApiException(http_resp=response)
            return json.loads(data or b"{}")
        finally:
            response.release_conn()

    def _send(self, method: str, path: str, body: Any, fresh: bool) -> Any:
        configuration = self.api.configuration
        headers = {"Accept": "application/json", **self.api.default_headers, **self._credentials(fresh)}
        if self.api.cookie:
            headers["Cookie"] = self.api.cookie
        payload = None
        if body is not None:
            headers["Content-Type"] = (JSON_PATCH if isinstance(body, list) else STRATEGIC_MERGE_PATCH) \
                if method == "PATCH" else "application/json"
            payload = json.dumps(body)
        return self.api.rest_client.pool_manager.request(method, configuration.host + path, body=payload,
                                                         headers=headers, preload_content=False)

    def _credentials(self, fresh: bool) -> dict[str, str]:
        """The configuration's auth headers, as the client would add them (its refresh hook runs here)."""
        with self._lock:
            if fresh or time.monotonic() - self._auth_at > AUTH_SECONDS:
                headers: dict[str, str] = {}
                for setting in self.api.configuration.auth_settings().values():
                    if setting.get("in") == "header" and setting.get("value"):
                        headers[setting["key"]] = setting["value"]
                self._auth, self._auth_at = headers, time.monotonic()
            return self._auth


__all__ = ["Rest", "delete_options", "network_policies", "pods", "secrets"]
