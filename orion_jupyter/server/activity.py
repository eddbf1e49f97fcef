"""Kernels' last activity written onto their pods, so every server's class view can show idle time."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from ..names import ANNOTATION_LAST_ACTIVITY
from ..protocols import BackendView
from .kernels import VGPUKernels


class ActivityReporter:
    def __init__(self, kernels: VGPUKernels, view: BackendView):
        self.kernels = kernels
        self.view = view
        self._reported: dict[str, Any] = {}  # pod -> the activity last written

    async def report(self) -> None:
        """One annotation write per kernel pod whose activity changed since the last report, none otherwise."""
        kernels = self.kernels.allocations()
        live = {kernel.get("pod") for kernel in kernels}
        self._reported = {pod: seen for pod, seen in self._reported.items() if pod in live}
        for kernel in kernels:
            pod, activity = kernel.get("pod"), kernel.get("last_activity")
            if not pod or activity is None or self._reported.get(pod) == activity:
                continue
            stamp = activity.astimezone(timezone.utc).isoformat() if isinstance(activity, datetime) else str(activity)
            if await self.view.annotate(pod, {ANNOTATION_LAST_ACTIVITY: stamp}):
                self._reported[pod] = activity
