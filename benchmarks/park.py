"""park: park and resume times and bytes, against re-running the cells that built the namespace.

``--quick``: NumPy at 10 MiB only.

A real ``jupyter server`` (local backend, a CPU pool) and its REST API: for each size (about
10 MiB and 100 MiB; 1 GiB with ``--park-gib``) and each kind (a NumPy array; a PyTorch model, its
Adam optimizer after one step, and a tensor), one kernel builds the namespace (timed: "rebuild"),
is parked (``POST kernels/{id}/park``) and resumed on a new kernel (``POST snapshots/{id}/resume``,
which starts the kernel and restores before it answers). A check reads a checksum of the data
before and after. The yardstick of a resume is a cold kernel start plus reading the snapshot's
bytes from disk (and importing NumPy or PyTorch, which a restore of their objects must do); the
issue's target is a resume within 2x of it (held at the largest size run).
"""

from __future__ import annotations

import hashlib
import os
import time
import types
from pathlib import Path
from typing import Any

from jupyter_client import BlockingKernelClient

from . import common
from .common import Section, fmt_s
from .server import JupyterServer

SPEC = "bench-park-1x1gi"
MIB = 1 << 20
CELLS = {
    "numpy": "import numpy as np\nrng = np.random.default_rng(0)\ndata = rng.standard_normal({n} // 8)",
    "torch": "import torch\ntorch.manual_seed(0)\nwidth = int(({n} // 4 // 3) ** 0.5)\n"
             "model = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, 1))\n"
             "opt = torch.optim.Adam(model.parameters())\n"
             "model(torch.randn(8, width)).sum().backward()\nopt.step()\n"
             "data = torch.randn({n} // 4 // 3)",
}
DIGEST = ("import hashlib\nprint(hashlib.sha256((data.numpy() if hasattr(data, 'numpy') else data).tobytes())"
          ".hexdigest())")


def _client(dirs: dict[str, str], kernel_id: str) -> BlockingKernelClient:
    client = BlockingKernelClient(connection_file=os.path.join(dirs["runtime"], f"kernel-{kernel_id}.json"))
    client.load_connection_file()
    client.start_channels(hb=False)  # a missed heartbeat on a loaded machine is no dead kernel
    client.wait_for_ready(timeout=120)
    return client


def _run(client: BlockingKernelClient, code: str) -> str:
    out: list[str] = []
    reply = client.execute_interactive(code, timeout=1800, output_hook=lambda m: out.append(
        m["content"].get("text", "")) if m["msg_type"] == "stream" else None)
    if reply["content"]["status"] != "ok":
        raise RuntimeError(f"cell failed: {reply['content'].get('ename')}: {reply['content'].get('evalue')}")
    return "".join(out).strip()


def _read_seconds(folder: Path) -> float:
    """Seconds to read every file of a snapshot (with a checksum, as a restore does)."""
    started = time.perf_counter()
    for path in folder.iterdir():
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(MIB):
                digest.update(chunk)
    return time.perf_counter() - started


def _one(server: JupyterServer, dirs: dict[str, str], kind: str, size: int) -> dict[str, Any]:
    api = server.client.request
    started = time.perf_counter()
    code, model, _ = api("POST", "/orion/api/kernels", {"spec": SPEC})
    if code != 201:
        raise RuntimeError(f"kernel start: {code} {model}")
    client = _client(dirs, model["id"])
    cold = time.perf_counter() - started
    try:
        started = time.perf_counter()
        _run(client, f"import {kind}")  # a restore imports it too: part of the yardstick
        imported = time.perf_counter() - started
        _run(client, CELLS[kind].format(n=size))
        rebuild = time.perf_counter() - started
        before = _run(client, DIGEST)
    finally:
        client.stop_channels()
    code, parked, park_s = api("POST", f"/orion/api/kernels/{model['id']}/park")
    if code != 201:
        raise RuntimeError(f"park: {code} {parked}")
    folder = Path(dirs["data"]) / "orion-snapshots" / "alice" / parked["snapshot"]
    read = _read_seconds(folder)
    code, resumed, resume_s = api("POST", f"/orion/api/snapshots/{parked['snapshot']}/resume")
    if code != 200:
        raise RuntimeError(f"resume: {code} {resumed}")
    client = _client(dirs, resumed["kernel_id"])
    try:
        after = _run(client, DIGEST)
    finally:
        client.stop_channels()
    api("DELETE", f"/api/kernels/{resumed['kernel_id']}")
    return {"kind": kind, "size_mib": size // MIB, "bytes": parked["bytes"], "cold_start_s": cold,
            "import_s": imported,
            "rebuild_s": rebuild, "park_s": park_s, "read_s": read, "resume_s": resume_s,
            "resume_over_yardstick": resume_s / (cold + imported + read), "same_data": before == after,
            "not_restored": resumed["not_restored"]}


def run(quick: bool = False, gib: bool = False) -> Section:
    section = Section("park")
    sizes = [10 * MIB] if quick else [10 * MIB, 100 * MIB] + ([1024 * MIB] if gib else [])
    results = []
    with common.jupyter_dirs("park") as dirs:
        common.install_vgpu_spec(SPEC, 1, "1Gi")
        nowhere = types.SimpleNamespace(kubeconfig_path=os.path.join(dirs["base"], "no-kubeconfig"))
        config = {"VGPUProvisioner": {"cluster": "local"},
                  "LocalPool": {"gpus": 0, "cpu_slots": 2, "cpu_slot_memory": "4Gi"},
                  "Snapshots": {"max_snapshot_bytes": 8 << 30, "max_user_bytes": 16 << 30}}
        with JupyterServer(nowhere, dirs, "park", users=("alice",), extra_config=config) as server:
            for size in sizes:
                for kind in ["numpy"] if quick else CELLS:  # quick: no PyTorch imports (seconds each)
                    results.append(_one(server, dirs, kind, size))
    section.data["runs"] = [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in results]
    for r in results:
        label = f"{r['kind']} {r['size_mib']} MiB"
        section.row(f"{label}: park ({r['bytes'] / MIB:,.1f} MiB written)", fmt_s(r["park_s"]))
        section.row(f"  {label}: resume (new kernel + restore)", fmt_s(r["resume_s"]))
        section.row(f"  {label}: rebuild by re-running the cells", fmt_s(r["rebuild_s"]))
        section.row(f"  {label}: cold kernel start + import {r['kind']} + reading the snapshot",
                    fmt_s(r["cold_start_s"] + r["import_s"] + r["read_s"]))
        section.row(f"  {label}: same data after resume", "yes" if r["same_data"] else "NO",
                    passed=r["same_data"] and not r["not_restored"], check=True)
    largest = max(r["size_mib"] for r in results)
    for r in results:
        if r["size_mib"] == largest:
            section.row(f"resume {r['kind']} {largest} MiB / (cold start + import + read)",
                        f"{r['resume_over_yardstick']:.2f}x",
                        "<= 2x", r["resume_over_yardstick"] <= 2.0)
    return section
