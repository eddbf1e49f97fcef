"""The DRA pool: devices per node from ResourceSlices, less what the visible claims hold.

:func:`dra_pool` gives each node its devices with their free memory and cores
(``NodePool.devices``) and totals under ``dra/devices``, ``dra/memory`` (MiB) and ``dra/cores``;
:func:`can_fit` estimates whether a request would fit (CEL selectors are the scheduler's).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from ..pool import DevicePool, NodePool, PoolSnapshot, ResourceCount
from ..vgpu import VGPURequest
from .dra import (
    DRA_CORES,
    DRA_DEVICES,
    DRA_MEMORY,
    device_kind,
    flavor_list,
    granted_devices,
    quantity_int,
    quantity_mib,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..backends import Backend, DraFlavor


def _attributes(device: Mapping) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in (device.get("attributes") or {}).items():
        short = key.rsplit("/", 1)[-1]
        for kind in ("string", "int", "bool", "version"):
            if kind in (value or {}):
                out[short] = value[kind]
                break
    return out


def _capacity(device: Mapping, name: str) -> object | None:
    for key, value in (device.get("capacity") or {}).items():
        if key.rsplit("/", 1)[-1] == name:
            return (value or {}).get("value")
    return None


def dra_pool(resource_slices: Iterable[Mapping] | None, claims: Iterable[Mapping] = ()) -> PoolSnapshot:
    """The pool from ResourceSlices and allocated claims: per node its devices with free memory/cores.

    Only the claims passed are subtracted (a server sees its namespace's claims): devices used from
    other namespaces look free here, so it is an upper bound. ``resource_slices=None`` (no RBAC to
    read them) gives an invisible pool.
    """
    if resource_slices is None:
        return PoolSnapshot(nodes=[], visible=False)
    slices = list(resource_slices)
    newest: dict[tuple[str, str], int] = {}
    for s in slices:
        spec = s.get("spec") or {}
        key = (spec.get("driver", ""), (spec.get("pool") or {}).get("name", ""))
        newest[key] = max(newest.get(key, 0), int((spec.get("pool") or {}).get("generation") or 0))
    nodes: dict[str, NodePool] = {}
    devices: dict[tuple[str, str, str], DevicePool] = {}
    for s in slices:
        spec = s.get("spec") or {}
        driver, pool_name = spec.get("driver", ""), (spec.get("pool") or {}).get("name", "")
        if int((spec.get("pool") or {}).get("generation") or 0) < newest[(driver, pool_name)]:
            continue
        node_name = spec.get("nodeName") or ("(all nodes)" if spec.get("allNodes") else pool_name)
        node = nodes.setdefault(node_name, NodePool(name=node_name))
        for raw in spec.get("devices") or []:
            memory = _capacity(raw, "memory")
            cores = _capacity(raw, "cores")
            device = DevicePool(
                name=raw.get("name", ""), driver=driver, pool=pool_name,
                shared=bool(raw.get("allowMultipleAllocations")),
                memory_mib=quantity_mib(memory) if memory is not None else 0,
                cores=quantity_int(cores) if cores is not None else None,
                attributes=_attributes(raw),
            )
            device.memory_free_mib, device.cores_free = device.memory_mib, device.cores
            node.devices.append(device)
            devices[(driver, pool_name, device.name)] = device
    for claim in claims:
        for g in granted_devices(claim):
            device = devices.get((g["driver"], g["pool"], g["device"]))
            if device is None:
                continue
            device.allocations += 1
            if device.shared:
                if g["memory_mib"] is not None:
                    device.memory_free_mib = max(device.memory_free_mib - g["memory_mib"], 0)
                if g["cores"] is not None and device.cores_free is not None:
                    device.cores_free = max(device.cores_free - g["cores"], 0)
            else:
                device.memory_free_mib, device.cores_free = 0, (0 if device.cores is not None else None)
    for node in nodes.values():
        node.devices.sort(key=lambda d: (d.driver, d.pool, d.name))
        node.resources[DRA_DEVICES] = ResourceCount(
            allocatable=len(node.devices), allocated=sum(1 for d in node.devices if d.allocations))
        node.resources[DRA_MEMORY] = ResourceCount(
            allocatable=sum(d.memory_mib for d in node.devices),
            allocated=sum(d.memory_mib - d.memory_free_mib for d in node.devices))
        if any(d.cores is not None for d in node.devices):
            node.resources[DRA_CORES] = ResourceCount(
                allocatable=sum(d.cores or 0 for d in node.devices),
                allocated=sum((d.cores or 0) - (d.cores_free or 0) for d in node.devices))
    return PoolSnapshot(nodes=sorted(nodes.values(), key=lambda n: n.name), source="dra")


def can_fit(pool: PoolSnapshot, request: VGPURequest, flavors: Backend | Iterable[DraFlavor]) -> bool | None:
    """Whether some node has devices for ``request`` under one of the flavors now (None: not visible).

    An estimate from the pool (device classes' CEL selectors are not evaluated here): a shared flavor
    needs ``count`` shared devices on one node with the memory free; an exclusive one, ``count`` free
    devices of its kind with at least that memory."""
    if request.count == 0:
        return True
    if not pool.visible:
        return None
    for flavor in flavor_list(flavors):
        shared = bool(flavor.capacity)
        kind = "mig" if flavor.device_class.startswith("mig.") else "gpu"
        for node in pool.nodes:
            if shared:
                fits = [d for d in node.devices if d.shared and d.memory_free_mib >= request.memory_mib]
            else:
                fits = [d for d in node.devices if not d.shared and d.allocations == 0
                        and d.memory_mib >= request.memory_mib and device_kind(d) in (kind, "device")]
            if len(fits) >= request.count:
                return True
    return False
