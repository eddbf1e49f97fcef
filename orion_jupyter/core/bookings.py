"""The class's bookings (``core.booking_rules``: what one is and who may make it): whether one can be honoured,
what the open ones keep back, and what survives a restart.

A booking is accepted only if it can be honoured: at every moment of its window, it and the other
bookings then, plus what cannot be taken back (for a window open now: the kernels running now, and
other workloads on the nodes), fit the pool; a weekly booking, at every moment of each occurrence. Where the
nodes are visible they must also fit node by node: each kernel runs on one node, so the kernels booked then
are packed onto the nodes (first fit, largest first; for a window open now, onto what is free now). Where the
nodes are not visible (and for backends whose kernels no node counts: dra, kai, Orion's remote mode), the
pool-wide count alone decides. Kernels are never stopped for a booking: one started
before a window opens keeps running, so a later window is honoured from the vGPUs freed by then,
which go to the booking before anyone else. During the window, the booked vGPUs not yet used by the
booking's own launches are held back from everyone else's (the queue waits), and the booking's
launches go first; where a warm pool of the shape exists, it keeps that many kernels ready for them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..vgpu import VGPURequest, VGPURequestError
from .booking_fit import Nodes
from .booking_rules import (
    BOOKING_KEYS,
    MAX_AHEAD,
    Booking,
    BookingError,
    BookingRefused,
    BookingRules,
    parse_booking,
    same_shape,
    when,
)
from .ledger import Holding

log = logging.getLogger("orion_jupyter.bookings")


@dataclass(frozen=True)
class Hold:
    """What a launch must leave to bookings it is not one of: room for their kernels not started yet that no
    warm kernel stands for (shape, how many), and ready warm kernels of its shape."""

    kept: tuple[tuple[VGPURequest, int], ...] = ()
    warm: int = 0

    @property
    def vgpus(self) -> int:
        """The vGPUs held back, where only the pool's count is known."""
        return sum(request.count * count for request, count in self.kept)


class Bookings:
    """The class's bookings; ``running`` arguments are every kernel held or being started (holdings)."""

    def __init__(self, rules: BookingRules, clock: Callable[[], float] = time.time):
        self.rules = rules
        self.clock = clock
        self.items: dict[str, Booking] = {}

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), self.rules.zone) if self.rules.zone \
            else datetime.fromtimestamp(self.clock()).astimezone()

    def open(self, now: datetime | None = None) -> list[Booking]:
        """The bookings whose window is open now, student bookings first (they are the more specific)."""
        now = now or self.now()
        return sorted((b for b in self.items.values() if b.open_at(now)), key=lambda b: (not b.user, b.start, b.id))

    def listed(self) -> list[Booking]:
        return sorted(self.items.values(), key=lambda b: (b.start, b.course, b.id))

    # -- what the open bookings use -----------------------------------------------------------------
    def assign(self, bookings: Iterable[Booking], running: Iterable[Holding]) -> dict[str, list[str]]:
        """Which kernels count toward which booking (each kernel at most one, each booking at most its count)."""
        by_shape: dict[tuple[str, int, int], list[Holding]] = {}  # one pass over the class's kernels
        for holding in running:
            by_shape.setdefault((holding.course, holding.vgpus, holding.memory_mib), []).append(holding)
        taken: set[str] = set()
        out: dict[str, list[str]] = {}
        for booking in bookings:
            shape = by_shape.get((booking.course, booking.request.count, booking.request.total_memory_mib), [])
            mine = []
            for holding in shape:
                if len(mine) == booking.count:
                    break
                if holding.kernel_id not in taken and (not booking.user or holding.user == booking.user):
                    mine.append(holding.kernel_id)
                    taken.add(holding.kernel_id)
            out[booking.id] = mine
        return out

    def unused(self, running: Iterable[Holding], now: datetime | None = None) -> dict[str, int]:
        """Per open booking, how many of its kernels are not running or starting."""
        bookings = self.open(now)
        used = self.assign(bookings, running)
        return {b.id: b.count - len(used[b.id]) for b in bookings}

    def serving(self, holding: Holding, running: Iterable[Holding]) -> Booking | None:
        """The open booking with a kernel left that ``holding`` (a launch, not in ``running``) is one of."""
        unused = self.unused(running)
        return next((b for b in self.open() if unused[b.id] and b.fits(holding)), None)

    def booked(self, waiting: Iterable[Any], running: Iterable[Holding]) -> set[str]:
        """The kernel ids of those ``waiting`` (each with a ``holding``, in line order) the open bookings'
        unused kernels serve."""
        unused, bookings = self.unused(running), self.open()
        out = set()
        for item in waiting:
            booking = next((b for b in bookings if unused[b.id] and b.fits(item.holding)), None)
            if booking is not None:
                unused[booking.id] -= 1
                out.add(item.holding.kernel_id)
        return out

    def hold(self, holding: Holding, running: Iterable[Holding],
             warm_ready: Callable[[VGPURequest], int] = lambda request: 0) -> Hold:
        """What the launch ``holding`` must leave to the open bookings it is not one of. Warm kernels of a
        booked shape (``warm_ready``: how many a pool has, ready or starting) stand for the booking first:
        their vGPUs are taken already, so only the rest is kept room for."""
        running = [h for h in running if h.kernel_id != holding.kernel_id]
        unused = self.unused(running)
        kept: list[tuple[VGPURequest, int]] = []
        warm = 0
        standing: dict[VGPURequest, int] = {}
        for booking in self.open():
            left = unused[booking.id]
            if not left:
                continue
            pre = min(left, max(warm_ready(booking.request) - standing.get(booking.request, 0), 0))
            standing[booking.request] = standing.get(booking.request, 0) + pre
            if booking.fits(holding):
                continue
            if left > pre:
                kept.append((booking.request, left - pre))
            if same_shape(booking.request, holding):
                warm += pre
        return Hold(tuple(kept), warm)

    def warm_wanted(self, request: VGPURequest, running: Iterable[Holding]) -> int:
        """Warm kernels of ``request``'s shape the open bookings want ready (their kernels not yet started)."""
        unused = self.unused(running)
        return sum(unused[b.id] for b in self.open() if b.request == request)

    # -- taking and giving back ---------------------------------------------------------------------
    def check(self, booking: Booking, pool_vgpus: int, running: Iterable[Holding], held_outside: int = 0,
              nodes: Nodes | None = None) -> None:
        """Raises BookingRefused when ``booking`` cannot be honoured beside the other bookings: at some moment
        of one of its windows it and they (and, for a window open now, the kernels running now that are no
        booking's and ``held_outside``: other workloads) need more than ``pool_vgpus``, or (given ``nodes``)
        their kernels cannot be placed on the nodes. Without ``nodes`` (not visible) the count alone decides."""
        now = self.now()
        if booking.last_end <= now:
            raise BookingError("end", booking.end.isoformat(), f"the window ended already ({when(booking.last_end)})")
        if booking.start - now > MAX_AHEAD:
            raise BookingError("start", booking.start.isoformat(), f"a booking starts at most {MAX_AHEAD.days} days "
                                                                   "ahead")
        if booking.until is not None and booking.until - now.date() > MAX_AHEAD:
            raise BookingError("until", booking.until.isoformat(), f"a weekly booking ends at most {MAX_AHEAD.days} "
                                                                   "days ahead")
        running = list(running)
        for start, end in booking.windows(after=now):
            reason = self._refusal(booking, max(start, now), end, now, pool_vgpus, running, held_outside, nodes)
            if reason is not None:
                zone = self.rules.zone
                occurrence = f"its occurrence on {start.astimezone(zone):%a %d %b %Y} cannot be honoured: " \
                    if booking.repeat else ""
                raise BookingRefused("count", booking.count, f"cannot book {booking.describe(zone)}: {occurrence}"
                                                             f"{reason}; book fewer, or another time")

    def _refusal(self, booking: Booking, first: datetime, end: datetime, now: datetime, pool_vgpus: int,
                 running: list[Holding], held_outside: int, nodes: Nodes | None) -> str | None:
        """Why ``booking`` cannot be honoured from ``first`` to ``end`` (one of its windows); None: it can."""
        others = [(b, start, stop) for b in self.items.values() if b.id != booking.id
                  for start, stop in b.windows(first, end)]
        zone = self.rules.zone
        for moment in sorted({first} | {start for _, start, _ in others if first < start}):
            then = [b for b, start, stop in others if start <= moment < stop]
            booked = sum(b.vgpus for b in then)
            held, used = 0, None
            if moment == now:  # the window is open: kernels running now are not taken back
                used = self.assign(sorted([*then, booking], key=lambda b: (not b.user, b.start, b.id)), running)
                counted = {k for ids in used.values() for k in ids}
                held = held_outside + sum(h.vgpus for h in running if h.kernel_id not in counted)
            free = pool_vgpus - booked - held
            if free < booking.vgpus:
                return (f"it needs {booking.vgpus} vGPU{'s' if booking.vgpus != 1 else ''}, but at "
                        f"{when(moment.astimezone(zone))} only {max(free, 0)} of the pool's {pool_vgpus} are free "
                        f"({booked} booked" + (f" by {', '.join(sorted({b.whom() for b in then}))}" if then else "")
                        + (f", {held} held by kernels running now" if held else "") + ")")
            homeless = self._no_node(booking, then, used, running, nodes) if nodes is not None else None
            if homeless is not None:
                return f"at {when(moment.astimezone(zone))} {homeless}"
        return None

    @staticmethod
    def _no_node(booking: Booking, then: list[Booking], used: dict[str, list[str]] | None,
                  running: list[Holding], nodes: Nodes) -> str | None:
        """Whether ``booking``'s kernels and those of ``then`` (the other bookings open at a moment) can be
        placed on ``nodes``: for a window open now (``used``: the kernels counted toward them) their kernels
        not running yet and the kernels no node holds yet (a booking's too), onto what is free now; later, all
        of them onto what the nodes offer. None: they can; else what does not fit and what the nodes offer."""
        def wanted(b: Booking) -> int:
            return b.count - len(used.get(b.id, ())) if used is not None else b.count

        others = [(b.request, wanted(b)) for b in then if wanted(b)]
        if used is not None:
            others += nodes.landing(running)
        mine = (booking.request, wanted(booking))
        spaces = [dict(room.free_now if used is not None else room.offers) for room in nodes.rooms]
        left = [dict(space) for space in spaces]
        missing = nodes.pack(others, left) or nodes.pack([mine], [dict(space) for space in left])
        if not missing or not nodes.pack([*others, mine], [dict(space) for space in spaces]):
            return None
        shape, count = missing[0]
        beside = f" beside {sum(n for _, n in others)} other kernels then" if others else ""
        kernels = f"{count} kernel of" if count == 1 else f"{count} kernels of"
        return (f"{kernels} {shape.describe()} find{'s' if count == 1 else ''} no node{beside} (a kernel runs on one "
                f"node; the nodes offer {nodes.offered(left, booking.request)} then)")

    def add(self, booking: Booking, pool_vgpus: int, running: Iterable[Holding], held_outside: int = 0,
            nodes: Nodes | None = None) -> Booking:
        if booking.user and booking.by == booking.user:  # a student's own: one at a time
            mine = [b for b in self.items.values() if b.by == booking.user and b.last_end > self.now()]
            if mine:
                raise BookingRefused("user", booking.user, f"you have a booking already ({mine[0].describe()}); "
                                                           "a student holds one at a time: remove it first")
        self.check(booking, pool_vgpus, running, held_outside, nodes)
        self.items[booking.id] = booking
        return booking

    def remove(self, booking_id: str) -> Booking | None:
        return self.items.pop(booking_id, None)

    def prune(self) -> list[Booking]:
        """Forget the bookings whose window ended; those forgotten."""
        now = self.now()
        ended = [b for b in self.items.values() if b.last_end <= now]
        for booking in ended:
            del self.items[booking.id]
        return ended

    # -- what survives a restart --------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The bookings made through the API (the static ones come from the config again)."""
        return {"bookings": [{"id": b.id, "by": b.by, "course": b.course, "count": b.count, "vgpus": b.request.count,
                              "memory": f"{b.request.memory_mib}Mi", "start": b.start.isoformat(),
                              "end": b.end.isoformat(), **({"user": b.user} if b.user else {}),
                              **({"compute": b.request.compute_percent} if b.request.compute_percent else {}),
                              **({"repeat": b.repeat, "until": b.until.isoformat()} if b.repeat and b.until else {})}
                             for b in self.items.values() if not b.static]}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue the API's bookings from ``state()`` of an earlier broker (ended or unreadable ones dropped)."""
        now = self.now()
        for entry in list(state.get("bookings") or []):
            try:
                booking = parse_booking({k: v for k, v in dict(entry).items() if k in BOOKING_KEYS},
                                        by=str(entry["by"]), zone=self.rules.zone, booking_id=str(entry["id"]))
            except (VGPURequestError, KeyError, TypeError, ValueError) as err:
                log.warning("a kept booking cannot be read back (%s); dropped", err)
                continue
            if booking.course not in self.rules.courses:
                log.warning("a kept booking of %s is dropped: no such course in c.Broker.courses", booking.course)
            elif booking.last_end > now and booking.id not in self.items:
                self.items[booking.id] = booking



__all__ = ["Bookings", "Hold"]
