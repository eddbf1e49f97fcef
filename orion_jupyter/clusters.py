"""Where kernels run: the one place that picks a backend (local processes or Kubernetes).

``settings`` are :class:`~orion_jupyter.settings.KernelSettings` (a provisioner is one); everything
else talks to the :mod:`~orion_jupyter.protocols` it returns. A driver is handed what it needs: the
Kubernetes driver the warm kernels of its cluster, when this server keeps some.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .protocols import BackendView, Driver


def cluster_kind(settings: Any) -> str:
    if settings.cluster != "auto":
        return settings.cluster
    if settings.broker_url:  # hub mode: the server holds no cluster credentials
        return "broker"
    from .k8s.client import cluster_configured

    return "kubernetes" if cluster_configured(settings.kubeconfig) else "local"


def _kube_clusters(settings: Any, extra_namespaces: Iterable[str] = ()) -> list[Any]:
    from .k8s.client import api_client, default_namespace
    from .k8s.cluster import KubeCluster

    api = api_client(settings.kubeconfig, settings.kube_context)
    primary = settings.namespace or default_namespace(settings.kubeconfig, settings.kube_context)
    namespaces = [primary] + [n for n in extra_namespaces if n != primary]
    return [KubeCluster.shared(api, ns, watch_nodes=settings.watch_nodes and ns == primary,
                               watch_others=settings.count_other_workloads and ns == primary,
                               watch_dra=settings.backend == "dra" and ns == primary)
            for ns in namespaces]


def make_view(settings: Any, class_namespaces: Iterable[str] = ()) -> BackendView:
    """The read side for the server extension (and a driver's quota checks)."""
    kind = cluster_kind(settings)
    if kind == "kubernetes":
        from .k8s.view import KubernetesView

        return KubernetesView(_kube_clusters(settings, class_namespaces), settings.backend_model())
    if kind == "broker":
        from .hubclient import BrokerClient
        from .hubview import BrokerView

        return BrokerView(BrokerClient.shared(settings.broker_url, settings.broker_token), settings.backend_model())
    from .local import LocalPool, LocalView

    return LocalView(LocalPool(parent=settings), settings.backend_model())


def make_driver(settings: Any, kernel_manager: Any, kernel_spec: Any) -> Driver:
    """The launch side for one provisioner."""
    view = make_view(settings)
    if view.kind == "kubernetes":
        from .k8s.driver import KubernetesDriver

        cluster = view.clusters[0]  # type: ignore[attr-defined]
        return KubernetesDriver(cluster, view, warm=cluster.warm)  # type: ignore[arg-type]
    if view.kind == "broker":
        from .hubclient import BrokerDriver

        return BrokerDriver(view.client, view)  # type: ignore[attr-defined]
    from .local import LocalDriver

    return LocalDriver(view, kernel_manager, kernel_spec)  # type: ignore[arg-type]


def import_launch_side(kind: str) -> None:
    """Import a backend's launch modules ahead of the first launch (the server's warm-up)."""
    if kind == "kubernetes":
        from .k8s import driver  # noqa: F401 - manifests, the Pod builder
    elif kind == "broker":
        from . import hubclient  # noqa: F401
    else:
        from .local import driver as local_driver  # noqa: F401
