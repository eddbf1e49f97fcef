"""The read-only checks: the API server, the namespace, RBAC, what the nodes offer, the Orion controller.

Each answers one question with the cluster's own words, and says what to do when the answer is no.
RBAC is asked, never guessed: SelfSubjectAccessReview for whoever runs the check (or, with a service
account named, SubjectAccessReview for it), for every rule of the Role that `orion-jupyter manifests`
renders for this mode and backend: one home for what the server or broker needs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError

from ..backends import Backend
from ..k8s.hub_manifests import broker_manifests
from ..k8s.rbac import rbac_manifests
from ..orion_controller import ControllerError, OrionControllerClient
from .report import Report

MIN_MINOR = 25  # the pod fields kernel pods use (seccompProfile, PodSecurity "restricted") are GA by 1.25
DRA_GROUP = "resource.k8s.io"
KAI_GROUP, KAI_VERSION = "scheduling.run.ai", "v2"


@dataclass
class CheckSettings:
    """What is checked: the mode, the namespace, the backend and the kernel pod's shape (a VGPUProvisioner)."""

    namespace: str
    backend: Backend
    provisioner: Any  # VGPUProvisioner: image, pod settings, vGPU memory, launch timeout
    hub: bool = False
    service_account: str = ""  # check this account's rights (SubjectAccessReview) instead of the caller's
    singleuser_service_account: str = "default"  # hub mode: what single-user servers run as
    timeout: float = 120.0
    canary: bool = True

    @property
    def who(self) -> str:
        return "the broker" if self.hub else "the Jupyter server"

    @property
    def manifests_command(self) -> str:
        account = "--hub-service-account" if self.hub else "--service-account"  # hub: bind an existing account
        flags = [" --hub" if self.hub else "",
                 f" {account} {self.service_account}" if self.service_account else "",
                 " --backend dra" if self.backend.uses_claims else "",
                 " --read-all-pods" if self.provisioner.count_other_workloads else "",
                 "" if self.provisioner.watch_nodes else " --no-nodes"]
        return f"orion-jupyter manifests --namespace {self.namespace}{''.join(flags)}"


def _api_error(err: Exception) -> str:
    if isinstance(err, ApiException):
        return f"HTTP {err.status} {err.reason}".strip()
    return str(err).splitlines()[0][:200]


def check_api(report: Report, api: client.ApiClient, settings: CheckSettings) -> bool:
    category = "Kubernetes API"
    try:
        version = client.VersionApi(api).get_code()
    except (ApiException, HTTPError, OSError) as err:
        report.fail(category, "the API server answers", "check the kubeconfig (--kubeconfig, KUBECONFIG) and that "
                    "the cluster is up: kubectl version", error=_api_error(err))
        return False
    report.ok(category, f"the API server answers ({version.git_version})", version=version.git_version)
    minor = int(re.sub(r"\D.*", "", version.minor or "0") or 0)
    if (int(version.major or 0), minor) < (1, MIN_MINOR):
        report.fail(category, f"Kubernetes {version.major}.{minor} is older than 1.{MIN_MINOR}",
                    f"upgrade the cluster to 1.{MIN_MINOR} or newer")
        return False
    if settings.backend.uses_claims:
        groups = {g.name: [v.version for v in g.versions] for g in client.ApisApi(api).get_api_versions().groups}
        if "v1" not in groups.get(DRA_GROUP, []):
            report.fail(category, f"the API server does not serve {DRA_GROUP}/v1 (backend dra)",
                        "Dynamic Resource Allocation is GA from Kubernetes 1.34; upgrade, or pick another backend")
            return False
        report.ok(category, f"Kubernetes {version.major}.{minor} serves {DRA_GROUP}/v1 for backend dra")
    else:
        report.ok(category, f"Kubernetes {version.major}.{minor} supports backend {settings.backend.label} "
                            f"(1.{MIN_MINOR} or newer)")
    try:
        client.CoreV1Api(api).read_namespace(settings.namespace)
    except ApiException as err:
        if err.status == 404:
            report.fail(category, f"namespace {settings.namespace} does not exist",
                        f"kubectl create namespace {settings.namespace}, or give the right --namespace")
            return False
        if err.status != 403:
            report.fail(category, f"namespace {settings.namespace} cannot be read", "see the error",
                        error=_api_error(err))
            return False
        # reading namespaces is not part of the Role: a refusal says nothing about the namespace
        report.warn(category, f"namespace {settings.namespace} could not be looked at (no right to get namespaces)",
                    "nothing to do if it exists: the checks below fail if it does not")
        return True
    report.ok(category, f"namespace {settings.namespace} exists")
    return True


def _review(api: client.ApiClient, settings: CheckSettings, attributes: dict[str, str],
            user: str = "") -> tuple[bool, str]:
    auth = client.AuthorizationV1Api(api)
    if user:
        answer = auth.create_subject_access_review({"spec": {"user": user, "resourceAttributes": attributes}})
    else:
        answer = auth.create_self_subject_access_review({"spec": {"resourceAttributes": attributes}})
    return bool(answer.status.allowed), answer.status.reason or ""


def required_rules(settings: CheckSettings) -> tuple[list[dict], list[dict]]:
    """(namespaced rules, cluster-wide rules) of the RBAC `orion-jupyter manifests` renders for this setup."""
    provisioner = settings.provisioner
    kwargs = {"read_nodes": provisioner.watch_nodes, "read_all_pods": provisioner.count_other_workloads,
              "backend": settings.backend}
    docs = (broker_manifests(settings.namespace, **kwargs) if settings.hub
            else rbac_manifests(settings.namespace, **kwargs))
    role = [r for d in docs if d["kind"] == "Role" for r in d["rules"]]
    cluster = [r for d in docs if d["kind"] == "ClusterRole" for r in d["rules"]]
    return role, cluster


def check_rbac(report: Report, api: client.ApiClient, settings: CheckSettings) -> bool:
    category = "Access (RBAC)"
    user = f"system:serviceaccount:{settings.namespace}:{settings.service_account}" if settings.service_account else ""
    subject = f"service account {settings.service_account}" if user else "this identity"
    role, cluster = required_rules(settings)
    ok = True
    for rules, namespace, required in ((role, settings.namespace, True), (cluster, "", False)):
        missing: list[str] = []
        asked = 0
        for rule in rules:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        base, _, sub = resource.partition("/")
                        attributes = {"verb": verb, "group": group, "resource": base, "subresource": sub,
                                      "namespace": namespace}
                        try:
                            allowed, _ = _review(api, settings, attributes, user)
                        except ApiException as err:
                            report.fail(category, f"cannot ask the API server what {subject} may do",
                                        "run the check with an identity that may create "
                                        f"{'SubjectAccessReviews' if user else 'SelfSubjectAccessReviews'}",
                                        error=_api_error(err))
                            return False
                        asked += 1
                        if not allowed:
                            missing.append(f"{verb} {resource}" + (f" ({group})" if group else ""))
        where = f"in namespace {settings.namespace}" if namespace else "cluster-wide"
        if not missing:
            if asked:
                report.ok(category, f"{subject} may do all {asked} things {settings.who} needs {where}")
            continue
        hint = f"apply the RBAC: {settings.manifests_command} | kubectl apply -f -"
        text = f"{subject} may not {', '.join(missing)} {where}"
        if required:
            ok = False
            report.fail(category, text, hint, missing=missing)
        else:
            report.warn(category, text + " (the pool view and shortage messages go blind)", hint, missing=missing)
    if settings.hub:
        ok = _check_singleuser(report, api, settings) and ok
    return ok


def _check_singleuser(report: Report, api: client.ApiClient, settings: CheckSettings) -> bool:
    """Hub mode's promise: single-user servers hold no cluster rights (the broker alone launches kernels)."""
    category = "Access (RBAC)"
    account = settings.singleuser_service_account
    user = f"system:serviceaccount:{settings.namespace}:{account}"
    granted = []
    for verb, resource in (("create", "pods"), ("get", "secrets"), ("list", "secrets")):
        try:
            allowed, reason = _review(api, settings, {"verb": verb, "resource": resource,
                                                      "namespace": settings.namespace}, user)
        except ApiException as err:
            report.warn(category, f"could not ask what single-user servers ({account}) may do",
                        "run the check as a cluster admin (SubjectAccessReview needs its create right)",
                        error=_api_error(err))
            return True
        if allowed:
            granted.append(f"{verb} {resource}" + (f" ({reason})" if reason else ""))
    if granted:
        report.fail(category, f"single-user servers (service account {account}) may {'; '.join(granted)}",
                    "remove that binding: in hub mode students' servers must hold no cluster rights "
                    "(z2jh: singleuser.serviceAccountName without a Role)", granted=granted)
        return False
    report.ok(category, f"single-user servers (service account {account}) can neither create pods nor read Secrets")
    return True


def check_capacity(report: Report, api: client.ApiClient, settings: CheckSettings) -> bool:
    """Nodes advertising the backend's resource, DRA device classes, or the KAI queue; the Orion controller."""
    category = "vGPU capacity"
    backend = settings.backend
    ok = True
    if backend.remote:
        report.ok(category, "remote Orion vGPUs: kernel pods ask Kubernetes for no GPU (the controller is the pool)")
    elif backend.uses_claims:
        ok = _check_device_classes(report, api, backend)
    elif backend.kai is not None:
        ok = _check_kai_queue(report, api, settings)
    else:
        ok = _check_nodes(report, api, backend)
    provisioner = settings.provisioner
    address = backend.orion.controller if backend.remote else getattr(provisioner, "orion_controller", "")
    if backend.name == "orion" and address:
        ok = check_controller(report, address) and ok
    return ok


def _check_nodes(report: Report, api: client.ApiClient, backend: Backend) -> bool:
    category = "vGPU capacity"
    resource = backend.count_resource
    try:
        nodes = client.CoreV1Api(api).list_node().items
    except ApiException as err:
        report.warn(category, f"cannot list nodes to count {resource}", "give the pool reader its ClusterRole "
                    "(orion-jupyter manifests) or check as an admin", error=_api_error(err))
        return True
    offering = {n.metadata.name: (n.status.allocatable or {}).get(resource) for n in nodes}
    offering = {name: amount for name, amount in offering.items() if amount not in (None, "0")}
    if not offering:
        hint = ("deploy the Orion stack: orion-jupyter manifests --orion-stack --namespace orion-system "
                "--gpu-node-selector KEY=VALUE | kubectl apply -f -" if backend.name == "orion"
                else f"install the device plugin that advertises {resource} on the GPU nodes")
        report.fail(category, f"no node advertises {resource} ({len(nodes)} nodes)", hint)
        return False
    listing = ", ".join(f"{name}: {amount}" for name, amount in sorted(offering.items()))
    verb = "nodes advertise" if len(offering) != 1 else "node advertises"
    report.ok(category, f"{len(offering)} {verb} {resource} ({listing})", nodes=offering)
    return True


def _check_device_classes(report: Report, api: client.ApiClient, backend: Backend) -> bool:
    category = "vGPU capacity"
    custom = client.CustomObjectsApi(api)
    ok = True
    for flavor in backend.dra_flavors:
        try:
            custom.get_cluster_custom_object(DRA_GROUP, "v1", "deviceclasses", flavor.device_class)
        except ApiException as err:
            if err.status != 404:
                report.warn(category, f"cannot read DeviceClass {flavor.device_class}", "see the error",
                            error=_api_error(err))
                continue
            ok = False
            report.fail(category, f"DeviceClass {flavor.device_class} (flavor {flavor.name}) does not exist",
                        "install its DRA driver (HAMi in DRA mode, or NVIDIA's DRA driver)")
            continue
        report.ok(category, f"DeviceClass {flavor.device_class} exists (flavor {flavor.name})")
    return ok


def _check_kai_queue(report: Report, api: client.ApiClient, settings: CheckSettings) -> bool:
    category = "vGPU capacity"
    queue = settings.backend.kai.default_queue if settings.backend.kai else ""
    try:
        queues = client.CustomObjectsApi(api).list_cluster_custom_object(KAI_GROUP, KAI_VERSION, "queues")
    except ApiException as err:
        report.fail(category, "KAI Scheduler's queues cannot be read", "install KAI Scheduler (its Queue CRD, "
                    f"{KAI_GROUP}/{KAI_VERSION}) and let this identity list queues", error=_api_error(err))
        return False
    names = [q["metadata"]["name"] for q in queues.get("items", [])]
    if queue and queue not in names:
        report.fail(category, f"KAI queue {queue} does not exist ({len(names)} queues)",
                    f"create the Queue {queue}, or set c.VGPUProvisioner.kai default_queue")
        return False
    report.ok(category, f"KAI Scheduler has {len(names)} queue{'s' if len(names) != 1 else ''}", queues=names)
    return True


def check_controller(report: Report, address: str) -> bool:
    category = "vGPU capacity"
    try:
        counts = OrionControllerClient(address).counts()
    except ControllerError as err:
        report.fail(category, f"the Orion controller at {address} does not answer as Orion's does", (
            "deploy or fix the Orion stack (orion-jupyter manifests --orion-stack), and check the address "
            "(c.VGPUProvisioner.orion 'controller' or orion_controller)"), error=str(err))
        return False
    report.ok(category, f"the Orion controller at {address} answers: {counts.describe()}",
              total=counts.total, free=counts.free)
    return True
