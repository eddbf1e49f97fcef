"""Bookings through a real JupyterHub (the wiring: hub tokens, hub groups; the rules are tests/test_bookings.py's
and tests/test_broker_bookings.py's): an instructor books for their course, a student cannot book for another,
the booked student's kernel counts toward the booking in the class view."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from tests.classroom import BROKER, COURSE, class_hub_with, start_vgpu_kernel
from tests.helpers import eventually_async
from tests.hub import HubHTTPError

BERLIN = ZoneInfo("Europe/Berlin")


@pytest.fixture
def booking_hub(hub_factory, sim_cluster, tmp_path):
    config = [f"c.Broker.courses = {{{COURSE!r}: {{'queue': True, 'student_bookings': 1}}}}",
              "c.Broker.lab_timezone = 'Europe/Berlin'"]
    with class_hub_with(hub_factory, sim_cluster, tmp_path, config, users=["student1", "student2", "teacher"],
                        groups={COURSE: ["student1", "student2", "teacher"]}) as hub_broker:
        yield hub_broker


@pytest.mark.timeout(300)
async def test_an_instructor_books_for_their_course_and_a_student_not_for_another(booking_hub):
    hub, _ = booking_hub
    await hub.wait_for_service(BROKER, "metrics")
    for user in ("student1", "teacher"):
        await hub.start_server(user)
    student, teacher = await hub.server_token("student1"), await hub.server_token("teacher")
    start = datetime.now(BERLIN) - timedelta(minutes=1)
    slot = {"start": start.isoformat(timespec="minutes"), "end": (start + timedelta(hours=1)).isoformat()}
    booked = await hub.service_api(BROKER, "POST", "api/bookings",
                                   {"course": COURSE, "vgpus": 1, "memory": "1Gi", "count": 2, **slot}, token=teacher)
    assert booked["booking"]["course"] == COURSE and booked["booking"]["by"] == "teacher", booked
    with pytest.raises(HubHTTPError) as caught:
        await hub.service_api(BROKER, "POST", "api/bookings", {"user": "student2", "vgpus": 1, "memory": "1Gi",
                                                               **slot}, token=student)
    body = json.loads(caught.value.body)
    assert caught.value.code == 403 and body["field"] == "user", body
    await start_vgpu_kernel(hub, "student1")  # 1 vGPU · 1 GiB: the booked shape
    rows = await eventually_async(lambda: hub.service_api(BROKER, "GET", "api/class", token=teacher), timeout=30,
                                  until=lambda view: view["bookings"] and view["bookings"][0]["in_use"] == 1)
    assert rows["bookings"][0]["id"] == booked["booking"]["id"] and rows["bookings"][0]["open"] is True
    mine = await hub.service_api(BROKER, "GET", "api/bookings", token=student)
    assert [b["id"] for b in mine["bookings"]] == [booked["booking"]["id"]]
