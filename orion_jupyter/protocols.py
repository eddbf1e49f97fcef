"""The contracts between the provisioner, the server extension and the backends.

A backend (local processes, a Kubernetes namespace, the broker in hub mode) provides two objects:

- a :class:`Driver`, the launch side, one per provisioner (so a restart keeps its state), and
- a :class:`BackendView`, the read side: what the server extension shows and checks.

A driver may also be handed :class:`WarmClaims`: ready kernels it hands over instead of starting one.
The provisioner and ``server/`` know only these protocols; ``clusters.py`` picks the backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from jupyter_client.connect import KernelConnectionInfo

from .backends import Backend
from .launch import KernelLaunch
from .pool import PoolSnapshot
from .vgpu import VGPURequest


class KernelHandle(Protocol):
    """A launched kernel, Popen-like (as jupyter_client's LocalProvisioner uses ``Popen``).

    ``poll`` answers from local state (no I/O): None while the kernel runs, else its exit code.
    ``terminate`` / ``kill`` ask the kernel to go; ``cleanup`` releases everything it held (pod,
    Secret, slot) and must succeed when the kernel is already gone. ``info`` is JSON-safe and is
    what ``Driver.attach`` gets back after a server restart.
    """

    ip: str

    def poll(self) -> int | None: ...
    async def wait(self) -> int | None: ...
    async def send_signal(self, signum: int) -> None: ...
    async def terminate(self, grace_seconds: int) -> None: ...
    async def kill(self) -> None: ...
    async def cleanup(self, restart: bool = False) -> None: ...  # restart: keep what the next start reuses
    def info(self) -> dict[str, Any]: ...


class Driver(Protocol):
    """Starts kernels of one backend.

    ``pre_launch`` reserves or prepares what the launch needs and returns jupyter_client's launch
    kwargs (``cmd`` among them); ``launch`` starts the kernel and returns once it accepts
    connections, or raises :class:`~orion_jupyter.errors.KernelLaunchError` with the reason after
    undoing everything it created. Both read only the :class:`KernelLaunch`.
    """

    name: str
    view: BackendView

    async def pre_launch(self, launch: KernelLaunch, kwargs: dict[str, Any]) -> dict[str, Any]: ...
    async def launch(self, launch: KernelLaunch, cmd: list[str],
                     kwargs: dict[str, Any]) -> tuple[KernelHandle, KernelConnectionInfo]: ...
    async def attach(self, launch: KernelLaunch, info: dict[str, Any]) -> KernelHandle: ...


class BackendView(Protocol):
    """What a backend holds, from caches only: no method makes a request to the cluster except
    ``start``, ``stop_kernel`` and ``annotate``. The reads are coroutines because a backend may
    need a file lock or a thread to answer (the local slot table); ``last_pool`` never waits.

    Kernel summaries are dicts with at least ``pod``, ``user`` (the exact user name), ``kernel_id``,
    ``node``, ``phase``, ``reason``, ``backend``, the request fields, ``started``,
    ``last_activity`` and ``idle_seconds``.
    """

    kind: str  # "kubernetes" | "local"
    backend: Backend  # the configured backend (a spec may name another)
    count_resource: str  # the pool resource that counts vGPUs
    uses_images: bool  # whether a kernel's image matters (the image allow-list applies)
    decides_instructors: bool  # True: the backend (the broker) says who is an instructor, by PermissionError
    decides_culling: bool  # True: the backend (the broker) stops idle kernels; cull_fields / keep / set_exempt
    decides_budgets: bool  # True: the backend (the broker) meters budgets; budget / topup_budget / budget_rows

    async def start(self) -> None: ...
    async def pool(self) -> PoolSnapshot: ...
    def last_pool(self) -> PoolSnapshot: ...  # the latest snapshot without waiting (metrics)
    async def can_serve(self, request: VGPURequest, backend: Backend) -> bool | None: ...
    async def shortage(self, request: VGPURequest, backend: Backend) -> str: ...
    async def vgpus_by_kernel(self, user: str) -> dict[str, int]: ...  # kernel id -> vGPUs of exactly ``user``
    def kernel_state(self, handle_info: dict[str, Any]) -> dict[str, Any]: ...  # live fields of one kernel
    async def class_kernels(self, user: str | None = None) -> list[dict[str, Any]]: ...
    def find_kernel(self, name: str) -> dict[str, Any] | None: ...
    async def stop_kernel(self, name: str, stopped_by: str) -> None: ...
    async def annotate(self, name: str, annotations: dict[str, str]) -> bool: ...
    async def waiting(self, user: str) -> list[dict[str, Any]]: ...  # ``user``'s launches waiting in a queue
    async def cancel_waiting(self, kernel_id: str) -> bool: ...  # False: it does not wait (any more)


@dataclass(frozen=True)
class ClaimRequest:
    """What handing a warm kernel over needs of the launch it serves."""

    kernel_id: str
    cwd: str = ""  # the notebook's folder below the server's root
    server_name: str | None = None
    kernel_spec_name: str = ""


class WarmClaims(Protocol):
    """Warm kernels a launch of their shape takes instead of starting one (``core.warm.WarmKernels``).

    ``reserve`` picks a ready one for the launch ``kernel_id`` (its name, or None: start one), without
    awaiting; ``claim`` hands the reserved one over and answers the ready fields (``pod_name``, ``ip``,
    ``key``, ``ports``); ``unreserve`` gives back a reservation the launch did not use. ``keep``: ready
    pool kernels of the shape that stand for bookings the launch is not one of (``core.bookings``).
    """

    def reserve(self, kernel_id: str, user: str, request: VGPURequest, image: str, server_name: str,
                own_only: bool = False, keep: int = 0) -> str | None: ...
    def ready_of(self, request: VGPURequest) -> int: ...  # a pool's unclaimed kernels of this shape
    def reserved_for(self, kernel_id: str) -> str | None: ...
    def unreserve(self, kernel_id: str) -> None: ...
    async def claim(self, ask: ClaimRequest, user: str, course: str) -> dict[str, Any]: ...


class DirectMode:
    """For a view of direct mode: launches never wait in a queue there, and this server culls its own
    idle kernels and meters its own budgets (in hub mode the broker does all three)."""

    decides_culling = False
    decides_budgets = False

    async def waiting(self, user: str) -> list[dict[str, Any]]:
        return []

    async def cancel_waiting(self, kernel_id: str) -> bool:
        return False
