"""Dynamic Resource Allocation (resource.k8s.io/v1) for kernel pods: pure functions over plain dicts.

* :func:`claim_template` - one ResourceClaimTemplate per vGPU request, flavor list and namespace.
  Templates are immutable, so the name carries a hash of the spec: create it once (a 409
  AlreadyExists means it is there, with this very spec) and reuse it; a changed flavor is a new name.
* :func:`pod_claim_fields` / :func:`add_claim_to_pod` - what the kernel pod needs to use it:
  ``spec.resourceClaims[{name: vgpu, resourceClaimTemplateName}]`` and the container's
  ``resources.claims[{name: vgpu}]``. Kubernetes makes a ResourceClaim ``<pod>-vgpu-<suffix>`` from
  the template, owned by the pod (deleted with it), and names it in
  ``pod.status.resourceClaimStatuses``.
* :func:`claim_launch_state` - while the pod is pending: waiting, allocated, or unschedulable (the
  scheduler found no device: end the launch at once, naming what was short).
* :func:`granted_devices` - what a claim got: driver, pool (node), device, consumed capacity.
* The pool from ResourceSlices and claims is in :mod:`.dra_pool`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..names import ANNOTATION_REQUEST, LABEL_COMPONENT, LABEL_MANAGED_BY, MANAGED_BY
from ..pool import DevicePool, PoolSnapshot
from ..vgpu import VGPURequest, format_mib

if TYPE_CHECKING:  # pragma: no cover
    from ..backends import Backend, DraFlavor

API_VERSION = "resource.k8s.io/v1"
POD_CLAIM_NAME = "vgpu"  # the pod's spec.resourceClaims[].name and the container's resources.claims[].name
REQUEST_NAME = "gpu"  # the device request in the claim (results name "gpu" or "gpu/<flavor>")
POD_CLAIM_ANNOTATION = "resource.kubernetes.io/pod-claim-name"  # set by Kubernetes on generated claims
DRA_DEVICES = "dra/devices"  # pool-only resource names (never in a pod spec)
DRA_MEMORY = "dra/memory"  # MiB
DRA_CORES = "dra/cores"  # percent of a GPU, summed

# The project's labels (as in orion_jupyter.names); literal here to keep this module standalone.
_ANNOTATION_FLAVORS = "orion-jupyter.io/dra-flavors"


def memory_quantity(mib: int) -> str:
    """4096 -> '4Gi', 1536 -> '1536Mi'."""
    return f"{mib // 1024}Gi" if mib % 1024 == 0 else f"{mib}Mi"


def quantity_mib(value: object) -> int:
    from kubernetes.utils.quantity import parse_quantity

    try:
        return int(parse_quantity(value) / (1024 * 1024))
    except (ValueError, TypeError, ArithmeticError):
        return 0


def quantity_int(value: object) -> int:
    from kubernetes.utils.quantity import parse_quantity

    try:
        return int(parse_quantity(value))
    except (ValueError, TypeError, ArithmeticError):
        return 0


# ---------------------------------------------------------------- templates


def flavor_list(flavors: Backend | Iterable[DraFlavor]) -> list[DraFlavor]:
    found = list(getattr(flavors, "dra_flavors", flavors))
    if not found:
        raise ValueError("no DRA flavors: use the dra backend, or give a list of DraFlavor")
    return found


def _fill(expression: str, request: VGPURequest) -> str:
    for key, value in (("{memory}", memory_quantity(request.memory_mib)), ("{memory_mib}", str(request.memory_mib)),
                       ("{compute}", str(request.compute_percent if request.compute_percent is not None else 100))):
        expression = expression.replace(key, value)
    return expression


def _exact(flavor: DraFlavor, request: VGPURequest) -> dict:
    exact: dict[str, Any] = {"deviceClassName": flavor.device_class, "allocationMode": "ExactCount",
                             "count": request.count}
    if flavor.selectors:
        exact["selectors"] = [{"cel": {"expression": _fill(s, request)}} for s in flavor.selectors]
    capacity = {}
    if "memory" in flavor.capacity:
        capacity[flavor.capacity["memory"]] = memory_quantity(request.memory_mib)
    if "compute" in flavor.capacity and request.compute_percent is not None:
        capacity[flavor.capacity["compute"]] = str(request.compute_percent)
    if capacity:
        exact["capacity"] = {"requests": capacity}
    return exact


def device_request(request: VGPURequest, flavors: Backend | Iterable[DraFlavor]) -> dict:
    """The claim's DeviceRequest: ``exactly`` for one flavor, ``firstAvailable`` (in order) for several."""
    if request.count < 1:
        raise ValueError("a CPU-only kernel needs no ResourceClaim")
    found = flavor_list(flavors)
    if len(found) == 1:
        return {"name": REQUEST_NAME, "exactly": _exact(found[0], request)}
    return {"name": REQUEST_NAME, "firstAvailable": [{"name": f.name, **_exact(f, request)} for f in found]}


def claim_template(flavors: Backend | Iterable[DraFlavor], request: VGPURequest, namespace: str) -> dict:
    """The ResourceClaimTemplate for ``request`` in ``namespace``; its name hashes its spec.

    The claims made from it carry the vGPU request and flavors as annotations, so a reader of a claim
    (or of the pool) can say what a kernel asked for.
    """
    found = flavor_list(flavors)
    request_json = json.dumps(request.as_dict(), sort_keys=True)
    spec = {
        "metadata": {
            "labels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_COMPONENT: "vgpu-claim"},
            "annotations": {ANNOTATION_REQUEST: request_json, _ANNOTATION_FLAVORS: ",".join(f.name for f in found)},
        },
        "spec": {"devices": {"requests": [device_request(request, found)]}},
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:10]
    size = memory_quantity(request.memory_mib).lower()
    compute = f"-c{request.compute_percent}" if request.compute_percent is not None else ""
    name = f"orion-vgpu-{request.count}x{size}{compute}-{digest}"
    return {
        "apiVersion": API_VERSION,
        "kind": "ResourceClaimTemplate",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_COMPONENT: "vgpu-claim-template"},
            "annotations": {ANNOTATION_REQUEST: request_json},
        },
        "spec": spec,
    }


def pod_claim_fields(template_name: str) -> dict:
    """What to merge into the kernel pod::

        {"pod_spec": {"resourceClaims": [{"name": "vgpu", "resourceClaimTemplateName": template_name}]},
         "container": {"resources": {"claims": [{"name": "vgpu"}]}}}
    """
    return {
        "pod_spec": {"resourceClaims": [{"name": POD_CLAIM_NAME, "resourceClaimTemplateName": template_name}]},
        "container": {"resources": {"claims": [{"name": POD_CLAIM_NAME}]}},
    }


def add_claim_to_pod(pod: Mapping, template_name: str, container: str | None = None) -> dict:
    """A copy of ``pod`` that uses the template (appended to any claims it has; the first container,
    or the one named ``container``)."""
    out = json.loads(json.dumps(pod))
    fields = pod_claim_fields(template_name)
    spec = out.setdefault("spec", {})
    spec["resourceClaims"] = [*(spec.get("resourceClaims") or []), *fields["pod_spec"]["resourceClaims"]]
    containers = spec.get("containers") or []
    target = next((c for c in containers if c.get("name") == container), None) if container else None
    target = target or (containers[0] if containers else None)
    if target is None:
        raise ValueError("the pod has no container to use the claim")
    resources = target.setdefault("resources", {})
    resources["claims"] = [*(resources.get("claims") or []), *fields["container"]["resources"]["claims"]]
    return out


# ---------------------------------------------------------------- claims of a pod, what they got


def _by_name(claims: Iterable[Mapping] | Mapping[str, Mapping]) -> dict[str, Mapping]:
    if isinstance(claims, Mapping):
        return {str(k): v for k, v in claims.items()}
    return {c["metadata"]["name"]: c for c in claims if c and c.get("metadata")}


def pod_claim_names(pod: Mapping) -> dict[str, str | None]:
    """{pod claim name: ResourceClaim name, or None while Kubernetes has not made it from the template}."""
    spec = pod.get("spec") or {}
    statuses = {s.get("name"): s for s in (pod.get("status") or {}).get("resourceClaimStatuses") or []}
    names: dict[str, str | None] = {}
    for claim in spec.get("resourceClaims") or []:
        if claim.get("resourceClaimName"):
            names[claim["name"]] = claim["resourceClaimName"]
        else:
            names[claim["name"]] = (statuses.get(claim["name"]) or {}).get("resourceClaimName")
    return names


def pod_claims(pod: Mapping, claims: Iterable[Mapping] | Mapping[str, Mapping]) -> dict[str, Mapping | None]:
    """{pod claim name: the ResourceClaim object among ``claims`` (None when not there yet)}.

    Claims are found by the names in the pod's status, or else (a status not yet seen) as the claim
    owned by the pod with Kubernetes' pod-claim-name annotation."""
    known = _by_name(claims)
    uid = (pod.get("metadata") or {}).get("uid")
    out: dict[str, Mapping | None] = {}
    for pod_claim, name in pod_claim_names(pod).items():
        claim = known.get(name) if name else None
        if claim is None and uid:
            claim = next((c for c in known.values()
                          if (c["metadata"].get("annotations") or {}).get(POD_CLAIM_ANNOTATION) == pod_claim
                          and any(r.get("uid") == uid for r in c["metadata"].get("ownerReferences") or [])), None)
        out[pod_claim] = claim
    return out


def granted_devices(claim: Mapping | None) -> list[dict]:
    """What an allocated claim got, one dict per device::

        {"request": "gpu" | "gpu/mig", "driver", "pool", "device", "node", "share_id",
         "consumed": {"memory": "4Gi", ...}, "memory_mib": int | None, "cores": int | None}

    ``node`` comes from the allocation's node selector (else the pool name, which drivers set to the
    node). Empty while the claim is not allocated.
    """
    allocation = ((claim or {}).get("status") or {}).get("allocation") or {}
    node = _allocation_node(allocation)
    granted = []
    for result in (allocation.get("devices") or {}).get("results") or []:
        consumed = dict(result.get("consumedCapacity") or {})
        granted.append({
            "request": result.get("request", ""),
            "driver": result.get("driver", ""),
            "pool": result.get("pool", ""),
            "device": result.get("device", ""),
            "node": node or result.get("pool", ""),
            "share_id": result.get("shareID"),
            "consumed": consumed,
            "memory_mib": quantity_mib(consumed["memory"]) if "memory" in consumed else None,
            "cores": quantity_int(consumed["cores"]) if "cores" in consumed else None,
        })
    return granted


def _allocation_node(allocation: Mapping) -> str | None:
    for term in ((allocation.get("nodeSelector") or {}).get("nodeSelectorTerms") or []):
        for field in term.get("matchFields") or []:
            if field.get("key") == "metadata.name" and field.get("operator") == "In" and field.get("values"):
                return field["values"][0]
    return None


def describe_granted(granted: Iterable[Mapping]) -> str:
    """'gpu-1/gpu-0 (hami-core-gpu.project-hami.io): 4 GiB, 30 cores'; '; ' between devices."""
    parts = []
    for g in granted:
        text = f"{g['pool']}/{g['device']} ({g['driver']})"
        amounts = [format_mib(g["memory_mib"])] if g.get("memory_mib") else []
        if g.get("cores"):  # 0: no compute share asked (HAMi: no limit)
            amounts.append(f"{g['cores']} cores")
        parts.append(text + (": " + ", ".join(amounts) if amounts else ": whole device"))
    return "; ".join(parts)


def _claim_request(claim: Mapping) -> VGPURequest | None:
    annotations = ((claim.get("metadata") or {}).get("annotations")) or {}
    try:
        data = json.loads(annotations.get(ANNOTATION_REQUEST) or "null")
        if data:
            return VGPURequest(int(data["vgpus"]), int(data["memory_mib"]), data.get("compute_percent"))
    except (ValueError, KeyError, TypeError):
        pass
    return None


def _alternatives(claim: Mapping) -> list[dict]:
    """Each way the claim's first request can be met: {'name', 'device_class', 'count', 'capacity', 'selectors'}."""
    requests = (((claim.get("spec") or {}).get("devices") or {}).get("requests")) or []
    out = []
    for req in requests[:1]:
        subs = req.get("firstAvailable") or ([{"name": "", **req["exactly"]}] if req.get("exactly") else [])
        for sub in subs:
            out.append({
                "name": sub.get("name", ""),
                "device_class": sub.get("deviceClassName", ""),
                "count": int(sub.get("count") or 1),
                "capacity": dict((sub.get("capacity") or {}).get("requests") or {}),
                "selectors": [s.get("cel", {}).get("expression", "") for s in sub.get("selectors") or []],
            })
    return out


def device_kind(device: DevicePool) -> str:
    kind = str(device.attributes.get("type", "")).lower()
    return "shared" if device.shared else (kind or "device")


def _alternative_kind(alt: Mapping) -> str:
    if alt["capacity"]:
        return "shared"
    dc = alt["device_class"]
    return "mig" if dc.startswith("mig.") else ("gpu" if dc.startswith("gpu.") else "device")


def _what_is_short(alt: Mapping, asked: VGPURequest | None, pool: PoolSnapshot | None) -> str:
    kind = _alternative_kind(alt)
    count = alt["count"]
    memory = quantity_mib(alt["capacity"]["memory"]) if "memory" in alt["capacity"] else (
        asked.memory_mib if asked else 0)
    if kind == "shared":
        what = f"{count} share{'s' if count != 1 else ''} of {format_mib(memory) if memory else 'a GPU'}"
        cores = alt["capacity"].get("cores")
        if cores:
            what += f" and {cores} cores"
        what += f" ({alt['device_class']})"
    else:
        label = {"mig": "MIG device", "gpu": "whole GPU"}.get(kind, "device")
        what = f"{count} {label}{'s' if count != 1 else ''}" + (f" with {format_mib(memory)}" if memory else "")
        what += f" ({alt['device_class']})"
    if pool is None or not pool.visible:
        return what
    devices = [d for n in pool.nodes for d in n.devices]
    if kind == "shared":
        shared = [d for d in devices if d.shared]
        if not shared:
            return f"{what}: no device in the pool can be shared"
        best = max(shared, key=lambda d: (d.memory_free_mib, d.name))
        fitting = sum(1 for d in shared if d.memory_free_mib >= memory)
        text = (f"{what}: the most free on one GPU is {format_mib(best.memory_free_mib)} "
                f"({best.pool}/{best.name})")
        if fitting and fitting < count:
            gpus = "1 GPU has" if fitting == 1 else f"{fitting} GPUs have"
            text += f", and only {gpus} that much"
        if "cores" in alt["capacity"] and best.cores_free is not None:
            text += f", with {best.cores_free} cores free"
        return text
    same = [d for d in devices if not d.shared and (device_kind(d) == kind or kind == "device")]
    free = [d for d in same if d.allocations == 0 and d.memory_mib >= memory]
    return f"{what}: {len(free)} of {len(same)} such devices free"


def shortage_text(claim: Mapping, pool: PoolSnapshot | None = None) -> str:
    """The sentence a user reads when no device can be allocated for ``claim``."""
    asked = _claim_request(claim)
    alts = _alternatives(claim)
    if not alts:
        return "Not enough GPU devices free for this kernel. Stop a kernel you no longer use, or try again later."
    parts = [_what_is_short(a, asked, pool) for a in alts]
    head = "Not enough vGPU free: this kernel asks for " + ("; or ".join(parts) if len(parts) > 1 else parts[0])
    return head + ". Stop a kernel you no longer use, ask for less, or try again later."


def request_shortage(pool: PoolSnapshot | None, request: VGPURequest, flavors: Backend | Iterable[DraFlavor]) -> str:
    """:func:`shortage_text` before any claim exists (a pre-check against the pool, e.g. with :func:`can_fit`)."""
    spec = claim_template(flavors, request, "default")["spec"]
    return shortage_text({"metadata": spec["metadata"], "spec": spec["spec"]}, pool)


def _unschedulable(pod: Mapping) -> str | None:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if (condition.get("type") == "PodScheduled" and condition.get("status") == "False"
                and condition.get("reason") == "Unschedulable"):
            return condition.get("message") or "the pod is unschedulable"
    return None


def claim_launch_state(pod: Mapping, claims: Iterable[Mapping] | Mapping[str, Mapping],
                       pool: PoolSnapshot | None = None) -> tuple[str, str, str]:
    """(phase, reason, message) of a pending kernel pod that uses claims.

    * ``("pending", "WaitingForClaim", ...)`` - Kubernetes has not made the claim from its template yet
      (the scheduler's "waiting for dynamic resource controller" is not final);
    * ``("pending", "WaitingForAllocation", ...)`` - the claim exists, the scheduler has not decided;
    * ``("allocated", "Allocated", "<node>/<device> (<driver>): 4 GiB, 30 cores")`` - every claim has
      its devices; the pod is (being) bound: go on waiting for it to run;
    * ``("unschedulable", "Unschedulable", sentence)`` - the scheduler found no node whose devices fit:
      end the launch now. The sentence names what was short (with ``pool``, how much is free) and
      ends with the scheduler's own words.
    A pod without claims is ``("allocated", "NoClaims", "")``.
    """
    found = pod_claims(pod, claims)
    if not found:
        return "allocated", "NoClaims", ""
    statuses = {st.get("name"): st for st in (pod.get("status") or {}).get("resourceClaimStatuses") or []}
    templated = {c.get("name") for c in (pod.get("spec") or {}).get("resourceClaims") or []
                 if not c.get("resourceClaimName")}
    for name, claim in list(found.items()):
        if claim is not None:
            continue
        if name in templated and name in statuses and not statuses[name].get("resourceClaimName"):
            found.pop(name)  # Kubernetes decided that this pod claim needs no ResourceClaim
            continue
        return "pending", "WaitingForClaim", f'waiting for Kubernetes to make the ResourceClaim for "{name}"'
    pending = {n: c for n, c in found.items() if c is not None and not (c.get("status") or {}).get("allocation")}
    if not pending:
        granted = [g for c in found.values() if c is not None for g in granted_devices(c)]
        return "allocated", "Allocated", describe_granted(granted)
    scheduler = _unschedulable(pod)
    if scheduler and "waiting for dynamic resource controller" not in scheduler:
        claim = next(iter(pending.values()))
        if "claim" in scheduler:
            text = shortage_text(claim, pool)
        else:  # another filter rejected every node (taints, selectors, cpu): say so in its words
            text = "No node can take this kernel."
        return "unschedulable", "Unschedulable", f'{text} (scheduler: "{" ".join(scheduler.split())}")'
    return "pending", "WaitingForAllocation", "waiting for the scheduler to allocate a GPU device"


# ---------------------------------------------------------------- the pool
