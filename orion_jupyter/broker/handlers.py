"""The broker's HTTP API (under its service prefix); every request carries a hub token.

POST   api/kernels            launch; answers a stream of JSON lines: {"queued"}... while it waits its turn,
                              {"progress"}..., then {"ready"} or {"error"}; the same launch with its queued
                              lines' "ticket" comes back for its place after its stream broke (core.places)
GET    api/kernels            the caller's kernels
DELETE api/kernels/{id}       stop one of the caller's kernels
GET    api/queue              the caller's launches waiting in their course's queue (instructors: all)
DELETE api/queue/{id}         take a waiting launch out of the queue
GET    api/watch              a stream of JSON lines: the caller's kernels, then every change of one
GET    api/pool               the pool
GET    api/class              every kernel, budgets, and per student what the broker parked (instructors)
DELETE api/class/{pod}        stop any kernel (instructors)
GET    metrics                Prometheus (no user names): with a token, or directly from c.Broker.metrics_allow

Beside it, served by app.py: idle culling (idle_api.py: keep, exempt, activity reports), parking
(park_api.py), budgets (budget_api.py) and bookings (booking_api.py).

The launch stream is launch_api.py's; every handler's token check, api_auth.py's.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import time

from prometheus_client import generate_latest
from tornado.iostream import StreamClosedError

from ..k8s.pods import container_end_reason, container_exit_code
from ..k8s.view import pod_summary, pod_user
from ..metrics import CLASS_REGISTRY
from ..names import ANNOTATION_PARKED
from ..vgpu import short
from ..wire import LINE_ERROR
from .api_auth import HUB_ERRORS, BrokerHandler
from .launch_api import KernelsHandler

MAX_GRACE = 3600  # seconds a stopped kernel may take to end


class QueueHandler(BrokerHandler):
    async def get(self) -> None:
        """The caller's waiting launches (an instructor's: everyone's)."""
        queue = self.broker.queue
        self.reply({"waiting": [queue.describe(w) for w in queue.waiting(None if self.instructor else self.user)]})


class QueuedHandler(BrokerHandler):
    async def delete(self, kernel_id: str) -> None:
        """Take one of the caller's launches out of the queue (an instructor: anyone's)."""
        waiting = self.broker.queue.find(kernel_id)
        if waiting is None or not (waiting.user == self.user or self.instructor):
            return self.refuse(404, f'no waiting launch "{short(kernel_id)}" of yours')
        self.broker.queue.cancel(kernel_id, self.user)
        self.reply({"cancelled": kernel_id})


class KernelHandler(BrokerHandler):
    needs_groups = False  # a student stopping their own kernel: whether they teach matters only for others'

    async def delete(self, kernel_id: str) -> None:
        pods = self.broker.pods.kernel_pods_of(kernel_id)
        if any(pod_user(p) != self.user for p in pods) and not await self.load_groups():
            return
        pods = [p for p in pods if pod_user(p) == self.user or self.instructor]
        if not pods:
            return self.refuse(404, f'no kernel "{short(kernel_id)}" of yours')
        grace = self.get_query_argument("grace", "0")
        if not re.fullmatch(r"[0-9]{1,4}", grace) or int(grace) > MAX_GRACE:  # ASCII digits: int('²') fails
            return self.refuse(400, f"grace {grace!r} is not a whole number of seconds from 0 to {MAX_GRACE}",
                               field="grace")
        names = [p["metadata"]["name"] for p in pods]
        site, left = self.broker.site, []
        for pod, name in zip(pods, names, strict=True):
            # an instructor stopping another's kernel: it stays stopped (its server's restart is refused)
            going = await (site.delete_kernel(name, int(grace)) if pod_user(pod) == self.user
                           else site.stop(name, self.user, int(grace)))
            if not going:
                left.append(name)
        if left:
            return self.refuse(502, f"Kubernetes did not stop {', '.join(left)}; try again", stopped=[
                name for name in names if name not in left])
        self.reply({"stopped": names})


class WatchHandler(BrokerHandler):
    """The caller's kernels as they change, one JSON line each; a line every 30 s keeps proxies open."""

    async def get(self) -> None:
        self.set_header("Content-Type", "application/x-ndjson")
        self.set_header("Cache-Control", "no-cache")
        changes: asyncio.Queue = asyncio.Queue()

        culler = self.broker.culler

        def state(kind: str, pod: dict) -> dict:
            item = kernel_state(kind, pod)
            return {**item, **culler.fields(item["kernel_id"])}

        def on_pod(kind: str, pod: dict) -> None:
            if pod_user(pod) == self.user:
                changes.put_nowait(state(kind, pod))

        def on_cull(kernel_id: str) -> None:  # the idle clock moved, a warning, a keep, an exemption
            kernel = culler.target.get_kernel(kernel_id)
            pod = self.broker.cluster.pod(kernel.pod) if kernel is not None and kernel.user == self.user else None
            if pod is not None:
                changes.put_nowait(state("MODIFIED", pod))

        unsubscribe = self.broker.cluster.pods.subscribe(on_pod, asyncio.get_running_loop())
        self.broker.cull_listeners.add(on_cull)
        try:
            for pod in self.broker.cluster.kernel_pods():
                if pod_user(pod) == self.user and not self.broker.pods.is_warm(pod["metadata"]["name"]):
                    self.write(json.dumps(state("ADDED", pod)) + "\n")
            self.write(json.dumps({"synced": True}) + "\n")
            await self.flush()
            recheck = self.broker.watch_recheck_seconds
            checked = time.monotonic()
            while True:
                try:
                    item = await asyncio.wait_for(changes.get(), min(30.0, recheck))
                except TimeoutError:
                    item = {"keepalive": True}
                if time.monotonic() - checked >= recheck:
                    checked = time.monotonic()
                    if not await self._still_allowed():
                        self.write(json.dumps({LINE_ERROR: {"reason": "unauthorized", "message":
                                                         "this stream's token was revoked"}}) + "\n")
                        return self.finish()
                self.write(json.dumps(item) + "\n")
                await self.flush()
        except StreamClosedError:
            pass
        finally:
            unsubscribe()
            self.broker.cull_listeners.discard(on_cull)

    def on_connection_close(self) -> None:
        pass

    async def _still_allowed(self) -> bool:
        """The token still may use the broker, as the same user (the hub down: yes, until it answers)."""
        try:
            model = await self.may_use(self.token, fresh=True)
        except HUB_ERRORS:
            return True
        return model is not None and model["name"] == self.user


def kernel_state(kind: str, pod: dict) -> dict:
    """One line of a watch stream; ``snapshot``: the id the broker parked the kernel as, when it did."""
    summary = pod_summary(pod)
    return {"kernel_id": summary["kernel_id"], "pod": summary["pod"], "phase": summary["phase"],
            "snapshot": (pod["metadata"].get("annotations") or {}).get(ANNOTATION_PARKED),
            "deleted": kind == "DELETED", "exit_code": container_exit_code(pod), "reason": container_end_reason(pod)
            or summary["reason"], "node": summary["node"], "ip": (pod.get("status") or {}).get("podIP")}


class PoolHandler(BrokerHandler):
    async def get(self) -> None:
        pool = await self.broker.view.pool()
        self.reply({**pool.as_dict(), "count_resource": self.broker.view.count_resource,
                    "backend": self.broker.backend.name, "warm": self.broker.warm.summary(),  # held, unclaimed
                    "home": self.broker.home_mount_path})  # the user's storage in kernel pods ('': none)


class ClassHandler(BrokerHandler):
    async def get(self) -> None:
        if not self.instructor:
            return self.refuse(403, "the class view is for instructors")
        rows = await self.broker.view.class_kernels(None)
        self.reply({"kernels": [{**row, **self.broker.culler.fields(row["kernel_id"]),
                                 "warm": self.broker.pods.is_warm(row["pod"])} for row in rows], "instructor": True,
                    "budgets": self.broker.budget_meter.rows() if self.broker.budget_meter else [],
                    "bookings": self.broker.booked.rows(),
                    "parked": self.broker.parking.rows()})


class ClassPodHandler(BrokerHandler):
    async def delete(self, pod_name: str) -> None:
        pod = self.own_pod(pod_name)
        if pod is None:
            return self.refuse(404, f'no kernel pod "{short(pod_name)}" of yours')
        await self.broker.site.stop(pod_name, self.user)
        self.reply({"stopped": pod_name, "user": pod_user(pod)})


class MetricsHandler(BrokerHandler):
    async def prepare(self) -> None:
        """A hub token, unless the scraper connects directly from an allowed address (c.Broker.metrics_allow)."""
        if "X-Forwarded-For" not in self.request.headers and allowed_address(self.request.remote_ip,
                                                                             self.broker.metrics_allow):
            self._chunks = []
            return
        await super().prepare()

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; version=0.0.4")
        self.finish(generate_latest(CLASS_REGISTRY))


def allowed_address(address: str | None, networks: list[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
        return any(ip in ipaddress.ip_network(network, strict=False) for network in networks)
    except ValueError:
        return False


def routes(prefix: str) -> list:
    base = "/" + prefix.strip("/")
    return [
        (rf"{base}/api/kernels", KernelsHandler),
        (rf"{base}/api/kernels/([0-9a-f-]{{36}})", KernelHandler),
        (rf"{base}/api/queue", QueueHandler),
        (rf"{base}/api/queue/([0-9a-f-]{{36}})", QueuedHandler),
        (rf"{base}/api/watch", WatchHandler),
        (rf"{base}/api/pool", PoolHandler),
        (rf"{base}/api/class", ClassHandler),
        (rf"{base}/api/class/([a-z0-9.-]+)", ClassPodHandler),
        (rf"{base}/metrics", MetricsHandler),
    ]
