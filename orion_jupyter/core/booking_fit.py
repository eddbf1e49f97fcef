"""Booked kernels placed on the pool's nodes as the scheduler would: each kernel on one node, first fit with the
largest shape first, over what each node offers or has free now, in the backend's resources (vGPUs, and vGPU
memory where the backend counts it; a device's memory bounds one vGPU's). ``core.bookings`` asks it whether a
booking finds nodes."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from ..vgpu import VGPURequest, format_mib


@dataclass(frozen=True)
class NodeRoom:
    """One node as the booking check counts it, in the backend's resources (``Nodes.needs``)."""

    name: str
    offers: Mapping[str, int]  # allocatable: what a later window may use
    free_now: Mapping[str, int]  # free now, with what the broker takes back (its ready warm kernels)
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
        for request, left in sorted(kernels, key=lambda kernel: (kernel[0].count, kernel[0].memory_mib), reverse=True):
            need = {resource: amount for resource, amount in self.needs(request).items() if amount}
            for room, space in zip(self.rooms, spaces, strict=True):
                if not left:
                    break
                if room.device_memory_mib and request.memory_mib > room.device_memory_mib:
                    continue
                taken = min([left, *(space.get(resource, 0) // amount for resource, amount in need.items())])
                for resource, amount in need.items():
                    space[resource] -= taken * amount
                left -= taken
            if left:
                missing.append((request, left))
        return missing

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



__all__ = ["NodeRoom", "Nodes"]
