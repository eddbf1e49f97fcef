"""k8s/rest.py: a kernel's own objects as plain JSON on the event loop, with the client configuration's
credentials (refreshed on a 401), its TLS settings, and the client's errors."""

from __future__ import annotations

import json
import ssl
from contextlib import asynccontextmanager

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from urllib3.exceptions import HTTPError

from orion_jupyter.k8s.rest import Rest, tls_context


class Objects(web.RequestHandler):
    """An API server that knows one token at a time and echoes what it was sent."""

    def check_xsrf_cookie(self) -> None:
        pass

    def _answer(self) -> None:
        if self.request.headers.get("Authorization") != f"Bearer {self.settings['token'][0]}":
            self.set_status(401)
            return self.finish({"kind": "Status", "message": "Unauthorized"})
        if self.request.path.endswith("/missing"):
            self.set_status(404)
            return self.finish({"kind": "Status", "reason": "NotFound", "message": "pods \"missing\" not found"})
        self.settings["seen"].append((self.request.method, self.request.path,
                                      self.request.headers.get("Content-Type"), self.request.body))
        self.finish({"kind": "Pod", "metadata": {"name": self.request.path.rsplit("/", 1)[-1]}})

    get = post = patch = delete = _answer


@asynccontextmanager
async def api_server():
    token, seen = ["t-1"], []
    sock, port = bind_unused_port()
    server = HTTPServer(web.Application([(r"/.*", Objects)], token=token, seen=seen))
    server.add_sockets([sock])
    configuration = client.Configuration(host=f"http://127.0.0.1:{port}")
    configuration.api_key = {"authorization": "t-1"}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    rest = Rest(client.ApiClient(configuration))
    try:
        yield rest, configuration, token, seen
    finally:
        await rest.sessions.aclose()
        server.stop()


async def test_requests_carry_json_and_the_answer_is_parsed_only_when_wanted():
    async with api_server() as (rest, _, _, seen):
        assert rest.direct
        pod = await rest.request("POST", "/api/v1/namespaces/ns/pods/p-1", {"kind": "Pod"})
        assert pod["metadata"]["name"] == "p-1"
        assert await rest.request("PATCH", "/api/v1/namespaces/ns/pods/p-2", [{"op": "remove", "path": "/x"}],
                                  answer=False) == {}
        await rest.request("PATCH", "/api/v1/namespaces/ns/pods/p-3", {"metadata": {}})
        assert [(m, t, json.loads(b)) for m, _, t, b in seen] == [
            ("POST", "application/json", {"kind": "Pod"}),
            ("PATCH", "application/json-patch+json", [{"op": "remove", "path": "/x"}]),
            ("PATCH", "application/strategic-merge-patch+json", {"metadata": {}})]


async def test_a_rotated_token_is_read_again_on_a_401_and_an_error_status_is_the_clients_exception():
    async with api_server() as (rest, configuration, token, _):
        await rest.request("GET", "/api/v1/namespaces/ns/pods/p-1")
        token[0] = "t-2"  # rotated: the configuration's refresh hook hands out the new one
        configuration.refresh_api_key_hook = lambda c: c.api_key.update(authorization=token[0])
        assert (await rest.request("GET", "/api/v1/namespaces/ns/pods/p-1"))["metadata"]["name"] == "p-1"
        with pytest.raises(ApiException) as caught:
            await rest.request("DELETE", "/api/v1/namespaces/ns/pods/missing")
        assert caught.value.status == 404 and "not found" in caught.value.body


async def test_an_api_server_that_does_not_answer_raises_the_clients_http_error():
    sock, port = bind_unused_port()
    sock.close()  # nothing listens there
    rest = Rest(client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{port}")))
    with pytest.raises(HTTPError, match="DELETE /api/v1/namespaces/ns/pods/p"):
        await rest.request("DELETE", "/api/v1/namespaces/ns/pods/p")
    await rest.sessions.aclose()


def test_tls_as_the_client_configures_it():
    assert tls_context(client.Configuration(host="http://127.0.0.1:8080")) is None
    unverified = client.Configuration(host="https://k8s.example:6443")
    unverified.verify_ssl = False
    context = tls_context(unverified)
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname
    no_hostname = client.Configuration(host="https://10.0.0.1:6443")
    no_hostname.assert_hostname = False
    context = tls_context(no_hostname)
    assert context.verify_mode == ssl.CERT_REQUIRED and not context.check_hostname
    proxied = client.Configuration(host="https://k8s.example:6443")
    proxied.proxy = "http://proxy.example:3128"
    assert not Rest(client.ApiClient(proxied)).direct  # through the client's own pool on a thread
