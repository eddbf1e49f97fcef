"""vGPU memory in use per kernel, asked of each vGPU kernel on its control channel.

Every ``interval_seconds`` the sampler sends one ``usage_request`` to each running kernel that a
``VGPUProvisioner`` started, through one long-lived control-channel client per kernel, and keeps
the last answer. The kernel's reply carries ``orion_vgpu`` (``orion_jupyter.usage.sample()``, put
there by the kernel's start hook); an image without orion-jupyter still answers with ipykernel's
own ``kernel_memory`` (the kernel's resident memory), read here as source ``rss``. A kernel that
does not answer in ``reply_timeout`` keeps its previous reading (its ``memory_sampled_at`` says how
old it is).

No execute request: nothing reaches the user's history. The probe is not user activity either:
``start()`` adds ``usage_request`` / ``usage_reply`` to the kernel manager's
``untracked_message_types``, so jupyter_server's activity watch ignores the kernel's busy/idle
status messages whose parent is the probe (last_activity and execution_state stay as they were,
and idle culling still sees an idle kernel).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from tornado.ioloop import IOLoop, PeriodicCallback

UNTRACKED = ("usage_request", "usage_reply")


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def reading_from_reply(content: dict[str, Any]) -> dict[str, Any] | None:
    """``{"memory_used", "memory_source"}`` from a usage_reply's content, or None when it has neither field."""
    ours = content.get("orion_vgpu")
    if isinstance(ours, dict) and isinstance(ours.get("memory_used"), (int, float)):
        return {"memory_used": int(ours["memory_used"]), "memory_source": str(ours.get("source") or "unknown")}
    if isinstance(content.get("kernel_memory"), (int, float)):
        return {"memory_used": int(content["kernel_memory"]), "memory_source": "rss"}
    return None


class _Probe:
    """One kernel's control-channel client and its last reading."""

    def __init__(self, client: Any, identity: tuple):
        self.client = client
        self.identity = identity
        self.reading: dict[str, Any] | None = None

    def close(self) -> None:
        try:
            self.client.stop_channels()
        except Exception:  # noqa: BLE001 - closing a client of a kernel that is gone
            pass


class UsageSampler:
    """Samples every vGPU kernel's memory in use; ``latest(kernel_id)`` for metrics and the API."""

    def __init__(self, kernel_manager: Any, interval_seconds: float = 15.0, log: logging.Logger | None = None,
                 *, reply_timeout: float = 2.0):
        self.kernel_manager = kernel_manager
        self.interval_seconds = float(interval_seconds)
        self.reply_timeout = float(reply_timeout)
        self.log = log or logging.getLogger(__name__)
        self._probes: dict[str, _Probe] = {}
        self._timer: PeriodicCallback | None = None
        self._round: asyncio.Future | None = None
        self._context: Any = None

    # -- lifecycle ------------------------------------------------------------------------------
    def untrack_probe_messages(self) -> None:
        """Keep the probe out of jupyter_server's activity tracking (a no-op for a plain manager)."""
        untracked = getattr(self.kernel_manager, "untracked_message_types", None)
        if untracked is None:
            return
        missing = [name for name in UNTRACKED if name not in untracked]
        if missing:
            self.kernel_manager.untracked_message_types = [*untracked, *missing]

    def start(self) -> None:
        """Sample now and then every ``interval_seconds``, on the current event loop (<= 0: never)."""
        self.untrack_probe_messages()
        if self._timer is not None or self.interval_seconds <= 0:
            return
        self._timer = PeriodicCallback(self._tick, self.interval_seconds * 1000)
        self._timer.start()
        IOLoop.current().add_callback(self._tick)

    def stop(self) -> None:
        """Stop sampling and close every client."""
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        if self._round is not None and not self._round.done():
            self._round.cancel()
        for probe in self._probes.values():
            probe.close()
        self._probes.clear()
        if self._context is not None:
            self._context.destroy(linger=0)
            self._context = None

    # -- reading --------------------------------------------------------------------------------
    def latest(self, kernel_id: str) -> dict[str, Any] | None:
        """``{"memory_used": bytes, "memory_source": "torch"|"nvml"|"rss", "memory_sampled_at": ISO UTC}``, or None."""
        probe = self._probes.get(kernel_id)
        return dict(probe.reading) if probe is not None and probe.reading is not None else None

    def readings(self) -> dict[str, dict[str, Any]]:
        """``latest()`` of every kernel that has a reading, by kernel id."""
        return {kernel_id: dict(p.reading) for kernel_id, p in self._probes.items() if p.reading is not None}

    # -- sampling -------------------------------------------------------------------------------
    async def _tick(self) -> None:
        if self._round is not None and not self._round.done():
            return  # the previous round is still waiting on a slow kernel
        self._round = asyncio.ensure_future(self.sample_once())
        try:
            await self._round
        except asyncio.CancelledError:
            pass
        except Exception:  # noqa: BLE001 - one bad round must not stop the timer
            self.log.exception("vGPU usage sampling failed")

    async def sample_once(self) -> None:
        """One round: ask every running vGPU kernel at once; forget kernels that are gone."""
        kernels: dict[str, Any] = {}
        for kernel_id in list(self.kernel_manager.list_kernel_ids()):
            try:
                km = self.kernel_manager.get_kernel(kernel_id)
            except KeyError:
                continue
            if _is_vgpu_kernel(km):
                kernels[kernel_id] = km
        for kernel_id in [k for k in self._probes if k not in kernels]:
            self._probes.pop(kernel_id).close()
        await asyncio.gather(*(self._sample_kernel(kernel_id, km) for kernel_id, km in kernels.items()))

    async def _sample_kernel(self, kernel_id: str, km: Any) -> None:
        if not _is_running(km):
            return
        try:
            probe = self._probe_for(kernel_id, km)
            reading = await self._ask(probe.client)
        except Exception as err:  # noqa: BLE001 - a kernel that cannot be asked keeps its last reading
            self.log.debug("vGPU usage of kernel %s not read: %s", kernel_id, err)
            return
        if reading is not None:
            probe.reading = {**reading, "memory_sampled_at": _now_iso()}

    def _probe_for(self, kernel_id: str, km: Any) -> _Probe:
        info = km.get_connection_info()
        identity = (info.get("transport"), info.get("ip"), info.get("control_port"), info.get("key"))
        probe = self._probes.get(kernel_id)
        if probe is not None and probe.identity == identity:
            return probe
        if probe is not None:  # restarted somewhere else (a new pod IP): a new client
            probe.close()
        client = self._client(km)
        client.start_channels(shell=False, iopub=False, stdin=False, hb=False, control=True)
        self._probes[kernel_id] = probe = _Probe(client, identity)
        return probe

    def _client(self, km: Any) -> Any:
        import zmq.asyncio

        if self._context is None:
            self._context = zmq.asyncio.Context()
        return kernel_client(km, self._context)

    async def _ask(self, client: Any) -> dict[str, Any] | None:
        msg = client.session.msg("usage_request", {})
        client.control_channel.send(msg)
        deadline = time.monotonic() + self.reply_timeout
        while (left := deadline - time.monotonic()) > 0:
            reply = await client.control_channel.get_msg(timeout=left)  # queue.Empty on timeout
            if (reply.get("parent_header") or {}).get("msg_id") == msg["header"]["msg_id"]:
                return reading_from_reply(reply.get("content") or {})
            # a late reply to an earlier probe: skip it
        return None


def kernel_client(km: Any, context: Any) -> Any:
    """An asyncio client of ``km``'s kernel with a session id of its own, for a few messages beside the user's."""
    from jupyter_client.asynchronous import AsyncKernelClient

    # A session id of its own: every km.client() clones the manager's session, whose id is the ZMQ
    # identity of its sockets; two clients with one identity steal each other's replies (the
    # kernel's ROUTER drops ours once the other one disconnects).
    session = km.session.clone()
    session.session = str(uuid.uuid4())
    client = km.client(context=context, session=session)
    if not isinstance(client, AsyncKernelClient):  # a blocking manager: never block the loop
        info = {**km.get_connection_info(), "session": session}
        info.pop("key", None), info.pop("signature_scheme", None)
        for name in ("curve_publickey", "curve_secretkey"):
            if isinstance(info.get(name), str):
                info[name] = info[name].encode("ascii")
        client = AsyncKernelClient(**info, context=context)
    return client


def _is_vgpu_kernel(km: Any) -> bool:
    from ..provisioner import VGPUProvisioner

    return isinstance(getattr(km, "provisioner", None), VGPUProvisioner)


def _is_running(km: Any) -> bool:
    """Started (not pending, not failed), with a process, and not known to be dead."""
    ready = getattr(km, "ready", None)
    if ready is not None and (not ready.done() or ready.cancelled() or ready.exception() is not None):
        return False
    if not getattr(km, "has_kernel", True) or getattr(km, "execution_state", None) == "dead":
        return False
    return bool(getattr(km, "control_port", 0))
