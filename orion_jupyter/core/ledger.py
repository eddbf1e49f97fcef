"""Who holds how many vGPUs, per user and per course: the one quota engine of both modes.

The broker counts every server's kernels of the hub (its pod cache) plus the launches it accepted and
has not finished; a direct-mode server counts its own (the view) plus its provisioners' launches in
progress (``LAUNCHES_IN_PROGRESS``). A check and its reservation happen in one step under one lock,
so concurrent launches cannot all pass a quota only some of them fit.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

from ..vgpu import VGPURequest, VGPURequestError, format_mib


@dataclass(frozen=True)
class Holding:
    kernel_id: str
    user: str
    course: str
    vgpus: int
    memory_mib: int  # in all (vGPUs × memory per vGPU)


class CourseFull(VGPURequestError):
    """The course's quota is used up now (a launch may wait for it); a user's own quota is not this."""


@dataclass(frozen=True)
class Quota:
    vgpus: int = 0  # 0: no limit
    memory_mib: int = 0
    kernels: int = 0  # kernels at once, CPU-only ones included (each is a pod on a node); 0: no limit


class Ledger:
    def __init__(self, per_user: Quota, per_course: dict[str, Quota]):
        self.per_user = per_user
        self.per_course = per_course
        self.pending: dict[str, Holding] = {}
        self._lock = threading.Lock()  # direct mode: provisioners of several event loops (threads) share one

    def reserve(self, holding: Holding, running: Iterable[Holding], course: bool = True,
                per_user: Quota | None = None) -> None:
        """Take ``holding`` if the user's (``per_user``, else the ledger's) and (``course``) the course's quotas
        allow it with everything held now (raises VGPURequestError for the user's quota, CourseFull for the
        course's)."""
        with self._lock:
            held = self._held(holding, running).values()
            self._check(holding, [h for h in held if h.user == holding.user], per_user or self.per_user, "you",
                        "per user")
            if course and holding.course and holding.course in self.per_course:
                in_course = [h for h in held if h.course == holding.course]
                self._check(holding, in_course, self.per_course[holding.course], f"course {holding.course}",
                            "for the course", CourseFull)
            self.pending[holding.kernel_id] = holding

    def check_user(self, holding: Holding, running: Iterable[Holding], per_user: Quota | None = None) -> None:
        """The user's own quota alone (waiting cannot help a user who holds their share)."""
        mine = [h for h in self._held(holding, running).values() if h.user == holding.user]
        self._check(holding, mine, per_user or self.per_user, "you", "per user")

    def _held(self, holding: Holding, running: Iterable[Holding]) -> dict[str, Holding]:
        """Everything held but ``holding`` itself, each kernel once (a started launch is in both)."""
        pending, own = self.pending, holding.kernel_id
        held = {h.kernel_id: h for h in running if h.kernel_id not in pending}
        held.update(pending)
        held.pop(own, None)
        return held

    def release(self, kernel_id: str) -> None:
        with self._lock:
            self.pending.pop(kernel_id, None)

    def __contains__(self, kernel_id: str) -> bool:
        return kernel_id in self.pending

    @staticmethod
    def _check(holding: Holding, held: Iterable[Holding], quota: Quota, whose: str, per: str,
               error: type[VGPURequestError] = VGPURequestError) -> None:
        held = list(held)
        if quota.kernels and len(held) + 1 > quota.kernels:
            raise error(
                "kernels", len(held) + 1,
                f"one more kernel would make {len(held) + 1} for {whose} at once, CPU-only ones included; the class "
                f"allows {quota.kernels} {per}: shut down a kernel you no longer use (Kernel > Shut Down Kernel)")
        vgpus = sum(h.vgpus for h in held)
        if quota.vgpus and vgpus + holding.vgpus > quota.vgpus:
            raise error(
                "vgpus", holding.vgpus,
                f"{holding.vgpus} more vGPU{'s' if holding.vgpus != 1 else ''} would make {vgpus + holding.vgpus} for "
                f"{whose} at once ({vgpus} held now); the limit is {quota.vgpus} {per}: stop a kernel you no "
                "longer use" + (", or try again when a classmate's ends" if error is CourseFull else " first"))
        memory = sum(h.memory_mib for h in held)
        if quota.memory_mib and memory + holding.memory_mib > quota.memory_mib:
            raise error(
                "memory", holding.memory_mib,
                f"{format_mib(holding.memory_mib)} more vGPU memory would make "
                f"{format_mib(memory + holding.memory_mib)} "
                f"for {whose} at once; the limit is {format_mib(quota.memory_mib)} {per}: ask for less")


def holding_of(kernel_id: str, user: str, course: str, request: VGPURequest) -> Holding:
    return Holding(kernel_id, user, course, request.count, request.total_memory_mib)


def user_holdings(user: str, vgpus_by_kernel: dict[str, int]) -> list[Holding]:
    """What a view says ``user``'s kernels hold (``BackendView.vgpus_by_kernel``), as holdings."""
    return [Holding(kernel_id, user, "", vgpus, 0) for kernel_id, vgpus in vgpus_by_kernel.items()]


# A direct-mode server's launches in progress (its provisioners, in this process), held against the
# per-user quota (c.KernelPolicy) until the view counts their kernels.
LAUNCHES_IN_PROGRESS = Ledger(Quota(), {})
