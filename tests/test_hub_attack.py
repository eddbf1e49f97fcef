"""Hub mode as a hostile student tries it (issue 24), on one real JupyterHub: bodies refused before they
are read, /metrics behind a token, server_name checked, grace parsed, the default pod requests and
limits, a watch stream ending with its revoked token, a broker SIGKILLed at each step of a launch
leaving nothing unowned and nothing after a restart, and the hub down answered 503."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import urllib.request
import uuid
from urllib.parse import quote, urlparse

import psutil
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from orion_jupyter.k8s.launcher import DIE_AFTER_ENV
from orion_jupyter.wire import PORT_NAMES
from tests.classroom import BROKER, COURSE, NS, class_hub_with, kernel_objects, start_vgpu_kernel
from tests.helpers import eventually_async
from tests.hub import HubHTTPError

MIB = 2**20


def post_big(url: str, token: str | None, size: int = 95 * MIB) -> int | None:
    """POST ``size`` bytes; the answer's status, or None when the broker closed the connection unanswered."""
    address = urlparse(url)
    sock = socket.create_connection((address.hostname, address.port), timeout=30)
    head = (f"POST {address.path} HTTP/1.1\r\nHost: {address.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\n" + (f"Authorization: token {token}\r\n" if token else "") + "\r\n")
    try:
        sock.sendall(head.encode())
        chunk = b" " * MIB
        for _ in range(size // MIB):
            sock.sendall(chunk)
    except OSError:
        pass  # refused and closed while we were still sending: what we want
    try:
        reply = sock.recv(4096)
    except OSError:
        reply = b""
    finally:
        sock.close()
    return int(reply.split()[1]) if reply.startswith(b"HTTP/") else None


def launch_body(**fields) -> dict:
    return {"kernel_id": str(uuid.uuid4()), "vgpus": 1, "memory": "1Gi", "key": "0" * 32,
            "ports": {name: 45001 + i for i, name in enumerate(PORT_NAMES)}, **fields}


async def refused(call) -> HubHTTPError:
    with pytest.raises(HubHTTPError) as caught:
        await call
    return caught.value


@pytest.mark.timeout(600)
async def test_hub_mode_under_attack(hub_factory, sim_cluster, tmp_path):
    config = [f"c.Broker.courses = {{{COURSE!r}: {{'vgpus': 4}}}}", "c.Broker.watch_recheck_seconds = 1.0"]
    with class_hub_with(hub_factory, sim_cluster, tmp_path, config, users=["alice", "bob", "teacher"]) as (hub, broker):
        await hub.wait_for_service(BROKER, "metrics")
        await asyncio.gather(hub.start_server("alice"), hub.start_server("bob"))
        direct = f"{hub.service_direct_url(BROKER)}/services/{BROKER}/"
        alice = await hub.server_token("alice")

        # 95 MiB bodies, without a token (straight and through the public proxy) and with one, all at once:
        # refused unread (before the fix, six such posts took the broker from ~100 MiB to 1.2 GiB)
        process = psutil.Process(broker.process.pid)
        before = peak = process.memory_info().rss
        posts = [(direct, None, {401}), (direct, None, {401}), (direct, None, {401}), (direct, alice, {None, 400, 413}),
                 # the proxy answers 502/503 when the broker refuses while it still sends
                 (hub.service_url(BROKER), None, {401, 502, 503}), (hub.service_url(BROKER), None, {401, 502, 503})]
        sent = asyncio.gather(*(asyncio.to_thread(post_big, url + "api/kernels", token) for url, token, _ in posts))
        while not sent.done():
            peak = max(peak, process.memory_info().rss)
            await asyncio.sleep(0.02)
        for (url, token, answers), status in zip(posts, sent.result(), strict=True):
            assert status in answers, (url, token, status)
        assert peak - before < 20 * MIB, f"the broker grew by {(peak - before) / MIB:.1f} MiB"

        # /metrics: a token through the proxy; a scraper connecting directly from an allowed address needs none
        assert (await refused(hub.service_api(BROKER, "GET", "metrics"))).code == 401
        assert "orion_jupyter" in await hub.service_api(BROKER, "GET", "metrics", token=alice)
        metrics = await asyncio.to_thread(lambda: urllib.request.urlopen(direct + "metrics", timeout=10).read())
        assert b"orion_jupyter" in metrics

        # server_name names whose kernels the reaper keeps: only the caller's own running servers
        err = await refused(hub.service_api(BROKER, "POST", "api/kernels", launch_body(server_name="bobs"),
                                            token=alice))
        assert err.code == 400 and err.json()["field"] == "server_name", err

        # a real kernel: default requests and limits on its pod; a bad grace is 400 and stops nothing
        kernel = await start_vgpu_kernel(hub, "alice")
        pod = next(p for p in sim_cluster.objects("pods", NS) if p["metadata"]["labels"]["orion-jupyter.io/kernel-id"]
                   == kernel["id"])
        resources = pod["spec"]["containers"][0]["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])
        for grace in ("²", "-1", "99999", "1e3"):
            err = await refused(hub.service_api(BROKER, "DELETE", f"api/kernels/{kernel['id']}?grace={quote(grace)}",
                                                token=alice))
            assert err.code == 400 and err.json()["field"] == "grace", (grace, err)
        assert sim_cluster.get("pods", NS, pod["metadata"]["name"]) is not None
        sim_cluster.faults.fail("delete", "pods", 500, times=1)  # the API refuses the deletion: not "stopped"
        err = await refused(hub.service_api(BROKER, "DELETE", f"api/kernels/{kernel['id']}?grace=5", token=alice))
        assert err.code == 502 and err.json()["stopped"] == [], err
        assert (await hub.service_api(BROKER, "DELETE", f"api/kernels/{kernel['id']}?grace=0", token=alice)) == {
            "stopped": [pod["metadata"]["name"]]}

        # a watch stream ends when its token is revoked
        token = await hub.api("POST", "users/alice/tokens", {"scopes": [f"access:services!service={BROKER}"],
                                                             "note": "watch"})
        chunks: list[bytes] = []
        stream = AsyncHTTPClient().fetch(HTTPRequest(direct + "api/watch", request_timeout=60,
                                                     headers={"Authorization": f"token {token['token']}"},
                                                     streaming_callback=chunks.append))
        await eventually_async(lambda: asyncio.sleep(0, b"".join(chunks)), until=lambda text: b"synced" in text)
        await hub.api("DELETE", f"users/alice/tokens/{token['id']}")
        await asyncio.wait_for(stream, 30)  # ended by the broker
        assert json.loads(b"".join(chunks).splitlines()[-1])["error"]["reason"] == "unauthorized"

        # a broker SIGKILLed after each step of a launch: what is left is owned; a restart and a reap sweep it
        for step, kinds in (("policy", {"networkpolicies"}), ("secret", {"networkpolicies", "secrets"}),
                            ("pod", {"networkpolicies", "secrets", "pods"})):
            broker.kill()
            broker.env[DIE_AFTER_ENV] = step
            broker.start(hub.api_url)
            await hub.wait_for_service(BROKER, "metrics")
            before_launch = kernel_objects(sim_cluster)
            try:
                await asyncio.wait_for(start_vgpu_kernel(hub, "bob"), 120)
            except (HubHTTPError, TimeoutError, HTTPClientError):
                pass
            assert await asyncio.to_thread(broker.process.wait, 30) == -signal.SIGKILL
            left = {plural: sorted(set(names) - set(before_launch[plural]))
                    for plural, names in kernel_objects(sim_cluster).items()}
            assert {plural for plural, names in left.items() if names} == kinds, (step, left)
            lease = sim_cluster.get("leases", NS, "orion-broker")["metadata"]["uid"]
            pods = {p["metadata"]["uid"] for p in sim_cluster.objects("pods", NS)}
            for plural, names in left.items():
                for name in names:
                    owners = {ref["uid"] for ref in sim_cluster.get(plural, NS, name)["metadata"].get(
                        "ownerReferences") or []}
                    assert owners & ({lease} | pods), (step, plural, name, owners)
            broker.env.pop(DIE_AFTER_ENV)
            broker.start(hub.api_url)
            await eventually_async(lambda: asyncio.sleep(0, kernel_objects(sim_cluster)), timeout=60,
                                   until=lambda objects, left=left: not any(
                                       set(names) & set(objects[plural]) for plural, names in left.items()))

        # the hub down: 503 with the reason, not 500
        hub.stop()
        err = await refused(hub.fetch("GET", direct + "api/kernels", token=alice))
        assert err.code == 503 and err.json()["reason"] == "hub-unavailable", err
