"""pytest fixtures; load with ``pytest_plugins = ["kubesim.fixtures"]``."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import pytest

from .cluster import SimCluster, SimNode

GPU_NODE = {
    "virtaitech.com/gpu": 4,
    "nvidia.com/gpu": 8,
    "nvidia.com/gpumem": 81920,
    "cpu": "16",
    "memory": "64Gi",
    "pods": 110,
}


@contextlib.contextmanager
def running_cluster(monkeypatch, nodes: list[SimNode]) -> Iterator[SimCluster]:
    """A started SimCluster of ``nodes`` with KUBECONFIG pointing at it; stopped afterwards, and no pod
    process may outlive it."""
    cluster = SimCluster(nodes=nodes, python=sys.executable).start()
    monkeypatch.setenv("KUBECONFIG", cluster.kubeconfig_path)
    try:
        yield cluster
    finally:
        cluster.stop()
    assert cluster.running_processes() == [], "pod processes outlived the simulated cluster"


@pytest.fixture
def sim_cluster(monkeypatch):
    """A started SimCluster with one process-kubelet node "gpu-1"; KUBECONFIG points at it."""
    with running_cluster(monkeypatch, [SimNode("gpu-1", allocatable=dict(GPU_NODE))]) as cluster:
        yield cluster
