"""Kernels' last activity and memory in use written onto their pods, so every server's class view
can show idle time and waste."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from ..names import ANNOTATION_LAST_ACTIVITY, ANNOTATION_USAGE
from ..protocols import BackendView
from .kernels import VGPUKernels

USAGE_STEP_BYTES = 64 * 1024 * 1024  # smaller changes of memory in use are not worth a write


class ActivityReporter:
    def __init__(self, kernels: VGPUKernels, view: BackendView):
        self.kernels = kernels
        self.view = view
        self._reported: dict[str, Any] = {}  # pod -> (activity, memory used) last written

    async def report(self) -> None:
        """One annotation write per kernel pod whose activity (or memory in use, to 64 MiB) changed since
        the last report, none otherwise."""
        kernels = self.kernels.allocations()
        live = {kernel.get("pod") for kernel in kernels}
        self._reported = {pod: seen for pod, seen in self._reported.items() if pod in live}
        for kernel in kernels:
            pod, activity, used = kernel.get("pod"), kernel.get("last_activity"), kernel.get("memory_used")
            seen = (activity, None if used is None else used // USAGE_STEP_BYTES)
            if not pod or activity is None or self._reported.get(pod) == seen:
                continue
            stamp = activity.astimezone(UTC).isoformat() if isinstance(activity, datetime) else str(activity)
            annotations = {ANNOTATION_LAST_ACTIVITY: stamp}
            if used is not None:
                annotations[ANNOTATION_USAGE] = json.dumps(
                    {k: kernel.get(k) for k in ("memory_used", "memory_source", "memory_sampled_at")}, sort_keys=True)
            if await self.view.annotate(pod, annotations):
                self._reported[pod] = seen
