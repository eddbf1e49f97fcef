"""vGPU backends as data: how a request becomes Kubernetes resources, env and annotations.

A site whose device plugin advertises another resource name overrides it in configuration
(``resource_names`` / ``env_names``); no backend is a fork of another.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Mapping

from .vgpu import VGPURequest, VGPURequestError

_RESOURCE_NAME_RE = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    count_resource: str
    memory_resource: str | None = None  # MiB per vGPU, as an extended resource (HAMi)
    compute_resource: str | None = None  # percent of one GPU, as an extended resource (HAMi)
    count_env: str | None = None
    memory_env: str | None = None
    compute_env: str | None = None
    controller_env: str | None = None
    memory_enforced: bool = True  # False: the memory is informative (whole GPUs, MIG, time-slicing)
    supports_host_ipc: bool = False

    def resources(self, request: VGPURequest) -> dict[str, int]:
        """Extended-resource limits (requests must equal them); empty for a CPU-only kernel."""
        if request.count == 0:
            return {}
        limits = {self.count_resource: request.count}
        if self.memory_resource:
            limits[self.memory_resource] = request.memory_mib
        if self.compute_resource and request.compute_percent is not None:
            limits[self.compute_resource] = request.compute_percent
        return limits

    def env(self, request: VGPURequest, controller: str | None = None) -> dict[str, str]:
        if request.count == 0:
            return {}
        env = {}
        if self.count_env:
            env[self.count_env] = str(request.count)
        if self.memory_env:
            env[self.memory_env] = str(request.memory_mib)
        if self.compute_env and request.compute_percent is not None:
            env[self.compute_env] = str(request.compute_percent)
        if self.controller_env and controller:
            env[self.controller_env] = controller
        return env

    def with_overrides(
        self, resource_names: Mapping[str, str] | None = None, env_names: Mapping[str, str] | None = None
    ) -> "Backend":
        changes: dict[str, str | None] = {}
        for key, value in (resource_names or {}).items():
            if key not in ("count", "memory", "compute"):
                raise VGPURequestError(
                    "resource_names", key, f'resource_names key "{key}" is not known; use count, memory, compute'
                )
            if value and not _RESOURCE_NAME_RE.match(value):
                raise VGPURequestError(
                    "resource_names",
                    value,
                    f'resource name "{value}" is not a valid Kubernetes resource name; use a name like example.com/gpu',
                )
            changes[f"{key}_resource"] = value or None
        for key, value in (env_names or {}).items():
            if key not in ("count", "memory", "compute", "controller"):
                raise VGPURequestError(
                    "env_names", key, f'env_names key "{key}" is not known; use count, memory, compute, controller'
                )
            changes[f"{key}_env"] = value or None
        if changes.get("count_resource", self.count_resource) is None:
            raise VGPURequestError("resource_names", None, "resource_names count cannot be empty")
        return replace(self, **changes)


BACKENDS: dict[str, Backend] = {
    "orion": Backend(
        name="orion",
        description="Orion vGPU (VirtAI Tech): virtaitech.com/gpu with ORION_GMEM per vGPU",
        count_resource="virtaitech.com/gpu",
        count_env="ORION_VGPU",
        memory_env="ORION_GMEM",
        compute_env="ORION_RATIO",
        controller_env="ORION_CONTROLLER",
        supports_host_ipc=True,
    ),
    "hami": Backend(
        name="hami",
        description="HAMi: nvidia.com/gpu with nvidia.com/gpumem (MiB) and nvidia.com/gpucores (%)",
        count_resource="nvidia.com/gpu",
        memory_resource="nvidia.com/gpumem",
        compute_resource="nvidia.com/gpucores",
    ),
    "nvidia": Backend(
        name="nvidia",
        description="NVIDIA device plugin: whole GPUs, MIG (nvidia.com/mig-1g.10gb) or time-slicing",
        count_resource="nvidia.com/gpu",
        memory_enforced=False,
    ),
}


def get_backend(
    name: str, resource_names: Mapping[str, str] | None = None, env_names: Mapping[str, str] | None = None
) -> Backend:
    try:
        backend = BACKENDS[name]
    except (KeyError, TypeError):
        raise VGPURequestError(
            "backend", name, f'vGPU backend "{name}" is not known; use one of {", ".join(BACKENDS)}'
        ) from None
    return backend.with_overrides(resource_names, env_names) if (resource_names or env_names) else backend
