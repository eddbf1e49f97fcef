"""Least-privilege RBAC for a Jupyter server that launches kernel pods in one namespace."""

from __future__ import annotations

import copy
from typing import Any

from ..vgpu import check_k8s_name

# What launching kernel pods takes, in direct mode (the Jupyter server) and in hub mode (the broker).
KERNEL_RULES = [
    # Kernel pods: create, watch, stop, annotate (last activity); read logs to explain a crash.
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "create", "delete", "patch"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    # Connection files: created, owned by their pod, deleted on shutdown. Never read or listed.
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "delete", "patch"]},
    # Launch progress and scheduling failures.
    {"apiGroups": [""], "resources": ["events"], "verbs": ["list", "watch"]},
]
NODES_RULE = {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}
ALL_PODS_RULE = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}

# Dynamic Resource Allocation (backend dra): claim templates made once per flavor and read back,
# the claims Kubernetes makes from them (what each kernel got), and the devices (the pool view).
DRA_NAMESPACED_RULES = [
    {"apiGroups": ["resource.k8s.io"], "resources": ["resourceclaimtemplates"], "verbs": ["create", "get"]},
    {"apiGroups": ["resource.k8s.io"], "resources": ["resourceclaims"], "verbs": ["get", "list", "watch"]},
]
DRA_CLUSTER_RULES = [
    {"apiGroups": ["resource.k8s.io"], "resources": ["resourceslices", "deviceclasses"],
     "verbs": ["get", "list", "watch"]},
]


def _backend_name(backend: Any) -> str | None:
    return getattr(backend, "name", backend)


def is_dra(backend: Any) -> bool:
    """``backend`` (a name or a Backend) allocates through DRA claims."""
    return _backend_name(backend) == "dra" or bool(getattr(backend, "dra_flavors", ()))


def pool_reader_rules(read_nodes: bool = True, read_all_pods: bool = False, dra: bool = False) -> list[dict]:
    """The cluster-wide reads of the pool view: nodes, pods of other workloads, DRA devices."""
    rules = [copy.deepcopy(NODES_RULE)] if read_nodes else []
    if read_all_pods:
        rules.append(copy.deepcopy(ALL_PODS_RULE))
    if dra:
        rules += copy.deepcopy(DRA_CLUSTER_RULES)
    return rules


def role_manifests(namespace: str, service_account: str, name: str, rules: list[dict],
                   cluster_name: str, cluster_rules: list[dict], create_service_account: bool = True) -> list[dict]:
    """[ServiceAccount,] Role + RoleBinding ``name`` in ``namespace`` for ``service_account`` and, when
    ``cluster_rules`` is not empty, ClusterRole + ClusterRoleBinding ``cluster_name`` for the same account."""
    check_k8s_name("namespace", namespace)
    check_k8s_name("service account", service_account)
    subject = {"kind": "ServiceAccount", "name": service_account, "namespace": namespace}
    docs: list[dict] = []
    if create_service_account:
        docs.append({"apiVersion": "v1", "kind": "ServiceAccount",
                     "metadata": {"name": service_account, "namespace": namespace}})
    docs += [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": name, "namespace": namespace},
            "rules": copy.deepcopy(rules),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [dict(subject)],
        },
    ]
    if cluster_rules:
        docs += [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": cluster_name},
                "rules": copy.deepcopy(cluster_rules),
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": cluster_name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_name},
                "subjects": [dict(subject)],
            },
        ]
    return docs


def rbac_manifests(namespace: str, service_account: str = "jupyter", read_nodes: bool = True,
                   backend: Any = None, read_all_pods: bool = False) -> list[dict]:
    """ServiceAccount, Role and RoleBinding (and, for the pool view, read-only access to nodes).

    ``backend`` (a name or a Backend): ``dra`` adds resourceclaimtemplates create/get and
    resourceclaims get/list/watch to the Role, and resourceslices and deviceclasses get/list/watch
    to the cluster-wide reader (which then exists even with ``read_nodes=False``). ``read_all_pods``
    lets the pool count what other workloads hold on GPU nodes (get/list/watch of pods cluster-wide:
    their names and resources, never their Secrets).
    """
    dra = is_dra(backend)
    return role_manifests(
        namespace, service_account, "orion-jupyter-kernels",
        KERNEL_RULES + (DRA_NAMESPACED_RULES if dra else []),
        f"orion-jupyter-pool-reader-{namespace}", pool_reader_rules(read_nodes, read_all_pods, dra),
    )
