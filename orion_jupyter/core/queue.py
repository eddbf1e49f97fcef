"""A fair queue of launches per course: first come, first served, never overtaken.

A launch that finds its course's quota or the pool full waits here (when the course has ``queue``
on) instead of failing. Each user waits with at most one launch; a released vGPU (a kernel pod
gone, a launch that failed) wakes the queue, and the head is served first: while it does not fit,
nobody behind it starts, for at most ``head_max_wait`` seconds. After that, those behind it that fit
may start (backfill) while the head keeps its place and is tried first on every release: a head
asking for more vGPUs than come free together must not idle free vGPUs for everyone behind it. With
an ``order`` (``core.fairshare``), each line is kept in fair order (least decayed use first, overdue
launches ahead) and the courses take free vGPUs in the order it gives, one launch at a time. The
estimate is the position times the recent time between releases.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import KernelLaunchError
from ..vgpu import VGPURequest
from .ledger import Holding

RECENT_RELEASES = 20
TELL_EVERY = 0.5  # seconds: a line's moves are told at most this often (a burst of releases, one line each)


@dataclass(eq=False)
class Waiting:
    """One launch in line; ``turn`` resolves when it may start (its holding is then reserved)."""

    holding: Holding
    request: VGPURequest
    notify: Callable[[dict[str, Any]], None]  # the launch stream's "queued" lines
    image: str = ""
    server_name: str = ""
    since: float = field(default_factory=time.time)
    turn: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    details: dict[str, Any] = field(default_factory=dict)  # what the caller shows: spec, memory
    told: int = 0  # the position its stream was last told (0: none yet)
    own_storage: bool = False  # as Launch.own_storage: never a pool's warm kernel

    @property
    def kernel_id(self) -> str:
        return self.holding.kernel_id

    @property
    def user(self) -> str:
        return self.holding.user

    @property
    def course(self) -> str:
        return self.holding.course


class LaunchQueue:
    """The waiting launches of every course. ``admit(waiting)`` reserves its holding and says True when
    it fits now; ``unreserve(kernel_id)`` gives back a reservation that a cancel overtook."""

    def __init__(self, admit: Callable[[Waiting], Awaitable[bool]], unreserve: Callable[[str], None],
                 handed_over: Callable[[float], None] = lambda seconds: None, head_max_wait: float = 120.0,
                 clock: Callable[[], float] = time.monotonic,
                 order: Callable[[dict[str, list[Waiting]]], list[str]] | None = None, tell_every: float = TELL_EVERY):
        self.admit = admit
        self.tell_every = tell_every  # 0: every move is told at once
        self.order = order  # sorts the lines in place, answers the courses in turn order (None: FCFS)
        self.describe_more: Callable[[Waiting, list[Waiting]], dict[str, Any]] | None = None  # e.g. p50/p80
        self.changed: Callable[[], None] = lambda: None  # who waits, or in what order, changed (core.places saves)
        self.first: Callable[[list[Waiting]], None] | None = None  # moves open bookings' launches to the front
        self.unreserve = unreserve
        self.handed_over = handed_over  # seconds from a release to the head's turn
        self.head_max_wait = head_max_wait
        self.clock = clock
        self._blocked: dict[str, float] = {}  # course -> since when its head has not fit (clock seconds)
        self.lines: dict[str, list[Waiting]] = {}
        self._by_id: dict[str, Waiting] = {}  # who is in some line, by kernel id and by user (one each)
        self._by_user: dict[str, Waiting] = {}
        self.releases: deque[float] = deque(maxlen=RECENT_RELEASES)  # monotonic times of recent releases
        self._pumping: asyncio.Task | None = None
        self._again = False
        self._released_at: float | None = None
        self._telling: dict[str, asyncio.TimerHandle] = {}  # courses whose moves are told soon

    # -- who waits ------------------------------------------------------------------------
    def waiting(self, user: str | None = None) -> list[Waiting]:
        return [w for line in self.lines.values() for w in line if user is None or w.user == user]

    def find(self, kernel_id: str) -> Waiting | None:
        return self._by_id.get(kernel_id)

    def ahead_in(self, course: str) -> int:
        return len(self.lines.get(course, ()))

    def position(self, waiting: Waiting) -> int:
        return self.lines.get(waiting.course, []).index(waiting) + 1

    def estimate(self, position: int) -> float | None:
        """Seconds until ``position`` starts, from the recent time between releases (None: too few seen)."""
        if len(self.releases) < 2:
            return None
        gaps = [b - a for a, b in zip(self.releases, list(self.releases)[1:], strict=False)]
        return round(position * statistics.median(gaps), 1)

    def describe(self, waiting: Waiting, position: int = 0) -> dict[str, Any]:
        """Where ``waiting`` stands (``position``: its place, when the caller knows it)."""
        position = position or self.position(waiting)
        return {"kernel_id": waiting.kernel_id, "user": waiting.user, "course": waiting.course,
                "position": position, "ahead": position - 1, "estimate_seconds": self.estimate(position),
                "since": round(waiting.since, 3), "vgpus": waiting.holding.vgpus, **waiting.details,
                **(self.describe_more(waiting, self.lines[waiting.course][:position]) if self.describe_more else {})}

    # -- joining and leaving --------------------------------------------------------------
    def join(self, waiting: Waiting) -> None:
        mine = self._by_user.get(waiting.user)
        if mine is not None:
            other = self.describe(mine)
            raise KernelLaunchError(
                "unschedulable", f"you already wait for a vGPU (position {other['position']} in course "
                                 f"{other['course']}, kernel {other['kernel_id']}); one launch may wait at a time: "
                                 "wait for it, or cancel it first")
        self.lines.setdefault(waiting.course, []).append(waiting)
        self._by_id[waiting.kernel_id] = self._by_user[waiting.user] = waiting
        if self.order is not None:
            self.order(self.lines)
        self.changed()
        position = self.position(waiting)
        waiting.told = position
        waiting.notify({"queued": self.describe(waiting, position)})  # the newcomer hears at once
        self._tell(waiting.course)  # those the order moved, soon

    def leave(self, waiting: Waiting, error: KernelLaunchError | None = None) -> bool:
        """Take ``waiting`` out of line (its turn fails with ``error``, if given); False if it was not there."""
        line = self.lines.get(waiting.course, [])
        if waiting not in line:
            return False
        line.remove(waiting)
        self._forget(waiting)
        if not line:
            self.lines.pop(waiting.course, None)
        if error is not None and not waiting.turn.done():
            waiting.turn.set_exception(error)
            waiting.turn.exception()  # retrieved here: nobody may await a cancelled launch's turn
        self.changed()
        self._tell(waiting.course)
        self.wake()
        return True

    def _forget(self, waiting: Waiting) -> None:
        self._by_id.pop(waiting.kernel_id, None)
        self._by_user.pop(waiting.user, None)

    def cancel(self, kernel_id: str, by: str) -> bool:
        waiting = self.find(kernel_id)
        if waiting is None:
            return False
        return self.leave(waiting, KernelLaunchError("cancelled", f"the launch was taken out of the queue by {by}"))

    # -- the queue moves --------------------------------------------------------------------
    def released(self) -> None:
        """A vGPU was given back (a kernel pod went, a launch failed): the head of each line may fit now."""
        now = time.monotonic()
        self.releases.append(now)
        if self._released_at is None:
            self._released_at = now
        self.wake()

    def wake(self) -> None:
        if self._pumping is not None and not self._pumping.done():
            self._again = True
            return
        if self.lines:
            self._pumping = asyncio.ensure_future(self._pump())

    async def _pump(self) -> None:
        self._again = True
        while self._again:
            self._again = False
            for course in self.order(self.lines) if self.order is not None else list(self.lines):
                started = False
                line = self.lines.get(course, [])
                if self.first is not None:  # what a booking keeps is its launches', whoever waits longer
                    self.first(line)
                skip = 0  # how many at the front are passed over (the head, once it blocked long enough)
                while len(line) > skip:
                    head = line[skip]
                    if not await self.admit(head):
                        if skip or not self._may_pass(course, head):
                            break
                        skip = 1
                        continue
                    if head not in line:  # cancelled while admit ran: give its reservation back
                        self.unreserve(head.kernel_id)
                        continue
                    line.remove(head)  # not by index: a join may have re-sorted the line while admit ran
                    self._forget(head)
                    if not skip:
                        self._blocked.pop(course, None)
                    if self._released_at is not None:
                        self.handed_over(time.monotonic() - self._released_at)
                    head.turn.set_result(True)
                    self.changed()
                    started = True
                    if self.order is not None:  # the next free vGPU goes by the order again
                        self._again = True
                        break
                if not line:
                    self.lines.pop(course, None)
                    self._blocked.pop(course, None)
                if started:
                    self._tell(course)
                    if self.order is not None:
                        break
        self._released_at = None

    def _may_pass(self, course: str, head: Waiting) -> bool:
        """Whether those behind ``head`` (which does not fit) may start: once it has blocked head_max_wait."""
        now = self.clock()
        since = self._blocked.setdefault(course, now)
        if now - since >= self.head_max_wait:
            return True
        if since == now:  # first blocked now: look again when the wait is up, released vGPUs or not
            asyncio.get_running_loop().call_later(self.head_max_wait, self.wake)
        return False

    def _tell(self, course: str) -> None:
        """A line changed: those whose place in it moved hear it within ``tell_every`` seconds, once however
        often it moved meanwhile (the others at their next keepalive)."""
        if self.tell_every <= 0:
            self._tell_now(course)
        elif course not in self._telling:
            self._telling[course] = asyncio.get_running_loop().call_later(self.tell_every, self._tell_now, course)

    def _tell_now(self, course: str) -> None:
        self._telling.pop(course, None)
        for position, waiting in enumerate(self.lines.get(course, []), 1):
            if waiting.told != position:
                waiting.told = position
                waiting.notify({"queued": self.describe(waiting, position)})


__all__ = ["LaunchQueue", "Waiting"]
