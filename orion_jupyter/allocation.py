"""What a kernel was granted, as environment variables: written by the launcher, read in the kernel.

One home for the variable names, so the pod builder, the local launcher and the widget agree.
Pure Python: kernel images import it without any server-side package.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from .vgpu import format_allocation

PREFIX = "ORION_JUPYTER_"

ENV_NAMES = {
    "cluster": PREFIX + "CLUSTER",  # kubernetes | local
    "backend": PREFIX + "BACKEND",
    "vgpus": PREFIX + "VGPUS",
    "memory_mib": PREFIX + "VGPU_MEMORY_MIB",
    "compute_percent": PREFIX + "COMPUTE_PERCENT",
    "kernel_id": PREFIX + "KERNEL_ID",
    "user": PREFIX + "USER",
    "memory_cap": PREFIX + "MEMORY_CAP",  # enforced | cooperative | none
    # Filled in by Kubernetes through the downward API; by the local launcher itself.
    "pod_name": PREFIX + "POD_NAME",
    "namespace": PREFIX + "NAMESPACE",
    "node_name": PREFIX + "NODE_NAME",
    "pod_ip": PREFIX + "POD_IP",
}
# Where a kernel pod finds the connection file mounted from its Secret (not part of the allocation).
CONNECTION_FILE_ENV = PREFIX + "CONNECTION_FILE"
_INTEGER_FIELDS = {"vgpus", "memory_mib", "compute_percent"}
# Orion's remote mode (scenario 3): the kernel's backend as it is shown, and what that means.
REMOTE_BACKEND = "orion-remote"
REMOTE_NOTE = "remote, allocated when CUDA starts"


def allocation_label(vgpus: Any, memory_mib: Any, compute_percent: Any, backend: str) -> str:
    """A kernel's ``label`` (the labextension shows it as is): '1 vGPU · 4 GiB', plus the remote note."""
    text = format_allocation(vgpus, memory_mib, compute_percent)
    return f"{text} ({REMOTE_NOTE})" if backend == REMOTE_BACKEND and vgpus else text


@dataclass(frozen=True)
class KernelAllocation:
    cluster: str = ""
    backend: str = ""
    vgpus: int = 0
    memory_mib: int = 0
    compute_percent: int | None = None
    kernel_id: str = ""
    user: str = ""
    memory_cap: str = "none"
    pod_name: str = ""
    namespace: str = ""
    node_name: str = ""
    pod_ip: str = ""

    def to_env(self, *, downward: bool = False) -> dict[str, str]:
        """The variables to set; with ``downward`` the pod fields are left to the downward API."""
        env = {}
        for key, value in asdict(self).items():
            if downward and key in DOWNWARD_FIELDS:
                continue
            if value is None or value == "":
                continue
            env[ENV_NAMES[key]] = str(value)
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KernelAllocation | None:
        """This kernel's allocation, or None when it was not started by orion-jupyter."""
        environ = os.environ if environ is None else environ
        if ENV_NAMES["cluster"] not in environ:
            return None
        values: dict = {}
        for f in fields(cls):
            raw = environ.get(ENV_NAMES[f.name])
            if raw is None or raw == "":
                continue
            values[f.name] = int(raw) if f.name in _INTEGER_FIELDS else raw
        return cls(**values)


# Kubernetes fieldRef paths for the fields only the cluster knows.
DOWNWARD_FIELDS = {
    "pod_name": "metadata.name",
    "namespace": "metadata.namespace",
    "node_name": "spec.nodeName",
    "pod_ip": "status.podIP",
}
