"""The dra backend: claim templates (content-hashed, strict 1.37 schemas), the pod's claim, RBAC,
and the simulated cluster's DRA (claims from templates, an allocator with CEL and consumable
capacity, firstAvailable, Unschedulable at once), read back with orion_jupyter.k8s.dra."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from kubesim import SimCluster, SimNode
from kubesim import dra as simdra
from orion_jupyter.backends import DRA_FLAVORS, get_backend
from orion_jupyter.cli import main
from orion_jupyter.k8s import dra, dra_pool
from orion_jupyter.k8s.manifests import KernelPodOptions, build_kernel_manifests
from orion_jupyter.k8s.rbac import rbac_manifests
from orion_jupyter.vgpu import VGPURequest, VGPURequestError

K8S = "1.37.0"
NS = "class-ai101"
HAMI = "hami-core-gpu.project-hami.io"  # HAMi's DRA DeviceClass; its driver is assumed to have the same name
NVIDIA = "gpu.nvidia.com"
GIB = 1024


def validate(obj: dict) -> None:
    """As `kubernetes-validate --strict -k 1.37.0` does (the package's newest schemas are 1.37)."""
    assert kubernetes_validate.validate(obj, K8S, strict=True) == "1.37"


def request(memory_gib: float, count: int = 1, compute: int | None = None) -> VGPURequest:
    return VGPURequest(count, int(memory_gib * GIB), compute)


def kernel_pod(backend, req: VGPURequest, name_suffix: str = "a1b2c3") -> dict:
    opts = KernelPodOptions(
        kernel_id="3f2a9c1d-7b8e-4c1a-9d2e-5f6a7b8c9d0e", user="alice", request=req, backend=backend,
        image="quay.io/jupyter/pytorch-notebook:cuda12-python-3.11", namespace=NS,
        connection_info={"shell_port": 52011, "key": "k"}, name_suffix=name_suffix, course="ai101",
    )
    return build_kernel_manifests(opts).pod


# ---------------------------------------------------------------- pure: templates, pod fields, RBAC


FLAVOR_SETS = [["hami"], ["mig"], ["gpu"], ["mig:1g.10gb"], ["mig", "hami"], ["mig:1g.10gb", "mig", "hami", "gpu"]]


@pytest.mark.parametrize("flavors", FLAVOR_SETS, ids=lambda f: "+".join(f))
@pytest.mark.parametrize("req", [request(4), request(8, 2), request(2.5, 1, 30)], ids=["1x4Gi", "2x8Gi", "1x2.5Gi-30%"])
def test_claim_templates_validate_strictly_and_are_named_by_their_content(flavors, req):
    backend = get_backend("dra", dra={"flavors": flavors})
    template = dra.claim_template(backend, req, NS)
    validate(template)
    name = template["metadata"]["name"]
    assert len(name) <= 63 and name.startswith(f"orion-vgpu-{req.count}x")
    assert dra.claim_template(backend, req, NS) == template  # the same request: the same template, create once
    assert dra.claim_template(backend, req, "other")["metadata"]["name"] == name  # per namespace, same content
    device_request = template["spec"]["spec"]["devices"]["requests"][0]
    if len(flavors) == 1:
        assert device_request["exactly"]["count"] == req.count
    else:
        assert [sub["name"] for sub in device_request["firstAvailable"]] == [
            backend.dra_flavors[i].name for i in range(len(flavors))]


def test_a_changed_flavor_is_a_new_template_name():
    req = request(4)
    names = {
        dra.claim_template(get_backend("dra"), req, NS)["metadata"]["name"],
        dra.claim_template(get_backend("dra", dra={"flavors": ["mig", "hami"]}), req, NS)["metadata"]["name"],
        dra.claim_template(get_backend("dra", dra={"flavors": [{"name": "hami", "capacity": {"memory": "vram"}}]}),
                           req, NS)["metadata"]["name"],
        dra.claim_template(get_backend("dra", dra={"flavors": [{"name": "hami", "device_class": "vgpu.example.com"}]}),
                           req, NS)["metadata"]["name"],
        dra.claim_template(get_backend("dra"), request(8), NS)["metadata"]["name"],
    }
    assert len(names) == 5


def test_hami_template_asks_capacity_and_mig_asks_by_cel():
    hami = dra.device_request(request(4, compute=30), get_backend("dra"))["exactly"]
    assert hami["deviceClassName"] == HAMI
    assert hami["capacity"] == {"requests": {"memory": "4Gi", "cores": "30"}}
    mig = dra.device_request(request(10), get_backend("dra", dra={"flavors": ["mig"]}))["exactly"]
    assert mig["deviceClassName"] == "mig.nvidia.com" and "capacity" not in mig
    assert mig["selectors"] == [{"cel": {"expression":
                                         "device.capacity['gpu.nvidia.com'].memory.compareTo(quantity('10Gi')) >= 0"}}]
    profile = dra.device_request(request(10), get_backend("dra", dra={"flavors": ["mig:1g.10gb"]}))["exactly"]
    assert profile["selectors"][0]["cel"]["expression"] == "device.attributes['gpu.nvidia.com'].profile == '1g.10gb'"


def test_dra_backend_is_data():
    backend = get_backend("dra")
    assert backend.resources(request(4)) == {} and backend.env(request(4)) == {} and backend.uses_claims
    assert backend.memory_enforced  # a HAMi slice caps memory
    assert not get_backend("dra", dra={"flavors": ["gpu"]}).memory_enforced  # a whole GPU: informative
    assert get_backend("dra", dra={"flavors": ["mig", "hami"]}).memory_enforced
    assert backend.count_resource == dra.DRA_DEVICES and backend.memory_resource is None
    with pytest.raises(VGPURequestError, match='DRA flavor "tpu" is not known'):
        get_backend("dra", dra={"flavors": ["tpu"]})
    with pytest.raises(VGPURequestError, match="is not a valid DeviceClass name"):
        get_backend("dra", dra={"flavors": [{"name": "x", "device_class": "Not_A_Class"}]})
    with pytest.raises(VGPURequestError, match="takes no DRA settings"):
        get_backend("hami", dra={"flavors": ["hami"]})
    assert DRA_FLAVORS["hami"].capacity == {"memory": "memory", "compute": "cores"}


@pytest.mark.parametrize("flavors", [["hami"], ["mig", "hami"]])
def test_kernel_pod_with_its_claim_validates_strictly(flavors):
    backend = get_backend("dra", dra={"flavors": flavors})
    template = dra.claim_template(backend, request(4), NS)
    pod = dra.add_claim_to_pod(kernel_pod(backend, request(4)), template["metadata"]["name"])
    validate(pod)
    name = template["metadata"]["name"]
    assert pod["spec"]["resourceClaims"] == [{"name": "vgpu", "resourceClaimTemplateName": name}]
    assert pod["spec"]["containers"][0]["resources"]["claims"] == [{"name": "vgpu"}]
    assert not any("/" in r for r in pod["spec"]["containers"][0]["resources"].get("limits", {}))
    assert dra.pod_claim_fields("t") == {
        "pod_spec": {"resourceClaims": [{"name": "vgpu", "resourceClaimTemplateName": "t"}]},
        "container": {"resources": {"claims": [{"name": "vgpu"}]}},
    }


def test_rbac_for_dra_adds_claims_templates_slices_and_classes():
    docs = rbac_manifests(NS, backend="dra")
    for doc in docs:
        validate(doc)
    role = next(d for d in docs if d["kind"] == "Role")
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"]) for r in role["rules"]}
    assert rules[(("resource.k8s.io",), ("resourceclaimtemplates",))] == {"create", "get"}
    assert rules[(("resource.k8s.io",), ("resourceclaims",))] == {"get", "list", "watch"}
    cluster = next(d for d in docs if d["kind"] == "ClusterRole")
    assert {"apiGroups": ["resource.k8s.io"], "resources": ["resourceslices", "deviceclasses"],
            "verbs": ["get", "list", "watch"]} in cluster["rules"]
    # without node access the DRA reader is still there; other backends get none of it
    no_nodes = rbac_manifests(NS, read_nodes=False, backend=get_backend("dra"))
    assert next(d for d in no_nodes if d["kind"] == "ClusterRole")["rules"][0]["resources"] == ["resourceslices",
                                                                                                  "deviceclasses"]
    assert "resource.k8s.io" not in str(rbac_manifests(NS, backend="hami"))
    assert rbac_manifests(NS) == rbac_manifests(NS, backend=None)


def test_manifests_cli_renders_rbac_and_the_presets_templates(tmp_path, capsys):
    presets = tmp_path / "presets.yaml"
    presets.write_text(yaml.safe_dump([
        {"display_name": "Small", "vgpus": 1, "memory": "2Gi"},
        {"display_name": "Medium", "vgpus": 1, "memory": "4Gi"},
        {"display_name": "Medium again", "vgpus": 1, "memory": "4096"},
        {"display_name": "CPU", "vgpus": 0},
        {"display_name": "Orion", "vgpus": 1, "memory": "8Gi", "backend": "orion"},
    ]))
    assert main(["manifests", "--namespace", NS, "--backend", "dra", "--presets", str(presets),
                 "--dra-flavor", "mig", "--dra-flavor", "hami"]) == 0
    out = capsys.readouterr().out
    docs = list(yaml.safe_load_all(out))
    templates = [d for d in docs if d["kind"] == "ResourceClaimTemplate"]
    assert [t["metadata"]["name"].split("-")[2] for t in templates] == ["1x2gi", "1x4gi"]
    assert all(t["metadata"]["namespace"] == NS for t in templates)
    first_available = templates[0]["spec"]["spec"]["devices"]["requests"][0]["firstAvailable"]
    assert [s["name"] for s in first_available] == ["mig", "hami"]
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(out)
    tool = Path(sys.executable).with_name("kubernetes-validate")
    result = subprocess.run([str(tool), "--strict", "-k", K8S, str(rendered)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(docs) and "against version 1.37" in result.stdout
    # another backend renders RBAC only
    assert main(["manifests", "--namespace", NS, "--backend", "hami"]) == 0
    assert "ResourceClaimTemplate" not in capsys.readouterr().out


# ---------------------------------------------------------------- the simulated cluster


def hami_cluster(gpus: int = 2, memory: str = "24Gi", kubelet: str = "fake") -> SimCluster:
    """One node whose GPUs are offered as HAMi-style DRA slices (consumable memory and cores)."""
    cluster = SimCluster(nodes=[SimNode("gpu-1", kubelet=kubelet)]).start()
    cluster.create_object("deviceclasses", None, simdra.device_class(HAMI, HAMI))
    cluster.create_object("resourceslices", None, simdra.resource_slice(
        "gpu-1", HAMI, [simdra.shared_gpu(f"gpu-{i}", memory) for i in range(gpus)]))
    return cluster


@pytest.fixture
def hami():
    cluster = hami_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


def apis(cluster: SimCluster) -> tuple[client.CoreV1Api, client.ResourceV1Api]:
    api = cluster.api_client()
    return client.CoreV1Api(api), client.ResourceV1Api(api)


def ensure_template(resource: client.ResourceV1Api, template: dict) -> str:
    """What the launch path does: create once; 409 AlreadyExists is the same spec (the name is its hash)."""
    try:
        resource.create_namespaced_resource_claim_template(template["metadata"]["namespace"], template)
    except ApiException as exc:
        assert exc.status == 409
    return template["metadata"]["name"]


def launch(cluster: SimCluster, backend, req: VGPURequest, suffix: str) -> str:
    core, resource = apis(cluster)
    template_name = ensure_template(resource, dra.claim_template(backend, req, NS))
    pod = dra.add_claim_to_pod(kernel_pod(backend, req, name_suffix=suffix), template_name)
    validate(pod)
    core.create_namespaced_pod(NS, pod)
    return pod["metadata"]["name"]


def settled(cluster: SimCluster, name: str, want: str | None = None) -> tuple[str, str, str]:
    """claim_launch_state once the pod is scheduled or unschedulable (or in the phase ``want``)."""
    def state():
        pod = cluster.get("pods", NS, name)
        claims = cluster.objects("resourceclaims", NS)
        found = dra.claim_launch_state(pod, claims, dra_pool.dra_pool(cluster.objects("resourceslices"), claims))
        done = found[0] == "unschedulable" or (found[0] == "allocated" and pod["spec"].get("nodeName"))
        return found if done and found[0] == (want or found[0]) else None

    return cluster.wait_until(state, timeout=10)


def granted(cluster: SimCluster, name: str) -> list[dict]:
    pod = cluster.get("pods", NS, name)
    (claim,) = [c for c in dra.pod_claims(pod, cluster.objects("resourceclaims", NS)).values()]
    return dra.granted_devices(claim)


def test_hami_slices_share_a_gpu_where_they_fit_and_a_slice_that_fits_nowhere_fails_at_once(hami):
    backend = get_backend("dra")
    names = {}
    for gib in (4, 8, 12):
        names[gib] = launch(hami, backend, request(gib), f"s{gib}")
        phase, reason, message = settled(hami, names[gib])
        assert (phase, reason) == ("allocated", "Allocated"), message
        (device,) = granted(hami, names[gib])
        assert (device["driver"], device["pool"], device["device"], device["node"]) == (HAMI, "gpu-1", "gpu-0", "gpu-1")
        assert device["memory_mib"] == gib * GIB and device["consumed"]["memory"] == f"{gib}Gi" and device["share_id"]
        assert f"gpu-1/gpu-0 ({HAMI}): {gib} GiB" in message
    names[20] = launch(hami, backend, request(20), "s20")
    assert settled(hami, names[20])[0] == "allocated" and granted(hami, names[20])[0]["device"] == "gpu-1"

    # 8 GiB more: 4 GiB left on gpu-1, none on gpu-0; Unschedulable at once, saying what was short
    late = launch(hami, backend, request(8), "late")
    phase, reason, message = settled(hami, late)
    assert (phase, reason) == ("unschedulable", "Unschedulable")
    assert message.startswith(f"Not enough vGPU free: this kernel asks for 1 share of 8 GiB ({HAMI}): "
                              "the most free on one GPU is 4 GiB (gpu-1/gpu-1).")
    assert 'scheduler: "0/1 nodes are available: 1 cannot allocate all claims."' in message
    event = hami.events(NS, late, "FailedScheduling")[0]
    assert event["message"] == "0/1 nodes are available: 1 cannot allocate all claims."
    assert hami.get("pods", NS, late)["status"]["resourceClaimStatuses"][0]["name"] == "vgpu"

    # the pool: per GPU, what is left
    pool = dra_pool.dra_pool(hami.objects("resourceslices"), hami.objects("resourceclaims", NS))
    devices = {d.name: d for d in pool.nodes[0].devices}
    assert (devices["gpu-0"].memory_free_mib, devices["gpu-0"].allocations) == (0, 3)
    assert (devices["gpu-1"].memory_free_mib, devices["gpu-1"].allocations) == (4 * GIB, 1)
    assert pool.totals()[dra.DRA_MEMORY].as_dict() == {"allocatable": 48 * GIB, "allocated": 44 * GIB, "free": 4 * GIB}
    assert pool.totals()[dra.DRA_DEVICES].free == 0
    assert pool.as_dict()["nodes"][0]["devices"][1]["memory_free_mib"] == 4 * GIB
    assert dra_pool.can_fit(pool, request(4), backend) and not dra_pool.can_fit(pool, request(8), backend)
    assert dra.request_shortage(pool, request(8), backend) == message.split(" (scheduler:")[0]

    # claims are named after the pod and owned by it; deleting the pods deletes them, templates stay
    core, resource = apis(hami)
    claims = hami.objects("resourceclaims", NS)
    for claim in claims:
        owner = claim["metadata"]["ownerReferences"][0]
        assert claim["metadata"]["name"].startswith(f"{owner['name']}-vgpu-") and owner["controller"] is True
        assert claim["metadata"]["annotations"]["resource.kubernetes.io/pod-claim-name"] == "vgpu"
        validate(claim)
    core.delete_namespaced_pod(names[12], NS)
    assert settled(hami, late, "allocated")[0] == "allocated"  # 12 GiB back on gpu-0: the pending one gets it
    assert granted(hami, late)[0]["device"] == "gpu-0"
    for name in [names[4], names[8], names[20], late]:
        core.delete_namespaced_pod(name, NS)
    hami.wait_until(lambda: not hami.objects("resourceclaims", NS) and not hami.objects("pods", NS))
    templates = resource.list_namespaced_resource_claim_template(NS).items
    assert sorted(t.metadata.name.split("-")[2] for t in templates) == ["1x12gi", "1x20gi", "1x4gi", "1x8gi"]


def test_a_slice_larger_than_any_gpu_and_compute_shares(hami):
    backend = get_backend("dra")
    big = launch(hami, backend, request(32), "big")
    phase, _, message = settled(hami, big)
    assert phase == "unschedulable" and "1 share of 32 GiB" in message
    assert "the most free on one GPU is 24 GiB" in message
    # cores are consumable too: 70% + 40% do not share one GPU
    first = launch(hami, backend, request(1, compute=70), "c70")
    second = launch(hami, backend, request(1, compute=40), "c40")
    assert settled(hami, first)[0] == settled(hami, second)[0] == "allocated"
    one, two = granted(hami, first)[0], granted(hami, second)[0]
    assert (one["device"], one["cores"], two["device"], two["cores"]) == ("gpu-0", 70, "gpu-1", 40)
    assert settled(hami, first)[2] == f"gpu-1/gpu-0 ({HAMI}): 1 GiB, 70 cores"


def test_two_vgpus_are_two_devices(hami):
    name = launch(hami, get_backend("dra"), request(8, count=2), "two")
    assert settled(hami, name)[0] == "allocated"
    assert sorted(g["device"] for g in granted(hami, name)) == ["gpu-0", "gpu-1"]
    third = launch(hami, get_backend("dra"), request(20, count=2), "more")
    assert settled(hami, third)[0] == "unschedulable"  # 16 GiB free on each: not 20


def mig_and_hami_cluster() -> SimCluster:
    """gpu-1: one GPU in MIG mode (one 1g.10gb instance) and one GPU shared through HAMi."""
    cluster = SimCluster(nodes=[SimNode("gpu-1", kubelet="fake")]).start()
    cluster.create_object("deviceclasses", None, simdra.device_class(
        "mig.nvidia.com", NVIDIA, ["device.attributes['gpu.nvidia.com'].type == 'mig'"]))
    cluster.create_object("deviceclasses", None, simdra.device_class(
        "gpu.nvidia.com", NVIDIA, ["device.attributes['gpu.nvidia.com'].type == 'gpu'"]))
    cluster.create_object("deviceclasses", None, simdra.device_class(HAMI, HAMI))
    cluster.create_object("resourceslices", None, simdra.resource_slice("gpu-1", NVIDIA, [
        simdra.exclusive_device("gpu-0-mig-1g10gb-0", "9984Mi", type="mig", profile="1g.10gb", productName="H100"),
    ]))
    cluster.create_object("resourceslices", None, simdra.resource_slice("gpu-1", HAMI, [
        simdra.shared_gpu("gpu-1", "80Gi")]))
    return cluster


def test_first_available_takes_a_mig_device_while_one_is_free_then_a_hami_slice():
    cluster = mig_and_hami_cluster()
    try:
        backend = get_backend("dra", dra={"flavors": ["mig", "hami"]})
        first = launch(cluster, backend, request(4), "first")
        phase, _, message = settled(cluster, first)
        assert phase == "allocated" and message == f"gpu-1/gpu-0-mig-1g10gb-0 ({NVIDIA}): whole device"
        (device,) = granted(cluster, first)
        assert device["request"] == "gpu/mig" and device["consumed"] == {} and device["share_id"] is None
        second = launch(cluster, backend, request(4), "second")
        assert settled(cluster, second)[0] == "allocated"
        (device,) = granted(cluster, second)
        assert (device["request"], device["device"], device["memory_mib"]) == ("gpu/hami", "gpu-1", 4 * GIB)
        # by profile: the MIG instance is taken, so a profile-only template waits, and names what is short
        by_profile = launch(cluster, get_backend("dra", dra={"flavors": ["mig:1g.10gb"]}), request(4), "prof")
        phase, _, message = settled(cluster, by_profile)
        assert phase == "unschedulable"
        assert "1 MIG device with 4 GiB (mig.nvidia.com): 0 of 1 such devices free" in message
        client.CoreV1Api(cluster.api_client()).delete_namespaced_pod(first, NS)
        assert settled(cluster, by_profile, "allocated")[0] == "allocated"
        assert granted(cluster, by_profile)[0]["device"] == "gpu-0-mig-1g10gb-0"
        # a MIG instance too small for the selector is not taken: 12 GiB goes to the HAMi GPU
        client.CoreV1Api(cluster.api_client()).delete_namespaced_pod(by_profile, NS)
        cluster.wait_until(lambda: len(cluster.objects("resourceclaims", NS)) == 1)
        large = launch(cluster, backend, request(12), "large")
        assert settled(cluster, large)[0] == "allocated" and granted(cluster, large)[0]["request"] == "gpu/hami"
        for obj in cluster.objects("deviceclasses") + cluster.objects("resourceslices") + \
                cluster.objects("resourceclaims", NS):
            validate(obj)
    finally:
        cluster.stop()


def test_templates_are_immutable_cel_is_checked_and_a_missing_template_waits(hami):
    core, resource = apis(hami)
    template = dra.claim_template(get_backend("dra"), request(4), NS)
    ensure_template(resource, template)
    with pytest.raises(ApiException) as exc:
        resource.create_namespaced_resource_claim_template(NS, template)
    assert exc.value.status == 409
    changed = {"spec": {"spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": HAMI}}]}}}}
    with pytest.raises(ApiException) as exc:
        resource.patch_namespaced_resource_claim_template(template["metadata"]["name"], NS, changed)
    assert exc.value.status == 422 and "field is immutable" in exc.value.body
    bad = simdra.device_class("broken.example.com", HAMI, ["device.driver =="])
    with pytest.raises(ApiException) as exc:
        resource.create_device_class(bad)
    assert exc.value.status == 422 and "compilation failed" in exc.value.body
    # a pod whose template is not there: an event, and the pod waits (not unschedulable) until it is
    other = dra.claim_template(get_backend("dra"), request(6), NS)
    pod = dra.add_claim_to_pod(kernel_pod(get_backend("dra"), request(6), name_suffix="wait"),
                               other["metadata"]["name"])
    core.create_namespaced_pod(NS, pod)
    name = pod["metadata"]["name"]
    hami.wait_until(lambda: hami.events(NS, name, "FailedResourceClaimCreation"))
    found = dra.claim_launch_state(hami.get("pods", NS, name), hami.objects("resourceclaims", NS))
    assert found[:2] == ("pending", "WaitingForClaim")
    ensure_template(resource, other)
    assert settled(hami, name, "allocated")[0] == "allocated"


def test_claims_go_with_a_running_pod_on_the_process_kubelet():
    cluster = hami_cluster(kubelet="process")
    try:
        core, _ = apis(cluster)
        template_name = ensure_template(apis(cluster)[1], dra.claim_template(get_backend("dra"), request(4), NS))
        pod = dra.add_claim_to_pod({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sleeper"},
                                    "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                                             "containers": [{"name": "k", "image": "python:3",
                                                             "command": ["sleep", "30"]}]}}, template_name)
        validate(pod)
        core.create_namespaced_pod(NS, pod)
        running = cluster.wait_for("pods", NS, "sleeper", lambda p: p and p["status"]["phase"] == "Running")
        (status,) = running["status"]["resourceClaimStatuses"]
        claim = cluster.get("resourceclaims", NS, status["resourceClaimName"])
        assert claim["status"]["reservedFor"] == [{"resource": "pods", "name": "sleeper",
                                                   "uid": running["metadata"]["uid"]}]
        core.delete_namespaced_pod("sleeper", NS)
        cluster.wait_until(lambda: cluster.get("resourceclaims", NS, status["resourceClaimName"]) is None, timeout=15)
        assert cluster.get("resourceclaimtemplates", NS, template_name) is not None
    finally:
        cluster.stop()
    assert cluster.running_processes() == []


def test_dra_objects_through_the_api_list_watch_and_discovery(hami):
    _, resource = apis(hami)
    slices = resource.list_resource_slice(field_selector="spec.nodeName=gpu-1").items
    assert [s.spec.driver for s in slices] == [HAMI] and len(slices[0].spec.devices) == 2
    assert slices[0].spec.devices[0].allow_multiple_allocations is True
    assert [c.metadata.name for c in resource.list_device_class().items] == [HAMI]
    groups = client.ApisApi(hami.api_client()).get_api_versions()
    assert "resource.k8s.io" in [g.name for g in groups.groups]
    resources = client.ResourceApi(hami.api_client()).get_api_group()
    assert resources.preferred_version.group_version == "resource.k8s.io/v1"
    from kubernetes import watch

    template = dra.claim_template(get_backend("dra"), request(4), NS)
    ensure_template(resource, template)
    events = list(watch.Watch().stream(resource.list_namespaced_resource_claim_template, NS, timeout_seconds=1))
    assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", template["metadata"]["name"])]


def test_dra_pool_without_slices_is_invisible_and_granted_devices_of_nothing_is_empty():
    assert dra_pool.dra_pool(None).visible is False
    assert dra.granted_devices(None) == [] and dra.granted_devices({"status": {}}) == []
    pod = {"metadata": {"uid": "u"}, "spec": {"containers": [{"name": "k"}]}}
    assert dra.claim_launch_state(pod, []) == ("allocated", "NoClaims", "")
    # the scheduler's "waiting for the claim" is not final
    waiting = {"metadata": {"uid": "u"},
               "spec": {"resourceClaims": [{"name": "vgpu", "resourceClaimTemplateName": "t"}]},
               "status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                          "message": '0/1 nodes are available: waiting for dynamic resource '
                                                     'controller to create the resourceclaim "vgpu".'}]}}
    assert dra.claim_launch_state(waiting, [])[0] == "pending"
