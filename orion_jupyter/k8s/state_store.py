"""State that outlives the broker, in a ConfigMap of the class namespace (no new database).

One JSON document per section (``budgets``, ``fairshare``) under the ConfigMap's ``data``. Every write
is a replace with the resourceVersion last read, so two writers never silently overwrite each other:
on a conflict the newer object is read again and this writer's sections are written over it (the
broker is the only writer of its own sections; another's sections are kept).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from kubernetes.client.exceptions import ApiException

from .cluster import KubeCluster

log = logging.getLogger("orion_jupyter.k8s")
MAX_BYTES = 900_000  # below the API server's 1 MiB per ConfigMap, with room for metadata


class ConfigMapStore:
    """``load(section)`` / ``save(section, state)`` of one ConfigMap, written with resourceVersion checks."""

    def __init__(self, cluster: KubeCluster, namespace: str, name: str, labels: dict[str, str] | None = None):
        self.cluster = cluster
        self.namespace = namespace
        self.name = name
        self.labels = dict(labels or {})
        self.data: dict[str, str] = {}
        self.version: str | None = None  # the resourceVersion last read or written; None: not there yet
        self.conflicts = 0

    async def read(self) -> dict[str, str]:
        try:
            found = await self.cluster.request(self.cluster.core.read_namespaced_config_map, self.name,
                                               self.namespace)
        except ApiException as err:
            if err.status != 404:
                raise
            self.data, self.version = {}, None
            return {}
        self.data = dict(found.get("data") or {})
        self.version = found["metadata"]["resourceVersion"]
        return self.data

    async def load(self, section: str) -> dict[str, Any] | None:
        """What was saved under ``section`` (None: nothing, or not JSON)."""
        text = (await self.read()).get(section)
        try:
            value = json.loads(text) if text else None
        except ValueError:
            log.warning("ConfigMap %s: section %s is not JSON; starting afresh", self.name, section)
            return None
        return value if isinstance(value, dict) else None

    async def save(self, section: str, state: dict[str, Any]) -> None:
        text = json.dumps(state, separators=(",", ":"), sort_keys=True)
        if len(text) > MAX_BYTES:
            log.warning("ConfigMap %s: section %s is %d bytes, over %d; not saved", self.name, section, len(text),
                        MAX_BYTES)
            return
        for _ in range(3):
            data = {**self.data, section: text}
            body = {"apiVersion": "v1", "kind": "ConfigMap", "data": data,
                    "metadata": {"name": self.name, "namespace": self.namespace, "labels": self.labels}}
            try:
                if self.version is None:
                    written = await self.cluster.request(self.cluster.core.create_namespaced_config_map,
                                                         self.namespace, body)
                else:
                    body["metadata"]["resourceVersion"] = self.version
                    written = await self.cluster.request(self.cluster.core.replace_namespaced_config_map,
                                                         self.name, self.namespace, body)
            except ApiException as err:
                if err.status not in (404, 409):
                    raise
                self.conflicts += 1  # someone wrote (or deleted) it since: read the newer one, write over it
                await self.read()
                continue
            self.data, self.version = data, written["metadata"]["resourceVersion"]
            return
        log.warning("ConfigMap %s: section %s not saved after 3 conflicting writes", self.name, section)


class Section:
    """One section of a store, as the broker's meters use it (``load()`` / ``save(state)``)."""

    def __init__(self, store: ConfigMapStore, section: str):
        self.store = store
        self.section = section

    async def load(self) -> dict[str, Any] | None:
        return await self.store.load(self.section)

    async def save(self, state: dict[str, Any]) -> None:
        await self.store.save(self.section, state)


__all__ = ["ConfigMapStore", "Section"]
