"""kubesim: a small simulated Kubernetes cluster for tests and benchmarks.

It speaks the real core/v1 REST API over HTTP on 127.0.0.1 (the official ``kubernetes`` client
works unchanged), schedules pods against per-node allocatable resources, and runs pods as local
processes (or pretends to, with ``kubelet="fake"``). See README.md in this folder.
"""

from .cluster import RequestRecord, SimCluster, SimNode
from .errors import ApiError

__all__ = ["ApiError", "RequestRecord", "SimCluster", "SimNode"]
