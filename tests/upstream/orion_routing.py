"""pytest plugin for jupyter_client's and jupyter_server's own tests: every kernel through the provisioner.

Loaded with ``-p orion_routing`` and ``JUPYTER_DEFAULT_PROVISIONER_NAME=orion-vgpu-provisioner`` (jupyter_client's
own switch for specs that name no provisioner), so their test files run unedited. Kernels run on the local
backend from a CPU pool large enough for their concurrent kernels, with 1 vGPU each (the slot table, the
allocation env and the memory-cap hook all take part).
"""

from orion_jupyter.local.pool import LocalPool
from orion_jupyter.provisioner import VGPUProvisioner


def pytest_configure(config):
    VGPUProvisioner.class_traits()["cluster"].default_value = "local"
    VGPUProvisioner.class_traits()["vgpu_memory"].default_value = "1Gi"
    LocalPool.class_traits()["gpus"].default_value = 0
    LocalPool.class_traits()["cpu_slots"].default_value = 64
    LocalPool.class_traits()["cpu_slot_memory"].default_value = "1Gi"
