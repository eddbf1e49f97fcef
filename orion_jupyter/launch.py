"""One launch of one kernel, fixed by the provisioner in ``pre_launch``: what the drivers read.

The provisioner resolves its traitlets, the kernel spec and the start kwargs into a frozen
:class:`KernelLaunch`; drivers never reach back into the provisioner or the kernel manager.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .backends import Backend
from .vgpu import VGPURequest
from .wire import connection_info


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
    own_storage: bool = False  # must mount the user's own storage (a resume reads its snapshot there): no pool kernel
    volumes: tuple[Mapping[str, Any], ...] = ()  # direct mode on Kubernetes: the user's storage (templated)
    volume_mounts: tuple[Mapping[str, Any], ...] = ()
    # CurveZMQ keys (Z85) when the kernel manager's transport_encryption asks for them; like ``key``, they
    # travel only where the kernel reads its connection file.
    curve_publickey: str = ""
    curve_secretkey: str = ""

    def curve_fields(self) -> dict[str, str]:
        """The connection file's CurveZMQ fields (none: plaintext, as jupyter_client without encryption)."""
        if not self.curve_secretkey:
            return {}
        return {"curve_publickey": self.curve_publickey, "curve_secretkey": self.curve_secretkey}


@dataclass(frozen=True)
class PodPlan:
    """One kernel pod a host starts itself (the broker for a user's launch, either mode for a warm
    kernel: ``warm`` is then its pool's name); the connection file comes from ``key`` and ``ports``."""

    kernel_id: str
    user: str
    request: VGPURequest
    image: str
    key: str
    ports: tuple[int, ...]  # in wire.PORT_NAMES order
    kernel_spec_name: str = ""
    course: str = ""  # the exact hub group
    server_name: str | None = None  # hub mode: the user's server (a reaped kernel's server is gone)
    working_dir: str | None = None
    volumes: Sequence[Mapping[str, Any]] = ()  # KubeSpawner's shape, {username}/{servername} templated
    volume_mounts: Sequence[Mapping[str, Any]] = ()
    warm: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    curve: tuple[str, str] = ("", "")  # CurveZMQ (public, secret) keys of the launch, Z85; empty: plaintext

    @property
    def connection(self) -> dict[str, Any]:
        curve = {"curve_publickey": self.curve[0], "curve_secretkey": self.curve[1]} if self.curve[1] else {}
        return {**connection_info(self.ports, self.key, self.kernel_spec_name), **curve}
