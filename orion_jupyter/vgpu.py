"""The vGPU request a kernel makes: how many vGPUs, how much memory each, what compute share.

Pure Python with no server-side imports, so kernel images can carry it. Every rejection raises
:class:`VGPURequestError`, whose message names the field, the value given and what is allowed.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

MIB = 1024 * 1024
# No GPU has a terabyte of memory per slice; anything larger is a typo.
MAX_MEMORY_MIB = 1024 * 1024
MAX_VGPUS = 64
# What a kernel asks for when its spec says nothing (the provisioner's and the request's defaults).
DEFAULT_VGPUS = 1
DEFAULT_MEMORY = "4Gi"
DEFAULT_MEMORY_MIB = 4096

_UNITS_TO_BYTES = {
    "": MIB,  # a plain number is MiB, as ORION_GMEM is
    "mi": MIB,
    "mib": MIB,
    "gi": 1024 * MIB,
    "gib": 1024 * MIB,
    "ti": 1024 * 1024 * MIB,
    "tib": 1024 * 1024 * MIB,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
}
_SIZE_RE = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z]*)\s*$")
_DNS1123_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SIZE_HINT = "use a number of MiB or a value like 4Gi"


class VGPURequestError(ValueError):
    """A vGPU request, or one of the names around it, that cannot be served as given."""

    def __init__(self, field_name: str, value: Any, message: str):
        super().__init__(message)
        self.field = field_name
        self.value = value


def short(value: Any) -> Any:
    """A value fit to quote back: huge numbers and texts are cut."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**18 else None
    if text is not None:
        return f"{text[:12]}... ({len(text)} digits)"
    return value if not isinstance(value, str) or len(value) <= 80 else value[:77] + "..."


def _shown(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def format_mib(mib: int) -> str:
    """4096 -> '4 GiB', 1536 -> '1.5 GiB', 512 -> '512 MiB'."""
    if mib >= 1024:
        gib = mib / 1024
        return f"{gib:g} GiB" if round(gib, 2) == gib else f"{mib} MiB"
    return f"{mib} MiB"


def parse_memory(value: Any, label: str = "vGPU memory", field_name: str = "memory") -> int:
    """A memory size as whole MiB: 4096, '4096Mi', '4Gi', '4G', '4 GiB', '0.5Gi'."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        kind = type(value).__name__
        raise VGPURequestError(field_name, value, f"{label} {_shown(value)} is a {kind}; {_SIZE_HINT}")
    if isinstance(value, str):
        if not value.strip():
            raise VGPURequestError(field_name, value, f'{label} "{value}" is empty; {_SIZE_HINT}')
        match = _SIZE_RE.match(value)
        if not match:
            raise VGPURequestError(field_name, value, f'{label} "{value}" is not a size; {_SIZE_HINT}')
        number_text, unit = match.groups()
        if unit.lower() not in _UNITS_TO_BYTES:
            raise VGPURequestError(
                field_name,
                value,
                f'{label} "{value}" has an unknown unit "{unit}"; '
                "use Mi, Gi, Ti, M, G or T (a plain number is MiB)",
            )
        number = float(number_text)
        bytes_per_unit = _UNITS_TO_BYTES[unit.lower()]
    elif isinstance(value, int) and abs(value) > 10**18:  # beyond any float's precision, and any GPU
        raise VGPURequestError(field_name, short(value), f"{label} {_shown(short(value))} is more than any GPU has; "
                                                          "use a value like 4Gi")
    else:
        number, bytes_per_unit = float(value), MIB
    if math.isnan(number) or math.isinf(number):
        raise VGPURequestError(field_name, value, f"{label} {_shown(value)} is not a size; {_SIZE_HINT}")
    if number < 0:
        raise VGPURequestError(
            field_name, value, f"{label} {_shown(value)} is negative; use a positive size like 4Gi"
        )
    total_bytes = number * bytes_per_unit
    if total_bytes > MAX_MEMORY_MIB * MIB:
        raise VGPURequestError(
            field_name,
            value,
            f"{label} {_shown(value)} is more than any GPU has (the most is "
            f"{format_mib(MAX_MEMORY_MIB)}); use a value like 4Gi",
        )
    mib = int(total_bytes // MIB)
    if total_bytes > 0 and mib == 0:
        raise VGPURequestError(
            field_name, value, f"{label} {_shown(value)} is less than 1 MiB; use a value like 512Mi or 4Gi"
        )
    return mib


def parse_count(value: Any) -> int:
    """A whole, non-negative number of vGPUs."""
    what = "vGPU count"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise VGPURequestError(
            "vgpus", value, f"{what} {_shown(value)} is not a number; use 0 for CPU only, or 1, 2, ..."
        )
    number: float
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise VGPURequestError(
                "vgpus", value, f'{what} "{value}" is not a number; use 0 for CPU only, or 1, 2, ...'
            ) from None
    else:
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            number = math.inf if value > 0 else -math.inf
    if math.isnan(number):
        raise VGPURequestError(
            "vgpus", value, f"{what} {_shown(value)} is not a number; use 0 for CPU only, or 1, 2, ..."
        )
    if math.isinf(number) and number > 0:
        raise VGPURequestError(
            "vgpus", short(value), f"{what} {_shown(short(value))} is more than any node has; use at most {MAX_VGPUS}"
        )
    if math.isinf(number):
        raise VGPURequestError(
            "vgpus", value, f"{what} {_shown(value)} is not a number; use 0 for CPU only, or 1, 2, ..."
        )
    if number < 0:
        raise VGPURequestError(
            "vgpus", value, f"{what} {_shown(value)} is negative; use 0 for CPU only, or 1, 2, ..."
        )
    if number != int(number):
        raise VGPURequestError(
            "vgpus",
            value,
            f"{what} {_shown(value)} is a fraction; vGPUs come whole (1, 2, ...): "
            "for a smaller slice ask for less vGPU memory",
        )
    if number > MAX_VGPUS:
        raise VGPURequestError(
            "vgpus", value, f"{what} {_shown(value)} is more than any node has; use at most {MAX_VGPUS}"
        )
    return int(number)


def parse_compute(value: Any) -> int | None:
    """An optional compute share in percent of one physical GPU, 1-100."""
    if value is None or value == "":
        return None
    what = "vGPU compute share"
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError
        number = float(str(value).strip().rstrip("%")) if not isinstance(value, int) or abs(value) < 10**6 else 1e9
    except ValueError:
        raise VGPURequestError(
            "compute", value, f"{what} {_shown(value)} is not a number; use a percent from 1 to 100"
        ) from None
    if math.isnan(number) or math.isinf(number) or number != int(number) or not 1 <= number <= 100:
        raise VGPURequestError(
            "compute", short(value),
            f"{what} {_shown(short(value))} is out of range; use a whole percent from 1 to 100",
        )
    return int(number)


def check_k8s_name(field_name: str, value: Any) -> str:
    """A DNS-1123 label (namespace, object name): lower-case, digits and '-', at most 63."""
    if not isinstance(value, str) or len(value) > 63 or not _DNS1123_LABEL_RE.match(value):
        raise VGPURequestError(
            field_name,
            value,
            f"{field_name} {_shown(value)} is not a valid Kubernetes name; use at most 63 lower-case "
            "letters, digits and '-', starting and ending with a letter or digit",
        )
    return value


@dataclass(frozen=True)
class VGPURequest:
    """vGPUs for one kernel; memory is per vGPU, in whole MiB."""

    count: int = DEFAULT_VGPUS
    memory_mib: int = DEFAULT_MEMORY_MIB
    compute_percent: int | None = None

    @classmethod
    def parse(cls, count: Any = 1, memory: Any = None, compute: Any = None) -> VGPURequest:
        vgpus = parse_count(count)
        compute_percent = parse_compute(compute)
        if vgpus == 0:
            # A CPU-only kernel holds no GPU memory, whatever a form sent along.
            return cls(0, 0, None)
        if memory is None:
            raise VGPURequestError(
                "memory", memory, f"vGPU memory is missing for {vgpus} vGPU(s); {_SIZE_HINT}"
            )
        memory_mib = parse_memory(memory)
        if memory_mib == 0:
            raise VGPURequestError(
                "memory",
                memory,
                f"vGPU memory {_shown(memory)} is zero, but {plural_vgpus(vgpus)} "
                f"{'was' if vgpus == 1 else 'were'} asked for; "
                "give each vGPU some memory, like 4Gi (or ask for 0 vGPUs for CPU only)",
            )
        return cls(vgpus, memory_mib, compute_percent)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], default: VGPURequest | None = None) -> VGPURequest:
        """From {'count'|'vgpus', 'memory', 'compute'}; missing keys come from ``default``."""
        if not isinstance(data, Mapping):
            raise VGPURequestError(
                "vgpu", data, f"vGPU request {_shown(data)} is not a mapping; use {{'vgpus': 1, 'memory': '4Gi'}}"
            )
        known = {"count", "vgpus", "memory", "compute", "compute_percent"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise VGPURequestError(
                unknown[0], data[unknown[0]],
                f'vGPU request field "{unknown[0]}" is not known; use vgpus, memory, compute',
            )
        base = default or cls()
        count = data.get("vgpus", data.get("count", base.count))
        memory = data.get("memory", f"{base.memory_mib}Mi" if base.memory_mib else None)
        compute = data.get("compute", data.get("compute_percent", base.compute_percent))
        return cls.parse(count, memory, compute)

    @property
    def total_memory_mib(self) -> int:
        return self.count * self.memory_mib

    def describe(self) -> str:
        """'1 vGPU · 4 GiB', '2 vGPUs × 8 GiB', 'CPU only'."""
        return format_allocation(self.count, self.memory_mib, self.compute_percent)

    def as_dict(self) -> dict[str, Any]:
        return {"vgpus": self.count, "memory_mib": self.memory_mib, "compute_percent": self.compute_percent}


def format_allocation(vgpus: int | None, memory_mib: int | None, compute_percent: int | None = None) -> str:
    """The one way an allocation is written for people: '1 vGPU · 4 GiB', '2 vGPUs × 8 GiB', 'CPU only'.

    The CLI, the widget and the server's ``label`` fields (shown as is by the labextension) use it.
    """
    if not vgpus:
        return "CPU only"
    memory = format_mib(memory_mib or 0)
    text = f"1 vGPU · {memory}" if vgpus == 1 else f"{vgpus} vGPUs × {memory}"
    if compute_percent is not None:
        text += f" · {compute_percent}% compute"
    return text


NO_BREAK_SPACE = "\u00a0"
# A space with a word on both sides (not one beside a " · " or " × " between phrases).
_INSIDE_PHRASE = re.compile(r"(?<=[^\s·×]) (?=[^\s·×])")


def unbroken_phrases(text: str) -> str:
    """'Python 3 · 1 vGPU · 4 GiB' with no-break spaces inside 'Python 3', '1 vGPU' and '4 GiB': a
    launcher tile's label then wraps only between phrases, never as '1 vGPU · 4' / 'GiB'."""
    return _INSIDE_PHRASE.sub(NO_BREAK_SPACE, text)


def plural_vgpus(count: int) -> str:
    return "1 vGPU" if count == 1 else f"{count} vGPUs"


@dataclass(frozen=True)
class VGPUPolicy:
    """What one kernel may ask for on this server; 0 / empty means no limit."""

    max_vgpus: int = 0
    max_memory_mib: int = 0
    allowed_images: tuple[str, ...] = field(default_factory=tuple)
    max_vgpus_per_user: int = 0  # across all of one user's kernels at once

    def check(self, request: VGPURequest, image: str | None = None) -> None:
        if self.max_vgpus and request.count > self.max_vgpus:
            raise VGPURequestError(
                "vgpus",
                request.count,
                f"vGPU count {request.count} is over this server's limit of {self.max_vgpus} per kernel; "
                f"ask for {self.max_vgpus} or fewer",
            )
        if self.max_memory_mib and request.total_memory_mib > self.max_memory_mib:
            asked = format_mib(request.total_memory_mib)
            if request.count > 1:
                asked = f"{request.count} × {format_mib(request.memory_mib)} = {asked}"
            raise VGPURequestError(
                "memory",
                request.memory_mib,
                f"vGPU memory {asked} is over this server's limit of {format_mib(self.max_memory_mib)} "
                "per kernel; ask for less",
            )
        if image is not None and self.allowed_images and not _matches_any(image, self.allowed_images):
            raise VGPURequestError(
                "image",
                image,
                f'kernel image "{image}" is not allowed on this server; allowed: {", ".join(self.allowed_images)}',
            )


def _matches_any(image: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(image, pattern) for pattern in patterns)


def usage_fields(request: Mapping[str, Any], reading: Mapping[str, Any] | None) -> dict[str, Any]:
    """A kernel's vGPU memory in use against what it was granted (``request``: vgpus, memory_mib per vGPU);
    ``waste_bytes`` is what is granted and unused (None while nothing was read)."""
    granted = (request.get("vgpus") or 0) * (request.get("memory_mib") or 0) * 1024 * 1024
    used = (reading or {}).get("memory_used")
    used = used if isinstance(used, int) and not isinstance(used, bool) else None
    return {"memory_used": used, "memory_source": (reading or {}).get("memory_source"),
            "memory_sampled_at": (reading or {}).get("memory_sampled_at"), "memory_granted": granted,
            "waste_bytes": max(granted - used, 0) if used is not None else None}
