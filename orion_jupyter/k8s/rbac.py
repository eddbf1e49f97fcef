"""Least-privilege RBAC for a Jupyter server that launches kernel pods in one namespace."""

from __future__ import annotations

from ..vgpu import check_k8s_name


def rbac_manifests(namespace: str, service_account: str = "jupyter", read_nodes: bool = True) -> list[dict]:
    """ServiceAccount, Role and RoleBinding (and, for the pool view, read-only access to nodes)."""
    check_k8s_name("namespace", namespace)
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
    if read_nodes:
        cluster_name = f"orion-jupyter-pool-reader-{namespace}"
        docs += [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": cluster_name},
                "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}],
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
