"""RBAC as Kubernetes' authorizer evaluates it, from the stored Roles, ClusterRoles and their bindings.

Served: ``rbac.authorization.k8s.io/v1`` objects (stored as they are), and the access reviews of
``authorization.k8s.io/v1`` (answered, never stored): SelfSubjectAccessReview for the caller and
SubjectAccessReview for a named user or service account. Rules match by API group, resource
(``pods/log`` as a subresource), verb and resourceNames, with ``*`` anywhere; a RoleBinding grants
its Role's (or ClusterRole's) rules in its own namespace, a ClusterRoleBinding everywhere.

``SimCluster.rbac_user`` (None by default) is who the kubeconfig's token is. While it is None the
cluster authorizes everything (as an ``AlwaysAllow`` authorizer: every review says allowed); once
it names a user, every API request is authorized for it and refused with RBAC's words, discovery
and access reviews of one's own excepted (``system:discovery`` and ``system:basic-user``).
"""

from __future__ import annotations

from .errors import ApiError

GROUP = "rbac.authorization.k8s.io"
REVIEW_GROUP = "authorization.k8s.io"
RBAC_KINDS = {"roles": "Role", "rolebindings": "RoleBinding", "clusterroles": "ClusterRole",
              "clusterrolebindings": "ClusterRoleBinding"}
RBAC_NAMESPACED = {"roles", "rolebindings"}
REVIEW_KINDS = {"selfsubjectaccessreviews": "SelfSubjectAccessReview", "subjectaccessreviews": "SubjectAccessReview"}
_ALWAYS_ALLOW = "kubesim authorizes every request (no RBAC user set)"


def groups_of(user: str) -> list[str]:
    """The groups Kubernetes gives an authenticated user (a service account's own two included)."""
    groups = ["system:authenticated"]
    if user.startswith("system:serviceaccount:"):
        namespace = user.split(":")[2]
        groups += ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"]
    return groups


def _subject_matches(subject: dict, user: str, groups: list[str], binding_namespace: str | None) -> bool:
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "ServiceAccount":
        return user == f"system:serviceaccount:{subject.get('namespace') or binding_namespace}:{name}"
    if kind == "User":
        return user == name
    if kind == "Group":
        return name in groups
    return False


def _rule_matches(rule: dict, verb: str, group: str, resource: str, name: str | None) -> bool:
    def has(values: list | None, value: str) -> bool:
        return "*" in (values or []) or value in (values or [])

    return (has(rule.get("verbs"), verb) and has(rule.get("apiGroups"), group) and has(rule.get("resources"), resource)
            and (not rule.get("resourceNames") or (name is not None and name in rule["resourceNames"])))


def _rules(store, binding: dict, namespace: str | None) -> list[dict]:
    ref = binding.get("roleRef") or {}
    plural = "roles" if ref.get("kind") == "Role" else "clusterroles"
    role = store.get(plural, namespace if plural == "roles" else None, ref.get("name", ""))
    return (role or {}).get("rules") or []


def allowed(store, user: str, groups: list[str], verb: str, group: str, resource: str,
            namespace: str | None, name: str | None = None) -> tuple[bool, str]:
    """(allowed, reason) for one request, as the RBAC authorizer decides it."""
    bindings = [(b, None) for b in store.list("clusterrolebindings", None)[0]]
    if namespace:
        bindings += [(b, namespace) for b in store.list("rolebindings", namespace)[0]]
    for binding, scope in bindings:
        if not any(_subject_matches(s, user, groups, scope) for s in binding.get("subjects") or []):
            continue
        if any(_rule_matches(rule, verb, group, resource, name) for rule in _rules(store, binding, scope)):
            kind = "RoleBinding" if scope else "ClusterRoleBinding"
            where = f'{kind} "{binding["metadata"]["name"]}"' + (f' of namespace "{scope}"' if scope else "")
            return True, f'RBAC: allowed by {where}'
    return False, ""


def refusal(user: str, verb: str, group: str, resource: str, namespace: str | None) -> str:
    base, _, sub = resource.partition("/")
    what = f'resource "{base}"' + (f' subresource "{sub}"' if sub else "")
    scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    return f'{base} is forbidden: User "{user}" cannot {verb} {what} in API group "{group}" {scope}'


def authorize(cluster, verb: str, group: str, resource: str, namespace: str | None, name: str | None) -> None:
    """Raises 403 when the cluster has an RBAC user and RBAC does not allow this request."""
    user = cluster.rbac_user
    if user is None or resource.startswith("/") or (group, resource) == (REVIEW_GROUP, "selfsubjectaccessreviews"):
        return
    if not allowed(cluster.store, user, groups_of(user), verb, group, resource, namespace, name)[0]:
        raise ApiError(403, "Forbidden", refusal(user, verb, group, resource, namespace), {"kind": resource})


def review(cluster, plural: str, body: object) -> dict:
    """The answered access review: the request's spec, and status.allowed / reason."""
    if not isinstance(body, dict) or not isinstance(body.get("spec"), dict):
        raise ApiError(400, "BadRequest", f"{REVIEW_KINDS[plural]} needs a spec")
    spec = body["spec"]
    attributes = spec.get("resourceAttributes")
    if not isinstance(attributes, dict):
        raise ApiError(422, "Invalid", f"{REVIEW_KINDS[plural]}.authorization.k8s.io is invalid: "
                                       "spec.resourceAttributes: Required value (non-resource reviews are not served)")
    if plural == "selfsubjectaccessreviews":
        user = cluster.rbac_user
        groups = groups_of(user) if user else []
    else:
        user = spec.get("user") or ""
        groups = list(spec.get("groups") or groups_of(user))
        if not user:
            raise ApiError(422, "Invalid", "SubjectAccessReview.authorization.k8s.io is invalid: spec.user: "
                                           "Invalid value: \"\": at least one of user or group must be specified")
    sub = attributes.get("subresource")
    resource = attributes.get("resource", "") + (f"/{sub}" if sub else "")
    if cluster.rbac_user is None:
        verdict = (True, _ALWAYS_ALLOW)
    else:
        verdict = allowed(cluster.store, user, groups, attributes.get("verb", ""), attributes.get("group", ""),
                          resource, attributes.get("namespace") or None, attributes.get("name") or None)
    return {"kind": REVIEW_KINDS[plural], "apiVersion": f"{REVIEW_GROUP}/v1", "metadata": {"creationTimestamp": None},
            "spec": spec, "status": {"allowed": verdict[0], **({"reason": verdict[1]} if verdict[1] else {})}}
