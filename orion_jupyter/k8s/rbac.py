"""Least-privilege RBAC for a Jupyter server that launches kernel pods in one namespace."""

from __future__ import annotations

import copy
from typing import Any

from ..vgpu import check_k8s_name

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


def rbac_manifests(namespace: str, service_account: str = "jupyter", read_nodes: bool = True,
                   backend: Any = None, read_all_pods: bool = False) -> list[dict]:
    """ServiceAccount, Role and RoleBinding (and, for the pool view, read-only access to nodes).

    ``backend`` (a name or a Backend): ``dra`` adds resourceclaimtemplates create/get and
    resourceclaims get/list/watch to the Role, and resourceslices and deviceclasses get/list/watch
    to the cluster-wide reader (which then exists even with ``read_nodes=False``). ``read_all_pods``
    lets the pool count what other workloads hold on GPU nodes (get/list/watch of pods cluster-wide:
    their names and resources, never their Secrets).
    """
    check_k8s_name("namespace", namespace)
    dra = _backend_name(backend) == "dra" or bool(getattr(backend, "dra_flavors", ()))
    check_k8s_name("service account", service_account)
    name = "orion-jupyter-kernels"
    subject = {"kind": "ServiceAccount", "name": service_account, "namespace": namespace}
    docs: list[dict] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": service_account, "namespace": namespace}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": name, "namespace": namespace},
            "rules": [
                # Kernel pods: create, watch, stop, annotate (last activity); read logs to explain a crash.
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "create", "delete", "patch"]},
                {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
                # Connection files: created, owned by their pod, deleted on shutdown. Never read or listed.
                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "delete", "patch"]},
                # Launch progress and scheduling failures.
                {"apiGroups": [""], "resources": ["events"], "verbs": ["list", "watch"]},
                *(copy.deepcopy(DRA_NAMESPACED_RULES) if dra else []),
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [subject],
        },
    ]
    cluster_rules = []
    if read_nodes:
        cluster_rules.append({"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]})
    if read_all_pods:
        cluster_rules.append({"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]})
    if dra:
        cluster_rules += copy.deepcopy(DRA_CLUSTER_RULES)
    if cluster_rules:
        cluster_name = f"orion-jupyter-pool-reader-{namespace}"
        docs += [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": cluster_name},
                "rules": cluster_rules,
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": cluster_name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_name},
                "subjects": [subject],
            },
        ]
    return docs
