"""A vGPU kernel refused through Jupyter's own API answers as the extension's API does.

``POST /api/kernels`` and ``POST /api/sessions`` (a launcher tile) start kernels through the kernel
manager, where jupyter_client logs any failed start with a traceback, answers it as "500 Unhandled
error", and keeps the failed kernel among its pending ones, so that the server's shutdown trips over
it (404) and needs a second SIGTERM. For a refusal (no vGPU free, a quota, a bad request) this server's
kernel manager instead raises an HTTP error with the reason (400 / 409 / 503, as ``or_refuse``), logs
no traceback and forgets the kernel that never existed. Other failures keep jupyter_client's handling.
"""

from __future__ import annotations

import logging
from typing import Any

from jupyter_client.multikernelmanager import DuplicateKernelError
from tornado import web

from ..errors import KernelLaunchError
from ..vgpu import VGPURequestError

REFUSALS = (KernelLaunchError, VGPURequestError)


def refusal_status(err: Exception) -> int:
    """400 (a bad request), 409 (taken id, no vGPU free, a cancelled wait) or 503 (the backend cannot answer)."""
    if isinstance(err, VGPURequestError):
        return getattr(err, "http_status", 400)
    if isinstance(err, KernelLaunchError) and err.reason in ("unschedulable", "cancelled"):
        return 409
    return 503


class _QuietRefusals(logging.Filter):
    """Drops jupyter_client's tracebacks of a refused start (it logs every failed start with one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], REFUSALS))


class Refused(web.HTTPError):
    """The HTTP answer to a refusal; ``error`` is the refusal itself (the extension's API answers it its way)."""

    def __init__(self, error: Exception):
        super().__init__(refusal_status(error), str(error).replace("%", "%%"))
        self.error = error


class RefusedSession(DuplicateKernelError):
    """The one failure jupyter_server's sessions API answers with its message instead of "500" (as a 409)."""


def _forget_failed_starts(kernel_manager: Any) -> None:
    """jupyter_client keeps a kernel whose start failed among its pending ones; nothing of it exists."""
    pending = getattr(kernel_manager, "_pending_kernels", {})
    for kernel_id, task in list(pending.items()):
        if task.done() and kernel_id not in kernel_manager._kernels:
            pending.pop(kernel_id, None)


def answer_refusals(kernel_manager: Any, session_manager: Any = None) -> None:
    """Wrap this server's kernel manager (its instance, once): refusals become HTTP errors, nothing stays pending."""
    if getattr(kernel_manager, "_orion_refusals", False):
        return
    start_kernel = kernel_manager.start_kernel

    async def refusing_start_kernel(*args: Any, **kwargs: Any) -> Any:
        try:
            return await start_kernel(*args, **kwargs)
        except REFUSALS as err:
            _forget_failed_starts(kernel_manager)
            raise Refused(err) from None  # tornado logs one line, the reason; the reply carries it

    async def refusing_start_for_session(*args: Any, **kwargs: Any) -> Any:
        try:
            return await start_for_session(*args, **kwargs)
        except Refused as refused:
            raise RefusedSession(str(refused.error)) from None

    if session_manager is not None:
        start_for_session = session_manager.start_kernel_for_session
        session_manager.start_kernel_for_session = refusing_start_for_session
    kernel_manager.log.addFilter(_QuietRefusals())
    kernel_manager.start_kernel = refusing_start_kernel
    kernel_manager._orion_refusals = True
