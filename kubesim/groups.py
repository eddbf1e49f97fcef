"""The API groups besides the core one that kubesim serves, and which kinds each holds.

Stored as plain objects (no controller) except where a module adds behaviour: resource.k8s.io
(kubesim/dra.py), NetworkPolicies (stored, not enforced: kubesim pods share the host network) and
Leases (the broker's liveness; owners of kernel pods for the garbage collector), RBAC objects and the
access reviews evaluated from them (kubesim/rbac.py).
"""

from __future__ import annotations

from . import dra, rbac, validation

EXTRA = {
    ("networking.k8s.io", "v1"): ({"networkpolicies": "NetworkPolicy"}, {"networkpolicies"}),
    ("coordination.k8s.io", "v1"): ({"leases": "Lease"}, {"leases"}),
    (rbac.GROUP, "v1"): (rbac.RBAC_KINDS, rbac.RBAC_NAMESPACED),
}
# Answered, never stored (kubesim/rbac.py): not registered as stored kinds.
REVIEWS = {(rbac.REVIEW_GROUP, "v1"): (rbac.REVIEW_KINDS, set())}
GROUPS = {(dra.GROUP, dra.VERSION): (dra.KINDS, dra.NAMESPACED), **EXTRA, **REVIEWS}


def register() -> None:
    for kinds, namespaced in EXTRA.values():
        validation.KINDS.update(kinds)
        validation.PLURALS.update({kind: plural for plural, kind in kinds.items()})
        validation.NAMESPACED.update(namespaced)


register()


def group_of(parts: list[str]) -> tuple[str, str] | None:
    """The (group, version) an /apis/GROUP/VERSION/... path names, if kubesim serves it."""
    if len(parts) >= 3 and parts[0] == "apis" and (parts[1], parts[2]) in GROUPS:
        return parts[1], parts[2]
    return None


def kinds(group: tuple[str, str]) -> dict[str, str]:
    return GROUPS[group][0]


def api_version(plural: str) -> str:
    for (group, version), (kinds_, _) in GROUPS.items():
        if plural in kinds_:
            return f"{group}/{version}"
    return "v1"


def api_group_list() -> list[dict]:
    groups: dict[str, list[str]] = {}
    for group, version in GROUPS:
        groups.setdefault(group, []).append(version)
    return [api_group(name) for name in groups]


def api_group(name: str) -> dict:
    versions = [{"groupVersion": f"{name}/{v}", "version": v} for g, v in GROUPS if g == name]
    return {"name": name, "versions": versions, "preferredVersion": versions[0]}


def api_resource_list(group: tuple[str, str]) -> dict:
    kinds_, namespaced = GROUPS[group]
    verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group[0]}/{group[1]}", "resources": [
        {"name": plural, "singularName": kind.lower(), "namespaced": plural in namespaced, "kind": kind, "verbs": verbs}
        for plural, kind in sorted(kinds_.items())]}
