"""One launch of one kernel, fixed by the provisioner in ``pre_launch``: what the drivers read.

The provisioner resolves its traitlets, the kernel spec and the start kwargs into a frozen
:class:`KernelLaunch`; drivers never reach back into the provisioner or the kernel manager.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .backends import Backend
from .vgpu import VGPURequest


@dataclass(frozen=True)
class PodSettings:
    """How a kernel pod is shaped beyond its vGPU request (Kubernetes drivers only)."""

    image: str
    image_pull_policy: str = "IfNotPresent"
    python: str = "python"
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    cpu_request: str | None = None
    cpu_limit: str | None = None
    memory_request: str | None = None
    memory_limit: str | None = None
    host_ipc: bool = False
    run_as_user: int = 1000
    run_as_group: int = 100
    scheduler_name: str | None = None


@dataclass(frozen=True)
class KernelLaunch:
    """Everything one launch needs; a restart builds a new one."""

    kernel_id: str
    user: str
    request: VGPURequest
    backend: Backend
    pod: PodSettings
    kernel_spec_name: str = ""
    course: str = ""
    # What the kernel's environment gains: resolved spec env, forwarded server variables, extra_env.
    env: Mapping[str, str] = field(default_factory=dict)
    key: str = ""  # the session's HMAC key; drivers put it only where the kernel reads it
    signature_scheme: str = "hmac-sha256"
    ports: tuple[int, ...] = ()  # fixed kernel ports; empty: fresh ports per launch
    timeout: float = 300.0
    wait_for_capacity: bool = False
    orion_controller: str | None = None
    cwd: str = ""  # the notebook's folder, relative to the server's root ('' = the root)
    # CurveZMQ keys (Z85) when the kernel manager's transport_encryption asks for them; like ``key``, they
    # travel only where the kernel reads its connection file.
    curve_publickey: str = ""
    curve_secretkey: str = ""

    def curve_fields(self) -> dict[str, str]:
        """The connection file's CurveZMQ fields (none: plaintext, as jupyter_client without encryption)."""
        if not self.curve_secretkey:
            return {}
        return {"curve_publickey": self.curve_publickey, "curve_secretkey": self.curve_secretkey}


PORT_RANGE = (40000, 60000)


def fresh_ports(previous: Iterable[Any] = ()) -> list[int]:
    """Five kernel ports unlike the last launch's: each pod has its own IP, so only change matters
    (jupyter_server notices a restarted kernel by its ports)."""
    old = set(previous)
    ports: list[int] = []
    while len(ports) < 5:
        port = secrets.choice(range(*PORT_RANGE))
        if port not in old and port not in ports:
            ports.append(port)
    return ports
