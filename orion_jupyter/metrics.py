"""Prometheus metrics recorded where launches happen; gauges are computed at scrape time (server.state)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

KERNEL_LAUNCH_SECONDS = Histogram(
    "orion_jupyter_kernel_launch_seconds",
    "Seconds from launch request to a ready vGPU kernel (or to the failure), by outcome.",
    ["outcome"],
    buckets=(0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
)
KERNEL_LAUNCH_FAILURES = Counter(
    "orion_jupyter_kernel_launch_failures",
    "vGPU kernel launches that failed, by reason (unschedulable, image, exited, deleted, evicted, timeout, api).",
    ["reason"],
)
SNAPSHOT_SECONDS = Histogram(
    "orion_jupyter_snapshot_seconds",
    "Seconds a park (save, verify, stop) or a resume (start, restore) took, by action and outcome "
    "(ok, or the refusal's reason: too_big, disk, busy, damaged, ...).",
    ["action", "outcome"],
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
)
SNAPSHOT_BYTES = Counter(
    "orion_jupyter_snapshot_bytes",
    "Bytes of snapshots written by parks and read by resumes, by action.",
    ["action"],
)
