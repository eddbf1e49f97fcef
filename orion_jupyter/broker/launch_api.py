"""POST api/kernels: a launch, answered as a stream of JSON lines ({"queued"}... while it waits its turn,
{"progress"}..., then {"ready"} or {"error"}); the same launch with its queued lines' "ticket" comes back
for its place after its stream broke (core.places). GET api/kernels: the caller's kernels."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from tornado.iostream import StreamClosedError

from ..core.admission import KernelExists, Launch, Queued, Refused
from ..core.places import new_ticket
from ..core.queue import Waiting
from ..errors import KernelLaunchError
from ..launch import PodPlan
from ..metrics import LAUNCHES, PENDING_LAUNCHES, QUEUE_WAIT, QUEUED
from ..names import ANNOTATION_LAUNCHING
from ..protocols import ClaimRequest
from ..vgpu import VGPURequestError, format_mib, short
from ..wire import LINE_ERROR, LINE_PROGRESS, LINE_QUEUED, LINE_READY, TICKET, LaunchBody, parse_launch, ports_of
from .api_auth import HUB_ERRORS, BrokerHandler


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
            await broker.site.delete_kernel(name, collector=False)
            raise
        return {"pod_name": name, "ip": kernel.ip, "namespace": broker.namespace,
                "node": ((broker.cluster.pod(name) or {}).get("spec") or {}).get("nodeName")}
