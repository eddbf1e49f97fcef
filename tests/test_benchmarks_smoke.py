"""`python -m benchmarks --quick` runs every section and writes numbers (no timing is asserted)."""

import json
import math
import subprocess
import sys
from numbers import Number
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def numbers(value):
    """Every number in a JSON value."""
    if isinstance(value, bool):
        return
    if isinstance(value, Number):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from numbers(item)


@pytest.mark.timeout(330)
def test_quick_run_writes_every_section(tmp_path):
    out = tmp_path / "results.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--json", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=320, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    report = json.loads(out.read_text())
    # every section below ran (a section added since is checked by its own assertions, if any)
    assert {"launch", "launch_server", "burst", "burst_server", "broker", "scale", "semester", "demos"} <= set(
        report["sections"])
    for name, data in report["sections"].items():
        assert "error" not in data, (name, data.get("traceback"))
        if name != "demos":
            assert all(math.isfinite(v) for v in numbers(data)), (name, data)

    park = report["sections"]["park"]
    assert [r["kind"] for r in park["runs"]] == ["numpy"] and park["runs"][0]["same_data"] is True
    assert park["runs"][0]["bytes"] >= 10 * 2**20 and park["runs"][0]["not_restored"] == {}

    launch = report["sections"]["launch"]
    for key in ("vgpu_ms", "local_ms", "overhead_ms"):
        assert launch[key]["n"] == 2 and launch[key]["median"] > 0
    assert launch["ratio_vgpu_over_local"] > 0 and launch["api_requests_per_launch"] > 0
    # the launch returns once the kernel listens, before the kubelet's once-a-second probe says Ready
    for key in ("overhead_after_listen_ms", "pod_running_to_listening_ms", "pod_ready_after_return_ms"):
        assert launch[key]["n"] == 2, key
    assert launch["overhead_after_listen_ms"]["median"] >= 0 and launch["pod_ready_after_return_ms"]["median"] > 0

    semester = report["sections"]["semester"]  # every launch started or was refused; budgets held to a minute
    assert semester["launches"] == semester["started"] + semester["refused_budget"] > 0
    assert semester["left_waiting"] == semester["left_reserved"] == 0
    assert semester["budget_overshoot_vgpu_h"] <= semester["one_tick_vgpu_h"]

    first = report["sections"]["launch_server"]
    assert first["first_ms"]["total"] > 0 and first["later_ms"]["total"]["n"] == first["later_launches"] == 3
    assert first["first_over_later"] > 0

    for name in ("burst", "burst_server"):
        burst = report["sections"][name]
        assert burst["created_201"] == burst["kernels"] == 5
        assert burst["all_ready_s"] > 0 and burst["api_requests_per_launch"] > 0
        assert burst["status_idle_ms"]["n"] > 0 and burst["status_during_burst_ms"]["n"] > 0
        assert burst["kernel_pods_left"] == 0 and burst["kernel_secrets_left"] == 0

    broker = report["sections"]["broker"]  # 12 students on 4 vGPUs, student-01 through their own server
    assert broker["started"] == broker["vgpus"] == 4
    assert broker["refused"] == broker["students"] - broker["vgpus"] == 8
    assert broker["refused_with_reason"] == broker["refused"] and broker["failed"] == broker["unanswered"] == 0
    assert set(broker["refusals_by_kind"]) <= {"quota", "capacity"} and all(broker["sample_messages"].values())
    assert broker["kernel_pods_left"] == broker["kernel_secrets_left"] == broker["network_policies_left"] == 0
    assert broker["broker_cpu_s"] > 0 and broker["api_requests_per_started_launch"] > 0
    assert broker["hub_requests_per_launch"] > 0
    for key in ("metrics_idle_ms", "metrics_during_burst_ms", "server_allocations_idle_ms",
                "server_allocations_during_burst_ms"):
        assert broker[key]["n"] > 0, key
    assert broker["server_launch"]["outcome"] in ("started", "refused")

    scale = report["sections"]["scale"]
    assert (scale["pods"], scale["foreign_pods"], scale["nodes"]) == (200, 300, 10)
    # the other pods' cache: the 225 foreign pods holding extended resources, never this namespace's 200 kernel pods
    assert scale["class_view_pods_seen"] == 200 and scale["watch_cache_objects"]["others"] == 225
    assert scale["api_requests_per_call"] == 0
    for endpoint in ("allocations", "pool", "specs", "class"):
        assert scale["latency_ms"][endpoint]["n"] > 0 and scale["latency_ms"][endpoint]["median"] > 0
    assert scale["watch_cache_deep_size_mb"] > 0 and isinstance(scale["watch_cache_rss_mb"], Number)

    classroom = report["sections"]["classroom"]  # issue 14: warm kernels and the fair queue through the broker
    for key in ("claimed_ms", "claimed_km_ms", "local_ms"):
        assert classroom[key]["n"] == 2 and classroom[key]["median"] > 0, key
    assert classroom["hand_overs"] == classroom["claims"] == classroom["pool_size"] == 6
    assert classroom["ratio_claimed_over_local"] > 0 and classroom["broker_cpu_ms_per_claim"] >= 0
    assert (classroom["students"], classroom["vgpus"]) == (12, 4)
    assert 1 <= classroom["roster_ready"] <= 4 and classroom["roster_pods_created"] >= classroom["roster_ready"]
    # every launch started, at once or after its wait; each kernel was stopped by the lab; nothing left
    assert classroom["outcomes"] == {"started": 12} and classroom["served_before_lab"] + classroom["waited"] == 12
    # (404: a kernel the broker itself stopped first, as a roster kernel at the grace's end, is reported there)
    assert classroom["stops"] == 12 and set(classroom["stop_codes"]) <= {"200", "404"}
    assert 0 < classroom["time_to_first_cell_ms"]["n"] + classroom["waited_time_to_first_cell_ms"]["n"] <= 12
    assert classroom["handovers"] + classroom["handover_misses"] > 0 and isinstance(classroom["fcfs"], bool)
    assert classroom["broker_handover_histogram"]["count"] > 0
    assert classroom["kernel_pods_left"] == classroom["kernel_secrets_left"] == 0
    assert classroom["network_policies_left"] == 0

    demos = report["sections"]["demos"]
    assert "skipped" in demos or demos["images_per_s"]["demo_runner"] > 0

    machine = report["machine"]
    assert machine["cpu_cores"] and machine["python"] and machine["date"]
    assert report["rows"] and report["wall_s"] > 0
    assert "targets met:" in run.stdout


@pytest.mark.timeout(200)
def test_quick_university_answers_every_launch(tmp_path):
    """The university section at a tiny size (4 courses of 10 students on 10 vGPUs, 400 pods in the watch)."""
    out = tmp_path / "university.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--only", "university", "--json", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=190, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    university = json.loads(out.read_text())["sections"]["university"]
    assert "error" not in university, university.get("traceback")
    # every launch answered and, the queues moving as kernels stopped, every student had a kernel
    assert university["students"] == university["answered"] == 40 and university["outcomes"] == {"started": 40}
    assert 0 < university["queued"] < 40 and university["stop_codes"] == {"200": 40}  # 30 for the quotas; more while
    # the cache still counts a kernel just stopped
    assert university["loop_lag_samples"] > 0 and university["loop_lag_p99_ms"] is not None
    assert university["loop_busy_p99_ms"] is not None and university["loop_thread_cpu_wait_s"] >= 0
    assert university["broker_cpu_s"] > 0 and university["broker_net_cpu_ms_per_launch"] >= 0
    assert university["watch_pods"] == 400 and university["broker_rss_mb"] > 0
    assert university["watch_started"] == university["watch_launches"] == 20
