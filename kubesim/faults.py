"""Fault switches a test flips to see how clients cope: API errors, RBAC refusals, dropped watches,
lost history, slow scheduling, image pull failures, out-of-memory kills, added latency."""

from __future__ import annotations

import fnmatch
import threading
from dataclasses import dataclass

from .store import Store, Watcher


@dataclass
class _Failure:
    verb: str
    resource: str
    status: int
    times: int
    message: str
    namespace: str | None
    name: str | None


class Faults:
    def __init__(self, store: Store):
        self._store = store
        self._lock = threading.Lock()
        self._failures: list[_Failure] = []
        self._image_errors: list[tuple[str, str]] = []
        self._bare_images: list[str] = []  # images whose Python has nothing but its standard library
        self._forbidden: list[tuple[str, str, bool]] = []  # (verb, resource, cluster scope only)
        self._oom: list[tuple[str, float]] = []  # (pod name pattern, seconds after the container starts)
        self.schedule_delay = 0.0  # seconds before the scheduler considers a new pod
        self.latency = 0.0  # seconds added before answering each non-watch request

    def fail(
        self, verb: str, resource: str, status: int = 500, times: int = 1, message: str | None = None,
        namespace: str | None = None, name: str | None = None,
    ) -> None:
        """The next ``times`` requests matching verb ('get', 'list', 'watch', 'create', 'update', 'patch',
        'delete', 'deletecollection' or '*') and resource ('pods', 'secrets', 'events', 'nodes',
        'pods/log', or '*') answer ``status`` with a Status body. times=-1: until clear()."""
        with self._lock:
            self._failures.append(_Failure(
                verb, resource, status, times, message or f"simulated failure ({status})", namespace, name,
            ))

    def take_failure(self, verb: str, resource: str, namespace: str | None, name: str | None) -> _Failure | None:
        with self._lock:
            for f in self._failures:
                if f.verb not in ("*", verb) or f.resource not in ("*", resource):
                    continue
                if (f.namespace and f.namespace != namespace) or (f.name and f.name != name):
                    continue
                if f.times > 0:
                    f.times -= 1
                    if f.times == 0:
                        self._failures.remove(f)
                return f
        return None

    def forbid(self, verb: str = "*", resource: str = "pods", cluster_scope: bool = True) -> None:
        """Answer 403 Forbidden, worded as RBAC words it, to matching requests until clear(): with
        ``cluster_scope`` only those across all namespaces (``GET /api/v1/pods``), as for a Role that
        grants pods in its own namespace but no ClusterRole; else namespaced requests too."""
        with self._lock:
            self._forbidden.append((verb, resource, cluster_scope))

    def forbidden(self, verb: str, resource: str, namespace: str | None) -> str | None:
        """The RBAC refusal for this request, or None when it is allowed."""
        from .validation import NAMESPACED

        with self._lock:
            rules = list(self._forbidden)
        base = resource.split("/")[0]
        for f_verb, f_resource, cluster_scope in rules:
            if f_verb not in ("*", verb) or f_resource not in ("*", resource, base):
                continue
            if cluster_scope and (namespace is not None or base not in NAMESPACED):
                continue
            scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
            return (f'{base} is forbidden: User "system:serviceaccount:default:kubesim" cannot {verb} resource '
                    f'"{base}" in API group "" {scope}')
        return None

    def oom_kill_pods(self, pattern: str, after: float = 0.0) -> None:
        """Pods whose name matches ``pattern`` (fnmatch) are killed for exceeding their memory limit
        ``after`` seconds after their container starts: SIGKILL, terminated reason OOMKilled, exit code
        137 (``SimCluster.oom_kill`` does it to one running pod now)."""
        with self._lock:
            self._oom.append((pattern, after))

    def oom_fault(self, pod_name: str) -> float | None:
        with self._lock:
            for pattern, after in self._oom:
                if fnmatch.fnmatchcase(pod_name, pattern):
                    return after
        return None

    def drop_watches(self, abrupt: bool = False) -> int:
        """Ends every open watch stream now: cleanly (final chunk), or abruptly (socket shut down
        mid-stream, the client sees a broken connection). Returns how many were open."""
        return self._store.close_watches(Watcher.ABORT if abrupt else Watcher.DROP)

    def expire_history(self) -> None:
        """Forgets the event history: resuming a watch from an older resourceVersion gets 410 Gone."""
        self._store.expire_history()

    def image_pull_error(self, pattern: str, reason: str = "ErrImagePull") -> None:
        """Images matching ``pattern`` (fnmatch) fail to pull: ErrImagePull then ImagePullBackOff
        (another reason such as 'InvalidImageName' stays as given)."""
        with self._lock:
            self._image_errors.append((pattern, reason))

    def image_fault(self, image: str) -> str | None:
        with self._lock:
            for pattern, reason in self._image_errors:
                if fnmatch.fnmatchcase(image, pattern):
                    return reason
        return None

    def bare_python_image(self, pattern: str) -> None:
        """Images matching ``pattern`` (fnmatch) have a Python with only its standard library (no
        ipykernel, no numpy): their containers' ``python`` runs without site-packages (``-S``)."""
        with self._lock:
            self._bare_images.append(pattern)

    def is_bare_python(self, image: str) -> bool:
        with self._lock:
            return any(fnmatch.fnmatchcase(image, pattern) for pattern in self._bare_images)

    def clear(self) -> None:
        with self._lock:
            self._failures.clear()
            self._image_errors.clear()
            self._bare_images.clear()
            self._forbidden.clear()
            self._oom.clear()
        self.schedule_delay = 0.0
        self.latency = 0.0
