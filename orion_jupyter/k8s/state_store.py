"""State that outlives the broker, in ConfigMaps of the class namespace (no new database).

Each section (``budgets``, ``fairshare``, ``queue``, ``bookings``, ``parks``) has its own head ConfigMap
``{name}-{section}``, so sections never share the API server's 1 MiB: its JSON, gzipped, in ``binaryData``.
A section whose gzip does not fit one ConfigMap goes to numbered parts ``{name}-{section}-{generation}-{i}``,
created first under a fresh random generation; the head then names the generation, the part count and
their digest. Every head write is a replace with the resourceVersion last read, so a reader that follows
the head never assembles parts of two writes (a part gone means a newer head: it reads that one), and
the parts of the head a write replaced are deleted after it.

Two writers of one section (an old broker still running): the stale one's replace is refused; it reads
the newer head, warns, and writes its own state over it, deleting the other's parts. After 3 conflicting
writes in a row it gives up that save (warning), the newer state left whole. A write that fails deletes
the parts it made and leaves the last good head and its parts as they were (one whose answer was lost
but which the API server took is found by reading the head again).

The first layout kept every section as a JSON key of the one ConfigMap ``name``: a section without a head
is read from there, and its key removed once its head is written (the ConfigMap too once empty).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import gzip
import hashlib
import json
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from kubernetes.client.exceptions import ApiException

from .cluster import KubeCluster

log = logging.getLogger("orion_jupyter.k8s")
PART_BYTES = 768 * 1024  # gzip bytes per ConfigMap: with base64's 4/3 the request stays near the API's 1 MiB
MAX_PARTS = 16  # 12 MiB of gzip (about 100 MB of JSON): beyond it a section is not saved (warned)
TRIES = 3  # conflicting writes (or reads racing a writer) in a row before giving up
FORMAT = "gzip-json"


class StateUnreadable(ValueError):
    """A head and its parts do not make one saved state (a part missing, of another write, or damaged)."""


@dataclass(frozen=True)
class Head:
    """What a section's head ConfigMap said when last read or written (``version`` None: no head yet)."""

    version: str | None
    generation: str = ""
    parts: int = 0


def head_name(name: str, section: str) -> str:
    return f"{name}-{section}"


def part_name(name: str, section: str, generation: str, index: int) -> str:
    return f"{name}-{section}-{generation}-{index}"


def part_count(data: dict) -> int:
    """How many parts a head's ``data`` names; raises StateUnreadable."""
    try:
        count = int(data.get("parts", "0"))
    except (TypeError, ValueError):
        raise StateUnreadable(f"its part count {data.get('parts')!r} is not a number") from None
    if not 0 <= count <= MAX_PARTS:
        raise StateUnreadable(f"its part count {count} is not between 0 and {MAX_PARTS}")
    return count


def part_names(name: str, section: str, head: dict) -> list[str]:
    """The parts ``head`` (a head ConfigMap as read) names, in order (none: the state is in the head)."""
    data = head.get("data") or {}
    return [part_name(name, section, str(data.get("generation", "")), i) for i in range(part_count(data))]


def _binary(configmap: dict, key: str) -> bytes:
    try:
        return base64.b64decode((configmap.get("binaryData") or {})[key], validate=True)
    except (KeyError, TypeError, binascii.Error):
        raise StateUnreadable(f"ConfigMap {configmap['metadata']['name']} has no base64 {key!r}") from None


def pack(text: bytes) -> bytes:
    """A section's JSON gzipped (mtime 0: the same state packs to the same bytes); ~25 ms a MB."""
    return gzip.compress(text, compresslevel=6, mtime=0)


def decode(head: dict, parts: Sequence[dict]) -> dict[str, Any] | None:
    """The state a head ConfigMap and its parts (in ``part_names`` order) hold; raises StateUnreadable."""
    data = head.get("data") or {}
    if data.get("format") != FORMAT:
        raise StateUnreadable(f"its format is {data.get('format')!r}, not {FORMAT!r}")
    generation = data.get("generation", "")
    for index, part in enumerate(parts):
        meta = part.get("data") or {}
        if meta.get("generation") != generation or meta.get("index") != str(index):
            raise StateUnreadable(f"part {index} is of generation {meta.get('generation')!r}, not {generation!r}")
    packed = b"".join(_binary(part, "part") for part in parts) if parts else _binary(head, "state")
    if hashlib.sha256(packed).hexdigest() != data.get("sha256"):
        raise StateUnreadable("its parts do not match the head's sha256")
    try:
        value = json.loads(gzip.decompress(packed))
    except (OSError, EOFError, ValueError) as err:
        raise StateUnreadable(f"not gzipped JSON ({err})") from None
    return value if isinstance(value, dict) else None


class ConfigMapStore:
    """``load(section)`` / ``save(section, state)``: each section in its own ConfigMap(s) named after
    ``name``, written with resourceVersion checks; every ConfigMap it creates carries ``labels``."""

    def __init__(self, cluster: KubeCluster, namespace: str, name: str, labels: dict[str, str] | None = None,
                 part_bytes: int = PART_BYTES):
        self.cluster = cluster
        self.namespace = namespace
        self.name = name
        self.labels = dict(labels or {})
        self.part_bytes = part_bytes
        self.heads: dict[str, Head] = {}  # per section, the head last read or written
        self.legacy: set[str] = set()  # sections the first layout's ConfigMap may still hold
        self._legacy_data: dict[str, str] | None = None  # that ConfigMap's data, read once for every section
        self.conflicts = 0
        self._writing: dict[str, asyncio.Lock] = {}

    # -- API calls ------------------------------------------------------------------------------
    async def _get(self, name: str) -> dict | None:
        try:
            return await self.cluster.request(self.cluster.core.read_namespaced_config_map, name, self.namespace)
        except ApiException as err:
            if err.status != 404:
                raise
            return None

    async def _delete(self, name: str, version: str | None = None) -> None:
        """Deleted (404 is fine); with ``version``, only while it is still that write."""
        body = {"preconditions": {"resourceVersion": version}} if version else None
        try:
            await self.cluster.request(self.cluster.core.delete_namespaced_config_map, name, self.namespace,
                                       body=body)
        except ApiException as err:
            if err.status != 404:
                raise

    def _body(self, name: str, data: dict[str, str], binary: bytes, key: str) -> dict:
        return {"apiVersion": "v1", "kind": "ConfigMap", "data": data,
                "binaryData": {key: base64.b64encode(binary).decode()} if binary else {},
                "metadata": {"name": name, "namespace": self.namespace, "labels": self.labels}}

    # -- reading --------------------------------------------------------------------------------
    async def _read_head(self, section: str) -> dict | None:
        found = await self._get(head_name(self.name, section))
        if found is None:
            self.heads[section] = Head(None)
            self.legacy.add(section)
            return None
        data = found.get("data") or {}
        try:
            parts = part_count(data)
        except StateUnreadable:
            parts = 0  # nothing of it to delete after a write over it; load says why it is not read
        self.heads[section] = Head(found["metadata"]["resourceVersion"], str(data.get("generation", "")), parts)
        return found

    async def load(self, section: str) -> dict[str, Any] | None:
        """What was saved under ``section`` (None: nothing, or not readable: warned)."""
        for _ in range(TRIES):
            head = await self._read_head(section)
            if head is None:
                return await self._load_legacy(section)
            try:
                names = part_names(self.name, section, head)
                parts = [await self._get(name) for name in names]
                if None in parts:
                    continue  # a newer write replaced this head and deleted its parts: follow the new head
                return decode(head, parts)
            except StateUnreadable as err:
                log.warning("ConfigMap %s: section %s is not readable (%s); starting afresh",
                            head_name(self.name, section), section, err)
                return None
        log.warning("ConfigMap %s: section %s changed under each of %d reads; starting afresh",
                    head_name(self.name, section), section, TRIES)
        return None

    async def _load_legacy(self, section: str) -> dict[str, Any] | None:
        """``section`` as the first layout kept it (a JSON key of the ConfigMap ``name``)."""
        if self._legacy_data is None:
            self._legacy_data = dict((await self._get(self.name) or {}).get("data") or {})
        text = self._legacy_data.get(section)
        if not text:
            self.legacy.discard(section)
            return None
        try:
            value = json.loads(text)
        except ValueError:
            log.warning("ConfigMap %s: section %s is not JSON; starting afresh", self.name, section)
            return None
        return value if isinstance(value, dict) else None

    # -- writing --------------------------------------------------------------------------------
    async def save(self, section: str, state: dict[str, Any]) -> None:
        text = orjson.dumps(state)  # the state as it is now
        async with self._writing.setdefault(section, asyncio.Lock()):  # a section's saves in the order made
            packed = await asyncio.get_running_loop().run_in_executor(None, pack, text)  # off the event loop
            chunks = [packed[i:i + self.part_bytes] for i in range(0, len(packed), self.part_bytes)] \
                if len(packed) > self.part_bytes else []
            if len(chunks) > MAX_PARTS:
                log.warning("ConfigMap %s: section %s is %d bytes gzipped, over %d parts of %d; not saved",
                            head_name(self.name, section), section, len(packed), MAX_PARTS, self.part_bytes)
                return
            if section not in self.heads:
                await self._read_head(section)
            generation = secrets.token_hex(6)  # names this write, whether it has parts or not
            await self._write_parts(section, generation, chunks)
            try:
                replaced = await self._write_head(section, generation, chunks, packed)
            except BaseException:
                await self._after_failed_head(section, generation, len(chunks))
                raise
            if replaced is None:
                log.warning("ConfigMap %s: section %s not saved after %d conflicting writes",
                            head_name(self.name, section), section, TRIES)
                await self._delete_parts(section, generation, len(chunks))
                return
            await self._delete_parts(section, replaced.generation, replaced.parts)
            if section in self.legacy:
                await self._forget_legacy(section)

    async def _after_failed_head(self, section: str, generation: str, count: int) -> None:
        """A head write failed, perhaps after the API server took it (a timeout): the head is read again; the
        parts of whichever write it no longer names are deleted (none if it cannot be read)."""
        tried = self.heads[section]
        try:
            await self._read_head(section)
        except Exception as err:  # noqa: BLE001 - the parts stay: a head may name them
            log.warning("ConfigMap %s: not read after a failed write (%s); its new parts are left",
                        head_name(self.name, section), err)
            return
        if self.heads[section].generation == generation:  # it was written after all
            await self._delete_parts(section, tried.generation, tried.parts)
        else:
            await self._delete_parts(section, generation, count)

    async def _write_parts(self, section: str, generation: str, chunks: list[bytes]) -> None:
        """Each chunk created as a part of ``generation``; if one fails, those made are deleted."""
        for index, chunk in enumerate(chunks):
            body = self._body(part_name(self.name, section, generation, index),
                              {"generation": generation, "index": str(index)}, chunk, "part")
            try:
                await self.cluster.request(self.cluster.core.create_namespaced_config_map, self.namespace, body)
            except BaseException:
                await self._delete_parts(section, generation, index)
                raise

    async def _write_head(self, section: str, generation: str, chunks: list[bytes], packed: bytes) -> Head | None:
        """The head naming ``generation``, replaced over the one last read (created if there was none);
        the head it replaced, or None after TRIES conflicting writes."""
        name = head_name(self.name, section)
        data = {"format": FORMAT, "generation": generation, "parts": str(len(chunks)),
                "sha256": hashlib.sha256(packed).hexdigest()}
        body = self._body(name, data, b"" if chunks else packed, "state")
        for _ in range(TRIES):
            known = self.heads[section]
            try:
                if known.version is None:
                    body["metadata"].pop("resourceVersion", None)
                    written = await self.cluster.request(self.cluster.core.create_namespaced_config_map,
                                                         self.namespace, body)
                else:
                    body["metadata"]["resourceVersion"] = known.version
                    written = await self.cluster.request(self.cluster.core.replace_namespaced_config_map,
                                                         name, self.namespace, body)
            except ApiException as err:
                if err.status not in (404, 409):
                    raise
                self.conflicts += 1
                log.warning("ConfigMap %s was written or deleted by another writer since this broker read it (another "
                            "broker running?); writing this broker's %s over the newer one", name, section)
                await self._read_head(section)
                continue
            self.heads[section] = Head(written["metadata"]["resourceVersion"], generation, len(chunks))
            return known
        return None

    async def _delete_parts(self, section: str, generation: str, count: int) -> None:
        """The parts of a generation no head names any more (a failure is warned: they are only left over)."""
        for index in range(count):
            name = part_name(self.name, section, generation, index)
            try:
                await self._delete(name)
            except ApiException as err:
                log.warning("ConfigMap %s (an old part of section %s) not deleted: %s", name, section, err.reason)

    async def _forget_legacy(self, section: str) -> None:
        """``section``'s key removed from the first layout's ConfigMap, deleted once it holds nothing."""
        for _ in range(TRIES):
            found = await self._get(self.name)
            data = dict((found or {}).get("data") or {})
            if section not in data:
                break
            del data[section]
            try:
                if data or found.get("binaryData"):
                    await self.cluster.request(self.cluster.core.replace_namespaced_config_map, self.name,
                                               self.namespace, {**found, "data": data})
                else:
                    await self._delete(self.name, found["metadata"]["resourceVersion"])
            except ApiException as err:
                if err.status in (404, 409):
                    continue  # written meanwhile (an old broker): read it again
                log.warning("ConfigMap %s: section %s, now in %s, not removed from it: %s", self.name, section,
                            head_name(self.name, section), err.reason)
            break
        self.legacy.discard(section)


class Section:
    """One section of a store, as the broker's meters use it (``load()`` / ``save(state)``)."""

    def __init__(self, store: ConfigMapStore, section: str):
        self.store = store
        self.section = section

    async def load(self) -> dict[str, Any] | None:
        return await self.store.load(self.section)

    async def save(self, state: dict[str, Any]) -> None:
        await self.store.save(self.section, state)


__all__ = ["ConfigMapStore", "Head", "Section", "StateUnreadable", "decode", "head_name", "pack", "part_names"]
