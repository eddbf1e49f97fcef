"""pytest fixtures; load with ``pytest_plugins = ["kubesim.fixtures"]``."""

from __future__ import annotations

import sys

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


@pytest.fixture
def sim_cluster(monkeypatch):
    """A started SimCluster with one process-kubelet node "gpu-1"; KUBECONFIG points at it."""
    cluster = SimCluster(nodes=[SimNode("gpu-1", allocatable=dict(GPU_NODE))], python=sys.executable).start()
    monkeypatch.setenv("KUBECONFIG", cluster.kubeconfig_path)
    try:
        yield cluster
    finally:
        cluster.stop()
    assert cluster.running_processes() == [], "pod processes outlived the simulated cluster"
