"""Defaulting and validation of created/updated objects, following the API server's rules closely."""

from __future__ import annotations

import base64
import binascii
import copy
import re

from .errors import ApiError, invalid
from .selectors import is_extended_resource, parse_quantity

KINDS = {"pods": "Pod", "secrets": "Secret", "configmaps": "ConfigMap", "events": "Event", "nodes": "Node",
         "namespaces": "Namespace", "serviceaccounts": "ServiceAccount"}
PLURALS = {kind: plural for plural, kind in KINDS.items()}
NAMESPACED = {"pods", "secrets", "configmaps", "events", "serviceaccounts"}
CONFIG_MAP_LIMIT = 1048576  # bytes of a ConfigMap's data, as the API server allows

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
DNS_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start "
    "and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)


def dns_label_errors(value: str) -> list[str]:
    errors = []
    if len(value) > 63:
        errors.append("must be no more than 63 characters")
    if not _DNS_LABEL.match(value):
        errors.append(DNS_LABEL_MSG)
    return errors


def _qualified_name_errors(key: str) -> list[str]:
    prefix, _, name = key.rpartition("/")
    errors = []
    if "/" in key and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        errors.append("prefix part must be a lowercase RFC 1123 subdomain")
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        errors.append(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
            "with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
            "validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
        )
    return errors


def validate_metadata(kind: str, obj: dict) -> list[tuple[str, str, str]]:
    meta = obj["metadata"]
    causes = []
    for err in dns_label_errors(meta["name"]):
        causes.append(("metadata.name", "FieldValueInvalid", f'Invalid value: "{meta["name"]}": {err}'))
    for key, value in (meta.get("labels") or {}).items():
        for err in _qualified_name_errors(key):
            causes.append(("metadata.labels", "FieldValueInvalid", f'Invalid value: "{key}": {err}'))
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            causes.append((
                "metadata.labels", "FieldValueInvalid",
                f'Invalid value: "{value}": a valid label must be an empty string or consist of alphanumeric '
                "characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            ))
    for key, value in (meta.get("annotations") or {}).items():
        for err in _qualified_name_errors(key):
            causes.append(("metadata.annotations", "FieldValueInvalid", f'Invalid value: "{key}": {err}'))
        if not isinstance(value, str):
            raise ApiError(400, "BadRequest", f"annotation {key!r} must be a string")
    for i, ref in enumerate(meta.get("ownerReferences") or []):
        for fld in ("apiVersion", "kind", "name", "uid"):
            if not ref.get(fld):
                causes.append((f"metadata.ownerReferences[{i}].{fld}", "FieldValueRequired", "Required value"))
    return causes


# ---------------------------------------------------------------- pods


def _image_pull_policy(image: str) -> str:
    last = image.rsplit("/", 1)[-1]
    if "@" in last:
        return "IfNotPresent"
    tag = last.split(":", 1)[1] if ":" in last else "latest"
    return "Always" if tag == "latest" else "IfNotPresent"


def default_pod(pod: dict) -> None:
    spec = pod.setdefault("spec", {})
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    spec.setdefault("securityContext", {})
    spec.setdefault("priority", 0)
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    tolerations = spec.setdefault("tolerations", [])
    for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"):
        if not any(t.get("key") == key for t in tolerations):
            tolerations.append({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300})
    for container in list(spec.get("initContainers") or []) + list(spec.get("containers") or []):
        if container.get("image"):
            container.setdefault("imagePullPolicy", _image_pull_policy(container["image"]))
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        resources = container.setdefault("resources", {})
        limits = resources.get("limits") or {}
        if limits:
            requests = resources.setdefault("requests", {})
            for name, amount in limits.items():
                requests.setdefault(name, amount)
    for volume in spec.get("volumes") or []:
        if "secret" in volume:
            volume["secret"].setdefault("defaultMode", 0o644)
        if "configMap" in volume:
            volume["configMap"].setdefault("defaultMode", 0o644)
    pod["status"] = {"phase": "Pending", "qosClass": _qos_class(spec)}


def _qos_class(spec: dict) -> str:
    containers = spec.get("containers") or []
    seen, guaranteed = False, True
    for c in containers:
        res = c.get("resources") or {}
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        for name in ("cpu", "memory"):
            if name in req or name in lim:
                seen = True
            if name not in lim or req.get(name, lim.get(name)) != lim.get(name):
                guaranteed = False
    if not seen:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def validate_pod(pod: dict) -> None:
    name = pod["metadata"]["name"]
    causes = validate_metadata("Pod", pod)
    spec = pod.get("spec") or {}
    containers = spec.get("containers") or []
    if not containers:
        causes.append(("spec.containers", "FieldValueRequired", "Required value"))
    volume_names = [v.get("name") for v in spec.get("volumes") or []]
    for i, volume in enumerate(spec.get("volumes") or []):
        if not volume.get("name"):
            causes.append((f"spec.volumes[{i}].name", "FieldValueRequired", "Required value"))
        if volume_names.count(volume.get("name")) > 1:
            causes.append((f"spec.volumes[{i}].name", "FieldValueDuplicate", f'Duplicate value: "{volume["name"]}"'))
    if spec.get("restartPolicy") not in ("Always", "OnFailure", "Never"):
        causes.append((
            "spec.restartPolicy", "FieldValueNotSupported",
            f'Unsupported value: "{spec.get("restartPolicy")}": supported values: "Always", "OnFailure", "Never"',
        ))
    seen_names: set[str] = set()
    for kind, items in (("initContainers", spec.get("initContainers") or []), ("containers", containers)):
        for i, c in enumerate(items):
            path = f"spec.{kind}[{i}]"
            cname = c.get("name") or ""
            if not cname:
                causes.append((f"{path}.name", "FieldValueRequired", "Required value"))
            else:
                for err in dns_label_errors(cname):
                    causes.append((f"{path}.name", "FieldValueInvalid", f'Invalid value: "{cname}": {err}'))
                if cname in seen_names:
                    causes.append((f"{path}.name", "FieldValueDuplicate", f'Duplicate value: "{cname}"'))
                seen_names.add(cname)
            if not c.get("image"):
                causes.append((f"{path}.image", "FieldValueRequired", "Required value"))
            for j, mount in enumerate(c.get("volumeMounts") or []):
                if mount.get("name") not in volume_names:
                    causes.append((f"{path}.volumeMounts[{j}].name", "FieldValueNotFound",
                                   f'Not found: "{mount.get("name")}"'))
                if not str(mount.get("mountPath") or "").startswith("/"):
                    causes.append((f"{path}.volumeMounts[{j}].mountPath", "FieldValueRequired", "Required value"))
            causes += _resource_causes(f"{path}.resources", c.get("resources") or {})
    if causes:
        raise invalid("Pod", name, causes)


def _resource_causes(path: str, resources: dict) -> list[tuple[str, str, str]]:
    causes = []
    parsed: dict[str, dict] = {"limits": {}, "requests": {}}
    for section in ("limits", "requests"):
        for resource, amount in (resources.get(section) or {}).items():
            fld = f"{path}.{section}[{resource}]"
            try:
                value = parse_quantity(amount)
            except ValueError as exc:
                causes.append((fld, "FieldValueInvalid", f'Invalid value: "{amount}": {exc}'))
                continue
            if value < 0:
                causes.append((fld, "FieldValueInvalid",
                               f'Invalid value: "{amount}": must be greater than or equal to 0'))
            elif is_extended_resource(resource) and value.denominator != 1:
                causes.append((fld, "FieldValueInvalid", f'Invalid value: "{amount}": must be an integer'))
            parsed[section][resource] = (value, amount)
    limits, requests = parsed["limits"], parsed["requests"]
    for resource, (value, amount) in requests.items():
        if resource in limits:
            lim_value, lim_amount = limits[resource]
            if is_extended_resource(resource) and value != lim_value:
                causes.append((
                    f"{path}.requests[{resource}]", "FieldValueInvalid",
                    f'Invalid value: "{amount}": must be equal to {resource} limit of {lim_amount}',
                ))
            elif value > lim_value:
                causes.append((
                    f"{path}.requests[{resource}]", "FieldValueInvalid",
                    f'Invalid value: "{amount}": must be less than or equal to {resource} limit of {lim_amount}',
                ))
        elif is_extended_resource(resource):
            causes.append((f"{path}.limits", "FieldValueRequired",
                           "Required value: Limit must be set for non overcommitable resources"))
    return causes


_MUTABLE_POD_SPEC = (
    "spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`,"
    "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` "
    "(only additions to existing tolerations),`spec.terminationGracePeriodSeconds` "
    "(allow it to be set to 1 if it was previously negative)"
)


def check_pod_update(old: dict, new: dict) -> None:
    """Pod specs are immutable except for images, activeDeadlineSeconds and added tolerations."""

    def comparable(spec: dict) -> dict:
        spec = copy.deepcopy(spec)
        for key in ("activeDeadlineSeconds", "tolerations"):
            spec.pop(key, None)
        for c in list(spec.get("containers") or []) + list(spec.get("initContainers") or []):
            c.pop("image", None)
        return spec

    old_tol = old["spec"].get("tolerations") or []
    new_tol = new.get("spec", {}).get("tolerations") or []
    if comparable(old["spec"]) != comparable(new.get("spec") or {}) or any(t not in new_tol for t in old_tol):
        raise ApiError(422, "Invalid", f'Pod "{old["metadata"]["name"]}" is invalid: {_MUTABLE_POD_SPEC}')


# ---------------------------------------------------------------- secrets


def default_and_validate_secret(secret: dict) -> None:
    name = secret["metadata"]["name"]
    secret.setdefault("type", "Opaque")
    data = secret.get("data") or {}
    for key, value in data.items():
        if not isinstance(value, str):
            raise ApiError(400, "BadRequest",
                           f'Secret in version "v1" cannot be handled as a Secret: data[{key}] must be a base64 string')
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(
                400, "BadRequest",
                'Secret in version "v1" cannot be handled as a Secret: '
                f"illegal base64 data at input byte 0 (data[{key}])",
            ) from None
    for key, value in (secret.pop("stringData", None) or {}).items():
        data[key] = base64.b64encode(str(value).encode()).decode()
    if data:
        secret["data"] = data
    causes = validate_metadata("Secret", secret)
    for key in data:
        causes += _key_causes("data", key)
    if causes:
        raise invalid("Secret", name, causes)


def _key_causes(field: str, key: str) -> list[tuple[str, str, str]]:
    if _CONFIG_KEY.match(key) and len(key) <= 253:
        return []
    return [(f"{field}[{key}]", "FieldValueInvalid", f'Invalid value: "{key}": '
             "a valid config key must consist of alphanumeric characters, '-', '_' or '.'")]


def validate_configmap(configmap: dict) -> None:
    """Keys as a Secret's (in `data` or `binaryData`, not both), values strings (`binaryData`: base64), at most
    1 MiB of values (`binaryData` decoded), what the API server checks."""
    name = configmap["metadata"]["name"]
    causes = validate_metadata("ConfigMap", configmap)
    data = configmap.get("data") or {}
    for key, value in data.items():
        causes += _key_causes("data", key)
        if not isinstance(value, str):
            causes.append((f"data[{key}]", "FieldValueInvalid", "Invalid value: a ConfigMap's values are strings"))
    binary = configmap.get("binaryData") or {}
    size = sum(len(str(v).encode()) for v in data.values())
    for key, value in binary.items():
        causes += _key_causes("binaryData", key)
        if key in data:
            causes.append((f"binaryData[{key}]", "FieldValueDuplicate", "duplicate of key present in data"))
        try:
            size += len(base64.b64decode(value, validate=True))
        except (TypeError, ValueError):
            causes.append((f"binaryData[{key}]", "FieldValueInvalid", "Invalid value: not base64 (binaryData)"))
    if size > CONFIG_MAP_LIMIT:
        causes.append(("data", "FieldValueTooLong", f"Too long: must have at most {CONFIG_MAP_LIMIT} bytes"))
    if causes:
        raise invalid("ConfigMap", name, causes)


def validate_event(event: dict) -> None:
    causes = [c for c in validate_metadata("Event", event) if c[0] != "metadata.name"]
    if not _DNS_SUBDOMAIN.match(event["metadata"]["name"]):
        causes.append(("metadata.name", "FieldValueInvalid", f'Invalid value: "{event["metadata"]["name"]}"'))
    if causes:
        raise invalid("Event", event["metadata"]["name"], causes)


def prepare(plural: str, obj: dict, creating: bool) -> None:
    """Defaults (on create) and validates ``obj`` in place; raises ApiError."""
    if plural == "pods":
        if creating:
            default_pod(obj)
        validate_pod(obj)
    elif plural == "secrets":
        default_and_validate_secret(obj)
    elif plural == "configmaps":
        validate_configmap(obj)
    elif plural == "events":
        validate_event(obj)
    elif plural == "nodes":
        causes = [c for c in validate_metadata("Node", obj) if c[0] != "metadata.name"]
        if causes:
            raise invalid("Node", obj["metadata"]["name"], causes)
