"""Pure builder of a kernel's Pod and Secret, as plain dicts in Kubernetes' own JSON shape.

No I/O and no client: the provisioner, the CLI (``orion-jupyter manifests``) and the tests share it.
The backend shapes the pod: extended resources (orion, hami, nvidia), a ResourceClaim from a
ResourceClaimTemplate (dra: the template comes back in :class:`KernelManifests` for the launch to
create once), or KAI Scheduler's annotations, queue label and schedulerName (kai).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..allocation import CONNECTION_FILE_ENV, DOWNWARD_FIELDS, ENV_NAMES, KernelAllocation
from ..backends import Backend
from ..memory_cap import KERNEL_ARGUMENT
from ..names import (
    ANNOTATION_BACKEND,
    ANNOTATION_COURSE,
    ANNOTATION_KERNEL_SPEC,
    ANNOTATION_REQUEST,
    ANNOTATION_RESOURCES,
    ANNOTATION_USER,
    LABEL_COMPONENT,
    LABEL_COURSE,
    LABEL_KERNEL_ID,
    LABEL_MANAGED_BY,
    LABEL_USER,
    MANAGED_BY,
    slug,
)
from ..vgpu import VGPURequest, VGPURequestError, check_k8s_name
from .dra import add_claim_to_pod, claim_template
from .kai import pod_fields

CONNECTION_DIR = "/etc/orion-jupyter"
CONNECTION_KEY = "connection.json"
CONTAINER_NAME = "kernel"
CURVE_UNSUPPORTED = ("transport encryption (CurveZMQ) is required, but this kernel image cannot encrypt: it needs an "
                     "ipykernel that reads curve keys from its connection file (ipykernel 7) and pyzmq with libsodium")

# Runs in the kernel image (any Python 3 with ipykernel, old Orion client images included):
# ipykernel binds to the connection file's "ip", so copy the Secret's file with the pod IP set. With
# CurveZMQ keys in the file, a kernel that cannot use them (old ipykernel, pyzmq without libsodium) would
# talk plaintext or not at all: it exits at once with the reason instead. The memory-cap hook is loaded
# only where the image has orion-jupyter.
KERNEL_ENTRYPOINT = (
    "import json, os, sys, tempfile, importlib.util\n"
    f"src = os.environ['{CONNECTION_FILE_ENV}']\n"
    "with open(src) as f:\n"
    "    info = json.load(f)\n"
    "if info.get('curve_secretkey'):\n"
    "    try:\n"
    "        import zmq\n"
    "        from ipykernel.kernelapp import IPKernelApp\n"
    "        ok = bool(zmq.has('curve')) and 'curve_secretkey' in IPKernelApp.class_trait_names()\n"
    "    except Exception:\n"
    "        ok = False\n"
    "    if not ok:\n"
    f"        sys.exit('{CURVE_UNSUPPORTED}')\n"
    f"info['ip'] = os.environ.get('{ENV_NAMES['pod_ip']}') or '0.0.0.0'\n"
    f"path = os.path.join(tempfile.gettempdir(), 'orion-kernel-%s.json' % os.environ['{ENV_NAMES['kernel_id']}'])\n"
    "fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)\n"
    "with os.fdopen(fd, 'w') as f:\n"
    "    json.dump(info, f)\n"
    f"args = [a for a in sys.argv[1:] if a != '{KERNEL_ARGUMENT}' or importlib.util.find_spec('orion_jupyter')]\n"
    # run ipykernel in this interpreter (a second one would cost its start-up time on every launch)
    "sys.argv = ['ipykernel_launcher', '-f', path] + args\n"
    "import runpy\n"
    "runpy.run_module('ipykernel_launcher', run_name='__main__', alter_sys=True)\n"
)

_SLUG_RE = re.compile(r"[^a-z0-9]+")


def kernel_object_name(user: str, kernel_id: str, suffix: str) -> str:
    """'orion-alice-3f2a9c1d-x7k2p': readable in kubectl, unique per launch, at most 63 chars."""
    kernel_part = _SLUG_RE.sub("", kernel_id.lower())[:8] or "kernel"
    return check_k8s_name("pod name", f"orion-{slug(user, 20)}-{kernel_part}-{slug(suffix, 10)}")


@dataclass
class KernelPodOptions:
    """Everything that shapes a kernel pod; the provisioner fills it from its traitlets."""

    kernel_id: str
    user: str
    request: VGPURequest
    backend: Backend
    image: str
    namespace: str
    connection_info: Mapping[str, Any]
    name_suffix: str
    kernel_spec_name: str = ""
    course: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: list[dict] = field(default_factory=list)
    cpu_request: str | None = None
    cpu_limit: str | None = None
    memory_request: str | None = None
    memory_limit: str | None = None
    image_pull_policy: str = "IfNotPresent"
    extra_env: Mapping[str, str] = field(default_factory=dict)
    owner: Mapping[str, str] | None = None  # {'apiVersion','kind','name','uid'} of the server pod
    host_ipc: bool = False
    orion_controller: str | None = None
    python: str = "python"
    run_as_user: int = 1000
    run_as_group: int = 100
    scheduler_name: str | None = None  # default: the backend's (kai-scheduler for kai)
    priority_class_name: str | None = None  # default: the backend's (kai: its priority_class)
    # dra: the pod asks its GPU through a claim made from a ResourceClaimTemplate (returned in
    # KernelManifests.claim_template for the launch to create); off, the caller adds the claim itself.
    dra_claim: bool = False
    working_dir: str | None = None


@dataclass
class KernelManifests:
    pod: dict
    secret: dict
    claim_template: dict | None = None  # dra: the ResourceClaimTemplate the pod's claim is made from

    @property
    def uses_claims(self) -> bool:
        return self.claim_template is not None

    @property
    def name(self) -> str:
        return self.pod["metadata"]["name"]


def _label_value(text: str) -> str:
    return slug(text, 63) if text else ""


def build_kernel_manifests(opts: KernelPodOptions) -> KernelManifests:
    check_k8s_name("namespace", opts.namespace)
    name = kernel_object_name(opts.user, opts.kernel_id, opts.name_suffix)
    backend_fields = _backend_fields(opts)
    labels = {
        **opts.labels,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_COMPONENT: "kernel",
        LABEL_KERNEL_ID: _label_value(opts.kernel_id),
        LABEL_USER: _label_value(opts.user),
    }
    if opts.course:
        labels[LABEL_COURSE] = _label_value(opts.course)
    resources = opts.backend.resources(opts.request)
    annotations = {
        **backend_fields["annotations"],
        **opts.annotations,
        ANNOTATION_USER: opts.user,
        ANNOTATION_BACKEND: opts.backend.label,
        ANNOTATION_REQUEST: json.dumps(opts.request.as_dict(), sort_keys=True),
        ANNOTATION_RESOURCES: json.dumps(resources, sort_keys=True),
    }
    if opts.kernel_spec_name:
        annotations[ANNOTATION_KERNEL_SPEC] = opts.kernel_spec_name
    if opts.course:
        annotations[ANNOTATION_COURSE] = opts.course
    metadata: dict[str, Any] = {"name": name, "namespace": opts.namespace, "labels": labels}

    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {**metadata, "labels": dict(labels)},
        "type": "Opaque",
        "data": {CONNECTION_KEY: base64.b64encode(json.dumps(dict(opts.connection_info)).encode()).decode()},
    }

    pod_metadata = {**metadata, "labels": {**backend_fields["labels"], **labels}, "annotations": annotations}
    if opts.owner:
        pod_metadata["ownerReferences"] = [
            {
                "apiVersion": opts.owner.get("apiVersion", "v1"),
                "kind": opts.owner.get("kind", "Pod"),
                "name": opts.owner["name"],
                "uid": opts.owner["uid"],
                "blockOwnerDeletion": False,
            }
        ]
    spec = _pod_spec(opts, name, resources)
    for key, value in backend_fields["spec"].items():
        spec.setdefault(key, value)  # the operator's scheduler_name / priority_class_name come first
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": pod_metadata, "spec": spec}
    template = None
    if opts.dra_claim and opts.backend.uses_claims and opts.request.count:
        template = claim_template(opts.backend, opts.request, opts.namespace)
        pod = add_claim_to_pod(pod, template["metadata"]["name"], container=CONTAINER_NAME)
    return KernelManifests(pod=pod, secret=secret, claim_template=template)


def _backend_fields(opts: KernelPodOptions) -> dict[str, dict]:
    """What the backend itself puts on the pod: kai's queue label, annotations and scheduler."""
    if opts.backend.kai is None:
        spec: dict[str, Any] = {"schedulerName": opts.backend.scheduler_name} if opts.backend.scheduler_name else {}
        if opts.backend.remote and opts.backend.orion.node_selector:  # remote vGPUs: e.g. the CPU nodes
            spec["nodeSelector"] = dict(opts.backend.orion.node_selector)
        return {"labels": {}, "annotations": {}, "spec": spec}
    try:
        return pod_fields(opts.request, opts.course, opts.backend.kai, container=CONTAINER_NAME)
    except ValueError as err:  # gpu-fraction without device_memory_mib
        raise VGPURequestError("kai", opts.backend.kai.request, f"KAI settings: {err}") from None


def _memory_cap(opts: KernelPodOptions) -> str:
    """enforced by the backend (Orion, HAMi), cooperative (the framework hook), or none (no vGPU)."""
    if not opts.request.count:
        return "none"
    return "enforced" if opts.backend.memory_enforced else "cooperative"


def _env(opts: KernelPodOptions) -> list[dict]:
    allocation = KernelAllocation(
        cluster="kubernetes",
        backend=opts.backend.label,
        vgpus=opts.request.count,
        memory_mib=opts.request.memory_mib,
        compute_percent=opts.request.compute_percent,
        kernel_id=opts.kernel_id,
        user=opts.user,
        memory_cap=_memory_cap(opts),
    )
    values = {
        **opts.extra_env,
        **opts.backend.env(opts.request, controller=opts.orion_controller),
        **allocation.to_env(downward=True),
        CONNECTION_FILE_ENV: f"{CONNECTION_DIR}/{CONNECTION_KEY}",
    }
    env = [{"name": key, "value": str(value)} for key, value in values.items()]
    env += [
        {"name": ENV_NAMES[key], "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}
        for key, path in DOWNWARD_FIELDS.items()
    ]
    return env


def _compute_resources(opts: KernelPodOptions, extended: Mapping[str, int]) -> dict:
    requests = {k: v for k, v in (("cpu", opts.cpu_request), ("memory", opts.memory_request)) if v}
    limits = {k: v for k, v in (("cpu", opts.cpu_limit), ("memory", opts.memory_limit)) if v}
    # Extended resources cannot be overcommitted: the limit is required and requests must equal it.
    for resource, amount in extended.items():
        limits[resource] = str(amount)
        requests[resource] = str(amount)
    out = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _pod_spec(opts: KernelPodOptions, secret_name: str, extended: Mapping[str, int]) -> dict:
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": opts.image,
        "imagePullPolicy": opts.image_pull_policy,
        # The start hook caps memory where the backend does not (cooperative) and reports memory in use.
        "command": [opts.python, "-c", KERNEL_ENTRYPOINT, *([KERNEL_ARGUMENT] if opts.request.count else [])],
        "env": _env(opts),
        "resources": _compute_resources(opts, extended),
        "volumeMounts": [{"name": "connection", "mountPath": CONNECTION_DIR, "readOnly": True}],
        # Ready means the kernel listens: a kernel that dies while starting fails the launch with its reason.
        "readinessProbe": {"tcpSocket": {"port": int(opts.connection_info["shell_port"])}, "periodSeconds": 1,
                           "successThreshold": 1, "failureThreshold": 3},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "runAsUser": opts.run_as_user,
            "runAsGroup": opts.run_as_group,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if opts.working_dir:
        container["workingDir"] = opts.working_dir
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "fsGroup": opts.run_as_group,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {
                "name": "connection",
                "secret": {"secretName": secret_name, "defaultMode": 0o440},
            }
        ],
    }
    if opts.node_selector:
        spec["nodeSelector"] = dict(opts.node_selector)
    if opts.tolerations:
        spec["tolerations"] = [dict(t) for t in opts.tolerations]
    if opts.host_ipc and opts.backend.supports_host_ipc:
        spec["hostIPC"] = True
    if opts.scheduler_name:
        spec["schedulerName"] = opts.scheduler_name
    if opts.priority_class_name:
        spec["priorityClassName"] = opts.priority_class_name
    return spec


def secret_owner_patch(pod: Mapping[str, Any]) -> dict:
    """Makes the Secret go with its Pod (Kubernetes' garbage collector deletes it)."""
    meta = pod["metadata"]
    return {
        "metadata": {
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"],
                 "blockOwnerDeletion": False}
            ]
        }
    }


def add_user_storage(pod: dict, volumes: Sequence[Mapping], mounts: Sequence[Mapping], user: str,
                     server_name: str) -> None:
    """The user's volumes (KubeSpawner's {username} / {servername} templates) in a kernel pod."""
    values = {"username": slug(user, 63) if user else "", "servername": slug(server_name, 63) if server_name else ""}

    def fill(item: Any) -> Any:
        if isinstance(item, str):
            return item.format(**values)
        if isinstance(item, dict):
            return {k: fill(v) for k, v in item.items()}
        if isinstance(item, list):
            return [fill(v) for v in item]
        return item

    if volumes:
        pod["spec"]["volumes"] = [*pod["spec"].get("volumes", []), *fill(list(volumes))]
    if mounts:
        container = pod["spec"]["containers"][0]
        container["volumeMounts"] = [*container.get("volumeMounts", []), *fill(list(mounts))]
