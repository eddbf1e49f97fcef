"""Bookings through the broker's REST API on the simulated cluster (the broker in this process, the hub's
answers faked: who a token is and their groups; the rules are tests/test_bookings.py's): a booking honoured
while the queue is long, one refused when the pool is booked, a student cannot book for another nor where
the course does not allow it (nor repeat), bad input is named, the class view lists bookings (a weekly one
with its schedule), a restart keeps them, a booking is placed node by node, and a static booking that cannot be
honoured stops the broker with one line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import uuid
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from traitlets.config import Config

from kubesim.cluster import SimNode
from kubesim.fixtures import GPU_NODE, running_cluster
from orion_jupyter.broker import hub as hub_module
from orion_jupyter.broker.app import main
from orion_jupyter.broker.booking_api import booking_routes
from orion_jupyter.broker.budget_api import budget_routes
from orion_jupyter.broker.handlers import routes
from orion_jupyter.broker.hub import HubClient
from orion_jupyter.broker.service import Broker
from orion_jupyter.k8s.cluster import KubeCluster
from orion_jupyter.wire import PORT_NAMES
from tests.helpers import eventually_async
from tests.hub import free_port

BERLIN = ZoneInfo("Europe/Berlin")
COURSES = {"AI_101": {"queue": True, "student_bookings": 2}, "ML_2": {"queue": True}}
GROUPS = {"teacher": ["AI_101", "instructors"], "ann": ["AI_101"], "bob": ["AI_101"],
          **{f"ml{i}": ["ML_2"] for i in range(5)}}


class FakeHub(HubClient):
    """The hub's answers: a token "token-<name>" is <name>'s; everyone runs a default server."""

    async def identify(self, token: str, fresh: bool = False) -> dict | None:
        name = token.removeprefix("token-")
        return {"kind": "user", "name": name, "scopes": ["access:services"]} if name in GROUPS else None

    async def groups(self, name: str) -> list[str]:
        return sorted(GROUPS.get(name, []))

    async def servers(self, name: str) -> set[str]:
        return {""}

    async def members(self, group: str) -> list[str]:
        return sorted(user for user, groups in GROUPS.items() if group in groups)

    async def running_servers(self) -> set[tuple[str, str]]:
        return {(user, "") for user in GROUPS}


def broker_config(port: int, **settings) -> Config:
    return Config({"Broker": {"url": f"http://127.0.0.1:{port}", "prefix": "/broker/", "reap_interval": 0.0,
                              "lab_timezone": "Europe/Berlin", "courses": COURSES, "api_token": "broker",
                              "queue_keepalive": 1.0, **settings},
                   "VGPUProvisioner": {"namespace": "default", "launch_timeout": 60.0}})


@contextlib.asynccontextmanager
async def running_broker(monkeypatch, **settings):
    monkeypatch.setattr(hub_module, "HubClient", FakeHub)
    port = free_port()
    broker = Broker(config=broker_config(port, **settings))
    serving = asyncio.ensure_future(broker.serve(lambda prefix: routes(prefix) + budget_routes(prefix)
                                                 + booking_routes(prefix)))
    base = f"http://127.0.0.1:{port}/broker/"
    await eventually_async(lambda: call(base, "teacher", "GET", "api/bookings"), timeout=30,
                           until=lambda answer: answer[0] == 200, retry_on=(OSError,),
                           message=lambda: str(serving.exception()) if serving.done() else "")
    try:
        yield broker, base
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        KubeCluster.close_all()  # the next broker reads the cluster afresh, as a restarted process would


async def call(base: str, user: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    response = await AsyncHTTPClient().fetch(HTTPRequest(
        base + path, method, headers={"Authorization": f"token token-{user}"},
        body=None if body is None and method in ("GET", "DELETE") else json.dumps(body or {}), request_timeout=30),
        raise_error=False)
    return response.code, json.loads(response.body or b"{}")


def window(minutes_from_now: int = -5, hours: float = 1) -> dict[str, str]:
    """A window in the lab's local time (no offset): the broker reads it in c.Broker.lab_timezone."""
    start = datetime.now(BERLIN) + timedelta(minutes=minutes_from_now)
    return {"start": start.replace(tzinfo=None).isoformat(timespec="minutes"),
            "end": (start + timedelta(hours=hours)).replace(tzinfo=None).isoformat(timespec="minutes")}


class Launch:
    """A launch of one kernel of ``vgpus`` × 1 GiB by ``user``, its answer's lines read as they come."""

    def __init__(self, base: str, user: str, vgpus: int = 1):
        self.user, self.kernel_id, self.lines = user, str(uuid.uuid4()), []
        ports = dict(zip(PORT_NAMES, (free_port() for _ in PORT_NAMES), strict=True))
        body = {"kernel_id": self.kernel_id, "key": secrets.token_hex(16), "ports": ports, "vgpus": vgpus,
                "memory": "1Gi"}
        self.task = asyncio.ensure_future(AsyncHTTPClient().fetch(HTTPRequest(
            base + "api/kernels", "POST", headers={"Authorization": f"token token-{user}"}, body=json.dumps(body),
            request_timeout=120, streaming_callback=self._chunk), raise_error=False))
        self._buffer = b""

    def _chunk(self, chunk: bytes) -> None:
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        self.lines.extend(json.loads(line) for line in lines if line.strip())

    @property
    def ready(self) -> bool:
        return any("ready" in line for line in self.lines)

    @property
    def queued(self) -> bool:
        return any("queued" in line for line in self.lines) and not self.ready


@pytest.mark.timeout(240)
async def test_a_booking_is_honoured_while_the_queue_is_long_and_one_more_is_refused(sim_cluster, monkeypatch):
    async with running_broker(monkeypatch) as (broker, base):
        code, body = await call(base, "teacher", "POST", "api/bookings",
                                {"course": "AI_101", "vgpus": 1, "memory": "1Gi", "count": 2, **window()})
        assert code == 201 and body["booking"]["count"] == 2 and body["booking"]["by"] == "teacher", body
        booking = body["booking"]
        # the pool of four: ML_2's students take the two vGPUs not booked; three more wait in line
        ml = [Launch(base, f"ml{i}") for i in range(5)]
        await eventually_async(lambda: (sum(launch.ready for launch in ml), sum(launch.queued for launch in ml)),
                               timeout=120, until=lambda counts: counts == (2, 3))
        # AI_101's launches are the booking's: they start at once, past the line
        ai = [Launch(base, "ann"), Launch(base, "bob")]
        await eventually_async(lambda: all(launch.ready for launch in ai), timeout=120)
        assert sum(launch.queued for launch in ml) == 3
        code, view = await call(base, "teacher", "GET", "api/class")
        assert code == 200 and [(b["id"], b["open"], b["in_use"]) for b in view["bookings"]] == [
            (booking["id"], True, 2)], view["bookings"]

        # the pool is booked and held: one more booking now is refused with what is free
        code, body = await call(base, "teacher", "POST", "api/bookings",
                                {"course": "AI_101", "vgpus": 1, "memory": "1Gi", "count": 1, **window()})
        assert code == 409 and body["field"] == "count", body
        assert "only 0 of the pool's 4 are free (2 booked by AI_101, 2 held by kernels running now)" in \
            body["message"], body
        # later, when the kernels of now will have gone, two of four are free
        code, later = await call(base, "teacher", "POST", "api/bookings",
                                 {"course": "AI_101", "vgpus": 1, "memory": "1Gi", "count": 2, **window(90)})
        assert code == 201, later
        for launch in ml:
            launch.task.cancel()


@pytest.mark.timeout(240)
async def test_who_may_book_bad_input_the_class_view_and_a_restart_keeps_bookings(sim_cluster, monkeypatch):
    async with running_broker(monkeypatch) as (_, base):
        shape = {"vgpus": 1, "memory": "1Gi"}
        code, body = await call(base, "ann", "POST", "api/bookings", {"user": "bob", **shape, **window()})
        assert code == 403 and body["field"] == "user" and "only for themself" in body["message"], body
        code, body = await call(base, "ml0", "POST", "api/bookings", {**shape, **window()})
        assert code == 403 and body["field"] == "course" and "does not let students book" in body["message"], body
        code, body = await call(base, "teacher", "POST", "api/bookings", {"course": "ML_2", **shape, **window()})
        assert code == 403 and body["field"] == "course" and "your own courses" in body["message"], body
        for bad, field in [({"count": 0}, "count"), ({"memory": "lots"}, "memory"), ({"start": "soon"}, "start"),
                           ({"seats": 3}, "seats"), ({"vgpus": 64}, "vgpus"), (window(-120), "end")]:
            code, body = await call(base, "teacher", "POST", "api/bookings",
                                    {"course": "AI_101", **shape, **window(), **bad})
            assert code == 400 and body["field"] == field, (bad, body)
        code, body = await call(base, "ann", "POST", "api/bookings", {**shape, **window(hours=3)})
        assert code == 400 and body["field"] == "end" and "at most 2 hours" in body["message"], body
        term = {"repeat": "weekly", "until": (datetime.now(BERLIN) + timedelta(days=21)).date().isoformat()}
        code, body = await call(base, "ann", "POST", "api/bookings", {**shape, **window(30), **term})
        assert code == 403 and body["field"] == "repeat" and "does not repeat" in body["message"], body
        code, body = await call(base, "teacher", "POST", "api/bookings",
                                {"course": "AI_101", **shape, **window(30), **term, "until": "soon"})
        assert code == 400 and body["field"] == "until", body
        code, lab = await call(base, "teacher", "POST", "api/bookings",
                               {"course": "AI_101", **shape, **window(120), **term})
        assert code == 201 and lab["booking"]["repeat"] == "weekly" and lab["booking"]["until"] == term["until"], lab
        assert lab["booking"]["schedule"].startswith("every ") and term["until"] in lab["booking"]["schedule"], lab
        code, mine = await call(base, "ann", "POST", "api/bookings", {**shape, **window(30)})
        assert code == 201 and mine["booking"]["user"] == "ann" and mine["booking"]["course"] == "AI_101", mine
        code, course = await call(base, "teacher", "POST", "api/bookings",
                                  {"course": "AI_101", "count": 2, **shape, **window(60)})
        assert code == 201, course
        assert (await call(base, "bob", "DELETE", f"api/bookings/{mine['booking']['id']}"))[0] == 404
        assert (await call(base, "ml0", "GET", "api/bookings"))[1]["bookings"] == []  # another course's
        seen = (await call(base, "bob", "GET", "api/bookings"))[1]["bookings"]
        assert [b["id"] for b in seen] == [course["booking"]["id"], lab["booking"]["id"]]  # his course's, not ann's
        assert (await call(base, "bob", "GET", "api/class"))[0] == 403

    async with running_broker(monkeypatch) as (_, base):  # a restarted broker keeps them (the state ConfigMap)
        code, view = await call(base, "teacher", "GET", "api/class")
        assert sorted(b["id"] for b in view["bookings"]) == sorted([mine["booking"]["id"], course["booking"]["id"],
                                                                    lab["booking"]["id"]])
        weekly = next(b for b in view["bookings"] if b["id"] == lab["booking"]["id"])
        assert weekly["schedule"] == lab["booking"]["schedule"] and weekly["open"] is False, weekly
        code, body = await call(base, "teacher", "DELETE", f"api/bookings/{lab['booking']['id']}")
        assert code == 200 and body["removed"]["repeat"] == "weekly", body
        code, body = await call(base, "ann", "DELETE", f"api/bookings/{mine['booking']['id']}")
        assert code == 200 and body["removed"]["id"] == mine["booking"]["id"]
        code, body = await call(base, "teacher", "DELETE", f"api/bookings/{course['booking']['id']}")
        assert code == 200
        assert (await call(base, "teacher", "GET", "api/bookings"))[1]["bookings"] == []


def test_static_bookings_are_checked_at_start_in_one_line(sim_cluster, tmp_path, capsys):
    config = tmp_path / "broker_config.py"
    slot = window(60)
    config.write_text("\n".join([
        "c.VGPUProvisioner.namespace = 'default'", f"c.Broker.courses = {COURSES!r}", "c.Broker.reap_interval = 0.0",
        "c.Broker.lab_timezone = 'Europe/Berlin'",
        f"c.Broker.bookings = [{{'course': 'AI_101', 'vgpus': 1, 'memory': '1Gi', 'count': 2, **{slot!r}}}, "
        f"{{'course': 'ML_2', 'vgpus': 1, 'memory': '1Gi', 'count': 'three', **{slot!r}}}]"]))
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "c.Broker.bookings[1].count" in err, err
    config.write_text(config.read_text().replace("'count': 'three'", "'count': 3"))  # 2 + 3 of a pool of 4
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "only 2 of the pool's 4 are free (2 booked by AI_101)" in err, err
    config.write_text(config.read_text().replace("'count': 3", "'count': 1, 'repeat': 'daily'"))
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "c.Broker.bookings[1].repeat" in err and '"weekly"' in err, err


@pytest.mark.timeout(240)
async def test_a_booking_is_placed_node_by_node(monkeypatch):
    """Two nodes of four vGPUs: two kernels of three fit (one a node); then a kernel of two does not, although
    the pool has two vGPUs left: one is left on each node."""
    nodes = [SimNode(f"gpu-{i}", allocatable=dict(GPU_NODE)) for i in (1, 2)]
    with running_cluster(monkeypatch, nodes):
        async with running_broker(monkeypatch) as (_, base):
            code, body = await call(base, "teacher", "POST", "api/bookings",
                                    {"course": "AI_101", "vgpus": 3, "memory": "1Gi", "count": 2, **window(30)})
            assert code == 201, body
            code, body = await call(base, "teacher", "POST", "api/bookings",
                                    {"course": "AI_101", "vgpus": 2, "memory": "1Gi", **window(40)})
            assert code == 409 and body["field"] == "count", body
            assert "1 kernel of 2 vGPUs × 1 GiB finds no node beside 2 other kernels then (a kernel runs on one " \
                   "node; the nodes offer gpu-1: 1 vGPU, gpu-2: 1 vGPU then)" in body["message"], body


@pytest.mark.timeout(240)
async def test_an_open_booking_keeps_room_on_a_node_for_its_shape_not_only_a_count(monkeypatch):
    """Two nodes of four vGPUs, a kernel of three booked for now. By count five 1-vGPU launches of others fit
    (8 - 3), but the scheduler spreads them and would leave no node with three free: three start, the rest wait,
    and the booked kernel still finds its node."""
    nodes = [SimNode(f"gpu-{i}", allocatable=dict(GPU_NODE)) for i in (1, 2)]
    with running_cluster(monkeypatch, nodes):
        async with running_broker(monkeypatch) as (_, base):
            code, body = await call(base, "teacher", "POST", "api/bookings",
                                    {"course": "AI_101", "vgpus": 3, "memory": "1Gi", "count": 1, **window()})
            assert code == 201, body
            ml = [Launch(base, f"ml{i}") for i in range(5)]
            await eventually_async(lambda: (sum(launch.ready for launch in ml), sum(launch.queued for launch in ml)),
                                   timeout=120, until=lambda counts: counts == (3, 2))
            ann = Launch(base, "ann", vgpus=3)
            await eventually_async(lambda: ann.ready, timeout=120)
            assert sum(launch.queued for launch in ml) == 2
            for launch in ml:
                launch.task.cancel()
