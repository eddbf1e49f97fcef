"""Who holds how many vGPUs, per user and per course: the one quota engine of both modes.

The broker counts every server's kernels of the hub (its pod cache) plus the launches it accepted and
has not finished; a direct-mode server counts its own (the view) plus its provisioners' launches in
progress (``LAUNCHES_IN_PROGRESS``). A check and its reservation happen in one step under one lock,
so concurrent launches cannot all pass a quota only some of them fit.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ..vgpu import VGPURequest, VGPURequestError, format_mib


@dataclass(frozen=True)
class Holding:
    kernel_id: str
    user: str
    course: str
    vgpus: int
    memory_mib: int  # in all (vGPUs × memory per vGPU)


class Held:
    """Holdings by key (a pod's name, a kernel id), also found by user and by course without a scan: a
    quota check at every release reads one user's and one course's, of thousands."""

    def __init__(self, holdings: Iterable[tuple[str, Holding]] = ()):
        self._items: dict[str, Holding] = {}
        self._by_user: dict[str, dict[str, Holding]] = {}
        self._by_course: dict[str, dict[str, Holding]] = {}
        for key, holding in holdings:
            self.put(key, holding)

    @classmethod
    def by_kernel(cls, holdings: Iterable[Holding]) -> Held:
        return cls((h.kernel_id, h) for h in holdings)

    def put(self, key: str, holding: Holding) -> None:
        self.pop(key)
        self._items[key] = holding
        self._by_user.setdefault(holding.user, {})[key] = holding
        self._by_course.setdefault(holding.course, {})[key] = holding

    def pop(self, key: str) -> Holding | None:
        holding = self._items.pop(key, None)
        if holding is not None:
            for index, group in ((self._by_user, holding.user), (self._by_course, holding.course)):
                bucket = index[group]
                del bucket[key]
                if not bucket:
                    del index[group]
        return holding

    def of_user(self, user: str) -> Iterable[Holding]:
        return self._by_user.get(user, {}).values()

    def of_course(self, course: str) -> Iterable[Holding]:
        return self._by_course.get(course, {}).values()

    def items(self) -> Iterable[tuple[str, Holding]]:
        return self._items.items()

    def keys(self) -> Iterable[str]:
        return self._items.keys()

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[Holding]:
        return iter(self._items.values())

    def __len__(self) -> int:
        return len(self._items)


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
        self.pending = Held()  # by kernel id: launches accepted and not finished
        self._lock = threading.Lock()  # direct mode: provisioners of several event loops (threads) share one

    def reserve(self, holding: Holding, running: Iterable[Holding], course: bool = True,
                per_user: Quota | None = None) -> None:
        """Take ``holding`` if (``course``) the course's and the user's (``per_user``, else the ledger's) quotas
        allow it with everything held now (``running``: a :class:`Held` is read by course and user, anything
        else indexed first); raises CourseFull for the course's quota, VGPURequestError for the user's. The
        course first: a queue's heads are tried at every release, and most find their course full."""
        running = running if isinstance(running, Held) else Held.by_kernel(running)
        with self._lock:
            if course and holding.course and holding.course in self.per_course:
                in_course = self._totals(holding, running.of_course(holding.course),
                                         self.pending.of_course(holding.course))
                self._check(holding, in_course, self.per_course[holding.course], f"course {holding.course}",
                            "for the course", CourseFull)
            self.check_user(holding, running, per_user)
            self.pending.put(holding.kernel_id, holding)

    def check_user(self, holding: Holding, running: Iterable[Holding], per_user: Quota | None = None) -> None:
        """The user's own quota alone (waiting cannot help a user who holds their share)."""
        running = running if isinstance(running, Held) else Held.by_kernel(running)
        self._check(holding, self._totals(holding, running.of_user(holding.user), self.pending.of_user(holding.user)),
                    per_user or self.per_user, "you", "per user")

    def _totals(self, holding: Holding, running: Iterable[Holding], pending: Iterable[Holding]) -> tuple[int, int, int]:
        """Of one user's (or course's) holdings, everything held but ``holding`` itself, each kernel once (a
        started launch is in both): (kernels, vGPUs, memory MiB)."""
        own, accepted = holding.kernel_id, self.pending
        seen: set[str] = set()
        kernels = vgpus = memory = 0
        for h in pending:
            if h.kernel_id != own:
                seen.add(h.kernel_id)
                kernels, vgpus, memory = kernels + 1, vgpus + h.vgpus, memory + h.memory_mib
        for h in running:
            if h.kernel_id != own and h.kernel_id not in seen and h.kernel_id not in accepted:
                seen.add(h.kernel_id)
                kernels, vgpus, memory = kernels + 1, vgpus + h.vgpus, memory + h.memory_mib
        return kernels, vgpus, memory

    def release(self, kernel_id: str) -> None:
        with self._lock:
            self.pending.pop(kernel_id)

    def __contains__(self, kernel_id: str) -> bool:
        return kernel_id in self.pending

    @staticmethod
    def _check(holding: Holding, totals: tuple[int, int, int], quota: Quota, whose: str, per: str,
               error: type[VGPURequestError] = VGPURequestError) -> None:
        kernels, vgpus, memory = totals
        if quota.kernels and kernels + 1 > quota.kernels:
            raise error(
                "kernels", kernels + 1,
                f"one more kernel would make {kernels + 1} for {whose} at once, CPU-only ones included; the class "
                f"allows {quota.kernels} {per}: shut down a kernel you no longer use (Kernel > Shut Down Kernel)")
        if quota.vgpus and vgpus + holding.vgpus > quota.vgpus:
            raise error(
                "vgpus", holding.vgpus,
                f"{holding.vgpus} more vGPU{'s' if holding.vgpus != 1 else ''} would make {vgpus + holding.vgpus} for "
                f"{whose} at once ({vgpus} held now); the limit is {quota.vgpus} {per}: stop a kernel you no "
                "longer use" + (", or try again when a classmate's ends" if error is CourseFull else " first"))
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
