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

No request body is read before its token is checked (the handlers stream their bodies, and prepare
authenticates first); none larger than c.Broker.max_body_bytes is read at all.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import generate_latest
from tornado import web
from tornado.httpclient import HTTPClientError
from tornado.iostream import StreamClosedError

from ..core.admission import KernelExists, Launch, Queued, Refused
from ..core.places import new_ticket
from ..core.queue import Waiting
from ..errors import KernelLaunchError
from ..jsonapi import JSONReplies
from ..k8s.pods import container_end_reason, container_exit_code
from ..k8s.view import pod_summary, pod_user
from ..launch import PodPlan
from ..metrics import CLASS_REGISTRY, LAUNCHES, PENDING_LAUNCHES, QUEUE_WAIT, QUEUED
from ..names import ANNOTATION_LAUNCHING, ANNOTATION_PARKED
from ..protocols import ClaimRequest
from ..vgpu import VGPURequestError, format_mib, short
from ..wire import LINE_ERROR, LINE_PROGRESS, LINE_QUEUED, LINE_READY, TICKET, LaunchBody, parse_launch, ports_of
from .service import Broker

MAX_GRACE = 3600  # seconds a stopped kernel may take to end


HUB_ERRORS = (HTTPClientError, OSError, TimeoutError, ValueError)  # the hub down, slow or answering nonsense


@web.stream_request_body  # prepare (the token) runs before any of the body is read
class BrokerHandler(JSONReplies, web.RequestHandler):
    user = ""
    token = ""
    groups: list[str] | None = None  # the caller's hub groups (None: not asked yet, see needs_groups)
    needs_groups = True  # asked of the hub before every request; else by load_groups() where needed

    @property
    def broker(self) -> Broker:
        return self.settings["broker"]

    def check_xsrf_cookie(self) -> None:
        """Token-authenticated API: no cookies, no cross-site forms."""

    def data_received(self, chunk: bytes) -> None:
        if not self._finished:  # refused already (no token): what still arrives is dropped
            self._chunks.append(chunk)

    def json_body(self) -> dict[str, Any] | None:
        self.request.body = b"".join(self._chunks)
        return super().json_body()

    def given_token(self) -> str | None:
        match = re.match(r"(?:token|bearer)\s+(.+)", self.request.headers.get("Authorization", ""), re.IGNORECASE)
        return match.group(1) if match else None

    async def prepare(self) -> None:
        self._chunks: list[bytes] = []
        token = self.given_token()
        if not token:
            self.refuse(401, "a hub token is needed: Authorization: token <JUPYTERHUB_API_TOKEN>")
            return
        try:
            model = await self.may_use(token)
            if model is not None and self.needs_groups:
                self.groups = await self.broker.hub.groups(model["name"])
        except HUB_ERRORS as err:
            self.refuse(503, f"JupyterHub does not answer ({err}), so the broker cannot tell who you are; "
                             "try again in a minute", reason="hub-unavailable")
            return
        if model is None:
            self.refuse(403, f"this token may not use the vGPU broker (it needs access:services!service="
                             f"{self.broker.service_name})")
            return
        self.user, self.token = model["name"], token

    async def may_use(self, token: str, fresh: bool = False) -> dict[str, Any] | None:
        """The hub's model of the token's owner when the token may use the broker, else None (``fresh``: asked
        of the hub now, not as it answered lately)."""
        model = await self.broker.hub.identify(token, fresh)
        allowed = {"access:services", f"access:services!service={self.broker.service_name}"}
        return model if model is not None and allowed & set(model.get("scopes") or []) else None

    async def load_groups(self) -> bool:
        """Ask the hub for the caller's groups now (a handler with needs_groups False); False: refused (503)."""
        try:
            self.groups = await self.broker.hub.groups(self.user)
        except HUB_ERRORS as err:
            self.refuse(503, f"JupyterHub does not answer ({err}); try again in a minute", reason="hub-unavailable")
            return False
        return True

    @property
    def instructor(self) -> bool:
        if self.groups is None:
            raise RuntimeError("the caller's groups were not asked of the hub (load_groups first)")
        return self.broker.is_instructor(self.user, self.groups)

    def own_pod(self, pod_name: str) -> dict | None:
        pod = self.broker.cluster.pod(pod_name)
        return pod if pod is not None and (pod_user(pod) == self.user or self.instructor) else None


class KernelsHandler(BrokerHandler):
    waiting: Waiting | None = None
    stream: asyncio.Future | None = None  # resolved when this stream lets go of its launch's place in the queue

    async def get(self) -> None:
        rows = await self.broker.view.class_kernels(self.user)
        self.reply({"kernels": [{**row, **self.broker.culler.fields(row["kernel_id"])} for row in rows
                                if not self.broker.pods.is_warm(row["pod"])]})

    async def post(self) -> None:
        body = self.json_body()
        if body is None:
            return
        broker = self.broker
        try:
            ask = parse_launch(body)
            servers = await broker.hub.servers(self.user)
            if ask.server_name not in servers:  # it names whose kernels the reaper keeps: only the caller's own
                raise VGPURequestError("server_name", ask.server_name,
                                       f'"{short(ask.server_name)}" is not one of your running servers '
                                       f"({', '.join(repr(s) for s in sorted(servers)) or 'none'})")
            image = ask.image or broker.settings.image
            # per-kernel limits, the image, a request larger than any device: refused at once, never queued
            await broker.kernel_policy.check(ask.request, image=image, view=broker.view)
        except VGPURequestError as err:
            return self._refused(Refused(err))
        except KernelLaunchError as err:
            return self._refused(Refused(err))
        except HUB_ERRORS as err:
            return self.refuse(503, f"JupyterHub does not answer ({err}); try again in a minute",
                               reason="hub-unavailable")
        self.stream = asyncio.get_running_loop().create_future()
        ticket = ask.ticket or new_ticket()
        if ask.ticket:
            decision = self._come_back(ask)
        else:
            decision = await broker.admission.decide(
                Launch(ask.kernel_id, self.user, tuple(self.groups), ask.request, image, ask.server_name,
                       {"memory": format_mib(ask.request.memory_mib), "kernel_spec_name": ask.kernel_spec_name},
                       ask.own_storage),
                self._queue_lines(ticket))
            if isinstance(decision, Queued):
                broker.places.hold(decision.waiting, self.stream, ticket)
        if isinstance(decision, Refused):
            return self._refused(decision)
        self.set_header("Content-Type", "application/x-ndjson")
        self.set_header("Cache-Control", "no-cache")
        kept = False  # the stream broke while the launch waited: its place (and a turn that came) is kept
        try:
            if isinstance(decision, Queued):
                self.waiting = decision.waiting
                turn = await self._wait_turn(decision.waiting)
                kept = turn is None
                if not turn:
                    return self.finish()
                broker.places.taken(ask.kernel_id)
            PENDING_LAUNCHES.inc()
            try:
                await self._launch(ask, image, decision.waiting.course if isinstance(decision, Queued)
                                   else broker.admission.course_of(self.groups))
            finally:
                PENDING_LAUNCHES.dec()
        finally:
            if not kept:
                broker.admission.release(ask.kernel_id)
                broker.queue.wake()  # what this launch did not end up holding may start the next one

    def _come_back(self, ask: LaunchBody) -> Queued | Refused:
        """The caller's waiting launch, back with its ticket after its stream broke: its place, if it still has one."""
        waiting = self.broker.places.resume(ask.kernel_id, self.user, ask.ticket, ask.request, self.stream,
                                            self._queue_lines(ask.ticket))
        if waiting is None:
            return Refused(KernelLaunchError("cancelled", f'no waiting launch "{short(ask.kernel_id)}" of yours to '
                                                          "come back to: its place in the queue was given up"))
        if self.broker.queue.find(waiting.kernel_id) is waiting:  # where it stands, at once
            waiting.notify({LINE_QUEUED: self.broker.queue.describe(waiting)})
        return Queued(waiting)

    def _queue_lines(self, ticket: str) -> Callable[[dict], None]:
        """This stream's queue lines, each with the ticket that brings the launch back for its place."""
        def line(item: dict) -> None:
            self._line({LINE_QUEUED: {**item[LINE_QUEUED], TICKET: ticket}} if LINE_QUEUED in item else item)
        return line

    def _refused(self, refusal: Refused) -> None:
        LAUNCHES.labels("refused").inc()
        err = refusal.error
        if isinstance(err, KernelExists):
            return self.refuse(409, str(err), field=err.field)
        if isinstance(err, VGPURequestError):
            return self.refuse(400, str(err), field=err.field)
        return self.refuse(409, str(err), reason=err.reason)

    async def _wait_turn(self, waiting: Waiting) -> bool | None:
        """Stream the queue position until the launch's turn; False when it left the line (an error line said
        why); None when this stream let go of it (broke, or another came back for it) and the place is kept."""
        broker = self.broker
        QUEUED.labels(waiting.course or "-").inc()
        try:
            while True:
                left = waiting.since + broker.queue_max_wait - time.time()
                if left <= 0:
                    timeout = KernelLaunchError("timeout", f"no vGPU came free for this launch in "
                                                           f"{broker.queue_max_wait:g} s of waiting; try again later")
                    broker.queue.leave(waiting, timeout)
                    raise timeout
                await asyncio.wait({waiting.turn, self.stream}, timeout=min(broker.queue_keepalive, left),
                                   return_when=asyncio.FIRST_COMPLETED)
                if waiting.turn.done() and waiting.turn.exception() is not None:
                    waiting.turn.result()  # it left the line: raises why
                if not broker.places.follows(waiting.kernel_id, self.stream):
                    return None
                if waiting.turn.done():
                    waiting.turn.result()
                    QUEUE_WAIT.observe(time.time() - waiting.since)
                    self._line({LINE_PROGRESS: "a vGPU is free: starting the kernel"})
                    return True
                if broker.queue.find(waiting.kernel_id) is waiting:
                    waiting.notify({LINE_QUEUED: broker.queue.describe(waiting)})
        except KernelLaunchError as err:
            LAUNCHES.labels("cancelled" if err.reason == "cancelled" else "failed").inc()
            self._line({LINE_ERROR: {"reason": err.reason, "message": str(err)}})
            return False
        finally:
            QUEUED.labels(waiting.course or "-").dec()
            self.waiting = None

    def on_connection_close(self) -> None:
        """The server that asked went away while its launch waited: its place waits c.Broker.queue_resume_grace
        seconds for it to come back with its ticket, then is given up."""
        if self.waiting is not None and self.stream is not None:
            self.broker.places.let_go(self.waiting.kernel_id, self.stream)
            if not self.stream.done():
                self.stream.set_result(None)

    def _line(self, item: dict) -> None:
        if self._finished:  # an event that arrives after the answer is complete
            return
        try:
            self.write(json.dumps(item) + "\n")
            asyncio.ensure_future(self.flush())
        except StreamClosedError:
            pass

    async def _launch(self, ask: LaunchBody, image: str, course: str) -> None:
        broker = self.broker
        claimed = broker.warm.reserved_for(ask.kernel_id)
        if claimed and any(ask.curve):  # warm pods hold plaintext connection files: an encrypted kernel starts fresh
            broker.warm.unreserve(ask.kernel_id)
            claimed = None
        try:
            if claimed:
                self._line({LINE_PROGRESS: f"handing over a warm kernel with {ask.request.describe()} to {self.user}"})
                ready = await broker.warm.claim(ClaimRequest(ask.kernel_id, ask.cwd, ask.server_name,
                                                             ask.kernel_spec_name), self.user, course)
            else:
                self._line({LINE_PROGRESS: f"starting a kernel with {ask.request.describe()} for {self.user}"})
                ready = await self._start_pod(ask, image, course)
        except KernelLaunchError as err:
            LAUNCHES.labels("failed").inc()
            self._line({LINE_ERROR: {"reason": err.reason, "message": str(err)}})
            return self.finish()
        LAUNCHES.labels("claimed" if claimed else "ready").inc()
        key, ports = (ready["key"], ports_of(ready["ports"])) if claimed else (ask.key, ask.ports)
        own_storage = ready.pop("own_storage", True)  # a pool's warm kernel mounts nobody's storage
        broker.culler.target.watch(ask.kernel_id, ready["pod_name"], self.user, course, ask.request.count,
                                   ready["ip"], key, ports, curve_serverkey=ask.curve[0], own_storage=own_storage)
        self._line({LINE_READY: ready})
        self.finish()

    async def _start_pod(self, ask: LaunchBody, image: str, course: str) -> dict[str, Any]:
        broker = self.broker
        working_dir = f"{broker.home_mount_path.rstrip('/')}/{ask.cwd}".rstrip("/") if broker.home_mount_path else None
        plan = PodPlan(kernel_id=ask.kernel_id, user=self.user, request=ask.request, image=image, key=ask.key,
                       ports=ask.ports, kernel_spec_name=ask.kernel_spec_name, course=course,
                       server_name=ask.server_name, working_dir=working_dir, volumes=broker.volumes,
                       volume_mounts=broker.volume_mounts, annotations={ANNOTATION_LAUNCHING: "true"},
                       curve=ask.curve)
        name, kernel = await broker.site.start(plan, lambda message: self._line({LINE_PROGRESS: message}))
        try:
            await broker.site.launched(name)  # before its server hears of it: never an orphan it uses
        except KernelLaunchError:
            await broker.site.delete_kernel(name)
            raise
        return {"pod_name": name, "ip": kernel.ip, "namespace": broker.namespace,
                "node": ((broker.cluster.pod(name) or {}).get("spec") or {}).get("nodeName")}


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
