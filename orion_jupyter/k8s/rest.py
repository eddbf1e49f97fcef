"""A kernel's own objects read and written as plain JSON, on the event loop.

The generated client spends about a millisecond of CPU on each call before a byte is sent: pydantic
validates every argument, each call rebuilds its URL and headers from the Configuration, and with a
kubeconfig the credentials are reloaded (and the environment scanned for proxies) every time; then
urllib3 and http.client, on a thread of a pool, take another 0.4 ms per request. A broker makes seven
requests per kernel (its Pod, Secret and NetworkPolicy created, owned and the Pod deleted), so those go
through :class:`Rest`: the same host, TLS settings and credentials as the client's configuration
(refreshed every ``AUTH_SECONDS``, and at once when the API server answers 401), kept-alive connections
of one aiohttp session per event loop, and the same ``ApiException`` on an error status (urllib3's
``HTTPError`` when the API server cannot be reached). Behind a proxy, and after the cluster was closed,
the requests go through the client's own connection pool on a thread. Lists and watches stay with the
client (k8s/watch.py).
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.client.rest import should_bypass_proxies
from urllib3.exceptions import HTTPError

from ..loop_sessions import LoopSessions

AUTH_SECONDS = 10.0  # in-cluster tokens rotate hourly; exec-plugin tokens live minutes at least
CONNECTIONS = 16  # per event loop: a burst of launches waits for a kept connection, never opens hundreds
TIMEOUT = aiohttp.ClientTimeout(total=300, connect=30)
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


class Unreachable(HTTPError):
    """The API server did not answer (refused, reset, timed out): what urllib3 raises for the client."""


class Rest:
    """JSON requests to the API server of ``api``: ``await rest.request(...)`` on an event loop where
    ``direct`` (no proxy between), else ``rest.blocking(...)`` off the loop."""

    def __init__(self, api: client.ApiClient):
        self.api = api
        configuration = api.configuration
        self.direct = not (configuration.proxy and not should_bypass_proxies(configuration.host,
                                                                              configuration.no_proxy or ""))
        self._ssl = tls_context(configuration)
        self.sessions = LoopSessions(lambda: aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=CONNECTIONS, ssl=self._ssl if self._ssl is not None else True),
            timeout=TIMEOUT, trust_env=False))
        self._auth: dict[str, str] = {}
        self._auth_at = float("-inf")
        self._lock = threading.Lock()

    # -- on the event loop --------------------------------------------------------------------
    async def request(self, method: str, path: str, body: Any = None, answer: bool = True) -> dict[str, Any]:
        """``method`` ``path`` with a JSON ``body`` (a list is a JSON patch, an object patch a strategic merge);
        the answer's JSON (``answer`` False: {}, not parsed). Raises ApiException for an error status,
        :class:`Unreachable` (an HTTPError) when the API server does not answer."""
        status, reason, headers, data = await self._send(method, path, body, fresh=False)
        if status == 401:  # a token rotated since the last refresh
            status, reason, headers, data = await self._send(method, path, body, fresh=True)
        if not 200 <= status <= 299:
            err = ApiException(status=status, reason=reason)
            err.body, err.headers = data.decode(errors="replace"), headers
            raise err
        return orjson.loads(data or b"{}") if answer else {}

    async def _send(self, method: str, path: str, body: Any, fresh: bool) -> tuple[int, str, Any, bytes]:
        if fresh or time.monotonic() - self._auth_at > AUTH_SECONDS:  # a refresh hook may run a program
            await asyncio.to_thread(self._credentials, fresh)
        headers, payload = self._request_parts(method, body, self._auth)
        try:
            async with self.sessions.get().request(method, self.api.configuration.host + path, data=payload,
                                               headers=headers,
                                               server_hostname=self.api.configuration.tls_server_name or None
                                               ) as response:
                return response.status, response.reason or "", response.headers, await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            raise Unreachable(f"{method} {path}: {err or type(err).__name__}") from None

    # -- off the loop (behind a proxy; after the cluster was closed) ---------------------------
    def blocking(self, method: str, path: str, body: Any = None, answer: bool = True) -> dict[str, Any]:
        """As :meth:`request`, through the client's own urllib3 pool (call it off the event loop)."""
        response = self._send_blocking(method, path, body, fresh=False)
        if response.status == 401:
            response.release_conn()
            response = self._send_blocking(method, path, body, fresh=True)
        try:
            data = response.data
            if not 200 <= response.status <= 299:
                raise ApiException(http_resp=response)
            return orjson.loads(data or b"{}") if answer else {}
        finally:
            response.release_conn()

    def _send_blocking(self, method: str, path: str, body: Any, fresh: bool) -> Any:
        headers, payload = self._request_parts(method, body, self._credentials(fresh))
        return self.api.rest_client.pool_manager.request(method, self.api.configuration.host + path, body=payload,
                                                         headers=headers, preload_content=False)

    # -- both ----------------------------------------------------------------------------------
    def _request_parts(self, method: str, body: Any, credentials: dict[str, str]) -> tuple[dict[str, str],
                                                                                             bytes | None]:
        headers = {"Accept": "application/json", **self.api.default_headers, **credentials}
        if self.api.cookie:
            headers["Cookie"] = self.api.cookie
        if body is None:
            return headers, None
        headers["Content-Type"] = (JSON_PATCH if isinstance(body, list) else STRATEGIC_MERGE_PATCH) \
            if method == "PATCH" else "application/json"
        return headers, orjson.dumps(body)

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


def tls_context(configuration: client.Configuration) -> ssl.SSLContext | None:
    """The TLS the client's urllib3 pool would use (its CA, client certificate, verification); None: plain
    HTTP."""
    if not configuration.host.lower().startswith("https"):
        return None
    if configuration.verify_ssl:
        context = ssl.create_default_context(cafile=configuration.ssl_ca_cert, cadata=configuration.ca_cert_data)
        if configuration.assert_hostname is False:
            context.check_hostname = False
    else:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file)
    return context


__all__ = ["Rest", "Unreachable", "delete_options", "network_policies", "pods", "secrets", "tls_context"]
