"""Why a kernel could not start, in words a student can act on."""

from __future__ import annotations


class KernelLaunchError(RuntimeError):
    """A launch that failed for a known reason; nothing it created is left behind.

    ``reason`` is a short code for metrics and HTTP mapping: unschedulable (not enough vGPUs),
    image (the image cannot be pulled), exited (the kernel died before it was ready), deleted,
    evicted, timeout, api (Kubernetes refused a request), busy (the local slot table is unusable),
    cancelled (a waiting launch taken out of the queue).
    """

    REASONS = ("unschedulable", "image", "exited", "deleted", "evicted", "timeout", "api", "busy", "cancelled")

    def __init__(self, reason: str, message: str):
        assert reason in self.REASONS, reason
        super().__init__(message)
        self.reason = reason


def stopped_kernel(stopped_by: str) -> KernelLaunchError:
    """The restart of a kernel an instructor or the idle rule stopped: it stays stopped."""
    return KernelLaunchError("deleted",
                             f"this kernel was stopped by {stopped_by}; start a new kernel when you need one")


class SlotTableUnavailable(KernelLaunchError):
    """The local slot table cannot be used right now (locked too long, unreadable, unsafe folder)."""

    def __init__(self, message: str):
        super().__init__("busy", message)
