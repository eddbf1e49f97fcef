"""The Orion Controller's HTTP API, as Orion's own `orion-check` reads it: how many vGPUs, how many free.

Remote vGPUs (scenario 3) are taken from the controller when CUDA starts in a kernel, not by
Kubernetes, so the pool view and the launch's capacity check ask the controller:
``GET /info?data_version&api_version`` answers ``data_version=0.1,api_version=0.1``; then, with
those versions as headers, ``GET /devices?res=nvidia_cuda`` ends in ``=<total vGPUs>`` and
``GET /devices?res=nvidia_cuda&used=true`` in ``=<free vGPUs>`` (what orion-check prints as free).
The format is undocumented beyond that script, so every answer is parsed defensively: anything
else is a :class:`ControllerError` that names the controller and what it said.

Standard library only (the CLI's check and the server both use it; no server imports).
"""

from __future__ import annotations

import asyncio
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from .allocation import REMOTE_NOTE
from .pool import NodePool, PoolSnapshot, ResourceCount

ORION_RESOURCE = "virtaitech.com/gpu"
_VERSION_RE = re.compile(r"^\s*data_version\s*=\s*([\w.]+)\s*,\s*api_version\s*=\s*([\w.]+)\s*$")
_COUNT_RE = re.compile(r"=\s*(\d+)\s*$")
_MAX_ANSWER = 64 * 1024


class ControllerError(Exception):
    """The controller did not answer, or answered something this client cannot read."""


@dataclass(frozen=True)
class ControllerCounts:
    address: str
    total: int
    free: int
    data_version: str = ""
    api_version: str = ""

    @property
    def used(self) -> int:
        return max(self.total - self.free, 0)

    def describe(self) -> str:
        return f"{self.free} of {self.total} vGPUs free"


def _shown(text: str) -> str:
    text = text.strip().replace("\n", " ")
    return repr(text[:80] + ("…" if len(text) > 80 else ""))


class OrionControllerClient:
    """Reads one controller (``host:port``, as in ORION_CONTROLLER); ``timeout`` per request, in seconds."""

    def __init__(self, address: str, timeout: float = 2.0):
        self.address = address
        self.timeout = timeout
        self.base = address if "://" in address else f"http://{address}"

    def _get(self, path: str, headers: dict[str, str] | None = None) -> str:
        request = urllib.request.Request(self.base.rstrip("/") + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:  # noqa: S310 - an http URL we build
                return answer.read(_MAX_ANSWER).decode("utf-8", "replace")
        except urllib.error.HTTPError as err:
            raise ControllerError(f"Orion controller {self.address} answered {path} with HTTP {err.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise ControllerError(f"Orion controller {self.address} does not answer ({reason})") from None

    def _count(self, path: str, headers: dict[str, str]) -> int:
        text = self._get(path, headers)
        match = _COUNT_RE.search(text.strip())
        if not match:
            raise ControllerError(f"Orion controller {self.address} answered {path} with {_shown(text)}, "
                                  "not '...=<number>'")
        return int(match.group(1))

    def counts(self) -> ControllerCounts:
        info = self._get("/info?data_version&api_version")
        match = _VERSION_RE.match(info)
        if not match:
            raise ControllerError(f"Orion controller {self.address} answered /info with {_shown(info)}, not "
                                  "'data_version=...,api_version=...'")
        headers = {"data_version": match.group(1), "api_version": match.group(2)}
        total = self._count("/devices?res=nvidia_cuda", headers)
        free = self._count("/devices?res=nvidia_cuda&used=true", headers)
        if free > total:
            raise ControllerError(f"Orion controller {self.address} says {free} vGPUs are free of {total}")
        return ControllerCounts(self.address, total, free, *headers.values())

    async def counts_async(self) -> ControllerCounts:
        return await asyncio.to_thread(self.counts)


def controller_pool(address: str, counts: ControllerCounts | None, error: str = "") -> PoolSnapshot:
    """The pool as the controller sees it: one row for the whole remote pool (it picks the server)."""
    if counts is None:
        return PoolSnapshot(nodes=[], visible=False, source="orion-controller",
                            warnings=[error or f"Orion controller {address} has not been read yet"])
    row = NodePool(name=f"Orion controller {address} ({REMOTE_NOTE})",
                   resources={ORION_RESOURCE: ResourceCount(allocatable=counts.total, allocated=counts.used)})
    return PoolSnapshot(nodes=[row], source="orion-controller")


class ControllerPool:
    """The controller's counts, read at most once per ``ttl`` seconds (the pool view is asked often)."""

    def __init__(self, address: str, ttl: float = 1.0, timeout: float = 2.0):
        self.client = OrionControllerClient(address, timeout)
        self.ttl = ttl
        self._snapshot = controller_pool(address, None)
        self._read_at = float("-inf")

    async def read(self, fresh: bool = False) -> PoolSnapshot:
        if fresh or time.monotonic() - self._read_at >= self.ttl:
            try:
                self._snapshot = controller_pool(self.client.address, await self.client.counts_async())
            except ControllerError as err:
                self._snapshot = controller_pool(self.client.address, None, str(err))
            self._read_at = time.monotonic()
        return self._snapshot

    def last(self) -> PoolSnapshot:
        return self._snapshot


def remote_shortage(pool: PoolSnapshot, address: str, asked: int) -> str:
    """Why a remote-vGPU kernel cannot start now, with the controller's own numbers."""
    plural = "s" if asked != 1 else ""
    if not pool.visible:
        why = pool.warnings[0] if pool.warnings else f"Orion controller {address} does not answer"
        return f"{why}: a kernel with remote vGPUs needs it. Ask the operator to check the Orion stack."
    total = pool.totals().get(ORION_RESOURCE, ResourceCount())
    return (f"Orion controller {address} has {total.free} of {total.allocatable} vGPUs free; this kernel needs "
            f"{asked} vGPU{plural}. Stop a kernel you no longer use, ask for fewer, or try again later.")
