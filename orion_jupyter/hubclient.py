"""The single-user server's side of hub mode: a ``broker`` driver over the broker's API (its read side,
the view, is hubview.py).

The server holds no cluster credentials: it asks the broker, with its own hub token
(``JUPYTERHUB_API_TOKEN``), to launch and stop kernels, follows its kernels over one watch stream
per process, and connects to each kernel pod directly over ZMQ.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import time
from collections.abc import Callable
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from .errors import KernelLaunchError
from .launch import KernelLaunch
from .protocols import BackendView
from .vgpu import VGPURequestError
from .wire import (
    LINE_ERROR,
    LINE_PROGRESS,
    LINE_QUEUED,
    LINE_READY,
    PORT_NAMES,
    TICKET,
    connection_info,
    fresh_ports,
    ports_of,
)

log = logging.getLogger("orion_jupyter.broker")
TERMINAL_PHASES = ("Succeeded", "Failed")
STALL_SECONDS = 90.0  # a launch stream silent this long is broken (the broker sends a queue line every 20 s)
COME_BACK_SECONDS = 300.0  # a waiting launch whose stream broke tries this long to come back for its place


class BrokerError(KernelLaunchError):
    """The broker could not be reached or answered something this client does not understand."""

    def __init__(self, message: str):
        super().__init__("api", message)


class StreamBroke(BrokerError):
    """The launch's stream broke (the broker went away, the network dropped, or it fell silent)."""


class BrokerRefusal(Exception):
    """The broker said no (403 not allowed, 404 not yours, 409 not now), with its reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class BrokerClient:
    """One per broker and token per process: requests, the launch stream, and the watch of this user's kernels."""

    _shared: dict[tuple[str, str], BrokerClient] = {}

    def __init__(self, url: str, token: str):
        self.url = url.rstrip("/") + "/"
        self.token = token
        self.kernels: dict[str, dict[str, Any]] = {}  # kernel id -> its latest state from the watch
        self.waiting: dict[str, dict[str, Any]] = {}  # kernel id -> its place in the queue, while it waits
        self._changed = asyncio.Event()
        self._watching: asyncio.Task | None = None
        self.synced = asyncio.Event()

    @classmethod
    def shared(cls, url: str, token: str) -> BrokerClient:
        key = (url, token)
        if key not in cls._shared:
            cls._shared[key] = cls(url, token)
        return cls._shared[key]

    def _request(self, method: str, path: str, body: Any = None, **kwargs: Any) -> HTTPRequest:
        return HTTPRequest(self.url + path, method=method, headers={"Authorization": f"token {self.token}",
                                                                   "Content-Type": "application/json"},
                           body=None if body is None and method in ("GET", "DELETE") else json.dumps(body or {}),
                           **kwargs)

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        try:
            response = await AsyncHTTPClient().fetch(self._request(method, path, body, request_timeout=30))
        except HTTPClientError as err:
            if err.response is None:
                raise BrokerError(f"the vGPU broker at {self.url} cannot be reached: {err}") from None
            return err.code, _json(err.response.body)
        except OSError as err:
            raise BrokerError(f"the vGPU broker at {self.url} cannot be reached: {err}") from None
        return response.code, _json(response.body)

    async def launch(self, body: dict[str, Any], timeout: float, progress: Callable[[str], None],
                     queued: Callable[[dict[str, Any]], None] = lambda place: None) -> dict[str, Any]:
        """POST a launch and follow its stream until the kernel is ready (after its turn in the queue,
        if it waits); raises its refusal or failure. A waiting launch whose stream breaks comes back for
        its place with the ticket of its queue lines (for up to COME_BACK_SECONDS of trying)."""
        kernel_id = body["kernel_id"]
        ticket = ""
        left_queue = False  # a progress line came: the launch is no longer waiting
        broke_at, delay = None, 0.5  # since when, and how long until the next try, while the stream is broken

        def on_item(item: dict) -> None:
            nonlocal ticket, left_queue, broke_at, delay
            broke_at, delay = None, 0.5  # the broker answers (again)
            if LINE_QUEUED in item and isinstance(item[LINE_QUEUED], dict):
                place = item[LINE_QUEUED]
                ticket = str(place.get(TICKET) or ticket)
                self.waiting[kernel_id] = {k: v for k, v in place.items() if k != TICKET}
                queued(self.waiting[kernel_id])
            elif LINE_PROGRESS in item:
                left_queue = True
                self.waiting.pop(kernel_id, None)
                progress(str(item[LINE_PROGRESS]))

        try:
            while True:
                try:
                    answer = await self._launch_stream({**body, TICKET: ticket} if ticket else body, timeout,
                                                       on_item)
                    break
                except StreamBroke as err:
                    broke_at = broke_at or time.monotonic()
                    if not ticket or left_queue or time.monotonic() - broke_at > COME_BACK_SECONDS:
                        raise
                    log.warning("kernel %s: %s; coming back for its place in the queue in %.1f s", kernel_id, err,
                                delay)
                    await asyncio.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 5.0)
        except asyncio.CancelledError:
            if ticket and not left_queue:  # nobody will come back for it: give the place up now
                asyncio.ensure_future(self.call("DELETE", f"api/queue/{kernel_id}"))
            raise
        finally:
            self.waiting.pop(kernel_id, None)
        if LINE_READY in answer:
            return answer[LINE_READY]
        error = answer[LINE_ERROR]
        reason = error.get("reason") if error.get("reason") in KernelLaunchError.REASONS else "api"
        raise KernelLaunchError(reason, error.get("message", "the launch failed"))

    async def _launch_stream(self, body: dict[str, Any], timeout: float,
                             on_item: Callable[[dict], None]) -> dict[str, Any]:
        """One POST api/kernels, its lines read to the end: its ready or error line (StreamBroke when the
        stream ended without one, or could not be followed)."""
        lines: list[dict] = []
        last_line = time.monotonic()

        def on_line(item: dict) -> None:
            nonlocal last_line
            last_line = time.monotonic()
            lines.append(item)
            on_item(item)

        reader = JSONLines(on_line)
        # no total time limit: a launch may wait its turn for long; a stream silent for too long is broken
        request = self._request("POST", "api/kernels", body, request_timeout=0, streaming_callback=reader.feed)
        fetch = asyncio.ensure_future(AsyncHTTPClient().fetch(request))
        try:
            while not fetch.done():
                await asyncio.wait({fetch}, timeout=5)
                if not fetch.done() and time.monotonic() - last_line > max(STALL_SECONDS, timeout + 30):
                    raise StreamBroke(f"the vGPU broker at {self.url} stopped answering during the launch")
            fetch.result()
        except HTTPClientError as err:
            if err.response is None:
                raise StreamBroke(f"the vGPU broker at {self.url} cannot be reached: {err}") from None
            refusal = _json(err.response.body if err.response.body else bytes(reader.buffer)) or {}
            message = refusal.get("message") or f"the vGPU broker refused the launch ({err.code})"
            if refusal.get("field"):
                raise VGPURequestError(refusal["field"], None, message) from None
            raise KernelLaunchError(refusal.get("reason") if refusal.get("reason") in KernelLaunchError.REASONS
                                    else "unschedulable" if err.code == 409 else "api", message) from None
        except OSError as err:
            raise StreamBroke(f"the vGPU broker at {self.url} cannot be reached: {err}") from None
        finally:
            if not fetch.done():
                fetch.cancel()
        answer = next((item for item in lines if LINE_READY in item or LINE_ERROR in item), None)
        if answer is None or not isinstance(answer.get(LINE_ERROR, {}), dict):
            raise StreamBroke(f"the vGPU broker at {self.url} ended the launch's stream without an answer")
        return answer

    async def watching(self) -> None:
        """Follow this user's kernels (one stream per process), resuming with capped, jittered backoff."""
        if self._watching is None or self._watching.done():
            self._watching = asyncio.ensure_future(self._watch())
        await asyncio.wait_for(self.synced.wait(), 30)

    async def _watch(self) -> None:
        delay = 0.2
        while True:
            try:
                await AsyncHTTPClient().fetch(self._request("GET", "api/watch", request_timeout=0,
                                                            streaming_callback=JSONLines(self._apply).feed))
                delay = 0.2
            except Exception as err:  # noqa: BLE001 - any break of the stream: resume
                log.warning("the broker's watch stream broke (%s); resuming in %.1f s", err, delay)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 30.0)

    def _apply(self, item: dict[str, Any]) -> None:
        if item.get("synced"):
            self.synced.set()
        elif item.get("kernel_id"):
            self.kernels[item["kernel_id"]] = item
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self) -> None:
        await self._changed.wait()


class JSONLines:
    """Splits a streamed body into JSON objects, one per line, for ``on_item``."""

    def __init__(self, on_item: Callable[[dict], None]):
        self.on_item = on_item
        self.buffer = bytearray()

    def feed(self, chunk: bytes) -> None:
        self.buffer.extend(chunk)
        while b"\n" in self.buffer:
            line, _, rest = bytes(self.buffer).partition(b"\n")
            self.buffer[:] = rest
            item = _json(line)
            if isinstance(item, dict):
                self.on_item(item)


def _json(data: bytes | None) -> Any:
    try:
        return json.loads(data or b"null")
    except ValueError:
        return None


class BrokerKernel:
    """A kernel pod the broker launched for this server; state from the watch stream."""

    def __init__(self, client: BrokerClient, kernel_id: str, pod_name: str, ip: str):
        self.client = client
        self.kernel_id = kernel_id
        self.pod_name = pod_name
        self.ip = ip
        self._exit_code: int | None = None

    def poll(self) -> int | None:
        if self._exit_code is None:
            state = self.client.kernels.get(self.kernel_id)
            if state is not None and state.get("pod") == self.pod_name and (
                    state.get("deleted") or state.get("phase") in TERMINAL_PHASES):
                self._exit_code = state.get("exit_code") if state.get("exit_code") is not None else 1
        return self._exit_code

    async def wait(self) -> int | None:
        while self.poll() is None:
            await self.client.changed()
        return self._exit_code

    async def send_signal(self, signum: int) -> None:
        if signum == 0:
            if self.poll() is not None:
                raise ProcessLookupError(f"kernel pod {self.pod_name} is gone")
        elif signum in (signal.SIGKILL, signal.SIGTERM):
            await self.terminate(0 if signum == signal.SIGKILL else 5)
        else:
            log.warning("signal %s is not delivered to kernel pod %s (interrupts go by message)", signum, self.pod_name)

    async def terminate(self, grace_seconds: int) -> None:
        await self.client.call("DELETE", f"api/kernels/{self.kernel_id}?grace={int(grace_seconds)}")

    async def kill(self) -> None:
        await self.terminate(0)

    async def cleanup(self, restart: bool = False) -> None:
        code, body = await self.client.call("DELETE", f"api/kernels/{self.kernel_id}")
        if code not in (200, 404):
            log.error("the broker did not stop kernel %s (%s): %s", self.kernel_id, code, body)

    def info(self) -> dict[str, Any]:
        state = self.client.kernels.get(self.kernel_id) or {}
        return {"pod_name": self.pod_name, "pod_ip": self.ip, "node_name": state.get("node")}


def queue_message(place: dict[str, Any]) -> str:
    """'waiting for a vGPU: position 3 in course ai101, about 2 min'."""
    where = f" in course {place['course']}" if place.get("course") else ""
    estimate = place.get("estimate_seconds")
    about = ""
    if isinstance(place.get("wait"), str) and place.get("wait_p50_seconds") is not None:
        about = f", {place['wait'][:80]}"  # the broker's p50/p80 from what it knows
    elif isinstance(estimate, int | float):
        about = f", about {max(round(estimate / 60), 1)} min" if estimate >= 60 else f", about {round(estimate)} s"
    return f"waiting for a vGPU: position {place.get('position')}{where}{about}"


class BrokerDriver:
    name = "broker"

    def __init__(self, client: BrokerClient, view: BackendView):
        self.client = client
        self.view = view  # the Driver protocol's: the provisioner checks policy and quota against it
        self._connection: dict[str, Any] = {}

    async def pre_launch(self, launch: KernelLaunch, kwargs: dict[str, Any]) -> dict[str, Any]:
        previous = [self._connection.get(name) for name in PORT_NAMES]
        self._connection = {**connection_info(launch.ports or fresh_ports(previous), launch.key,
                                              launch.kernel_spec_name, signature_scheme=launch.signature_scheme),
                            **launch.curve_fields()}
        kwargs["cmd"] = ["python", "-m", "ipykernel_launcher"]  # the broker builds the pod's command
        return kwargs

    async def launch(self, launch: KernelLaunch, cmd: list[str],
                     kwargs: dict[str, Any]) -> tuple[BrokerKernel, KernelConnectionInfo]:
        from .progress import PROGRESS

        await self.client.watching()
        request = launch.request
        body = {"kernel_id": launch.kernel_id, "vgpus": request.count,
                "memory": f"{request.memory_mib}Mi" if request.count else None,
                "compute": request.compute_percent, "server_name": os.environ.get("JUPYTERHUB_SERVER_NAME", ""),
                "kernel_spec_name": launch.kernel_spec_name, "key": launch.key,
                "signature_scheme": launch.signature_scheme, "ports": {n: self._connection[n] for n in PORT_NAMES},
                "cwd": launch.cwd, "image": launch.pod.image, "own_storage": launch.own_storage or None,
                **launch.curve_fields()}
        def on_queued(place: dict[str, Any]) -> None:
            PROGRESS.record(launch.kernel_id, queue_message(place), stage="queue",
                            queued={k: place.get(k) for k in ("position", "ahead", "estimate_seconds")})

        ready = await self.client.launch({k: v for k, v in body.items() if v is not None}, launch.timeout,
                                         lambda message: PROGRESS.record(launch.kernel_id, message), on_queued)
        kernel = BrokerKernel(self.client, launch.kernel_id, ready["pod_name"], ready["ip"])
        if ready.get("claimed"):  # a warm kernel handed over: its own key and ports are the truth
            ports = dict(zip(PORT_NAMES, ports_of(ready["ports"]), strict=True))
            self._connection.update(key=str(ready["key"]), **ports)
        info = dict(self._connection, ip=ready["ip"], key=self._connection["key"].encode())
        return kernel, info  # type: ignore[return-value]

    async def attach(self, launch: KernelLaunch, info: dict[str, Any]) -> BrokerKernel:
        await self.client.watching()
        return BrokerKernel(self.client, launch.kernel_id, info["pod_name"], info.get("pod_ip", ""))
