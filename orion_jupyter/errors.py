"""Why a kernel could not start, in words a student can act on."""

from __future__ import annotations


class KernelLaunchError(RuntimeError):
    """A launch that failed for a known reason; nothing it created is left behind.

    ``reason`` is a short code for metrics and HTTP mapping: unschedulable (not enough vGPUs),
    image (the image cannot be pulled), exited (the kernel died before it was ready), deleted,
    evicted, timeout, api (Kubernetes refused a request).
    """

    REASONS = ("unschedulable", "image", "exited", "deleted", "evicted", "timeout", "api")

    def __init__(self, reason: str, message: str):
        assert reason in self.REASONS, reason
        super().__init__(message)
        self.reason = reason
