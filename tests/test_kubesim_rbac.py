"""kubesim's RBAC: access reviews evaluated from stored Roles, ClusterRoles and bindings, and requests
refused in RBAC's words once the cluster knows who the token is."""

from __future__ import annotations

import json

import kubernetes
import pytest
from kubernetes.client.rest import ApiException

from kubesim.cluster import SimCluster

NS = "ai101"
RBAC = "rbac.authorization.k8s.io/v1"


@pytest.fixture
def cluster():
    with SimCluster(nodes=[]) as sim:
        yield sim


def create(cluster, docs):
    for doc in docs:
        kubernetes.utils.create_from_dict(cluster.api_client(), doc)


def review(cluster, verb, resource, namespace=NS, user="", groups=None, name="", subresource="", group=""):
    auth = kubernetes.client.AuthorizationV1Api(cluster.api_client())
    attributes = {"verb": verb, "resource": resource, "namespace": namespace, "name": name,
                  "subresource": subresource, "group": group}
    if user:
        spec = {"user": user, "resourceAttributes": attributes, **({"groups": groups} if groups else {})}
        return auth.create_subject_access_review({"spec": spec}).status
    return auth.create_self_subject_access_review({"spec": {"resourceAttributes": attributes}}).status


def test_without_an_rbac_user_everything_is_allowed(cluster):
    status = review(cluster, "delete", "nodes", namespace="")
    assert status.allowed and "no RBAC user" in status.reason


def test_reviews_follow_roles_bindings_subjects_and_resource_names(cluster):
    create(cluster, [
        {"apiVersion": RBAC, "kind": "Role", "metadata": {"name": "r", "namespace": NS}, "rules": [
            {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["only-this"]}]},
        {"apiVersion": RBAC, "kind": "RoleBinding", "metadata": {"name": "r", "namespace": NS},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
         "subjects": [{"kind": "ServiceAccount", "name": "app", "namespace": NS}]},
        {"apiVersion": RBAC, "kind": "ClusterRole", "metadata": {"name": "nodes"},
         "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}]},
        {"apiVersion": RBAC, "kind": "ClusterRoleBinding", "metadata": {"name": "nodes"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "nodes"},
         "subjects": [{"kind": "Group", "name": "system:serviceaccounts"}]},
    ])
    cluster.rbac_user = f"system:serviceaccount:{NS}:app"
    assert review(cluster, "get", "pods").allowed
    assert review(cluster, "get", "pods", subresource="log").allowed
    assert not review(cluster, "list", "pods").allowed
    assert not review(cluster, "get", "pods", namespace="other").allowed  # a Role grants in its namespace only
    assert review(cluster, "get", "secrets", name="only-this").allowed
    assert not review(cluster, "get", "secrets", name="another").allowed
    assert review(cluster, "list", "nodes", namespace="").allowed  # through the group of all service accounts
    cluster.rbac_user = "alice"
    assert not review(cluster, "list", "nodes", namespace="").allowed  # a person: not in that group


def test_requests_are_refused_in_rbac_words(cluster):
    create(cluster, [
        {"apiVersion": RBAC, "kind": "Role", "metadata": {"name": "r", "namespace": NS},
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]},
        {"apiVersion": RBAC, "kind": "RoleBinding", "metadata": {"name": "r", "namespace": NS},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
         "subjects": [{"kind": "ServiceAccount", "name": "app", "namespace": NS}]},
    ])
    cluster.rbac_user = f"system:serviceaccount:{NS}:app"
    core = kubernetes.client.CoreV1Api(cluster.api_client())
    assert core.list_namespaced_pod(NS).items == []
    with pytest.raises(ApiException) as refused:
        core.list_namespaced_secret(NS)
    assert refused.value.status == 403
    assert json.loads(refused.value.body)["message"] == (
        f'secrets is forbidden: User "system:serviceaccount:{NS}:app" cannot list resource "secrets" in API group '
        f'"" in the namespace "{NS}"')
    with pytest.raises(ApiException) as refused:  # asking about others needs its own right
        review(cluster, "list", "pods", user="alice")
    assert refused.value.status == 403
    assert kubernetes.client.VersionApi(cluster.api_client()).get_code().git_version  # discovery stays open
