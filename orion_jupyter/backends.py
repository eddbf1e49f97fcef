"""vGPU backends as data: how a request becomes Kubernetes resources, env and annotations.

A site whose device plugin advertises another resource name overrides it in configuration
(``resource_names`` / ``env_names``); no backend is a fork of another.

Two backends ask for GPUs without extended resources: ``dra`` (Dynamic Resource Allocation: a
ResourceClaimTemplate per flavor, see ``k8s/dra.py``) and ``kai`` (KAI Scheduler: pod annotations
and a queue label, see ``k8s/kai.py``). Their ``resources()`` is empty; their settings
(``dra_flavors``, ``kai``) are data here too, overridden with ``with_overrides(dra=..., kai=...)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .allocation import REMOTE_BACKEND
from .vgpu import VGPURequest, VGPURequestError

_RESOURCE_NAME_RE = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@dataclass(frozen=True)
class DraFlavor:
    """One way to get a GPU through Dynamic Resource Allocation: a device class, capacity, selectors.

    ``capacity`` maps request fields (``memory`` in MiB per vGPU, ``compute`` in percent) to the
    device's capacity names (HAMi: memory, cores); they become ``capacity.requests``. ``selectors``
    are CEL expressions; ``{memory}`` (a quantity such as 4Gi), ``{memory_mib}`` and ``{compute}``
    in them are replaced by the request's values. ``memory_enforced``: the device (a HAMi slice, a
    MIG instance) caps the kernel's memory; False for a whole GPU, where the memory is informative.
    """

    name: str  # a DNS label: the subrequest name when several flavors make a firstAvailable list
    device_class: str
    capacity: Mapping[str, str] = field(default_factory=dict, hash=False)
    selectors: tuple[str, ...] = ()
    memory_enforced: bool = True

    @classmethod
    def from_config(cls, value: str | Mapping[str, Any] | DraFlavor) -> DraFlavor:
        """A built-in name ('hami', 'mig', 'gpu'), 'mig:<profile>' (e.g. 'mig:1g.10gb'), or a mapping."""
        if isinstance(value, DraFlavor):
            return value
        if isinstance(value, str):
            if value in DRA_FLAVORS:
                return DRA_FLAVORS[value]
            kind, _, profile = value.partition(":")
            if kind == "mig" and profile:
                return mig_profile_flavor(profile)
            raise VGPURequestError(
                "dra", value,
                f'DRA flavor "{value}" is not known; use {", ".join(DRA_FLAVORS)}, mig:<profile> or a mapping',
            )
        if not isinstance(value, Mapping):
            raise VGPURequestError("dra", value, f"DRA flavor {value!r} is not a name or a mapping")
        known = {"name", "device_class", "capacity", "selectors", "memory_enforced"}
        unknown = sorted(set(value) - known)
        if unknown:
            raise VGPURequestError(
                "dra", unknown[0], f'DRA flavor field "{unknown[0]}" is not known; use {", ".join(sorted(known))}'
            )
        base = DRA_FLAVORS.get(str(value.get("name", "")))
        flavor = cls(
            name=str(value.get("name") or (base.name if base else "")),
            device_class=str(value.get("device_class") or (base.device_class if base else "")),
            capacity=dict(value["capacity"]) if "capacity" in value else dict(base.capacity if base else {}),
            selectors=tuple(value["selectors"]) if "selectors" in value else (base.selectors if base else ()),
            memory_enforced=bool(value.get("memory_enforced", base.memory_enforced if base else True)),
        )
        return flavor.checked()

    def checked(self) -> DraFlavor:
        if not _DNS_LABEL_RE.match(self.name) or len(self.name) > 63:
            raise VGPURequestError(
                "dra", self.name, f'DRA flavor name "{self.name}" is not a DNS label, like hami or mig')
        if not _DNS_SUBDOMAIN_RE.match(self.device_class) or len(self.device_class) > 253:
            raise VGPURequestError(
                "dra", self.device_class,
                f'device class "{self.device_class}" is not a valid DeviceClass name, like gpu.nvidia.com',
            )
        for key, capacity in self.capacity.items():
            if key not in ("memory", "compute") or not capacity:
                raise VGPURequestError(
                    "dra", key, f'DRA capacity key "{key}" is not known; map memory and compute to capacity names'
                )
        return self


def mig_profile_flavor(profile: str) -> DraFlavor:
    """A MIG instance of one profile (NVIDIA DRA driver), e.g. '1g.10gb'."""
    name = re.sub(r"[^a-z0-9]+", "-", f"mig-{profile.lower()}").strip("-")[:63]
    return DraFlavor(
        name=name, device_class="mig.nvidia.com",
        selectors=(f"device.attributes['gpu.nvidia.com'].profile == '{profile}'",),
    ).checked()


DRA_FLAVORS: dict[str, DraFlavor] = {
    # HAMi's DRA driver: a share of one GPU with consumable memory and cores.
    "hami": DraFlavor("hami", "hami-core-gpu.project-hami.io", capacity={"memory": "memory", "compute": "cores"}),
    # NVIDIA's DRA driver: a MIG instance with at least the memory asked for.
    "mig": DraFlavor("mig", "mig.nvidia.com",
                     selectors=("device.capacity['gpu.nvidia.com'].memory.compareTo(quantity('{memory}')) >= 0",)),
    # NVIDIA's DRA driver: a whole GPU with at least that memory (not capped: memory is informative).
    "gpu": DraFlavor("gpu", "gpu.nvidia.com", memory_enforced=False,
                     selectors=("device.capacity['gpu.nvidia.com'].memory.compareTo(quantity('{memory}')) >= 0",)),
}


@dataclass(frozen=True)
class KaiSettings:
    """KAI Scheduler: which annotation carries the share, the queue label, and memory isolation.

    ``request``: ``gpu-memory`` (MiB per vGPU) or ``gpu-fraction`` (memory / ``device_memory_mib``,
    or the compute share when one is asked for). ``hami_core``: KAI's HAMi-core binder plugin
    isolates memory (KAI >= 0.17); otherwise KAI enforces no memory limit.
    """

    queue_label: str = "kai.scheduler/queue"
    default_queue: str = ""  # the queue of a kernel without a course ("" -> KAI's own default)
    request: str = "gpu-memory"
    device_memory_mib: int | None = None
    priority_class: str | None = None  # e.g. "build": interactive, non-preemptible, in quota only
    hami_core: bool = False

    @classmethod
    def from_config(cls, value: Mapping[str, Any] | KaiSettings, base: KaiSettings | None = None) -> KaiSettings:
        if isinstance(value, KaiSettings):
            return value
        known = {"queue_label", "default_queue", "request", "device_memory_mib", "priority_class", "hami_core"}
        unknown = sorted(set(value) - known)
        if unknown:
            raise VGPURequestError(
                "kai", unknown[0], f'KAI setting "{unknown[0]}" is not known; use {", ".join(sorted(known))}'
            )
        values = dict(value)
        if values.get("device_memory_mib") is not None:
            values["device_memory_mib"] = int(values["device_memory_mib"])
        if "hami_core" in values:
            values["hami_core"] = bool(values["hami_core"])
        settings = replace(base or cls(), **values)
        if settings.request not in ("gpu-memory", "gpu-fraction"):
            raise VGPURequestError(
                "kai", settings.request,
                f'KAI request "{settings.request}" is not known; use gpu-memory or gpu-fraction',
            )
        return settings


@dataclass(frozen=True)
class OrionSettings:
    """Orion's mode. ``local``: the device plugin's virtaitech.com/gpu on GPU nodes (scenario 1).
    ``remote`` (scenario 3): the kernel pod asks Kubernetes for no GPU and may run on any node
    (``node_selector``: e.g. the CPU nodes); the Orion client in it takes its vGPUs from the
    ``controller`` (host:port) when CUDA starts and frees them when the process exits."""

    mode: str = "local"
    controller: str = ""
    node_selector: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def remote(self) -> bool:
        return self.mode == "remote"

    @classmethod
    def from_config(cls, value: Mapping[str, Any] | OrionSettings) -> OrionSettings:
        if isinstance(value, OrionSettings):
            return value
        known = {"mode", "controller", "node_selector"}
        unknown = sorted(set(value) - known)
        if unknown:
            raise VGPURequestError(
                "orion", unknown[0], f'Orion setting "{unknown[0]}" is not known; use {", ".join(sorted(known))}')
        settings = cls(mode=str(value.get("mode", "local")), controller=str(value.get("controller") or ""),
                       node_selector=dict(value.get("node_selector") or {}))
        if settings.mode not in ("local", "remote"):
            raise VGPURequestError("orion", settings.mode,
                                   f'Orion mode "{settings.mode}" is not known; use local or remote')
        if settings.remote and not re.match(r"^[A-Za-z0-9.\-\[\]:]+:\d+$", settings.controller):
            raise VGPURequestError(
                "orion", settings.controller or None,
                f'Orion remote mode needs the controller\'s address as host:port, not "{settings.controller}"; set '
                '{"mode": "remote", "controller": "orion-controller.orion-system.svc.cluster.local:9123"}')
        return settings


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    count_resource: str
    memory_resource: str | None = None  # MiB per vGPU, as an extended resource (HAMi)
    compute_resource: str | None = None  # percent of one GPU, as an extended resource (HAMi)
    count_env: str | None = None
    memory_env: str | None = None
    compute_env: str | None = None
    controller_env: str | None = None
    memory_enforced: bool = True  # False: the memory is informative (whole GPUs, MIG, time-slicing)
    supports_host_ipc: bool = False
    dra_flavors: tuple[DraFlavor, ...] = ()  # dra: ResourceClaimTemplates instead of extended resources
    kai: KaiSettings | None = None  # kai: KAI Scheduler annotations and queue label instead
    scheduler_name: str | None = None  # the pod's schedulerName the backend needs (kai-scheduler)
    orion: OrionSettings | None = None  # orion: local (device plugin) or remote (the controller, scenario 3)

    @property
    def remote(self) -> bool:
        """Orion's remote mode: no extended resource; the controller hands out vGPUs when CUDA starts."""
        return self.orion is not None and self.orion.remote

    @property
    def label(self) -> str:
        """The backend as kernels, pods and views show it (orion-remote in Orion's remote mode)."""
        return REMOTE_BACKEND if self.remote else self.name

    @property
    def uses_claims(self) -> bool:
        """The GPU comes from a ResourceClaim (k8s/dra.py), not from extended resources."""
        return bool(self.dra_flavors)

    @property
    def counted_on_nodes(self) -> bool:
        """Its kernels hold extended resources that each node counts (not dra, kai, Orion's remote mode)."""
        return not (self.dra_flavors or self.kai is not None or self.remote)

    def resources(self, request: VGPURequest) -> dict[str, int]:
        """Extended-resource limits (requests must equal them); empty for a CPU-only kernel,
        and for the dra and kai backends (a claim, or annotations, carry the request)."""
        if request.count == 0 or not self.counted_on_nodes:
            return {}
        limits = {self.count_resource: request.count}
        if self.memory_resource:
            limits[self.memory_resource] = request.memory_mib
        if self.compute_resource and request.compute_percent is not None:
            limits[self.compute_resource] = request.compute_percent
        return limits

    def env(self, request: VGPURequest, controller: str | None = None) -> dict[str, str]:
        if request.count == 0:
            return {}
        env = {}
        if self.count_env:
            env[self.count_env] = str(request.count)
        if self.memory_env:
            env[self.memory_env] = str(request.memory_mib)
        compute = request.compute_percent
        if compute is None and self.remote:
            compute = 100  # Orion needs ORION_RATIO for a remote vGPU: a whole GPU's compute unless asked
        if self.compute_env and compute is not None:
            env[self.compute_env] = str(compute)
        if self.remote:  # the controller whose free vGPUs the launch counted
            controller = self.orion.controller
        if self.controller_env and controller:
            env[self.controller_env] = controller
        return env

    def with_overrides(
        self, resource_names: Mapping[str, str] | None = None, env_names: Mapping[str, str] | None = None,
        *, dra: Mapping[str, Any] | None = None, kai: Mapping[str, Any] | None = None,
        orion: Mapping[str, Any] | None = None,
    ) -> Backend:
        """Site configuration: resource and env names; ``dra={'flavors': ['mig', 'hami', {...}]}``
        (in order of preference: several make a firstAvailable list); ``kai={...}`` (KaiSettings);
        ``orion={'mode': 'remote', 'controller': 'host:9123'}`` (OrionSettings)."""
        changes: dict[str, Any] = {}
        if orion:
            if self.orion is None:
                raise VGPURequestError(
                    "orion", self.name, f'backend "{self.name}" takes no Orion settings; use backend orion')
            changes["orion"] = OrionSettings.from_config(orion)
            changes["supports_host_ipc"] = not changes["orion"].remote  # a remote server shares no memory
        if dra:
            if not self.dra_flavors:
                raise VGPURequestError(
                    "dra", self.name, f'backend "{self.name}" takes no DRA settings; use backend dra')
            unknown = sorted(set(dra) - {"flavors"})
            if unknown:
                raise VGPURequestError("dra", unknown[0], f'DRA setting "{unknown[0]}" is not known; use flavors')
            raw = dra.get("flavors") or []
            flavors = tuple(DraFlavor.from_config(f) for f in ([raw] if isinstance(raw, (str, Mapping)) else raw))
            if not flavors:
                raise VGPURequestError("dra", raw, "DRA flavors cannot be empty; use e.g. ['hami'] or ['mig', 'hami']")
            if len({f.name for f in flavors}) != len(flavors):
                raise VGPURequestError("dra", raw, "DRA flavor names must be distinct")
            changes["dra_flavors"] = flavors
            changes["memory_enforced"] = all(f.memory_enforced for f in flavors)
        if kai:
            if self.kai is None:
                raise VGPURequestError(
                    "kai", self.name, f'backend "{self.name}" takes no KAI settings; use backend kai')
            settings = KaiSettings.from_config(kai, self.kai)
            changes["kai"] = settings
            changes["memory_enforced"] = settings.hami_core
        for key, value in (resource_names or {}).items():
            if key not in ("count", "memory", "compute"):
                raise VGPURequestError(
                    "resource_names", key, f'resource_names key "{key}" is not known; use count, memory, compute'
                )
            if value and not _RESOURCE_NAME_RE.match(value):
                raise VGPURequestError(
                    "resource_names",
                    value,
                    f'resource name "{value}" is not a valid Kubernetes resource name; use a name like example.com/gpu',
                )
            changes[f"{key}_resource"] = value or None
        for key, value in (env_names or {}).items():
            if key not in ("count", "memory", "compute", "controller"):
                raise VGPURequestError(
                    "env_names", key, f'env_names key "{key}" is not known; use count, memory, compute, controller'
                )
            changes[f"{key}_env"] = value or None
        if changes.get("count_resource", self.count_resource) is None:
            raise VGPURequestError("resource_names", None, "resource_names count cannot be empty")
        return replace(self, **changes)


BACKENDS: dict[str, Backend] = {
    "orion": Backend(
        name="orion",
        description="Orion vGPU (VirtAI Tech): virtaitech.com/gpu with ORION_GMEM per vGPU",
        count_resource="virtaitech.com/gpu",
        count_env="ORION_VGPU",
        memory_env="ORION_GMEM",
        compute_env="ORION_RATIO",
        controller_env="ORION_CONTROLLER",
        supports_host_ipc=True,
        orion=OrionSettings(),
    ),
    "hami": Backend(
        name="hami",
        description="HAMi: nvidia.com/gpu with nvidia.com/gpumem (MiB) and nvidia.com/gpucores (%)",
        count_resource="nvidia.com/gpu",
        memory_resource="nvidia.com/gpumem",
        compute_resource="nvidia.com/gpucores",
    ),
    "nvidia": Backend(
        name="nvidia",
        description="NVIDIA device plugin: whole GPUs, MIG (nvidia.com/mig-1g.10gb) or time-slicing",
        count_resource="nvidia.com/gpu",
        memory_enforced=False,
    ),
    "dra": Backend(
        name="dra",
        description="Dynamic Resource Allocation (resource.k8s.io/v1): a ResourceClaimTemplate per flavor "
                    "(HAMi slice, MIG, whole GPU, or a firstAvailable list of them)",
        count_resource="dra/devices",  # pool-only names (k8s/dra.py dra_pool); pods get claims
        memory_resource=None,
        dra_flavors=(DRA_FLAVORS["hami"],),
    ),
    "kai": Backend(
        name="kai",
        description="KAI Scheduler: gpu-memory (MiB) or gpu-fraction annotations, a queue per course; "
                    "memory cap: not enforced (unless HAMi-core isolation is configured)",
        count_resource="nvidia.com/gpu",
        memory_enforced=False,
        kai=KaiSettings(),
        scheduler_name="kai-scheduler",
    ),
}


def get_backend(
    name: str, resource_names: Mapping[str, str] | None = None, env_names: Mapping[str, str] | None = None,
    *, dra: Mapping[str, Any] | None = None, kai: Mapping[str, Any] | None = None,
    orion: Mapping[str, Any] | None = None,
) -> Backend:
    try:
        backend = BACKENDS[name]
    except (KeyError, TypeError):
        raise VGPURequestError(
            "backend", name, f'vGPU backend "{name}" is not known; use one of {", ".join(BACKENDS)}'
        ) from None
    if resource_names or env_names or dra or kai or orion:
        return backend.with_overrides(resource_names, env_names, dra=dra, kai=kai, orion=orion)
    return backend
