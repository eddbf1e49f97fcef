"""Quantity parsing and validation of vGPU requests: every rejection says field, value and what is allowed."""

import pytest

from orion_jupyter.backends import get_backend
from orion_jupyter.config import KernelPolicy
from orion_jupyter.vgpu import (
    VGPUPolicy,
    VGPURequest,
    VGPURequestError,
    check_k8s_name,
    format_mib,
    parse_memory,
)


@pytest.mark.parametrize(
    "text, mib",
    [("4096", 4096), (4096, 4096), ("4096Mi", 4096), ("4Gi", 4096), ("4G", 3814), ("4 GiB", 4096),
     ("0.5Gi", 512), ("1.5gi", 1536), ("512MiB", 512), ("1Ti", 1048576), (" 8Gi ", 8192), ("2e3", 2000)],
)
def test_memory_sizes_are_stored_as_whole_mib(text, mib):
    assert parse_memory(text) == mib


BAD_REQUESTS = [
    # (count, memory, compute) -> exact message
    ((1, "4 GB?", None), 'vGPU memory "4 GB?" is not a size; use a number of MiB or a value like 4Gi'),
    ((1, "", None), 'vGPU memory "" is empty; use a number of MiB or a value like 4Gi'),
    ((1, "   ", None), 'vGPU memory "   " is empty; use a number of MiB or a value like 4Gi'),
    ((1, "-4Gi", None), 'vGPU memory "-4Gi" is negative; use a positive size like 4Gi'),
    ((1, -1, None), "vGPU memory -1 is negative; use a positive size like 4Gi"),
    ((1, "nan", None), 'vGPU memory "nan" is not a size; use a number of MiB or a value like 4Gi'),
    ((1, float("nan"), None), "vGPU memory nan is not a size; use a number of MiB or a value like 4Gi"),
    ((1, "inf", None), 'vGPU memory "inf" is not a size; use a number of MiB or a value like 4Gi'),
    ((1, "9999Ti", None), 'vGPU memory "9999Ti" is more than any GPU has (the most is 1024 GiB); use a value like 4Gi'),
    ((1, "4 parsecs", None),
     'vGPU memory "4 parsecs" has an unknown unit "parsecs"; use Mi, Gi, Ti, M, G or T (a plain number is MiB)'),
    ((1, "4Kb", None), 'vGPU memory "4Kb" has an unknown unit "Kb"; use Mi, Gi, Ti, M, G or T (a plain number is MiB)'),
    ((1, [4], None), "vGPU memory [4] is a list; use a number of MiB or a value like 4Gi"),
    ((1, True, None), "vGPU memory True is a bool; use a number of MiB or a value like 4Gi"),
    ((1, {"gi": 4}, None), "vGPU memory {'gi': 4} is a dict; use a number of MiB or a value like 4Gi"),
    ((1, "0.0001Mi", None), 'vGPU memory "0.0001Mi" is less than 1 MiB; use a value like 512Mi or 4Gi'),
    ((1, "0", None), 'vGPU memory "0" is zero, but 1 vGPU was asked for; '
                     "give each vGPU some memory, like 4Gi (or ask for 0 vGPUs for CPU only)"),
    ((2, 0, None), "vGPU memory 0 is zero, but 2 vGPUs were asked for; "
                   "give each vGPU some memory, like 4Gi (or ask for 0 vGPUs for CPU only)"),
    ((1, None, None), "vGPU memory is missing for 1 vGPU(s); use a number of MiB or a value like 4Gi"),
    ((-1, "4Gi", None), "vGPU count -1 is negative; use 0 for CPU only, or 1, 2, ..."),
    ((0.5, "4Gi", None),
     "vGPU count 0.5 is a fraction; vGPUs come whole (1, 2, ...): for a smaller slice ask for less vGPU memory"),
    (("1.5", "4Gi", None),
     'vGPU count "1.5" is a fraction; vGPUs come whole (1, 2, ...): for a smaller slice ask for less vGPU memory'),
    (("two", "4Gi", None), 'vGPU count "two" is not a number; use 0 for CPU only, or 1, 2, ...'),
    ((None, "4Gi", None), "vGPU count None is not a number; use 0 for CPU only, or 1, 2, ..."),
    ((True, "4Gi", None), "vGPU count True is not a number; use 0 for CPU only, or 1, 2, ..."),
    ((float("nan"), "4Gi", None), "vGPU count nan is not a number; use 0 for CPU only, or 1, 2, ..."),
    ((10**6, "4Gi", None), "vGPU count 1000000 is more than any node has; use at most 64"),
    ((1, "4Gi", 0), "vGPU compute share 0 is out of range; use a whole percent from 1 to 100"),
    ((1, "4Gi", 101), "vGPU compute share 101 is out of range; use a whole percent from 1 to 100"),
    ((1, "4Gi", "half"), 'vGPU compute share "half" is not a number; use a percent from 1 to 100'),
]


@pytest.mark.parametrize("args, message", BAD_REQUESTS, ids=[m[:40] for _, m in BAD_REQUESTS])
def test_bad_requests_say_what_is_wrong(args, message):
    with pytest.raises(VGPURequestError) as caught:
        VGPURequest.parse(*args)
    assert str(caught.value) == message
    assert caught.value.field in ("vgpus", "memory", "compute")


def test_enough_bad_inputs_are_covered():
    assert len(BAD_REQUESTS) >= 15


NAME_RULE = "use at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit"


@pytest.mark.parametrize(
    "name, message",
    [
        ("My_Class", f'namespace "My_Class" is not a valid Kubernetes name; {NAME_RULE}'),
        ("-class", f'namespace "-class" is not a valid Kubernetes name; {NAME_RULE}'),
        ("a" * 64, f'namespace "{"a" * 64}" is not a valid Kubernetes name; {NAME_RULE}'),
        ("", f'namespace "" is not a valid Kubernetes name; {NAME_RULE}'),
    ],
)
def test_invalid_kubernetes_names(name, message):
    with pytest.raises(VGPURequestError) as caught:
        check_k8s_name("namespace", name)
    assert str(caught.value) == message


def test_cpu_only_request_holds_no_memory():
    request = VGPURequest.parse(0, "4Gi", 50)
    assert request == VGPURequest(0, 0, None)
    assert request.describe() == "CPU only"


def test_describe_says_what_a_kernel_gets():
    assert VGPURequest.parse(1, "4Gi").describe() == "1 vGPU · 4 GiB"
    assert VGPURequest.parse(2, "8Gi").describe() == "2 vGPUs × 8 GiB"
    assert VGPURequest.parse(1, "1536", "30%").describe() == "1 vGPU · 1.5 GiB · 30% compute"
    assert format_mib(1000) == "1000 MiB"


def test_from_mapping_layers_over_the_spec_default():
    spec = VGPURequest.parse(1, "4Gi")
    assert VGPURequest.from_mapping({"memory": "8Gi"}, spec) == VGPURequest(1, 8192)
    assert VGPURequest.from_mapping({"vgpus": 2}, spec) == VGPURequest(2, 4096)
    with pytest.raises(VGPURequestError, match='vGPU request field "gpus" is not known; use vgpus, memory, compute'):
        VGPURequest.from_mapping({"gpus": 2}, spec)


def test_policy_limits():
    policy = VGPUPolicy(max_vgpus=2, max_memory_mib=12288, allowed_images=("quay.io/jupyter/*",))
    policy.check(VGPURequest.parse(2, "6Gi"), "quay.io/jupyter/pytorch-notebook:latest")
    with pytest.raises(VGPURequestError) as caught:
        policy.check(VGPURequest.parse(3, "1Gi"))
    assert str(caught.value) == "vGPU count 3 is over this server's limit of 2 per kernel; ask for 2 or fewer"
    with pytest.raises(VGPURequestError) as caught:
        policy.check(VGPURequest.parse(2, "8Gi"))
    assert str(caught.value) == ("vGPU memory 2 × 8 GiB = 16 GiB is over this server's limit of 12 GiB per kernel; "
                                 "ask for less")
    with pytest.raises(VGPURequestError) as caught:
        policy.check(VGPURequest.parse(1, "1Gi"), "docker.io/evil/miner")
    assert str(caught.value) == ('kernel image "docker.io/evil/miner" is not allowed on this server; '
                                 "allowed: quay.io/jupyter/*")


def test_policy_from_configuration():
    from traitlets.config import Config

    config = Config()
    config.KernelPolicy.max_vgpus = 1
    config.KernelPolicy.max_memory = "6Gi"
    policy = KernelPolicy(config=config).policy()
    assert (policy.max_vgpus, policy.max_memory_mib) == (1, 6144)


def test_backends_map_requests_to_resources_and_env():
    request = VGPURequest.parse(2, "8Gi", 50)
    orion = get_backend("orion")
    assert orion.resources(request) == {"virtaitech.com/gpu": 2}
    assert orion.env(request, controller="ctl:9123") == {
        "ORION_VGPU": "2", "ORION_GMEM": "8192", "ORION_RATIO": "50", "ORION_CONTROLLER": "ctl:9123"}
    assert get_backend("hami").resources(request) == {
        "nvidia.com/gpu": 2, "nvidia.com/gpumem": 8192, "nvidia.com/gpucores": 50}
    assert get_backend("nvidia").resources(request) == {"nvidia.com/gpu": 2}
    mig = get_backend("nvidia", resource_names={"count": "nvidia.com/mig-1g.10gb"})
    assert mig.resources(request) == {"nvidia.com/mig-1g.10gb": 2}
    renamed = get_backend("orion", resource_names={"count": "example.com/vgpu"}, env_names={"memory": "SITE_GMEM"})
    assert renamed.resources(request) == {"example.com/vgpu": 2}
    assert renamed.env(request)["SITE_GMEM"] == "8192"
    assert orion.resources(VGPURequest(0, 0)) == {} and orion.env(VGPURequest(0, 0)) == {}


def test_backend_errors_name_the_value():
    with pytest.raises(VGPURequestError, match='vGPU backend "gaudi" is not known; use one of orion, hami, nvidia'):
        get_backend("gaudi")
    with pytest.raises(VGPURequestError, match='resource name "bad name!" is not a valid Kubernetes resource name'):
        get_backend("orion", resource_names={"count": "bad name!"})
    with pytest.raises(VGPURequestError, match='resource_names key "gpus" is not known'):
        get_backend("orion", resource_names={"gpus": "x/y"})
