"""The broker's bookings (``core.bookings``) over its cluster: the pool they must fit (its count, and node by
node where the nodes are visible), the kernels that cannot be taken back, the static ones of
``c.Broker.bookings`` and the API's kept in the state ConfigMap (so a restarted broker keeps them), and the
queue and warm pools woken when a window opens or closes."""

from __future__ import annotations

import logging
from typing import Any

from ..core.admission import Admission
from ..core.booking_fit import Nodes
from ..core.booking_rules import Booking, BookingError, BookingForbidden, BookingRefused
from ..core.bookings import Bookings
from ..core.warm import WarmKernels
from ..k8s.state_store import Section
from ..vgpu import VGPURequestError
from .pods import ClassPods

log = logging.getLogger("orion_jupyter.broker")


class BrokerBookings:
    """``book`` / ``cancel`` for the API, ``start`` once the cluster is reached, ``tick`` on a timer."""

    def __init__(self, bookings: Bookings, static: list[Booking], pods: ClassPods, admission: Admission,
                 warm: WarmKernels, store: Section | None = None):
        self.bookings = bookings
        self.static = static
        self.pods = pods
        self.admission = admission
        self.warm = warm
        self.store = store
        self._open: set[str] = set()  # ids of the bookings open at the last tick
        warm.booked = lambda request: bookings.warm_wanted(request, admission.in_use())

    async def capacity(self) -> tuple[int, int, Nodes | None]:
        """The pool's vGPUs, those held by other workloads on its nodes (what the broker cannot take back), and
        the nodes with the ready warm kernels' room given back (None where they are not visible: the count alone
        decides)."""
        pool = await self.pods.view.pool()
        total = pool.totals().get(self.pods.site.backend.count_resource)
        if total is None:
            return 0, 0, None
        warm_ready = [k.name for k in self.warm.kernels.values() if k.ready]
        ours = sum(h.vgpus for h in self.pods.holdings()) + sum(self.warm.kernels[k].vgpus for k in warm_ready)
        return total.allocatable, max(total.allocated - ours, 0), self.pods.nodes(warm_ready)

    async def book(self, booking: Booking) -> Booking:
        """Keep ``booking`` if it can be honoured (else BookingError / BookingRefused with the reason)."""
        refusal = self.bookings.rules.never_fits(booking, await self.pods.largest_node())
        if refusal is not None:
            raise refusal
        pool, others, nodes = await self.capacity()
        if not pool:
            raise BookingRefused("count", booking.count, "the broker sees no vGPUs in the pool now; try again when "
                                                         "its nodes are back")
        self.bookings.add(booking, pool, self.admission.in_use(), others, nodes)
        await self.save()
        self.tick()
        return booking

    async def cancel(self, booking_id: str) -> Booking | None:
        booking = self.bookings.remove(booking_id)
        if booking is not None:
            await self.save()
            self.tick()
        return booking

    async def start(self) -> None:
        """The static bookings (checked against the pool and each other: one line, exit 2), then the API's of
        an earlier broker."""
        pool, _, nodes = await self.capacity()
        as_written = nodes.idle() if nodes is not None else None  # like the count: nothing running is counted
        for booking in self.static:
            if booking.last_end <= self.bookings.now():
                log.info("c.Broker.bookings: %s has ended; skipped", booking.describe(self.bookings.rules.zone))
                continue
            if not pool:  # the pool not seen (yet): the config is taken as written
                self.bookings.items[booking.id] = booking
                continue
            try:
                self.bookings.add(booking, pool, [], nodes=as_written)
            except BookingRefused as err:
                raise BookingError(f"c.Broker.bookings[{booking.id.removeprefix('config-')}]", booking.count,
                                   f"c.Broker.bookings: {err}") from None
        if self.store is not None:
            self.bookings.restore(await self.store.load() or {})
        self.tick()

    async def save(self) -> None:
        if self.store is not None:
            await self.store.save(self.bookings.state())

    async def prune(self) -> None:
        """Forget the ended bookings (and keep that); wake the queue when a window opened or closed."""
        if self.bookings.prune():
            await self.save()
        self.tick()

    def tick(self) -> None:
        now_open = {b.id for b in self.bookings.open()}
        if now_open != self._open:  # what is held back changed: the queue's heads, the pools' sizes
            self._open = now_open
            self.admission.queue.wake()
            self.warm.wake()

    # -- what people see ----------------------------------------------------------------------------
    def rows(self) -> list[dict[str, Any]]:
        """Every booking with whether it is open and how many of its kernels run (the class view)."""
        unused = self.bookings.unused(self.admission.in_use())
        zone = self.bookings.rules.zone
        return [{**b.as_dict(zone), "open": b.id in unused, "in_use": b.count - unused[b.id] if b.id in unused else 0}
                for b in self.bookings.listed()]

    def visible(self, user: str, groups: list[str], instructor: bool) -> list[dict[str, Any]]:
        """An instructor sees every booking; a student their course's and their own (never another student's)."""
        return [row for row in self.rows()
                if instructor or row["user"] == user or (not row["user"] and row["course"] in groups)]


def refusal_status(err: VGPURequestError) -> int:
    """400: given wrong; 403: not the caller's to book; 409: cannot be honoured."""
    return 403 if isinstance(err, BookingForbidden) else 409 if isinstance(err, BookingRefused) else 400


__all__ = ["BrokerBookings", "refusal_status"]
