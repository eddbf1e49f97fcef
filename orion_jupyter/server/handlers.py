"""REST handlers under {base_url}/orion/api/: allocations, pool, specs, kernels, events, budget, demos, class."""

from __future__ import annotations

import json
from collections.abc import Awaitable
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from jupyter_server.utils import ensure_async
from tornado import web

from ..core.budgets import topup_hours
from ..core.idle import NotCullable
from ..errors import KernelLaunchError
from ..jsonapi import JSONReplies
from ..vgpu import VGPURequestError
from .refusals import refusal_status

AUTH_RESOURCE = "orion"
DEMO_FIELDS = ("spec", "vgpus", "memory", "compute", "kernel_id", "run")
USAGE_FIELDS = ("memory_used", "memory_source", "memory_sampled_at", "memory_granted", "waste_bytes")


class OrionHandler(JSONReplies, ExtensionHandlerMixin, APIHandler):
    auth_resource = AUTH_RESOURCE

    async def prepare(self, *args: Any, **kwargs: Any) -> None:
        await super().prepare(*args, **kwargs)
        await self.state.view.start()  # the shared watches, once per process (a no-op after)

    @property
    def state(self) -> Any:
        return self.settings["orion_jupyter_state"]

    @property
    def culler(self) -> Any:
        return self.settings["orion_jupyter_culler"]

    @property
    def username(self) -> str:
        """The name this request acts as (the server's user on a one-person server)."""
        return self.state.access.kernel_user(self.current_user)

    @property
    def is_instructor(self) -> bool:
        return self.state.is_instructor(self.current_user)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """A backend that cannot answer now (e.g. the local slot table locked too long) is a 503 with its reason."""
        error = (kwargs.get("exc_info") or (None, None, None))[1]
        if isinstance(error, KernelLaunchError):
            self.clear()
            return self.refuse(503, str(error), reason=error.reason)
        super().write_error(status_code, **kwargs)

    async def or_refuse(self, work: Awaitable[Any]) -> Any:
        """``work``'s result, or None after answering the refusal it raised (400, 409 or 503)."""
        try:
            return await work
        except VGPURequestError as err:
            self.refuse(refusal_status(err), str(err), field=err.field)
        except KernelLaunchError as err:
            self.refuse(refusal_status(err), str(err), reason=err.reason)
        return None


class AllocationsHandler(OrionHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        kernels = await self.state.kernels.allocations_for(self.current_user, self.state.access)
        self.reply({"kernels": kernels, "cluster": self.state.view.kind})


class PoolHandler(OrionHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        pool = await self.state.view.pool()
        self.reply({**pool.as_dict(), "count_resource": self.state.view.count_resource})


class SpecsHandler(OrionHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply({"specs": await self.state.kernels.spec_views(self.username)})


class KernelsHandler(OrionHandler):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body()
        if body is None:
            return
        path = body.pop("path", None)
        model = await self.or_refuse(self.state.kernels.start(body, self.username, path=path))
        if model is not None:
            self.reply(model, 201)


class EventsHandler(OrionHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        kernel_id = self.get_query_argument("kernel", "")
        if not kernel_id:
            return self.refuse(400, 'query parameter "kernel" is missing; use events?kernel=KERNEL_ID')
        # a kernel stopped for being idle, or by its finished demo run: its last words stay its owner's
        ended_owner = (self.culler.owner_of_culled(kernel_id) or self.state.demos.owner_of_finished(kernel_id)
                       or (self.state.budgets.owner_of_given_back(kernel_id) if self.state.budgets else None))
        if not (self.state.may_see_kernel(self.current_user, kernel_id) or (
                ended_owner is not None and self.state.access.owns(self.current_user, ended_owner))):
            return self.refuse(404, f'no kernel "{kernel_id}" of yours')
        try:
            after = int(self.get_query_argument("after", "0"))
        except ValueError:
            return self.refuse(400, 'query parameter "after" must be a whole number')
        self.reply({"kernel": kernel_id, "events": self.state.progress.events(kernel_id, after)})


class KeepHandler(OrionHandler):
    @web.authenticated
    @authorized
    async def post(self, kernel_id: str) -> None:
        """Restart an idle vGPU kernel's idle clock (its owner or an instructor), at most cull_max_keeps times."""
        if not self.state.may_see_kernel(self.current_user, kernel_id):
            return self.refuse(404, f'no vGPU kernel "{kernel_id}" of yours')
        try:
            self.reply(await ensure_async(self.culler.keep(kernel_id)))
        except NotCullable as err:
            self.refuse(409, str(err))
        except PermissionError as err:
            self.refuse(getattr(err, "status", 404), str(err))


class ExemptHandler(OrionHandler):
    @web.authenticated
    @authorized
    async def post(self, kernel_id: str) -> None:
        """``{"exempt": true|false}``: an instructor spares a kernel from idle culling (or not any more)."""
        remote = self.state.view.decides_culling  # hub mode: the broker checks who is an instructor
        if not (self.is_instructor or remote):
            return self.refuse(403, "only instructors may exempt a kernel from being stopped when idle")
        if self.state.kernels.kernel_user(kernel_id) is None and not remote:
            return self.refuse(404, f'no vGPU kernel "{kernel_id}" on this server')
        body = self.json_body()
        if body is None:
            return
        flag = body.get("exempt")
        if not isinstance(flag, bool) or set(body) != {"exempt"}:
            return self.refuse(400, 'send {"exempt": true} or {"exempt": false}', field="exempt")
        try:
            self.reply(await ensure_async(self.culler.exempt(kernel_id, flag)))
        except PermissionError as err:
            self.refuse(getattr(err, "status", 404), str(err))


class QueueHandler(OrionHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        """This user's launches waiting for a vGPU (hub mode, a course with a queue): position, estimate, notebook."""
        self.reply({"waiting": await self.state.kernels.waiting(self.username)})


class QueuedHandler(OrionHandler):
    @web.authenticated
    @authorized
    async def delete(self, kernel_id: str) -> None:
        """Give up a waiting launch's place; its pending start then answers 409 (reason "cancelled")."""
        mine = {w["kernel_id"] for w in await self.state.kernels.waiting(self.username)}
        if kernel_id not in mine or not await self.state.view.cancel_waiting(kernel_id):
            return self.refuse(404, f'no launch "{kernel_id}" of yours is waiting for a vGPU')
        self.reply({"cancelled": kernel_id})


class BudgetHandler(OrionHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        """This user's vGPU-hour budget (direct mode: this server's meter; hub mode: the broker's), for the status
        bar and the sidebar."""
        self.reply(await self.state.budget(self.username))


class TopupHandler(OrionHandler):
    @web.authenticated
    @authorized
    async def post(self, user: str) -> None:
        """``{"hours": 2}``: an instructor adds to ``user``'s budget for this window (hub mode: the broker decides
        who is an instructor)."""
        if not (self.is_instructor or self.state.view.decides_budgets):
            return self.refuse(403, "only instructors may top up a budget")
        body = self.json_body()
        if body is None:
            return
        try:
            self.reply(await self.state.topup(user, topup_hours(body)))
        except VGPURequestError as err:
            self.refuse(refusal_status(err), str(err), field=err.field)
        except Exception as err:
            status = getattr(err, "status", None)  # the broker's refusal (not an instructor, no budgets), its reason
            if status not in (400, 403, 404, 409):
                raise
            self.refuse(status, str(err))


class DemosHandler(OrionHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply({"demos": self.state.demos.list()})


class DemoHandler(OrionHandler):
    @web.authenticated
    @authorized
    async def post(self, name: str) -> None:
        if name not in self.state.demos.names():
            return self.refuse(404, f'no demo named "{name}"; use one of {", ".join(self.state.demos.names())}')
        body = self.json_body()
        if body is None:
            return
        run = body.pop("run", False)
        if not isinstance(run, bool):
            return self.refuse(400, f'field "run" must be true or false, not {json.dumps(run)}', field="run")
        body.setdefault("spec", self.state.demos.spec_for(name))
        if not body["spec"]:
            return self.refuse(400, 'field "spec" is missing and no vGPU kernel spec is installed to default to',
                               field="spec")
        plan = await self.or_refuse(self.state.kernels.plan(body, self.username, DEMO_FIELDS))
        if plan is None:
            return  # refused before anything was copied or started
        path, copied = await self.state.demos.place(name, self.contents_manager)
        model = await self.or_refuse(self.state.kernels.start(body, self.username, path=path, plan=plan))
        if model is None:
            if copied:  # the launch failed after all: leave the folder as it was
                await self.state.demos.unplace(path, self.contents_manager)
            return
        if run:
            self.state.demos.run_headless(name, path, model["id"], model["vgpu"]["user"] if model.get("vgpu") else
                                          self.username, self.contents_manager, self.kernel_manager)
        self.reply({"path": path, "kernel_id": model["id"], "kernel": model, "running": run}, 201)


class ClassHandler(OrionHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        sort = self.get_query_argument("sort", "")
        if sort not in ("", "waste"):
            return self.refuse(400, f'query parameter "sort" {sort!r} is not known; use sort=waste or leave it out')
        view = self.state.view
        instructor = view.decides_instructors or self.is_instructor
        try:
            kernels = await view.class_kernels(None if instructor else self.username)
        except PermissionError:  # the broker says this user is no instructor: their own kernels then
            instructor, kernels = False, await view.class_kernels(self.username)
        fresh = {k["kernel_id"]: k for k in self.state.kernels.allocations() if k.get("memory_used") is not None}
        for kernel in kernels:  # this server's own kernels: the latest sample, not the pod's annotation
            if kernel.get("kernel_id") in fresh:
                kernel.update({k: fresh[kernel["kernel_id"]][k] for k in USAGE_FIELDS})
        if sort == "waste":  # most granted-and-unused memory first (unknown use last), then the longest idle
            kernels.sort(key=lambda k: (k.get("waste_bytes") is None, -(k.get("waste_bytes") or 0),
                                        -(k.get("idle_seconds") or 0)))
        self.reply({"kernels": kernels, "instructor": instructor,
                    "budgets": self.state.budget_rows() if instructor else [],
                    "parked": view.parked_rows() if instructor and view.kind == "broker" else []})


class ClassPodHandler(OrionHandler):
    @web.authenticated
    @authorized
    async def delete(self, pod_name: str) -> None:
        view = self.state.view
        kernel = view.find_kernel(pod_name)
        allowed = view.decides_instructors or self.is_instructor or (kernel or {}).get("user") == self.username
        if kernel is None or not allowed:
            # Another user's pod is as good as not there for this user.
            return self.refuse(404, f'no orion-jupyter kernel pod "{pod_name}"')
        try:
            await self.state.kernels.stop(kernel, stopped_by=self.username)
        except PermissionError:
            return self.refuse(404, f'no orion-jupyter kernel pod "{pod_name}"')
        self.reply({"stopped": pod_name, "user": kernel["user"]})


def routes(prefix: str) -> list[tuple[str, type]]:
    """The extension's handlers under ``prefix`` (``/orion/api``)."""
    return [
        (rf"{prefix}/allocations", AllocationsHandler),
        (rf"{prefix}/pool", PoolHandler),
        (rf"{prefix}/specs", SpecsHandler),
        (rf"{prefix}/kernels", KernelsHandler),
        (rf"{prefix}/kernels/([^/]+)/keep", KeepHandler),
        (rf"{prefix}/kernels/([^/]+)/exempt", ExemptHandler),
        (rf"{prefix}/events", EventsHandler),
        (rf"{prefix}/queue", QueueHandler),
        (rf"{prefix}/queue/([^/]+)", QueuedHandler),
        (rf"{prefix}/budget", BudgetHandler),
        (rf"{prefix}/budgets/([^/]{{1,255}})/topup", TopupHandler),
        (rf"{prefix}/demos", DemosHandler),
        (rf"{prefix}/demos/([a-z0-9_-]+)", DemoHandler),
        (rf"{prefix}/class", ClassHandler),
        (rf"{prefix}/class/([a-z0-9.-]+)", ClassPodHandler),
    ]
