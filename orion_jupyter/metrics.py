"""Prometheus metrics, in one place: a server's launches (the default registry; its gauges are computed
at scrape time by server/metrics.py) and a class's (the broker's own registry, served at its GET metrics).
Base units, ``orion_jupyter_`` prefixed, low cardinality: no user names, courses as configured."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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

# -- a class (hub mode's broker; warm kernels count here in both modes) ----------------------------------
CLASS_REGISTRY = CollectorRegistry()
LAUNCHES = Counter("orion_jupyter_broker_launches", "Kernel launches through the broker, by outcome.", ["outcome"],
                   registry=CLASS_REGISTRY)
PENDING_LAUNCHES = Gauge("orion_jupyter_broker_pending_launches", "Launches accepted and not yet ready or failed.",
                         registry=CLASS_REGISTRY)
QUEUED = Gauge("orion_jupyter_broker_queued_launches", "Launches waiting in a course's queue.", ["course"],
               registry=CLASS_REGISTRY)
QUEUE_WAIT = Histogram("orion_jupyter_broker_queue_wait_seconds", "Seconds a launch waited in the queue for its turn.",
                       buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600), registry=CLASS_REGISTRY)
HANDOVER = Histogram("orion_jupyter_broker_queue_handover_seconds",
                     "Seconds from a released vGPU to the turn of the queue's head.",
                     buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=CLASS_REGISTRY)
WARM_CLAIMS = Counter("orion_jupyter_broker_warm_claims", "Launches served by a warm kernel, by kind (pool, roster).",
                      ["kind"], registry=CLASS_REGISTRY)
WARM_MISSES = Counter("orion_jupyter_broker_warm_misses",
                      "Launches of a warm pool's shape that found no warm kernel ready (a pod started cold).",
                      registry=CLASS_REGISTRY)
WARM_IDLE = Counter("orion_jupyter_broker_warm_idle_seconds",
                    "Seconds warm kernels held a vGPU unclaimed (their cost), counted when claimed or stopped.",
                    registry=CLASS_REGISTRY)
# Parks the broker asks a kernel for (hub mode); resumes are the user's server's (SNAPSHOT_*), not the broker's.
BROKER_PARKS = Counter("orion_jupyter_broker_parks",
                       "Kernels the broker asked to park, by trigger (idle, budget, owner, instructor, course, "
                       "maintenance) and outcome (ok, or the reason: busy, timeout, kernel, too_big, disk, location).",
                       ["trigger", "outcome"], registry=CLASS_REGISTRY)
BROKER_PARK_SECONDS = Histogram("orion_jupyter_broker_park_seconds",
                                "Seconds from the broker's park request to the kernel's answer, by outcome.",
                                ["outcome"], buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
                                registry=CLASS_REGISTRY)
BROKER_PARKED_BYTES = Counter("orion_jupyter_broker_parked_bytes",
                              "Bytes of the snapshots kernels reported writing for the broker's parks (the kernel's "
                              "own count: the broker cannot read users' storage).", registry=CLASS_REGISTRY)
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2, 5)
LOOP_LAG = Histogram("orion_jupyter_broker_loop_lag_seconds",
                     "How late the broker's event loop ran a timer due every 50 ms (a loop busy with other work, or "
                     "a node short of CPU).", buckets=LAG_BUCKETS, registry=CLASS_REGISTRY)
LOOP_BUSY = Histogram("orion_jupyter_broker_loop_busy_seconds",
                      "The same lateness less the time the loop's thread waited for a CPU meanwhile (Linux): the "
                      "broker's own share.", buckets=LAG_BUCKETS, registry=CLASS_REGISTRY)
