"""Dynamic Resource Allocation (resource.k8s.io/v1) in the simulated cluster.

* The kinds: DeviceClass and ResourceSlice (cluster-scoped), ResourceClaim and ResourceClaimTemplate
  (namespaced), served under ``/apis/resource.k8s.io/v1``; registered here when this module is
  imported (the store imports it). Templates' and claims' specs are immutable; a claim's status is
  written only by the simulator (there is no status subresource).
* The resource claim controller's part: a pod's ``spec.resourceClaims[].resourceClaimTemplateName``
  becomes a ResourceClaim ``<pod>-<claim>-<5 chars>`` owned by the pod (so deleted with it), named
  in ``pod.status.resourceClaimStatuses``; a missing template is a ``FailedResourceClaimCreation``
  event and the pod waits.
* The scheduler's part (:class:`DraPlugin`, called by ``scheduler.py``): per node, the devices of
  its ResourceSlices (newest pool generation) that match the DeviceClass and request CEL selectors
  (evaluated with cel-python, with Kubernetes' ``quantity()`` functions), capacity requests against
  consumable capacity (``allowMultipleAllocations``, request policies: default, validRange with
  step, validValues), ``ExactCount``/``All`` and ``firstAvailable`` in order. A pod whose claims fit
  nowhere is Unschedulable with the scheduler's words ("cannot allocate all claims"); one that
  fits gets ``status.allocation`` (results with consumedCapacity and shareID for shared devices,
  a node selector) and ``status.reservedFor`` written before it is bound.
* Devices held by claims of finished or deleted pods count as free (Kubernetes deallocates them).
"""

from __future__ import annotations

import copy
import threading
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from fractions import Fraction

from . import selectors, validation
from .errors import ApiError, invalid
from .selectors import parse_quantity

GROUP, VERSION = "resource.k8s.io", "v1"
API_VERSION = f"{GROUP}/{VERSION}"
KINDS = {
    "deviceclasses": "DeviceClass",
    "resourceslices": "ResourceSlice",
    "resourceclaims": "ResourceClaim",
    "resourceclaimtemplates": "ResourceClaimTemplate",
}
NAMESPACED = {"resourceclaims", "resourceclaimtemplates"}
WAKES_SCHEDULER = set(KINDS)  # a change to any of them may let a pending pod fit
POD_CLAIM_ANNOTATION = "resource.kubernetes.io/pod-claim-name"
UNSCHEDULABLE_REASON = "cannot allocate all claims"
CONTROLLER = "resource_claim"


def register() -> None:
    """Adds the resource.k8s.io/v1 kinds to the simulator's tables (idempotent)."""
    validation.KINDS.update(KINDS)
    validation.PLURALS.update({kind: plural for plural, kind in KINDS.items()})
    validation.NAMESPACED.update(NAMESPACED)
    selectors.FIELDS.setdefault("resourceslices", {"metadata.name", "spec.nodeName", "spec.driver", "spec.pool.name"})
    selectors.FIELDS.setdefault("resourceclaims", {"metadata.name", "metadata.namespace"})


register()


def api_version(plural: str) -> str:
    return API_VERSION if plural in KINDS else "v1"


def api_group() -> dict:
    gv = {"groupVersion": API_VERSION, "version": VERSION}
    return {"name": GROUP, "versions": [gv], "preferredVersion": gv}


def api_resource_list() -> dict:
    verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": API_VERSION, "resources": [
        {"name": plural, "singularName": kind.lower(), "namespaced": plural in NAMESPACED, "kind": kind, "verbs": verbs}
        for plural, kind in sorted(KINDS.items())]}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- CEL, with Kubernetes' quantity library


class Quantity:
    """A Kubernetes quantity in CEL (``quantity("10Gi")`` and device capacities)."""

    __slots__ = ("value",)

    def __init__(self, value: Fraction):
        self.value = value

    def __repr__(self) -> str:
        return f"quantity({format_quantity(self.value)!r})"


def _cel_functions() -> dict:
    from celpy import celtypes

    def q(value: object) -> Quantity:
        if isinstance(value, Quantity):
            return value
        return Quantity(parse_quantity(str(value)))

    def cmp(a: Quantity, b: Quantity) -> int:
        return (a.value > b.value) - (a.value < b.value)

    return {
        "quantity": lambda s: q(s),
        "isQuantity": lambda s: celtypes.BoolType(_is_quantity(str(s))),
        "compareTo": lambda a, b: celtypes.IntType(cmp(q(a), q(b))),
        "isGreaterThan": lambda a, b: celtypes.BoolType(cmp(q(a), q(b)) > 0),
        "isLessThan": lambda a, b: celtypes.BoolType(cmp(q(a), q(b)) < 0),
        "asInteger": lambda a: celtypes.IntType(int(q(a).value)),
        "asApproximateFloat": lambda a: celtypes.DoubleType(float(q(a).value)),
        "isInteger": lambda a: celtypes.BoolType(q(a).value.denominator == 1),
        "sign": lambda a: celtypes.IntType((q(a).value > 0) - (q(a).value < 0)),
        "add": lambda a, b: Quantity(q(a).value + q(b).value),
        "sub": lambda a, b: Quantity(q(a).value - q(b).value),
    }


def _is_quantity(text: str) -> bool:
    try:
        parse_quantity(text)
        return True
    except ValueError:
        return False


class Cel:
    """Compiled device selectors (cached by expression text)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._programs: dict[str, object] = {}
        self._env = None
        self._functions: dict | None = None

    def compile(self, expression: str):
        """The program for ``expression``; raises ValueError with the parser's message."""
        with self._lock:
            if expression in self._programs:
                return self._programs[expression]
            import celpy

            if self._env is None:
                self._env, self._functions = celpy.Environment(), _cel_functions()
            try:
                program = self._env.program(self._env.compile(expression), functions=self._functions)
            except Exception as exc:  # celpy's parse errors
                raise ValueError(f"compilation failed: {exc}") from None
            self._programs[expression] = program
            return program

    def matches(self, expression: str, device: dict) -> bool:
        """Whether the selector holds for the device (a runtime error, like a missing attribute, is False)."""
        program = self.compile(expression)
        try:
            result = program.evaluate({"device": device["cel"]})
        except Exception:  # CELEvalError: no such key, no such overload, ...
            return False
        return bool(result) if not isinstance(result, Exception) else False


CEL = Cel()


def cel_device(driver: str, raw: dict):
    """The ``device`` variable of a selector: driver, attributes and capacity by domain."""
    import celpy
    from celpy import celtypes

    attributes: dict[str, dict] = {}
    for key, value in (raw.get("attributes") or {}).items():
        domain, _, name = key.rpartition("/")
        for kind in ("string", "int", "bool", "version"):
            if kind in (value or {}):
                attributes.setdefault(domain or driver, {})[name] = value[kind]
    capacity: dict = {}
    for key, value in (raw.get("capacity") or {}).items():
        domain, _, name = key.rpartition("/")
        capacity.setdefault(celtypes.StringType(domain or driver), celtypes.MapType())[
            celtypes.StringType(name)] = Quantity(parse_quantity((value or {}).get("value", 0)))
    return celtypes.MapType({
        celtypes.StringType("driver"): celtypes.StringType(driver),
        celtypes.StringType("attributes"): celpy.json_to_cel(attributes),
        celtypes.StringType("capacity"): celtypes.MapType(capacity),
        celtypes.StringType("allowMultipleAllocations"): celtypes.BoolType(bool(raw.get("allowMultipleAllocations"))),
    })


def format_quantity(value: Fraction) -> str:
    """Canonical-ish: 4Gi, 512Mi, 30, 500m."""
    if value.denominator == 1:
        n = value.numerator
        for suffix, size in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
            if n and n % size == 0 and n >= size:
                return f"{n // size}{suffix}"
        return str(n)
    return selectors.format_quantity(value)


# ---------------------------------------------------------------- validation


def _selector_causes(path: str, items: list | None) -> list[tuple[str, str, str]]:
    causes = []
    for i, selector in enumerate(items or []):
        expression = ((selector or {}).get("cel") or {}).get("expression")
        if not expression:
            causes.append((f"{path}[{i}].cel.expression", "FieldValueRequired", "Required value"))
            continue
        try:
            CEL.compile(expression)
        except ValueError as exc:
            causes.append((f"{path}[{i}].cel.expression", "FieldValueInvalid", f"Invalid value: {expression!r}: {exc}"))
    return causes


def _device_request_causes(path: str, spec: dict, subrequest: bool) -> list[tuple[str, str, str]]:
    causes = []
    if not spec.get("deviceClassName"):
        causes.append((f"{path}.deviceClassName", "FieldValueRequired", "Required value"))
    mode = spec.get("allocationMode") or "ExactCount"
    if mode not in ("ExactCount", "All"):
        causes.append((f"{path}.allocationMode", "FieldValueNotSupported",
                       f'Unsupported value: "{mode}": supported values: "All", "ExactCount"'))
    if mode == "ExactCount" and int(spec.get("count") or 1) < 1:
        causes.append((f"{path}.count", "FieldValueInvalid", "Invalid value: must be greater than zero"))
    for name, amount in (((spec.get("capacity") or {}).get("requests")) or {}).items():
        try:
            parse_quantity(amount)
        except ValueError as exc:
            causes.append((f"{path}.capacity.requests[{name}]", "FieldValueInvalid",
                           f'Invalid value: "{amount}": {exc}'))
    return causes + _selector_causes(f"{path}.selectors", spec.get("selectors"))


def _claim_spec_causes(path: str, spec: dict) -> list[tuple[str, str, str]]:
    causes = []
    names = set()
    for i, request in enumerate(((spec or {}).get("devices") or {}).get("requests") or []):
        rpath = f"{path}.devices.requests[{i}]"
        name = request.get("name") or ""
        if not name or validation.dns_label_errors(name):
            causes.append((f"{rpath}.name", "FieldValueInvalid", f'Invalid value: "{name}"'))
        if name in names:
            causes.append((f"{rpath}.name", "FieldValueDuplicate", f'Duplicate value: "{name}"'))
        names.add(name)
        if bool(request.get("exactly")) == bool(request.get("firstAvailable")):
            causes.append((rpath, "FieldValueRequired",
                           "Required value: exactly one of `exactly` or `firstAvailable` is required"))
        if request.get("exactly"):
            causes += _device_request_causes(f"{rpath}.exactly", request["exactly"], False)
        for j, sub in enumerate(request.get("firstAvailable") or []):
            if not sub.get("name") or validation.dns_label_errors(sub["name"]):
                causes.append((f"{rpath}.firstAvailable[{j}].name", "FieldValueInvalid",
                               f'Invalid value: "{sub.get("name")}"'))
            causes += _device_request_causes(f"{rpath}.firstAvailable[{j}]", sub, True)
    return causes


def _slice_causes(obj: dict) -> list[tuple[str, str, str]]:
    spec = obj.get("spec") or {}
    causes = []
    if not spec.get("driver"):
        causes.append(("spec.driver", "FieldValueRequired", "Required value"))
    pool = spec.get("pool") or {}
    for fld in ("name", "generation", "resourceSliceCount"):
        if pool.get(fld) in (None, ""):
            causes.append((f"spec.pool.{fld}", "FieldValueRequired", "Required value"))
    if sum(1 for k in ("nodeName", "allNodes", "nodeSelector", "perDeviceNodeSelection") if spec.get(k)) != 1:
        causes.append(("spec", "FieldValueRequired",
                       "Required value: exactly one of `nodeName`, `nodeSelector`, `allNodes`, "
                       "`perDeviceNodeSelection` is required"))
    seen = set()
    for i, device in enumerate(spec.get("devices") or []):
        name = device.get("name") or ""
        if not name or validation.dns_label_errors(name):
            causes.append((f"spec.devices[{i}].name", "FieldValueInvalid", f'Invalid value: "{name}"'))
        if name in seen:
            causes.append((f"spec.devices[{i}].name", "FieldValueDuplicate", f'Duplicate value: "{name}"'))
        seen.add(name)
        for cname, cap in (device.get("capacity") or {}).items():
            try:
                parse_quantity((cap or {}).get("value"))
            except ValueError as exc:
                causes.append((f"spec.devices[{i}].capacity[{cname}].value", "FieldValueInvalid", str(exc)))
            if (cap or {}).get("requestPolicy") and not device.get("allowMultipleAllocations"):
                causes.append((f"spec.devices[{i}].capacity[{cname}].requestPolicy", "FieldValueForbidden",
                               "Forbidden: allowMultipleAllocations must be true"))
    return causes


def prepare(plural: str, obj: dict, old: dict | None) -> None:
    """Validates (and on update, keeps immutable parts of) a resource.k8s.io object; others pass."""
    if plural not in KINDS:
        return
    kind, name = KINDS[plural], obj["metadata"]["name"]
    causes = validation.validate_metadata(kind, obj)
    if plural != "resourceclaims" and plural != "resourceclaimtemplates":
        causes = [c for c in causes if c[0] != "metadata.name"]  # cluster objects: DNS subdomains
        if not validation._DNS_SUBDOMAIN.match(name) or len(name) > 253:
            causes.append(("metadata.name", "FieldValueInvalid",
                           f'Invalid value: "{name}": a lowercase RFC 1123 subdomain'))
    if plural == "deviceclasses":
        causes += _selector_causes("spec.selectors", (obj.get("spec") or {}).get("selectors"))
    elif plural == "resourceslices":
        causes += _slice_causes(obj)
    elif plural == "resourceclaimtemplates":
        causes += _claim_spec_causes("spec.spec", (obj.get("spec") or {}).get("spec") or {})
    elif plural == "resourceclaims":
        causes += _claim_spec_causes("spec", obj.get("spec") or {})
    immutable = plural in ("resourceclaims", "resourceclaimtemplates")
    if old is not None and immutable and obj.get("spec") != old.get("spec"):
        causes.append(("spec", "FieldValueInvalid", "Invalid value: field is immutable"))
    if causes:
        err = invalid(f"{kind}.{GROUP}", name, causes)
        err.details = {**(err.details or {}), "kind": kind, "group": GROUP}
        raise err
    if plural == "resourceclaims":  # status is written by the control plane only
        if old is None:
            obj.pop("status", None)
        else:
            obj["status"] = copy.deepcopy(old.get("status") or {})
            if obj["status"] == {}:
                obj.pop("status")


# ---------------------------------------------------------------- allocation


def _policy_amount(requested: Fraction | None, capacity: dict) -> Fraction | None:
    """What a share consumes of one capacity (None: the request cannot be met by this policy)."""
    value = parse_quantity(capacity.get("value", 0))
    policy = capacity.get("requestPolicy") or {}
    if requested is None:
        return parse_quantity(policy["default"]) if policy.get("default") is not None else value
    valid_values = [parse_quantity(v) for v in policy.get("validValues") or []]
    if valid_values:
        fitting = [v for v in sorted(valid_values) if v >= requested]
        return fitting[0] if fitting else None
    valid_range = policy.get("validRange") or {}
    if valid_range:
        low = parse_quantity(valid_range.get("min", 0))
        amount = max(requested, low)
        if valid_range.get("step") is not None:
            step = parse_quantity(valid_range["step"])
            if step > 0:
                steps = -(-(amount - low) // step)
                amount = low + steps * step
        if valid_range.get("max") is not None and amount > parse_quantity(valid_range["max"]):
            return None
        return amount
    return requested


def _capacity_key(device_capacity: dict, name: str) -> str | None:
    if name in device_capacity:
        return name
    short = name.rpartition("/")[2]
    return next((k for k in device_capacity if k.rpartition("/")[2] == short), None)


class DraPlugin:
    """The scheduler's DRA filter and reserve steps plus the claim controller, over the store."""

    def __init__(self, store) -> None:
        self.store = store
        self._allocations: dict[tuple[str, str], dict[str, dict]] = {}  # (pod uid, node) -> {claim: allocation}

    @staticmethod
    def wakes(plural: str) -> bool:
        return plural in WAKES_SCHEDULER

    # ------------------------------------------------------------ claims of a pod (controller)

    def claims_for(self, pod: dict) -> list[dict] | None:
        """The pod's ResourceClaims, made from their templates when missing; None while one cannot be."""
        pod_claims = (pod.get("spec") or {}).get("resourceClaims") or []
        if not pod_claims:
            return []
        meta = pod["metadata"]
        namespace, uid = meta["namespace"], meta["uid"]
        with self.store.lock:
            current = self.store.get("pods", namespace, meta["name"])
            if current is None or current["metadata"]["uid"] != uid:
                return None
            statuses = {s["name"]: s.get("resourceClaimName")
                        for s in (current.get("status") or {}).get("resourceClaimStatuses") or []}
            claims, new_statuses = [], dict(statuses)
            for pod_claim in pod_claims:
                name = pod_claim.get("name")
                if pod_claim.get("resourceClaimName"):
                    claim = self.store.get("resourceclaims", namespace, pod_claim["resourceClaimName"])
                    if claim is None:
                        return None
                    claims.append(claim)
                    continue
                claim = self.store.get("resourceclaims", namespace, statuses[name]) if statuses.get(name) else None
                if claim is None:
                    claim = self._owned_claim(namespace, uid, name) or self._make_claim(current, pod_claim)
                    if claim is None:
                        return None
                    new_statuses[name] = claim["metadata"]["name"]
                claims.append(claim)
            if new_statuses != statuses:

                def write(p: dict) -> None:
                    p.setdefault("status", {})["resourceClaimStatuses"] = [
                        {"name": c["name"], "resourceClaimName": new_statuses[c["name"]]}
                        for c in pod_claims if c.get("name") in new_statuses
                    ]

                self.store.update("pods", namespace, meta["name"], write, uid=uid)
            return claims

    def _owned_claim(self, namespace: str, uid: str, pod_claim: str) -> dict | None:
        for claim in self.store.list("resourceclaims", namespace)[0]:
            meta = claim["metadata"]
            if (meta.get("annotations") or {}).get(POD_CLAIM_ANNOTATION) == pod_claim and any(
                    r.get("uid") == uid and r.get("controller") for r in meta.get("ownerReferences") or []):
                return claim
        return None

    def _make_claim(self, pod: dict, pod_claim: dict) -> dict | None:
        meta = pod["metadata"]
        template_name = pod_claim.get("resourceClaimTemplateName") or ""
        template = self.store.get("resourceclaimtemplates", meta["namespace"], template_name)
        if template is None:
            self.store.record_event(
                pod, "Warning", "FailedResourceClaimCreation",
                f'PodResourceClaim {pod_claim.get("name")}: resource claim template "{template_name}": '
                f'resourceclaimtemplate.resource.k8s.io "{template_name}" not found',
                "resource_claim", aggregate_key=("template", template_name),
            )
            return None
        base = f"{meta['name']}-{pod_claim['name']}"
        if len(base) > 57:  # like the controller: both parts shortened in proportion, 5 random characters after
            keep_pod = len(meta["name"]) * 57 // len(base)
            base = meta["name"][:keep_pod] + "-" + pod_claim["name"][: 57 - keep_pod - 1]
        template_meta = (template.get("spec") or {}).get("metadata") or {}
        body = {
            "metadata": {
                "generateName": base + "-",
                "labels": dict(template_meta.get("labels") or {}),
                "annotations": {**(template_meta.get("annotations") or {}), POD_CLAIM_ANNOTATION: pod_claim["name"]},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"],
                                     "controller": True, "blockOwnerDeletion": True}],
            },
            "spec": copy.deepcopy((template.get("spec") or {}).get("spec") or {}),
        }
        if not body["metadata"]["labels"]:
            del body["metadata"]["labels"]
        try:
            return self.store.create("resourceclaims", meta["namespace"], body)
        except ApiError as exc:
            self.store.record_event(pod, "Warning", "FailedResourceClaimCreation",
                                    f"PodResourceClaim {pod_claim['name']}: {exc.message}", CONTROLLER)
            return None

    # ------------------------------------------------------------ what is in use

    def _live_consumer(self, claim: dict) -> bool:
        refs = (claim.get("status") or {}).get("reservedFor") or []
        if not refs:
            return True  # allocated and not yet reserved: held
        for ref in refs:
            pod = self.store.get("pods", claim["metadata"]["namespace"], ref.get("name", ""))
            if pod is not None and pod["metadata"]["uid"] == ref.get("uid") and \
                    (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                return True
        return False

    def _usage(self) -> dict[tuple[str, str, str], dict]:
        """(driver, pool, device) -> {'exclusive': bool, 'consumed': {capacity: Fraction}}."""
        usage: dict[tuple[str, str, str], dict] = {}
        for claim in self.store.list("resourceclaims")[0]:
            allocation = (claim.get("status") or {}).get("allocation")
            if not allocation or not self._live_consumer(claim):
                continue
            for result in (allocation.get("devices") or {}).get("results") or []:
                entry = usage.setdefault((result["driver"], result["pool"], result["device"]),
                                         {"exclusive": False, "consumed": {}})
                if result.get("consumedCapacity") is None and not result.get("shareID"):
                    entry["exclusive"] = True
                for name, amount in (result.get("consumedCapacity") or {}).items():
                    entry["consumed"][name] = entry["consumed"].get(name, Fraction(0)) + parse_quantity(amount)
        return usage

    def _node_devices(self, node: dict) -> list[dict]:
        name = node["metadata"]["name"]
        slices = [s for s in self.store.list("resourceslices")[0]
                  if (s.get("spec") or {}).get("nodeName") == name or (s.get("spec") or {}).get("allNodes")]
        newest: dict[tuple[str, str], int] = {}
        for s in slices:
            key = (s["spec"]["driver"], s["spec"]["pool"]["name"])
            newest[key] = max(newest.get(key, 0), int(s["spec"]["pool"].get("generation") or 0))
        devices = []
        for s in sorted(slices, key=lambda s: s["metadata"]["name"]):
            spec = s["spec"]
            if int(spec["pool"].get("generation") or 0) < newest[(spec["driver"], spec["pool"]["name"])]:
                continue
            for raw in spec.get("devices") or []:
                devices.append({"driver": spec["driver"], "pool": spec["pool"]["name"], "name": raw["name"], "raw": raw,
                                "cel": cel_device(spec["driver"], raw)})
        return devices

    # ------------------------------------------------------------ filter and reserve

    def filter(self, pod: dict, node: dict, claims: list[dict]) -> list[str]:
        """Why the pod's claims cannot be allocated on ``node`` (empty: they can; the allocation is kept)."""
        uid, node_name = pod["metadata"]["uid"], node["metadata"]["name"]
        self._allocations.pop((uid, node_name), None)
        if not claims:
            return []
        with self.store.lock:
            usage = self._usage()
            devices = self._node_devices(node)
            classes = {c["metadata"]["name"]: c for c in self.store.list("deviceclasses")[0]}
        allocations: dict[str, dict] = {}
        for claim in claims:
            allocation = (claim.get("status") or {}).get("allocation")
            if allocation:
                if _allocation_node(allocation) not in (None, node_name):
                    return ["resourceclaim not available on the node"]
                continue
            results = []
            for request in ((claim.get("spec") or {}).get("devices") or {}).get("requests") or []:
                if request.get("exactly"):
                    picked = self._pick(request["name"], request["exactly"], devices, classes, usage)
                else:
                    picked = None
                    for sub in request.get("firstAvailable") or []:
                        picked = self._pick(f"{request['name']}/{sub['name']}", sub, devices, classes, usage)
                        if picked is not None:
                            break
                if picked is None:
                    return [UNSCHEDULABLE_REASON]
                results += picked
            allocations[claim["metadata"]["name"]] = {
                "devices": {"results": results},
                "nodeSelector": {"nodeSelectorTerms": [{"matchFields": [
                    {"key": "metadata.name", "operator": "In", "values": [node_name]}]}]},
            }
        self._allocations[(uid, node_name)] = allocations
        return []

    def _pick(self, request_name: str, spec: dict, devices: list[dict], classes: dict,
              usage: dict) -> list[dict] | None:
        device_class = classes.get(spec.get("deviceClassName", ""))
        if device_class is None:
            return None
        expressions = [s["cel"]["expression"] for s in (device_class.get("spec") or {}).get("selectors") or []]
        expressions += [s["cel"]["expression"] for s in spec.get("selectors") or []]
        wanted = {k: parse_quantity(v) for k, v in (((spec.get("capacity") or {}).get("requests")) or {}).items()}
        mode = spec.get("allocationMode") or "ExactCount"
        count = int(spec.get("count") or 1)
        chosen: list[dict] = []
        for device in devices:
            if mode == "ExactCount" and len(chosen) == count:
                break
            key = (device["driver"], device["pool"], device["name"])
            consumed = self._fits(device["raw"], wanted, usage.get(key))
            if consumed is None or not all(CEL.matches(e, device) for e in expressions):
                continue
            result = {"request": request_name, "driver": device["driver"], "pool": device["pool"],
                      "device": device["name"]}
            entry = usage.setdefault(key, {"exclusive": False, "consumed": {}})
            if device["raw"].get("allowMultipleAllocations"):
                result["consumedCapacity"] = {k: format_quantity(v) for k, v in consumed.items()}
                result["shareID"] = str(uuid.uuid4())
                for k, v in consumed.items():
                    entry["consumed"][k] = entry["consumed"].get(k, Fraction(0)) + v
            else:
                entry["exclusive"] = True
            chosen.append(result)
        if (mode == "ExactCount" and len(chosen) < count) or not chosen:
            for result in chosen:  # give back what this request took
                key = (result["driver"], result["pool"], result["device"])
                if "consumedCapacity" in result:
                    for k, v in result["consumedCapacity"].items():
                        usage[key]["consumed"][k] -= parse_quantity(v)
                else:
                    usage[key]["exclusive"] = False
            return None
        return chosen

    @staticmethod
    def _fits(raw: dict, wanted: dict[str, Fraction], used: dict | None) -> dict[str, Fraction] | None:
        """What the device would give (consumed per capacity; {} for an exclusive one), or None."""
        capacity = raw.get("capacity") or {}
        keys = {}
        for name in wanted:
            key = _capacity_key(capacity, name)
            if key is None:
                return None
            keys[key] = wanted[name]
        if not raw.get("allowMultipleAllocations"):
            if used and (used["exclusive"] or used["consumed"]):
                return None
            if any(parse_quantity(capacity[k].get("value", 0)) < v for k, v in keys.items()):
                return None
            return {}
        if used and used["exclusive"]:
            return None
        consumed = {}
        for key, cap in capacity.items():
            amount = _policy_amount(keys.get(key), cap or {})
            if amount is None:
                return None
            already = (used or {}).get("consumed", {}).get(key, Fraction(0))
            if already + amount > parse_quantity((cap or {}).get("value", 0)):
                return None
            consumed[key] = amount
        return consumed

    def reserve(self, pod: dict, node_name: str, claims: list[dict]) -> bool:
        """Writes the allocations found by :meth:`filter` and reserves the claims for the pod."""
        if not claims:
            return True
        meta = pod["metadata"]
        allocations = self._allocations.pop((meta["uid"], node_name), None)
        if allocations is None:
            return False
        consumer = {"resource": "pods", "name": meta["name"], "uid": meta["uid"]}
        stamp = _now()
        for claim in claims:
            name = claim["metadata"]["name"]

            allocation = allocations.get(name)

            def write(c: dict, allocation=allocation) -> bool | None:
                status = c.setdefault("status", {})
                if allocation is not None and not status.get("allocation"):
                    status["allocation"] = {**allocation, "allocationTimestamp": stamp}
                reserved = status.setdefault("reservedFor", [])
                if not any(r.get("uid") == meta["uid"] for r in reserved):
                    reserved.append(dict(consumer))
                return None

            if self.store.update("resourceclaims", meta["namespace"], name, write,
                                 uid=claim["metadata"]["uid"]) is None:
                return False
        return True


def _allocation_node(allocation: dict) -> str | None:
    for term in ((allocation.get("nodeSelector") or {}).get("nodeSelectorTerms") or []):
        for field in term.get("matchFields") or []:
            if field.get("key") == "metadata.name" and field.get("values"):
                return field["values"][0]
    return None


# ---------------------------------------------------------------- objects for tests and benchmarks


def device_class(name: str, driver: str, extra_selectors: Iterable[str] = ()) -> dict:
    """A DeviceClass selecting a driver's devices (plus further CEL selectors)."""
    expressions = [f"device.driver == '{driver}'", *extra_selectors]
    return {"apiVersion": API_VERSION, "kind": "DeviceClass", "metadata": {"name": name},
            "spec": {"selectors": [{"cel": {"expression": e}} for e in expressions]}}


def resource_slice(node: str, driver: str, devices: list[dict], name: str | None = None, generation: int = 1) -> dict:
    """A ResourceSlice with all of ``node``'s devices of ``driver`` (one pool named after the node)."""
    slug = driver.replace(".", "-").replace("/", "-")
    return {"apiVersion": API_VERSION, "kind": "ResourceSlice",
            "metadata": {"name": name or f"{node}-{slug}"[:253]},
            "spec": {"driver": driver, "nodeName": node,
                     "pool": {"name": node, "generation": generation, "resourceSliceCount": 1},
                     "devices": devices}}


def shared_gpu(name: str, memory: str, cores: int = 100, memory_step: str = "1Mi", **attributes: object) -> dict:
    """A GPU offered as consumable capacity (HAMi-style): memory (in steps) and cores (default 0 each)."""
    return {
        "name": name,
        "allowMultipleAllocations": True,
        "attributes": {k: _attribute(v) for k, v in {"type": "gpu", **attributes}.items()},
        "capacity": {
            "memory": {"value": memory, "requestPolicy": {"default": memory_step,
                                                          "validRange": {"min": memory_step, "step": memory_step}}},
            "cores": {"value": str(cores), "requestPolicy": {"default": "0", "validRange": {"min": "0", "step": "1"}}},
        },
    }


def exclusive_device(name: str, memory: str, **attributes: object) -> dict:
    """A device given whole (a GPU, a MIG instance: e.g. type='mig', profile='1g.10gb')."""
    return {"name": name, "attributes": {k: _attribute(v) for k, v in attributes.items()},
            "capacity": {"memory": {"value": memory}}}


def _attribute(value: object) -> dict:
    if isinstance(value, bool):
        return {"bool": value}
    if isinstance(value, int):
        return {"int": value}
    return {"string": str(value)}
