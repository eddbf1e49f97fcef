"""pytest plugin for jupyter_client's and jupyter_server's own tests: every kernel through the provisioner.

Loaded with ``-p orion_routing`` and ``JUPYTER_DEFAULT_PROVISIONER_NAME=orion-vgpu-provisioner`` (jupyter_client's
own switch for specs that name no provisioner), so their test files run unedited. Kernels hold 1 vGPU each
(the slot table or the pod's resources, the allocation env and the memory-cap hook all take part):

- ``ORION_UPSTREAM_CLUSTER=local`` (default): local processes from a CPU pool large enough for their
  concurrent kernels;
- ``ORION_UPSTREAM_CLUSTER=kubesim``: kernel pods on a simulated cluster started for the run.
"""

import os
import sys

from orion_jupyter.local.pool import LocalPool
from orion_jupyter.provisioner import VGPUProvisioner

_cluster = None


def pytest_configure(config):
    global _cluster
    defaults = VGPUProvisioner.class_traits()
    defaults["vgpu_memory"].default_value = "1Gi"
    if os.environ.get("ORION_UPSTREAM_CLUSTER", "local") == "kubesim":
        from kubesim.cluster import SimCluster, SimNode

        node = SimNode("gpu-1", allocatable={"virtaitech.com/gpu": 64, "cpu": "64", "memory": "256Gi", "pods": 200})
        _cluster = SimCluster(nodes=[node], python=sys.executable).start()
        os.environ["KUBECONFIG"] = _cluster.kubeconfig_path
        defaults["cluster"].default_value = "kubernetes"
        defaults["namespace"].default_value = "default"
        defaults["launch_timeout"].default_value = 60.0
        return
    defaults["cluster"].default_value = "local"
    pool = LocalPool.class_traits()
    pool["gpus"].default_value = 0
    pool["cpu_slots"].default_value = 64
    pool["cpu_slot_memory"].default_value = "1Gi"


def pytest_unconfigure(config):
    if _cluster is not None:
        _cluster.stop()
