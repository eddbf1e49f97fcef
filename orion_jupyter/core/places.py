"""Places in the launch queue that outlive a broken stream and the broker itself.

A waiting launch's place (``core.queue.Waiting``) is kept with a ticket: a secret its stream gets in
each ``queued`` line and only a hash of which is stored. When the stream breaks (the server's
connection dropped, the broker restarted), the place stays for ``grace`` seconds: the same launch
(its kernel id and shape) sent again with the ticket, by the same hub user (compared exactly; the
ticket alone is never enough), follows it on; a place nobody comes back for is given up. A turn that
comes while nobody follows keeps its reservation for the one who comes back, until the grace ends.

The places, in line order, are saved to a store (the broker's state ConfigMap, ``load()`` /
``save(state)``) a moment after each change, so a restarted broker restores the queue's order (each
launch keeps its arrival time) before it answers anyone.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import KernelLaunchError
from ..vgpu import VGPURequest, VGPURequestError
from .ledger import Holding
from .queue import LaunchQueue, Waiting

log = logging.getLogger("orion_jupyter.broker")


class Store(Protocol):
    async def load(self) -> dict[str, Any] | None: ...
    async def save(self, state: dict[str, Any]) -> None: ...


def new_ticket() -> str:
    return secrets.token_urlsafe(24)


def _digest(ticket: str) -> str:
    return hashlib.sha256(ticket.encode()).hexdigest()


def _nobody(item: dict[str, Any]) -> None:
    """The queue lines of a place nobody follows now."""


@dataclass(eq=False)
class Place:
    waiting: Waiting
    ticket_hash: str
    stream: asyncio.Future | None = None  # resolved when the stream that follows it lets go; None: nobody
    expiry: asyncio.TimerHandle | None = None  # when a place nobody follows is given up
    saved: dict[str, Any] | None = None  # what is saved of it (made once: nothing of it changes)

    def entry(self) -> dict[str, Any]:
        if self.saved is None:
            self.saved = _entry(self.waiting, self.ticket_hash)
        return self.saved


class KeptPlaces:
    """The queue's places by kernel id; ``queue.changed`` is set to save them."""

    def __init__(self, queue: LaunchQueue, release: Callable[[str], None], store: Store | None = None,
                 grace: float = 60.0, save_delay: float = 1.0):
        self.queue = queue
        self.release = release  # gives back what a launch reserved (admission.release)
        self.store = store
        self.grace = grace
        self.save_delay = save_delay
        self.places: dict[str, Place] = {}
        self._save_due = False
        self._saving = asyncio.Lock()
        queue.changed = self.changed

    # -- a stream holds, lets go of, and comes back for a place ---------------------------------
    def hold(self, waiting: Waiting, stream: asyncio.Future, ticket: str) -> None:
        """``stream`` follows the newly queued ``waiting``; ``ticket`` brings it back."""
        place = self.places[waiting.kernel_id] = Place(waiting, _digest(ticket), stream)
        waiting.turn.add_done_callback(lambda turn: self._turned(place, turn))
        self.changed()

    def follows(self, kernel_id: str, stream: asyncio.Future) -> bool:
        place = self.places.get(kernel_id)
        return place is not None and place.stream is stream

    def let_go(self, kernel_id: str, stream: asyncio.Future) -> None:
        """``stream`` broke: its place waits ``grace`` seconds for it (0: given up at once)."""
        place = self.places.get(kernel_id)
        if place is None or place.stream is not stream:
            return
        place.stream = None
        place.waiting.notify = _nobody
        self._expire_later(place)

    def resume(self, kernel_id: str, user: str, ticket: str, request: VGPURequest, stream: asyncio.Future,
               notify: Callable[[dict[str, Any]], None]) -> Waiting | None:
        """``user``'s launch ``kernel_id`` back with its ``ticket``: its place, now followed by ``stream``
        (one that still followed it lets go); None when there is no such place of theirs."""
        place = self.places.get(kernel_id)
        if place is None or place.waiting.user != user or not hmac.compare_digest(place.ticket_hash, _digest(ticket)):
            return None
        if request != place.waiting.request:
            waited_for = place.waiting.request.describe()
            raise VGPURequestError("vgpus", request.describe(), "the launch that comes back for its place must ask "
                                                                f"for what it waited for ({waited_for})")
        if place.expiry is not None:
            place.expiry.cancel()
            place.expiry = None
        if place.stream is not None and not place.stream.done():
            place.stream.set_result(None)  # the stream that followed it before: superseded
        place.stream = stream
        place.waiting.notify = notify
        return place.waiting

    def taken(self, kernel_id: str) -> None:
        """The launch's turn is being used by the stream that follows it: nothing to keep any more."""
        self._drop(kernel_id)

    # -- what happens to places -----------------------------------------------------------------
    def _turned(self, place: Place, turn: asyncio.Future) -> None:
        if turn.cancelled() or turn.exception() is not None:
            self._drop(place.waiting.kernel_id, place)  # it left the line (cancelled, timed out)

    def _expire_later(self, place: Place) -> None:
        if self.grace <= 0:
            self._expire(place)
        else:
            place.expiry = asyncio.get_running_loop().call_later(self.grace, self._expire, place)

    def _expire(self, place: Place) -> None:
        """Nobody came back for ``place`` in time: it is given up (and a reservation its turn made given back)."""
        kernel_id = place.waiting.kernel_id
        if self.places.get(kernel_id) is not place or place.stream is not None:
            return
        log.info("launch %s of %s: nobody came back for its place in the queue within %g s; given up", kernel_id,
                 place.waiting.user, self.grace)
        self._drop(kernel_id, place)
        if not self.queue.leave(place.waiting, KernelLaunchError(
                "cancelled", f"its server did not come back for its place within {self.grace:g} s")):
            self.release(kernel_id)  # its turn had come: what it reserved is free again
            self.queue.wake()

    def _drop(self, kernel_id: str, place: Place | None = None) -> None:
        found = self.places.get(kernel_id)
        if found is None or (place is not None and found is not place):
            return
        del self.places[kernel_id]
        if found.expiry is not None:
            found.expiry.cancel()
        self.changed()

    # -- what survives the broker ------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Every kept place, in the order it is served: those whose turn came, then each line in order."""
        in_line = [w for line in self.queue.lines.values() for w in line]
        turned = [p.waiting for p in self.places.values() if p.waiting.turn.done() and not p.waiting.turn.exception()]
        return {"places": [self.places[w.kernel_id].entry() for w in [*turned, *in_line] if w.kernel_id in self.places]}

    def changed(self) -> None:
        """The queue or its places changed: saved a moment later (one save for many changes)."""
        if self.store is None or self._save_due:
            return
        self._save_due = True
        asyncio.get_running_loop().call_later(self.save_delay, lambda: asyncio.ensure_future(self.save()))

    async def save(self) -> None:
        async with self._saving:  # one write at a time, each of the state at its own moment
            self._save_due = False
            if self.store is not None:
                await self.store.save(self.state())

    async def restore(self, exists: Callable[[str], bool]) -> int:
        """Put back the places an earlier broker kept (nobody follows them until their streams come back,
        within the grace); a launch whose kernel ``exists`` already is not put back. How many came back."""
        state = await self.store.load() if self.store is not None else None
        restored = 0
        for entry in (state or {}).get("places") or []:
            try:
                waiting, ticket_hash = _waiting(entry)
            except (KeyError, TypeError, ValueError) as err:
                log.warning("a kept queue place is not readable (%s); skipped: %.200r", err, entry)
                continue
            if waiting.kernel_id in self.places or exists(waiting.kernel_id):
                continue
            try:
                self.queue.join(waiting)
            except KernelLaunchError as err:
                log.warning("kept queue place of %s not restored: %s", waiting.user, err)
                continue
            place = self.places[waiting.kernel_id] = Place(waiting, ticket_hash)
            waiting.turn.add_done_callback(lambda turn, place=place: self._turned(place, turn))
            self._expire_later(place)
            restored += 1
        if restored:
            log.info("restored %d waiting launches in the queue's order", restored)
            self.queue.wake()
        return restored


def _entry(waiting: Waiting, ticket_hash: str) -> dict[str, Any]:
    holding = waiting.holding
    return {"kernel_id": holding.kernel_id, "user": holding.user, "course": holding.course, "vgpus": holding.vgpus,
            "memory_mib": holding.memory_mib, "request": waiting.request.as_dict(), "image": waiting.image,
            "server_name": waiting.server_name, "since": waiting.since, "details": waiting.details,
            "own_storage": waiting.own_storage, "ticket": ticket_hash}


def _waiting(entry: Mapping[str, Any]) -> tuple[Waiting, str]:
    request = entry["request"]
    compute = request.get("compute_percent")
    holding = Holding(str(entry["kernel_id"]), str(entry["user"]), str(entry["course"]), int(entry["vgpus"]),
                      int(entry["memory_mib"]))
    waiting = Waiting(holding, VGPURequest(int(request["vgpus"]), int(request["memory_mib"]),
                                           None if compute is None else int(compute)),
                      _nobody, image=str(entry["image"]), server_name=str(entry["server_name"]),
                      since=float(entry["since"]), details=dict(entry.get("details") or {}),
                      own_storage=entry.get("own_storage") is True)
    return waiting, str(entry["ticket"])


__all__ = ["KeptPlaces", "Place", "new_ticket"]
