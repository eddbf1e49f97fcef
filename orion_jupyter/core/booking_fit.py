"""Kernels placed on the pool's nodes: each kernel on one node, first fit with the largest shape first, over what
each node offers or has free now, in the backend's resources (vGPUs, and vGPU memory where the backend counts it;
a device's memory bounds one vGPU's). ``core.bookings`` asks whether a booking finds nodes; admission asks
whether a launch not of an open booking, wherever the scheduler puts it (the broker does not pick the node),
leaves the booking's kernels not started yet their nodes (``Nodes.leaves_room``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from ..vgpu import VGPURequest, format_mib
from .ledger import Holding


@dataclass(frozen=True)
class NodeRoom:
    """One node as bookings count it, in the backend's resources (``Nodes.needs``)."""

    name: str
    offers: Mapping[str, int]  # allocatable: what a later window may use
    free_now: Mapping[str, int]  # free now (for a booking's check: with the ready warm kernels given back)
    device_memory_mib: int | None = None  # one device's memory: a vGPU on this node asks at most this


@dataclass(frozen=True)
class Nodes:
    """The pool's nodes, to place booked kernels on as the scheduler does: each kernel on one node."""

    rooms: Sequence[NodeRoom]
    needs: Callable[[VGPURequest], Mapping[str, int]]  # what one kernel takes of a node (empty: no node counts it)
    count_resource: str  # the vGPU count among the resources (the rest are named as they are)
    memory_resource: str | None = None  # MiB of vGPU memory, where the backend counts it
    unplaced: frozenset[str] = frozenset()  # kernels running or starting that no node holds yet

    def idle(self) -> Nodes:
        """The nodes as if nothing ran on them (the config's bookings at start are checked as written)."""
        return replace(self, rooms=[replace(room, free_now=room.offers) for room in self.rooms], unplaced=frozenset())

    def pack(self, kernels: Iterable[tuple[VGPURequest, int]],
             spaces: list[dict[str, int]]) -> list[tuple[VGPURequest, int]]:
        """First fit, largest shape first: ``kernels`` (shape, how many) onto ``spaces`` (per room, what is left;
        taken from); the shapes and how many of each found no node. O(shapes × nodes)."""
        missing = []
        for request, left in sorted(kernels, key=largest_first, reverse=True):
            need = self._need(request)
            for room, space in zip(self.rooms, spaces, strict=True):
                if not left:
                    break
                taken = min(left, self._room_for(room, space, request, need))
                for resource, amount in need.items():
                    space[resource] -= taken * amount
                left -= taken
            if left:
                missing.append((request, left))
        return missing

    def leaves_room(self, request: VGPURequest, kept: Sequence[tuple[VGPURequest, int]],
                    landing: Sequence[tuple[VGPURequest, int]] = ()) -> bool:
        """Whether a kernel of ``request`` may start beside ``kept`` (kernels to keep room for: open bookings' not
        started yet) on what the nodes have free now. The scheduler, not the broker, picks its node, and those
        of ``landing`` (kernels no node holds yet), so each is taken at worst: on a node where it fits but not
        beside kept's packing, if there is one (the roomiest, as a spreading scheduler picks), and kept packed
        again. True when, so, as many of ``kept`` still find a node as without it (all, unless kernels that
        cannot be taken back crowd them already)."""
        free = [dict(room.free_now) for room in self.rooms]
        homeless = self._homeless_at_worst(kept, [*landing, (request, 1)], free)
        return not homeless or homeless <= self._homeless_at_worst(kept, landing, free)

    def landing(self, running: Iterable[Holding]) -> list[tuple[VGPURequest, int]]:
        """The kernels of ``running`` that no node holds yet, as shapes: each will take room on some node."""
        return [(VGPURequest(h.vgpus, h.memory_mib // h.vgpus), 1) for h in running
                if h.vgpus and h.kernel_id in self.unplaced]

    def _homeless_at_worst(self, kept: Sequence[tuple[VGPURequest, int]], landing: Sequence[tuple[VGPURequest, int]],
                           free: list[dict[str, int]]) -> int:
        """How many of ``kept`` find no node on ``free`` once ``landing`` are placed at worst (``leaves_room``).
        O(landing × nodes), and a packing of kept (shapes × nodes) after each kernel that lands in its way."""
        spaces = [dict(space) for space in free]

        def packed() -> tuple[int, list[dict[str, int]]]:
            """How many of ``kept`` find no node, and what is left of each node once they are placed."""
            left_over = [dict(space) for space in spaces]
            return sum(left for _, left in self.pack(kept, left_over)), left_over

        homeless, left_over = packed()
        for request, count in sorted(landing, key=largest_first, reverse=True):
            need = self._need(request)
            for _ in range(count):
                worst, most = -1, (False, -1)
                for i, (room, space) in enumerate(zip(self.rooms, spaces, strict=True)):
                    if self._room_for(room, space, request, need):
                        harm = not self._room_for(room, left_over[i], request, need), space.get(self.count_resource, 0)
                        if harm > most:
                            worst, most = i, harm
                if worst < 0:  # it fits nowhere now: it waits on no node
                    break
                for resource, amount in need.items():
                    spaces[worst][resource] -= amount
                    left_over[worst][resource] -= amount
                if most[0]:  # in kept's way: kept packed again around it
                    homeless, left_over = packed()
        return homeless

    def _need(self, request: VGPURequest) -> dict[str, int]:
        return {resource: amount for resource, amount in self.needs(request).items() if amount}

    @staticmethod
    def _room_for(room: NodeRoom, space: Mapping[str, int], request: VGPURequest, need: Mapping[str, int]) -> int:
        """How many kernels of ``request`` (each taking ``need``) fit ``space`` (what is left of ``room``)."""
        if room.device_memory_mib and request.memory_mib > room.device_memory_mib:
            return 0
        return min((space.get(resource, 0) // amount for resource, amount in need.items()), default=1 << 30)

    def offered(self, spaces: list[dict[str, int]], request: VGPURequest, most: int = 6) -> str:
        """'gpu-1: 3 vGPUs, gpu-2: 3 vGPUs' (the roomiest first), or that a device's memory is too small."""
        def too_small(room: NodeRoom) -> bool:
            return bool(room.device_memory_mib) and request.memory_mib > (room.device_memory_mib or 0)

        rows = sorted(zip(self.rooms, spaces, strict=True),
                      key=lambda row: (too_small(row[0]), -row[1].get(self.count_resource, 0), row[0].name))
        parts = []
        for room, space in rows[:most]:
            if too_small(room):
                parts.append(f"{room.name}: devices of {format_mib(room.device_memory_mib)}")
                continue
            vgpus = space.get(self.count_resource, 0)
            memory = space.get(self.memory_resource, 0) if self.memory_resource else None
            parts.append(f"{room.name}: {vgpus} vGPU{'s' if vgpus != 1 else ''}"
                         + (f" · {format_mib(memory)}" if memory is not None else ""))
        return ", ".join(parts) + (f" and {len(rows) - most} more" if len(rows) > most else "")


def largest_first(kernel: tuple[VGPURequest, int]) -> tuple[int, int]:
    return kernel[0].count, kernel[0].memory_mib


__all__ = ["NodeRoom", "Nodes"]
