"""Admission of a class's launches: for a user and their hub groups, ``Admitted``, ``Queued`` or ``Refused``.

The order of the decision, in one place (the broker's HTTP handler only translates it):

1. a launch larger than its course may ever hold, or than the largest node offers, never waits;
2. a kernel id that exists, starts or waits already is refused (409), and so is the restart of a
   kernel an instructor or the idle rule stopped;
3. the user's own quota: waiting cannot help a user who holds their share (400); nor can it help a
   user (or course) whose vGPU-hour budget is used up until the window resets (400, ``budget``);
4. the student's own roster kernel, ready, is theirs at once: it was set aside for them, so it takes
   nobody's place in line and only their own quota applies;
5. with the course's queue on, nobody overtakes the line: a launch waits while others wait; except a
   launch of an open booking (``core.bookings``) with a kernel left: that capacity was kept for it;
6. else the course's quota and the pool (a warm kernel of the shape, or room on a node) decide; a
   launch that does not fit waits in its course's queue when the course has one, else is refused.
   What open bookings keep and do not use yet is held back from every launch not theirs: where the host
   sees the nodes, room for their kernels node by node (``Nodes.leaves_room``), else a count of vGPUs.

From the duplicate check to the reservation nothing awaits, so two launches of one id, or of one
user against their quota, cannot both pass. A course is its exact hub group name everywhere here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import KernelLaunchError, stopped_kernel
from ..protocols import WarmClaims
from ..vgpu import VGPURequest, VGPURequestError
from .booking_fit import Nodes
from .bookings import Bookings, Hold
from .budgets import Budgets
from .fairshare import FairShare
from .ledger import Holding, Ledger, holding_of
from .queue import LaunchQueue, Waiting


class KernelExists(VGPURequestError):
    """A launch of a kernel id that exists, starts or waits already (409)."""


class AdmissionHost(Protocol):
    """What admission reads of the cluster (the broker's shared watch caches)."""

    def holdings(self) -> Iterable[Holding]: ...  # what every live, claimed kernel pod holds now (a Held: by user)
    def kernel_exists(self, kernel_id: str) -> bool: ...  # a kernel pod with this id
    def stopped_by(self, kernel_id: str) -> str | None: ...  # who stopped a kernel of this id, if anyone
    async def has_room(self, request: VGPURequest, kernel_id: str = "", held_back: int = 0) -> bool: ...
    async def largest_node(self) -> int | None: ...  # vGPUs of the largest node (None: unknown)
    async def shortage(self, request: VGPURequest) -> str: ...  # why the pool cannot serve it now
    def nodes(self) -> Nodes | None: ...  # free room per node now, from its caches (None: not visible)


@dataclass(frozen=True)
class Launch:
    """One launch as admission sees it (the caller's identity from the hub, never from the body)."""

    kernel_id: str
    user: str
    groups: tuple[str, ...]
    request: VGPURequest
    image: str
    server_name: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)  # what a queue place shows: spec, memory
    own_storage: bool = False  # never a pool's warm kernel (they mount no user's storage); the user's roster one


@dataclass(frozen=True)
class Admitted:
    holding: Holding
    warm: str | None = None  # the warm kernel (pod name) reserved for it; None: start a pod


@dataclass(frozen=True)
class Queued:
    waiting: Waiting


@dataclass(frozen=True)
class Refused:
    error: VGPURequestError | KernelLaunchError


Decision = Admitted | Queued | Refused


class Admission:
    """Quotas per user and per course, the fair queue and warm kernels, over an :class:`AdmissionHost`."""

    def __init__(self, host: AdmissionHost, ledger: Ledger, queue_courses: Iterable[str],
                 warm: WarmClaims | None = None, handed_over: Callable[[float], None] = lambda seconds: None,
                 head_max_wait: float = 120.0, budgets: Budgets | None = None, fair: FairShare | None = None,
                 bookings: Bookings | None = None):
        self.host = host
        self.bookings = bookings
        self.budgets = budgets
        self.fair = fair
        self.ledger = ledger
        self.queue_courses = frozenset(queue_courses)
        self.warm = warm
        self.queue = LaunchQueue(self.admit_waiting, self.release, handed_over, head_max_wait,
                                 order=fair.order if fair else None)
        if bookings is not None:
            self.queue.first = self._booked_first

    def course_of(self, groups: Iterable[str]) -> str:
        """A student's course: the first of their groups (in sorted order) that the class configures."""
        return next((group for group in sorted(groups) if group in self.ledger.per_course
                     or group in self.queue_courses), "")

    async def never_fits(self, holding: Holding) -> bool:
        """More than the course may ever hold, or than the largest node offers: waiting cannot help."""
        quota = self.ledger.per_course.get(holding.course)
        if quota is not None and ((quota.vgpus and holding.vgpus > quota.vgpus)
                                  or (quota.memory_mib and holding.memory_mib > quota.memory_mib)):
            return True
        largest = await self.host.largest_node()
        return largest is not None and holding.vgpus > largest

    async def decide(self, launch: Launch, notify: Callable[[dict[str, Any]], None]) -> Decision:
        """Admit, queue (``notify`` gets the place lines) or refuse ``launch``; an Admitted or Queued
        holding is reserved until :meth:`release`."""
        course = self.course_of(launch.groups)
        holding = holding_of(launch.kernel_id, launch.user, course, launch.request)
        queues = course in self.queue_courses and not await self.never_fits(holding)
        # from here to the reservation nothing awaits: two launches of one kernel id cannot both pass
        if launch.kernel_id in self.ledger.pending or self.queue.find(launch.kernel_id) \
                or self.host.kernel_exists(launch.kernel_id):
            return Refused(KernelExists("kernel_id", launch.kernel_id,
                                        f'kernel "{launch.kernel_id}" already exists or is starting'))
        stopped_by = self.host.stopped_by(launch.kernel_id)
        if stopped_by:  # a restart of a kernel an instructor or the idle rule stopped: it stays stopped
            return Refused(stopped_kernel(stopped_by))
        try:
            self.ledger.check_user(holding, self.host.holdings())  # a user's own share: waiting cannot help
        except VGPURequestError as err:
            return Refused(err)
        out_of_budget = self.budgets.refusal(holding) if self.budgets is not None else None
        if out_of_budget is not None:
            return Refused(out_of_budget)
        own = self._take_own_warm(holding, launch)
        if own is not None:
            return own
        # nobody overtakes the line, but a launch of an open booking: its capacity was kept for it
        if not (queues and self.queue.ahead_in(course) > 0) or self._booked(holding):
            refusal = await self._take(holding, launch)
            if refusal is None:
                return Admitted(holding, self.warm.reserved_for(launch.kernel_id) if self.warm else None)
            if not queues:
                return Refused(refusal)
        waiting = Waiting(holding, launch.request, notify, image=launch.image, server_name=launch.server_name,
                          details=dict(launch.details), own_storage=launch.own_storage)
        try:
            self.queue.join(waiting)
        except KernelLaunchError as err:
            return Refused(err)
        return Queued(waiting)

    def _take_own_warm(self, holding: Holding, launch: Launch) -> Decision | None:
        """The student's own ready roster kernel, reserved against their own quota only; None: none."""
        if self.warm is None or not self.warm.reserve(holding.kernel_id, holding.user, launch.request, launch.image,
                                                      launch.server_name, own_only=True):
            return None
        try:
            self.ledger.reserve(holding, self.host.holdings(), course=False)
        except VGPURequestError as err:
            self.warm.unreserve(holding.kernel_id)
            return Refused(err)
        return Admitted(holding, self.warm.reserved_for(holding.kernel_id))

    async def _take(self, holding: Holding, launch: Launch | Waiting) -> VGPURequestError | KernelLaunchError | None:
        """Reserve ``holding`` when the quotas allow it and a warm kernel of its shape is ready or the pool
        has room now; else the refusal."""
        try:
            self.ledger.reserve(holding, self.host.holdings())
        except VGPURequestError as err:
            return err
        bookings = self._bookings_open()
        hold = bookings.hold(holding, self.in_use(holding.kernel_id), self.warm.ready_of if self.warm else
                             lambda request: 0) if bookings is not None else Hold()
        if self.warm is not None and self.warm.reserve(holding.kernel_id, holding.user, launch.request, launch.image,
                                                       launch.server_name, own_only=launch.own_storage,
                                                       keep=hold.warm):
            return None
        nodes = self.host.nodes() if hold.kept else None  # visible: the booked kernels' room node by node
        if not await self.host.has_room(launch.request, holding.kernel_id, hold.vgpus if nodes is None else 0):
            self.ledger.release(holding.kernel_id)
            return KernelLaunchError("unschedulable", await self.host.shortage(launch.request))
        if nodes is not None and not nodes.leaves_room(launch.request, hold.kept,
                                                       nodes.landing(self.in_use(holding.kernel_id))):
            self.ledger.release(holding.kernel_id)
            return KernelLaunchError("unschedulable", kept_for_bookings(hold))
        return None

    def in_use(self, but: str = "") -> list[Holding]:
        """Every kernel held or being started but the launch ``but`` (what bookings count as used)."""
        held = {h.kernel_id: h for h in self.host.holdings()}
        held.update(self.ledger.pending.items())
        held.pop(but, None)
        return list(held.values())

    def _booked_first(self, line: list[Waiting]) -> None:
        """Open bookings' launches to the front of their line (in their order), the others after them."""
        bookings = self._bookings_open()
        if bookings is not None:
            booked = bookings.booked(line, self.in_use())
            line.sort(key=lambda waiting: waiting.kernel_id not in booked)

    def _booked(self, holding: Holding) -> bool:
        bookings = self._bookings_open()
        return bookings is not None and bookings.serving(holding, self.in_use(holding.kernel_id)) is not None

    def _bookings_open(self) -> Bookings | None:
        """The bookings when one is open now (else nothing is held back for them)."""
        return self.bookings if self.bookings is not None and self.bookings.open() else None

    async def admit_waiting(self, waiting: Waiting) -> bool:
        """The queue's head may start now (its holding is then reserved)."""
        return await self._take(waiting.holding, waiting) is None

    def release(self, kernel_id: str) -> None:
        """A launch ended (started, failed or gave up): what it reserved and did not use is free again."""
        self.ledger.release(kernel_id)
        if self.warm is not None:
            self.warm.unreserve(kernel_id)


def kept_for_bookings(hold: Hold) -> str:
    """Why a launch waits for room the open bookings keep on the nodes."""
    kernels = ", ".join(f"{count} kernel{'s' if count != 1 else ''} of {request.describe()}"
                        for request, count in hold.kept)
    return (f"The free vGPUs are kept for open bookings' kernels not started yet ({kernels}): wherever this kernel "
            "ran, fewer of them would find a node. Try again when they have started or their window has closed.")
