"""Hardening of the local mode, tried as a hostile student would: races, quotas, a damaged or
planted slot table, links, odd inputs, the CLI and untrusted kernel specs.

Each refusal is checked for its status (or exit code), the refusal's ``field`` and that nothing was
created or left behind: no slot in the slot table, no kernel (process), no file copied.
"""

import asyncio
import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_server.auth.identity import IdentityProvider, PasswordIdentityProvider, User
from traitlets.config import Config

from orion_jupyter import kernelspecs
from orion_jupyter.cli import main
from orion_jupyter.errors import KernelLaunchError
from orion_jupyter.local import VGPU_RESOURCE, LocalPool, _process_start
from orion_jupyter.vgpu import VGPURequest
from tests.helpers import eventually_async, fetch_json

TOKENS = {"alice-token": "alice", "bob-token": "bob"}
LAB_TOKEN = uuid.uuid4().hex  # the one token of a plain `orion-jupyter lab` server
SMALL = "orion-1x1gi"


class TokenUsers(IdentityProvider):
    """Two people on one server, told apart by their tokens (as in test_server.py)."""

    def _name(self, handler):
        auth = handler.request.headers.get("Authorization", "")
        return TOKENS.get(auth[6:] if auth.lower().startswith("token ") else "")

    def get_user(self, handler):
        name = self._name(handler)
        return User(username=name) if name else None

    def is_token_authenticated(self, handler):
        return self._name(handler) is not None


def as_user(name: str) -> dict:
    return {"Authorization": f"token {name}-token"}


# -- the server: local mode, a CPU pool of 4 slots x 4Gi, the slot table under tmp_path -----------
@pytest.fixture
def server_extra():
    """Config sections a test adds (parametrize this name to change it)."""
    return {}


@pytest.fixture
def server_env():
    """Environment of the server process, set before it starts (parametrize this name to change it)."""
    return {}


@pytest.fixture
def identity():
    """"tokens": TokenUsers (alice, bob); "default": jupyter_server's own token login."""
    return "tokens"


@pytest.fixture
def state_file(tmp_path):
    return tmp_path / "pool" / "slots.json"


@pytest.fixture
def jp_server_config(state_file, server_extra, server_env, identity, monkeypatch):
    for name, value in server_env.items():
        monkeypatch.setenv(name, value)
    serverapp = {"jpserver_extensions": {"orion_jupyter": True}}
    if identity == "tokens":
        serverapp["identity_provider_class"] = TokenUsers
    else:
        serverapp["token"] = LAB_TOKEN  # like `orion-jupyter lab --ServerApp.token=...`
    config = Config({
        "ServerApp": serverapp,
        "VGPUProvisioner": {"cluster": "local"},
        "LocalPool": {"gpus": 0, "cpu_slots": 4, "cpu_slot_memory": "4Gi", "state_file": str(state_file)},
        "OrionJupyter": {"activity_report_interval": 0, "usage_sample_interval": 0},
    })
    config.merge(Config(server_extra))
    return config


@pytest.fixture
def pool(state_file):
    """The server's slot table, read as another LocalPool of this machine would."""
    return LocalPool(config=Config({"LocalPool": {"gpus": 0, "cpu_slots": 4, "cpu_slot_memory": "4Gi",
                                                  "state_file": str(state_file)}}))


@pytest.fixture
def specs(jp_environ):
    kernelspecs.install(kernelspecs.VGPUKernelSpec(name=SMALL, request=VGPURequest.parse(1, "1Gi")), user=True)


@pytest.fixture
def api(jp_fetch, jp_serverapp, specs, identity, jp_asyncio_loop):
    """(status, JSON body) of a request to /orion/api/...; ``raw`` is a body sent as it is."""
    default_user = "alice" if identity == "tokens" else None

    async def call(method: str, path: str, body=None, user="default", raw=None, **params):
        user = default_user if user == "default" else user
        kwargs = {"method": method, "headers": as_user(user) if user else {}, "params": params}
        if raw is not None:
            kwargs["body"] = raw
        elif body is not None:
            kwargs["body"] = json.dumps(body)
        elif method in ("POST", "PUT"):
            kwargs["body"] = "{}"
        return await fetch_json(jp_fetch, "orion", "api", *path.split("/"), **kwargs)

    yield call
    jp_asyncio_loop.run_until_complete(jp_serverapp.kernel_manager.shutdown_all(now=True))


def kernel_ids(serverapp) -> list:
    return list(serverapp.kernel_manager.list_kernel_ids())


def kernel_processes(kernel_id: str) -> list[int]:
    """PIDs of live processes started for ``kernel_id`` (its connection file is on their command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if f"kernel-{kernel_id}.json".encode() in cmdline:
            found.append(int(entry.name))
    return found


def assert_nothing_started(serverapp, pool):
    assert kernel_ids(serverapp) == []
    assert pool.holders() == {}


def write_spec(name: str, config: dict) -> Path:
    """A vGPU kernel.json written by hand in the user's kernels folder (as anyone may)."""
    folder = Path(KernelSpecManager().user_kernel_dir) / name
    folder.mkdir(parents=True)
    (folder / "kernel.json").write_text(json.dumps({
        "argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": name, "language": "python",
        "metadata": {"kernel_provisioner": {"provisioner_name": kernelspecs.PROVISIONER_NAME, "config": config}},
    }))
    return folder


async def stop(jp_fetch, kernel_id: str, **headers) -> None:
    await jp_fetch("api", "kernels", kernel_id, method="DELETE", headers=headers or as_user("alice"))


# -- 1. one kernel id, two starts at once ---------------------------------------------------------
async def test_same_new_kernel_id_twice_at_once_starts_one_kernel(api, jp_fetch, jp_serverapp, pool):
    kernel_id = str(uuid.uuid4())
    body = {"spec": SMALL, "kernel_id": kernel_id}
    results = await asyncio.gather(api("POST", "kernels", body), api("POST", "kernels", body))
    assert sorted(code for code, _ in results) == [201, 409], results
    [started] = [reply for code, reply in results if code == 201]
    [refused] = [reply for code, reply in results if code == 409]
    assert refused["field"] == "kernel_id" and kernel_id in refused["message"], refused
    assert started["id"] == kernel_id
    assert kernel_ids(jp_serverapp) == [kernel_id]
    assert set(pool.holders()) == {kernel_id}
    assert kernel_processes(kernel_id) == [started["vgpu"]["pid"]]  # one process, the 201's

    await stop(jp_fetch, kernel_id)
    assert pool.holders() == {}
    assert kernel_ids(jp_serverapp) == []
    assert kernel_processes(kernel_id) == []


# -- 2. the per-user quota under concurrent starts ------------------------------------------------
@pytest.mark.parametrize("server_extra", [{"KernelPolicy": {"max_vgpus_per_user": 2}}])
async def test_per_user_quota_holds_under_concurrent_starts(api, jp_serverapp, pool):
    results = await asyncio.gather(*(api("POST", "kernels", {"spec": SMALL}) for _ in range(4)))
    assert sorted(code for code, _ in results) == [201, 201, 400, 400], results
    for code, reply in results:
        if code == 400:
            assert reply["field"] == "vgpus" and "the limit is 2 per user" in reply["message"], reply
    started = {reply["id"] for code, reply in results if code == 201}
    holders = pool.holders()
    assert set(holders) == started and {entry["user"] for entry in holders.values()} == {"alice"}
    assert set(kernel_ids(jp_serverapp)) == started


# -- 3. one person on one server (jupyter_server's own token login) -------------------------------
@pytest.mark.parametrize("identity", ["default"])
async def test_token_requests_of_a_plain_server_are_one_user(api, jp_serverapp, jp_auth_header, pool):
    assert type(jp_serverapp.identity_provider) is PasswordIdentityProvider  # jupyter_server's default
    assert jp_auth_header == {"Authorization": f"token {LAB_TOKEN}"}  # every request: the token, no cookie
    server_user = jp_serverapp.web_app.settings["orion_jupyter_state"].access.server_user
    code1, first = await api("POST", "kernels", {"spec": SMALL})
    code2, second = await api("POST", "kernels", {"spec": SMALL})
    assert (code1, code2) == (201, 201), (first, second)
    assert first["vgpu"]["user"] == second["vgpu"]["user"] == server_user

    code, body = await api("GET", "allocations")
    assert code == 200
    assert {k["kernel_id"] for k in body["kernels"]} == {first["id"], second["id"]}
    assert {k["user"] for k in body["kernels"]} == {server_user}
    assert {entry["user"] for entry in pool.holders().values()} == {server_user}


@pytest.mark.parametrize("identity, server_extra", [("default", {"KernelPolicy": {"max_vgpus_per_user": 1}})])
async def test_plain_server_quota_counts_every_token_request_as_one_user(api, jp_serverapp, pool):
    code, first = await api("POST", "kernels", {"spec": SMALL})
    assert code == 201, first
    code, refused = await api("POST", "kernels", {"spec": SMALL})
    assert code == 400 and refused["field"] == "vgpus", refused
    assert "would make 2 for you at once (1 held now)" in refused["message"]
    assert kernel_ids(jp_serverapp) == [first["id"]] and set(pool.holders()) == {first["id"]}


# -- 4. what the slot table holds -----------------------------------------------------------------
@pytest.mark.parametrize("content", [b"[]", b"\x00\xff\xfe{{garbage\x89PNG\r\n"], ids=["list", "garbage"])
async def test_unreadable_slot_table_is_kept_and_launches_refused(api, jp_serverapp, pool, state_file, content):
    state_file.parent.mkdir(mode=0o700)
    state_file.write_bytes(content)
    for path in ("pool", "specs", "class"):
        code, reply = await api("GET", path)
        assert code == 200, (path, reply)
    code, reply = await api("POST", "kernels", {"spec": SMALL})
    assert code == 503, reply
    assert reply["message"].startswith(f"the vGPU slot table {state_file} cannot be read")
    assert reply["reason"] == "busy"
    assert state_file.read_bytes() == content
    assert_nothing_started(jp_serverapp, pool)
    assert state_file.read_bytes() == content


async def test_entry_it_cannot_read_is_kept_through_a_launch(api, jp_fetch, jp_serverapp, state_file):
    state_file.parent.mkdir(mode=0o700)
    state_file.write_text(json.dumps({"k": "x"}))
    for path in ("pool", "specs", "class"):
        code, reply = await api("GET", path)
        assert code == 200, (path, reply)
    code, kernel = await api("POST", "kernels", {"spec": SMALL})
    assert code == 201, kernel
    table = json.loads(state_file.read_text())
    assert table["k"] == "x" and kernel["id"] in table
    await stop(jp_fetch, kernel["id"])
    assert json.loads(state_file.read_text()) == {"k": "x"}
    assert kernel_ids(jp_serverapp) == []


# -- 5. a lock held by another process ------------------------------------------------------------
HOLD_LOCK = """
import fcntl, os, select, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
select.select([sys.stdin], [], [], 60)  # held until the test closes stdin (60 s at most)
"""


@pytest.mark.parametrize("server_extra", [{"LocalPool": {"lock_timeout": 0.5}}])
async def test_locked_table_is_503_and_the_event_loop_stays_free(api, jp_fetch, state_file):
    state_file.parent.mkdir(mode=0o700)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(state_file.with_suffix(".lock"))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    finished = []

    async def pool_request():
        reply = await api("GET", "pool")
        finished.append("pool")
        return reply

    async def status_request():
        response = await jp_fetch("api", "status", headers=as_user("alice"))
        finished.append("status")
        return response.code

    try:
        assert holder.stdout.readline().strip() == "locked"
        (code, reply), status = await asyncio.gather(pool_request(), status_request())
    finally:
        holder.stdin.close()
        holder.wait(30)
    assert code == 503 and "locked" in reply["message"], reply
    assert status == 200
    assert finished == ["status", "pool"]  # the pool request waited off the event loop
    code, _ = await api("GET", "pool")  # the lock is free again
    assert code == 200


# -- 6. links and a folder others may write -------------------------------------------------------
async def test_lock_file_link_is_refused_and_its_target_kept(api, jp_serverapp, state_file, tmp_path):
    state_file.parent.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("keep")
    lock = state_file.with_suffix(".lock")
    lock.symlink_to(victim)
    code, reply = await api("POST", "kernels", {"spec": SMALL})
    assert code == 503, reply
    assert reply["message"].startswith(f"the vGPU slot table's lock {lock} cannot be opened")
    assert victim.read_text() == "keep" and lock.is_symlink()
    assert kernel_ids(jp_serverapp) == [] and not state_file.exists()


async def test_state_file_link_is_never_followed(api, jp_serverapp, state_file, tmp_path):
    state_file.parent.mkdir(mode=0o700)
    me = os.getpid()  # an entry that would hold all 4 slots if the link were followed
    victim = tmp_path / "victim.json"
    victim.write_text(json.dumps({"planted": {"user": "mallory", "slots": [[-1, 4096]] * 4, "pid": me,
                                              "pid_start": _process_start(me)}}))
    content = victim.read_bytes()
    state_file.symlink_to(victim)
    code, body = await api("GET", "pool")
    assert code == 200 and body["totals"][VGPU_RESOURCE] == {"allocatable": 4, "allocated": 0, "free": 4}
    code, reply = await api("POST", "kernels", {"spec": SMALL})
    assert code == 503, reply
    assert reply["message"].startswith(f"the vGPU slot table {state_file} cannot be read")
    assert "a link is never followed" in reply["message"]
    assert victim.read_bytes() == content and state_file.is_symlink()
    assert kernel_ids(jp_serverapp) == []


async def test_table_in_a_world_writable_folder_is_refused(api, jp_serverapp, state_file):
    state_file.parent.mkdir()
    state_file.parent.chmod(0o777)
    code, reply = await api("POST", "kernels", {"spec": SMALL})
    assert code == 503, reply
    assert reply["message"].startswith(f"the vGPU slot table's folder {state_file.parent} is writable by other users")
    assert list(state_file.parent.iterdir()) == []  # no table, no lock file planted there
    assert kernel_ids(jp_serverapp) == []


# -- 7. a memory shortage says memory -------------------------------------------------------------
def test_memory_shortage_names_memory(pool):
    pool.reserve("big", "alice", VGPURequest(1, 16384))  # all 16 GiB of the one CPU device
    with pytest.raises(KernelLaunchError) as caught:
        pool.reserve("small", "bob", VGPURequest(1, 2048))
    assert caught.value.reason == "unschedulable"
    assert str(caught.value).startswith(
        "Not enough vGPU memory free: this kernel needs 2 GiB; at most 0 MiB is free on any one device "
        "(16 GiB of 16 GiB in use).")
    assert "are free right now" not in str(caught.value)
    assert set(pool.holders()) == {"big"}
    pool.release("big")
    assert pool.holders() == {}


async def test_memory_shortage_over_rest_names_memory(api, jp_serverapp, pool):
    pool.reserve("big", "bob", VGPURequest(1, 16384))  # held by this process: the server's
    try:
        code, reply = await api("POST", "kernels", {"spec": SMALL, "memory": "2Gi"})
        assert code == 409 and reply["reason"] == "unschedulable", reply
        assert reply["message"].startswith("Not enough vGPU memory free: this kernel needs 2 GiB")
        assert "3 of 4 are free" not in reply["message"]
        assert kernel_ids(jp_serverapp) == [] and set(pool.holders()) == {"big"}
    finally:
        pool.release("big")


# -- 8. the notebook path -------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["../../../../etc/x.ipynb", "a" * 400_000], ids=["traversal", "400k-chars"])
async def test_path_outside_or_huge_is_refused(api, jp_serverapp, pool, path):
    code, reply = await api("POST", "kernels", {"spec": SMALL, "path": path})
    assert code == 400 and reply["field"] == "path", reply
    assert len(reply["message"]) < 2000
    assert_nothing_started(jp_serverapp, pool)


# -- 9. bad inputs --------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, field", [
    (json.dumps({"spec": [SMALL]}), "spec"),
    (json.dumps({"spec": {"name": SMALL}}), "spec"),
    (f'{{"spec": "{SMALL}", "vgpus": 1{"0" * 400}}}', "vgpus"),
    (json.dumps({"spec": SMALL, "compute": "inf"}), "compute"),
    ("[" * 100_000 + "]" * 100_000, None),
], ids=["spec-list", "spec-object", "vgpus-10e400", "compute-inf", "nested-100000"])
async def test_bad_inputs_are_400_and_create_nothing(api, jp_serverapp, pool, raw, field):
    code, reply = await api("POST", "kernels", raw=raw)
    assert code == 400, reply
    assert reply.get("field") == field and len(reply["message"]) < 500, reply
    assert_nothing_started(jp_serverapp, pool)


async def test_memory_as_a_huge_integer_is_400(api, jp_serverapp, pool):
    code, reply = await api("POST", "kernels", raw=f'{{"spec": "{SMALL}", "memory": 1{"0" * 400}}}')
    assert code == 400 and reply["field"] == "memory", reply
    assert_nothing_started(jp_serverapp, pool)


async def test_spec_with_extra_env_as_a_list_is_400(api, jp_serverapp, pool):
    write_spec("orion-bad-env", {"vgpus": 1, "vgpu_memory": "1Gi", "extra_env": ["A=1"]})
    code, reply = await api("POST", "kernels", {"spec": "orion-bad-env"})
    assert code == 400 and reply["field"] == "extra_env", reply
    assert_nothing_started(jp_serverapp, pool)


# -- 10. demos ------------------------------------------------------------------------------------
@pytest.mark.parametrize("body, field", [({"run": "false"}, "run"), ({"bogus": 1}, "bogus")])
async def test_bad_demo_request_copies_nothing(api, jp_serverapp, jp_root_dir, pool, body, field):
    code, reply = await api("POST", "demos/mnist", body)
    assert code == 400 and reply["field"] == field, reply
    if field == "bogus":
        allowed = reply["message"].split("; use ", 1)[1]
        assert "path" not in allowed and "run" in allowed, reply
    assert not (jp_root_dir / "orion-demos").exists()
    assert_nothing_started(jp_serverapp, pool)


# -- 11. events of a kernel still starting --------------------------------------------------------
async def test_events_answer_while_the_kernel_is_starting(api, jp_serverapp, monkeypatch):
    gate = threading.Event()  # holds the launch at its slot reservation (off the event loop)
    reserve = LocalPool.reserve

    def gated_reserve(self, *args, **kwargs):
        assert gate.wait(60), "the test never let the launch go on"
        return reserve(self, *args, **kwargs)

    monkeypatch.setattr(LocalPool, "reserve", gated_reserve)
    kernel_id = str(uuid.uuid4())
    post = asyncio.ensure_future(api("POST", "kernels", {"spec": SMALL, "kernel_id": kernel_id}))
    try:
        code, body = await eventually_async(
            lambda: api("GET", "events", kernel=kernel_id), timeout=30, interval=0.05,
            until=lambda reply: reply[0] == 200 and reply[1]["events"])
        assert not post.done()  # the start request is still pending
        messages = [e["message"] for e in body["events"]]
        assert messages[0] == "starting a kernel with 1 vGPU · 1 GiB (local)"
        assert not any(m.startswith("kernel ready") for m in messages)
        code, reply = await api("GET", "events", user="bob", kernel=kernel_id)
        assert code == 404, reply
        assert not post.done()
    finally:
        gate.set()
    code, kernel = await post
    assert code == 201 and kernel["id"] == kernel_id
    assert kernel_ids(jp_serverapp) == [kernel_id]


# -- 12. the CLI ----------------------------------------------------------------------------------
ALIAS_BOMB = ("- display_name: &a [x, x, x, x, x, x, x, x]\n"
              "  description: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
              "  image: &c [*b, *b, *b, *b, *b, *b, *b, *b]\n"
              "  course: [*c, *c, *c, *c, *c, *c, *c, *c]\n")
PRESETS = {  # case: (file content; None: no file, "folder": a folder), what the error says
    "missing": (None, "does not exist"),
    "folder": ("folder", "is a folder"),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\xff\xfe\x00", "is not UTF-8 text"),
    "display-name-number": ("- display_name: 5\n  memory: 2Gi\n", "display_name must be a text"),
    "300-char-name": ("- name: " + "a" * 300 + "\n  memory: 2Gi\n", "is not valid"),
    "alias-bomb": (ALIAS_BOMB, "uses YAML aliases"),
    "extra-env-list": ("- display_name: x\n  memory: 2Gi\n  extra_env: [1, 2]\n", '"extra_env"'),
}


def one_line_error(capsys) -> str:
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("orion-jupyter: error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert len(err) < 1000, err
    return err


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    """Nothing of the real user's: Jupyter dirs, HOME, no cluster."""
    for name in ("data", "config", "runtime"):
        monkeypatch.setenv(f"JUPYTER_{name.upper()}_DIR", str(tmp_path / f"jupyter-{name}"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return tmp_path


@pytest.mark.parametrize("case", sorted(PRESETS))
def test_bad_presets_file_is_one_line_and_installs_nothing(cli_env, capsys, case):
    content, says = PRESETS[case]
    presets, prefix = cli_env / "presets.yaml", cli_env / "prefix"
    if content == "folder":
        presets.mkdir()
    elif isinstance(content, bytes):
        presets.write_bytes(content)
    elif content is not None:
        presets.write_text(content)
    assert main(["kernelspec", "install", "--presets", str(presets), "--prefix", str(prefix)]) == 2
    assert says in one_line_error(capsys)
    assert not prefix.exists()
    assert not (cli_env / "jupyter-data").exists()


def test_presets_memory_as_a_huge_integer_is_one_line(cli_env, capsys):
    presets, prefix = cli_env / "presets.yaml", cli_env / "prefix"
    presets.write_text("- display_name: x\n  memory: 1" + "0" * 400 + "\n")
    assert main(["kernelspec", "install", "--presets", str(presets), "--prefix", str(prefix)]) == 2
    assert "vGPU memory" in one_line_error(capsys)
    assert not prefix.exists()


def test_compute_inf_is_one_line_and_installs_nothing(cli_env, capsys):
    prefix = cli_env / "prefix"
    assert main(["kernelspec", "install", "--name", "x", "--compute", "inf", "--prefix", str(prefix)]) == 2
    assert 'vGPU compute share "inf"' in one_line_error(capsys)
    assert not prefix.exists()


@pytest.mark.parametrize("argv, says", [
    (["gc", "--kubeconfig", "/nonexistent"], "--kubeconfig /nonexistent is not a file"),
    (["gc"], "no Kubernetes cluster is configured"),
], ids=["missing-kubeconfig", "no-cluster"])
def test_gc_without_a_cluster_is_one_line(cli_env, capsys, argv, says):
    assert main(argv) == 2
    assert says in one_line_error(capsys)


# -- 13. kernel specs a user wrote, on a JupyterHub server ----------------------------------------
SERVER_ONLY = {
    "host_ipc": True,
    "user": "mallory",
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
    "run_as_group": 0,
    "extra_env": {"LD_PRELOAD": "/tmp/evil.so"},
}


@pytest.mark.parametrize("server_env", [{"JUPYTERHUB_API_TOKEN": "hub-secret"}])
@pytest.mark.parametrize("option", sorted(SERVER_ONLY))
async def test_user_spec_may_not_set_server_options_under_jupyterhub(api, jp_serverapp, pool, option):
    write_spec("orion-sneaky", {"vgpus": 1, "vgpu_memory": "1Gi", option: SERVER_ONLY[option]})
    code, reply = await api("POST", "kernels", {"spec": "orion-sneaky"})
    assert code == 400 and reply["field"] == option, reply
    assert f'kernel spec option "{option}" may only be set by the server\'s own configuration' in reply["message"]
    assert_nothing_started(jp_serverapp, pool)


@pytest.mark.parametrize("server_env", [{"JUPYTERHUB_API_TOKEN": "hub-secret"}])
async def test_user_spec_asking_only_for_a_kernel_is_accepted_under_jupyterhub(api, jp_serverapp, pool):
    write_spec("orion-plain", {"vgpus": 1, "vgpu_memory": "1Gi", "image": "example.org/kernel:1"})
    code, kernel = await api("POST", "kernels", {"spec": "orion-plain"})
    assert code == 201, kernel
    assert kernel["vgpu"]["memory_mib"] == 1024 and kernel["vgpu"]["user"] == "alice"
    assert kernel_ids(jp_serverapp) == [kernel["id"]] and set(pool.holders()) == {kernel["id"]}
