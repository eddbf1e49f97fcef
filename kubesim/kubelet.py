"""Kubelets: "process" runs a bound pod's first container as a local process (downward-API env,
$(VAR) expansion, Secret/emptyDir volumes bind-mounted at their mountPath in a private mount
namespace, a loopback pod IP); "fake" only reports Running+Ready (for large benchmarks)."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import json
import math
import os
import queue
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import traceback
from collections.abc import Iterator

from .scheduler import set_condition
from .selectors import parse_quantity
from .store import Store, is_terminal, now_iso

COMPONENT = "kubelet"
UNSHARE = shutil.which("unshare")


@functools.cache
def mount_namespaces_work() -> bool:
    """True when we may bind-mount inside `unshare -m` (root, unshare and mount present)."""
    if os.geteuid() != 0 or not UNSHARE or not shutil.which("mount"):
        return False
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "src"), os.path.join(tmp, "dst")
        os.mkdir(src)
        os.mkdir(dst)
        script = f"mount --bind {src} {dst} && mount -o remount,bind,ro {dst}"
        try:
            done = subprocess.run([UNSHARE, "-m", "--propagation", "private", "sh", "-c", script],
                                  capture_output=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return False
        return done.returncode == 0


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names are replaced, $$ escapes, others stay literal."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            if text[i + 1] == "$":
                out.append("$")
                i += 2
                continue
            if text[i + 1] == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2:end]
                    out.append(env[name] if name in env else text[i:end + 1])
                    i = end + 1
                    continue
        out.append(text[i])
        i += 1
    return "".join(out)


def _field_ref(pod: dict, path: str) -> str:
    meta, status = pod["metadata"], pod.get("status") or {}
    for prefix, source in (("metadata.labels", "labels"), ("metadata.annotations", "annotations")):
        if path.startswith(prefix + "['") and path.endswith("']"):
            return (meta.get(source) or {}).get(path[len(prefix) + 2:-2], "")
    values = {
        "metadata.name": meta["name"], "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta["uid"], "spec.nodeName": pod["spec"].get("nodeName", ""),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
        "status.podIP": status.get("podIP", ""), "status.hostIP": status.get("hostIP", ""),
        "status.podIPs": ",".join(ip["ip"] for ip in status.get("podIPs") or []),
        "status.hostIPs": ",".join(ip["ip"] for ip in status.get("hostIPs") or []),
    }
    return values.get(path, "")


class IPAllocator:
    """127.0.0.2, 127.0.0.3, ... 127.0.0.254, 127.0.1.1, ...; never hands out a live address. Each pytest-xdist
    worker (``PYTEST_XDIST_WORKER`` gwN) starts in its own 127.(16·N).0.0/12 block, so parallel test processes
    never give two pods one address."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
        self._next = ((int(worker) % 15 if worker.isdigit() else 0) << 20) + 2
        self.live: set[str] = set()

    def allocate(self) -> str:
        with self._lock:
            while True:
                n, self._next = self._next, (self._next + 1) % (1 << 24) or 2
                ip = f"127.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"
                if n & 255 not in (0, 255) and ip != "127.0.0.1" and ip not in self.live:
                    self.live.add(ip)
                    return ip

    def release(self, ip: str | None) -> None:
        with self._lock:
            self.live.discard(ip)


POD_IPS = IPAllocator()  # shared by every cluster in this process, so concurrent clusters never collide


class Kubelets:
    """All nodes' kubelets: one dispatcher thread, plus one thread per process pod."""

    def __init__(self, store: Store, faults, python: str, workdir: str, use_namespaces: bool):
        self.store, self.faults, self.python, self.workdir = store, faults, python, workdir
        self.use_namespaces = use_namespaces
        self.modes: dict[str, str] = {}  # node name -> "process" | "fake"
        self.down: set[str] = set()  # nodes whose kubelet cannot reach the API (kubesim/nodes.py)
        self.ips = POD_IPS
        self.workers: dict[str, PodWorker] = {}
        self.logs: dict[str, str] = {}  # pod uid -> log file
        self._seen: set[str] = set()
        self._fake_ips: dict[str, str] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._secrets = threading.Condition()
        self._secret_generation = 0
        self._thread: threading.Thread | None = None
        self.stopping = False
        store.subscribers.append(self._on_change)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="kubesim-kubelets", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stopping = True
        self._queue.put(None)
        if self._thread:
            self._thread.join(timeout=5)
        with self._lock:
            workers = list(self.workers.values())
        for w in workers:
            w.cancel(kill=True)
        self.poke()
        for w in workers:
            w.thread.join(timeout=10)

    def add_node(self, name: str, mode: str) -> None:
        if mode not in ("process", "fake"):
            raise ValueError(f"kubelet must be 'process' or 'fake', not {mode!r}")
        self.modes[name] = mode

    def remove_node(self, name: str) -> None:
        self.modes.pop(name, None)
        self.down.discard(name)

    def set_down(self, name: str, down: bool) -> None:
        """An unreachable kubelet: it starts and stops nothing it has not been told, and its status
        writes wait until it is back (``resume``)."""
        if down:
            self.down.add(name)
        else:
            self.down.discard(name)

    def resume(self, node: str) -> None:
        self._queue.put(("resume", node))

    def _do_resume(self, node: str) -> None:
        with self._lock:
            workers = [w for w in self.workers.values() if w.node == node]
        for worker in workers:
            worker.flush()
        for pod in self.store.list("pods")[0]:
            if pod["spec"].get("nodeName") != node:
                continue
            if pod["metadata"].get("deletionTimestamp"):
                self._do_terminate(pod)
            else:
                self._on_change("pods", "MODIFIED", pod, pod)

    def poke(self) -> None:
        """Wakes pod workers waiting for Secrets (a Secret changed, or a worker was cancelled)."""
        with self._secrets:
            self._secret_generation += 1
            self._secrets.notify_all()

    def wait_secrets(self, generation: int, timeout: float) -> None:
        with self._secrets:
            if self._secret_generation == generation:
                self._secrets.wait(timeout)

    @property
    def secret_generation(self) -> int:
        with self._secrets:
            return self._secret_generation

    # ------------------------------------------------------------ store hook and dispatcher

    def _on_change(self, plural: str, etype: str, obj: dict, old: dict | None) -> None:
        if plural == "secrets":
            self.poke()
            return
        if plural == "nodes" and etype == "ADDED":
            self._queue.put(("sync", None))
            return
        if plural != "pods":
            return
        uid = obj["metadata"]["uid"]
        if etype == "DELETED":
            self._queue.put(("gone", obj))  # even from a down node: the simulation leaves no process behind
            return
        if obj["spec"].get("nodeName") in self.down:
            return
        if obj["spec"].get("nodeName") in self.modes and uid not in self._seen and not is_terminal(obj) \
                and not obj["metadata"].get("deletionTimestamp"):
            self._seen.add(uid)
            self._queue.put(("start", obj))
        if etype == "MODIFIED" and obj["metadata"].get("deletionTimestamp") and (
            obj["metadata"].get("deletionGracePeriodSeconds")
            != (old or {}).get("metadata", {}).get("deletionGracePeriodSeconds")
            or not (old or {}).get("metadata", {}).get("deletionTimestamp")
        ):
            self._queue.put(("terminate", obj))

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None or self.stopping:
                return
            what, pod = item
            try:
                getattr(self, "_do_" + what)(pod)
            except Exception:  # pragma: no cover - a broken pod must not stop the node
                traceback.print_exc()

    def _do_sync(self, _: None) -> None:
        with self.store.lock:
            for pod in self.store.list("pods")[0]:
                self._on_change("pods", "MODIFIED", pod, pod)

    def _do_start(self, pod: dict) -> None:
        meta = pod["metadata"]
        if self.modes.get(pod["spec"]["nodeName"]) == "fake":
            ip = self.ips.allocate()
            self._fake_ips[meta["uid"]] = ip
            if self.store.update("pods", meta["namespace"], meta["name"], lambda p: _fake_running(p, ip),
                                 uid=meta["uid"]) is None:
                self.ips.release(self._fake_ips.pop(meta["uid"], None))
            return
        worker = PodWorker(self, pod)
        with self._lock:
            self.workers[meta["uid"]] = worker
            self.logs[meta["uid"]] = worker.log_path
        worker.thread.start()

    def _do_terminate(self, pod: dict) -> None:
        meta = pod["metadata"]
        with self._lock:
            worker = self.workers.get(meta["uid"])
        if worker is None or not worker.terminate(int(meta.get("deletionGracePeriodSeconds") or 0)):
            self.store.remove("pods", meta["namespace"], meta["name"], uid=meta["uid"])

    def _do_gone(self, pod: dict) -> None:
        uid = pod["metadata"]["uid"]
        self._seen.discard(uid)
        self.ips.release(self._fake_ips.pop(uid, None))
        with self._lock:
            worker = self.workers.get(uid)
        if worker is not None:
            worker.cancel(kill=True)
            self.poke()

    # ------------------------------------------------------------ test controls

    def worker(self, namespace: str, name: str) -> PodWorker | None:
        pod = self.store.get("pods", namespace, name)
        if pod is None:
            return None
        with self._lock:
            return self.workers.get(pod["metadata"]["uid"])

    def evict(self, namespace: str, name: str, message: str) -> bool:
        pod = self.store.get("pods", namespace, name)
        if pod is None:
            return False
        self.store.record_event(pod, "Warning", "Evicted", message, COMPONENT, pod["spec"].get("nodeName"))
        worker = self.worker(namespace, name)
        if worker is not None and worker.evict(message):
            return True
        self.store.update("pods", namespace, name, lambda p: _mark_evicted(p, message, None),
                          uid=pod["metadata"]["uid"])
        return True

    def live_process_groups(self) -> list[int]:
        with self._lock:
            groups = [w.proc.pid for w in self.workers.values() if w.proc is not None]
        return [pgid for pgid in groups if _group_alive(pgid)]

    # ------------------------------------------------------------ host directories we create

    @staticmethod
    def acquire_dir(path: str) -> list[str]:
        """mkdir -p ``path`` on the host; returns the directories this created (or shares with another
        pod that created them), for release_dirs. Counted across every simulated cluster of this machine:
        a directory removed on the host detaches each mount on it in other mount namespaces (Linux 3.18+),
        so one test process must never remove a mount point a pod of another one still uses."""
        with _host_dir_refs() as refs:
            chain, p = [], os.path.abspath(path)
            while p != "/" and (p in refs or not os.path.exists(p)):
                chain.append(p)
                p = os.path.dirname(p)
            os.makedirs(path, exist_ok=True)
            mine = str(os.getpid())
            for c in chain:
                refs.setdefault(c, {})[mine] = refs.get(c, {}).get(mine, 0) + 1
            return chain

    @staticmethod
    def release_dirs(chain: list[str]) -> None:
        with _host_dir_refs() as refs:
            mine = str(os.getpid())
            for c in chain:  # deepest first
                users = refs.get(c, {})
                users[mine] = users.get(mine, 0) - 1
                if users[mine] <= 0:
                    del users[mine]
                if users:
                    continue
                refs.pop(c, None)
                try:
                    os.rmdir(c)
                except OSError:
                    pass


HOST_DIR_REFS = os.path.join(tempfile.gettempdir(), "kubesim-host-dirs.json")


@contextlib.contextmanager
def _host_dir_refs() -> Iterator[dict[str, dict[str, int]]]:
    """The host directories pods of this machine's simulated clusters use: {path: {pid: pods}}, under one
    file lock; the counts of processes that are gone are dropped."""
    with open(HOST_DIR_REFS + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(HOST_DIR_REFS) as f:
                refs = json.load(f)
        except (OSError, ValueError):
            refs = {}
        refs = {path: live for path, users in refs.items() if isinstance(users, dict)
                and (live := {pid: n for pid, n in users.items() if _pid_alive(pid)})}
        yield refs
        partial = f"{HOST_DIR_REFS}.{os.getpid()}"
        with open(partial, "w") as f:
            json.dump(refs, f)
        os.replace(partial, HOST_DIR_REFS)


def _pid_alive(pid: str) -> bool:
    return pid.isdigit() and os.path.exists(f"/proc/{pid}")


def _group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is in process group ``pgid``."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def _container_status(c: dict, state: dict, ready: bool = False, restarts: int = 0, last: dict | None = None,
                      container_id: str = "") -> dict:
    status = {
        "name": c["name"], "image": c["image"], "imageID": f"sim://{c['image']}" if container_id else "",
        "ready": ready, "restartCount": restarts, "started": "running" in state, "state": state,
        "lastState": last or {},
    }
    if container_id:
        status["containerID"] = container_id
    return status


def _fake_running(pod: dict, ip: str) -> bool | None:
    if pod["metadata"].get("deletionTimestamp") or is_terminal(pod):
        return False
    _sandbox(pod, ip)
    stamp = now_iso()
    pod["status"]["phase"] = "Running"
    pod["status"]["containerStatuses"] = [
        _container_status(c, {"running": {"startedAt": stamp}}, True, container_id=f"sim://{pod['metadata']['uid'][:8]}")
        for c in pod["spec"]["containers"]
    ]
    for ctype in ("ContainersReady", "Ready"):
        set_condition(pod, {"type": ctype, "status": "True"})
    return None


def _sandbox(pod: dict, ip: str) -> None:
    status = pod.setdefault("status", {})
    status.update({
        "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}], "podIP": ip, "podIPs": [{"ip": ip}],
        "startTime": status.get("startTime") or now_iso(),
    })
    for ctype in ("PodReadyToStartContainers", "Initialized"):
        set_condition(pod, {"type": ctype, "status": "True"})
    for ctype in ("ContainersReady", "Ready"):
        if not any(c["type"] == ctype for c in status.get("conditions", [])):
            set_condition(pod, {"type": ctype, "status": "False", "reason": "ContainersNotReady",
                                "message": f"containers with unready status: [{pod['spec']['containers'][0]['name']}]"})


def _mark_evicted(pod: dict, message: str, terminated: dict | None) -> None:
    status = pod.setdefault("status", {})
    status.update({"phase": "Failed", "reason": "Evicted", "message": message})
    set_condition(pod, {"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet",
                        "message": message})
    for ctype in ("ContainersReady", "Ready"):
        set_condition(pod, {"type": ctype, "status": "False", "reason": "PodFailed"})
    statuses = status.get("containerStatuses") or []
    for cs in statuses:
        cs["ready"], cs["started"] = False, False
        if terminated is not None:
            cs["state"] = {"terminated": terminated}
        elif "running" in cs["state"]:
            cs["state"] = {"terminated": {"exitCode": 137, "reason": "Error", "finishedAt": now_iso(),
                                          "startedAt": cs["state"]["running"].get("startedAt")}}


class PodWorker:
    """Runs one pod on a process node: volumes, sandbox (IP), image, env, process, exit status."""

    def __init__(self, kubelet: Kubelets, pod: dict):
        self.kubelet, self.store = kubelet, kubelet.store
        meta = pod["metadata"]
        self.namespace, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.node = pod["spec"]["nodeName"]
        self.container = pod["spec"]["containers"][0]
        self.dir = tempfile.mkdtemp(prefix=f"{self.namespace}_{self.name}_", dir=kubelet.workdir)
        self.home = os.path.join(self.dir, "home")
        os.mkdir(self.home)
        self.log_path = os.path.join(self.dir, "log")
        open(self.log_path, "wb").close()
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.cancelled = threading.Event()
        self.deleting = False
        self.finished = False
        self._dirs: list[list[str]] = []  # host directories made for this pod (mount points, working dir)
        self.evicted: str | None = None
        self.oom = False  # killed for exceeding its memory limit: reported as OOMKilled, exit code 137
        self.ip: str | None = None
        self._kill_timer: threading.Timer | None = None
        self._held: list = []  # status writes made while the node was down
        self.thread = threading.Thread(target=self._main, name=f"kubesim-pod-{self.name}", daemon=True)

    # ------------------------------------------------------------ control (other threads)

    def cancel(self, kill: bool) -> None:
        with self.lock:
            self.cancelled.set()
            if kill and self.proc is not None and self.proc.poll() is None:
                self._signal(signal.SIGKILL)

    def terminate(self, grace: int) -> bool:
        """Graceful stop for a deletion; False when there is no process, so the pod can go at once."""
        with self.lock:
            if self.finished:
                return False
            self.deleting = True
            if self.proc is None or self.proc.poll() is not None:
                self.cancelled.set()
                self.kubelet.poke()
                return True  # _main removes the pod once it stops
            pod = self._pod()
            if pod is not None:
                self.store.record_event(pod, "Normal", "Killing", f"Stopping container {self.container['name']}",
                                        COMPONENT, self.node, f"spec.containers{{{self.container['name']}}}")
            self._signal(signal.SIGTERM)
            if self._kill_timer:
                self._kill_timer.cancel()
            self._kill_timer = threading.Timer(grace, self._signal, (signal.SIGKILL,))
            self._kill_timer.daemon = True
            self._kill_timer.start()
            return True

    def evict(self, message: str) -> bool:
        with self.lock:
            self.evicted = message
            if self.proc is None or self.proc.poll() is not None:
                self.cancelled.set()
                self.kubelet.poke()
                return False
            self._signal(signal.SIGKILL)
            return True

    def oom_kill(self) -> bool:
        """What the kernel's OOM killer does to a container over its memory limit."""
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                return False
            self.oom = True
            self._signal(signal.SIGKILL)
            return True

    def kill(self, sig: int) -> bool:
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                return False
            self._signal(sig)
            return True

    def _signal(self, sig: int) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError, AttributeError):
            pass

    # ------------------------------------------------------------ the pod's life (own thread)

    def _pod(self) -> dict | None:
        pod = self.store.get("pods", self.namespace, self.name)
        return pod if pod is not None and pod["metadata"]["uid"] == self.uid else None

    def _update(self, mutate) -> dict | None:
        if self.node in self.kubelet.down:  # the node cannot reach the API: the write waits for flush()
            with self.lock:
                self._held.append(mutate)
            return self._pod()
        return self.store.update("pods", self.namespace, self.name, mutate, uid=self.uid)

    def flush(self) -> None:
        """The node is back: the status writes held meanwhile, then Ready again if the container is."""
        with self.lock:
            held, self._held = self._held, []
        for mutate in held:
            self.store.update("pods", self.namespace, self.name, mutate, uid=self.uid)

        def ready_again(p: dict) -> None:
            statuses = p["status"].get("containerStatuses") or [{}]
            if statuses[0].get("ready") and "running" in (statuses[0].get("state") or {}):
                self._ready(p)

        self.store.update("pods", self.namespace, self.name, ready_again, uid=self.uid)

    def _event(self, etype: str, reason: str, message: str, container: bool = True) -> None:
        pod = self._pod()
        if pod is not None and self.node not in self.kubelet.down:
            field = f"spec.containers{{{self.container['name']}}}" if container else None
            self.store.record_event(pod, etype, reason, message, COMPONENT, self.node, field)

    def _waiting(self, reason: str, message: str | None = None) -> None:
        state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}

        def set_waiting(p: dict) -> None:
            old = (p["status"].get("containerStatuses") or [{}])[0]
            p["status"]["containerStatuses"] = [
                _container_status(self.container, state, restarts=old.get("restartCount", 0), last=old.get("lastState"))
            ]

        self._update(set_waiting)

    def _stopped(self) -> bool:
        return self.cancelled.is_set() or self._pod() is None

    def _main(self) -> None:
        try:
            self._run()
        except Exception:  # pragma: no cover
            traceback.print_exc()
        finally:
            if self._kill_timer:
                self._kill_timer.cancel()
            self.kubelet.ips.release(self.ip)
            for chain in self._dirs:
                self.kubelet.release_dirs(chain)
            with self.lock:
                self.finished = True
                evicted, deleting = self.evicted, self.deleting
            pod = self._pod()
            if pod is not None and evicted and not is_terminal(pod):
                self._update(lambda p: _mark_evicted(p, evicted, None))
            if pod is not None and deleting and not self.kubelet.stopping:
                self.store.remove("pods", self.namespace, self.name, uid=self.uid)

    def _wait_for(self, problem) -> bool:
        """Retries ``problem()`` (returns an error or None) until it is solved; False if stopped."""
        while True:
            generation = self.kubelet.secret_generation
            if self._stopped():
                return False
            if problem() is None:
                return True
            self.kubelet.wait_secrets(generation, 1.0)

    def _run(self) -> None:
        if not self._wait_for(self._volume_problem):
            return
        self.ip = self.kubelet.ips.allocate()
        if self._update(lambda p: _sandbox(p, self.ip)) is None:
            return
        if not self._pull_image():
            return
        env: dict[str, str] = {}

        def env_problem() -> str | None:
            nonlocal env
            env, error = self._build_env()
            if error:
                self._waiting("CreateContainerConfigError", error)
                self._event("Warning", "Failed", f"Error: {error}")
            return error

        if not self._wait_for(env_problem):
            return
        argv, cwd = self._prepare_process(env)
        missing = self._missing_executable(env)
        if missing:  # as containerd reports it: the container ends at once, exit code 128
            self._event("Warning", "Failed", f"Error: {missing}")
            self._update(functools.partial(self._terminated, terminated={
                "exitCode": 128, "reason": "StartError", "message": missing, "startedAt": now_iso(),
                "finishedAt": now_iso(), "containerID": f"sim://{self.uid[:8]}-0"}))
            return
        restarts, policy = 0, (self._pod() or {}).get("spec", {}).get("restartPolicy", "Always")
        while True:
            self._event("Normal", "Created", f"Created container: {self.container['name']}")
            with self.lock:
                if self._stopped():
                    return
                with open(self.log_path, "ab") as log:
                    self.proc = subprocess.Popen(
                        argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
            started = now_iso()
            container_id = f"sim://{self.uid[:8]}-{restarts}"
            probe = (self.container.get("readinessProbe") or {}).get("tcpSocket")
            # partial, not a lambda: the mutation binds this iteration's values (_update runs it at once anyway)
            self._update(functools.partial(self._running, started=started, restarts=restarts,
                                           container_id=container_id, ready=not probe))
            self._event("Normal", "Started", f"Started container {self.container['name']}")
            oom_after = self.kubelet.faults.oom_fault(self.name)
            if oom_after is not None:
                timer = threading.Timer(oom_after, self.oom_kill)
                timer.daemon = True
                timer.start()
            if probe:
                period = max(1.0, float((self.container.get("readinessProbe") or {}).get("periodSeconds", 10)))
                threading.Thread(target=self._probe_tcp, args=(self.proc, int(probe["port"]), period),
                                 daemon=True).start()
            code = self.proc.wait()
            code = code if code >= 0 else 128 - code
            reason = "Completed" if code == 0 else "Error"
            if self.oom:
                code, reason, self.oom = 137, "OOMKilled", False
            terminated = {"exitCode": code, "reason": reason,
                          "startedAt": started, "finishedAt": now_iso(), "containerID": container_id}
            again = policy == "Always" or (policy == "OnFailure" and code != 0)
            if not again or self.deleting or self.evicted or self._stopped():
                self._update(functools.partial(self._terminated, terminated=terminated))
                return
            restarts += 1
            backoff = min(10.0, 0.5 * 2 ** (restarts - 1))
            self._update(functools.partial(self._crash_loop, terminated=terminated, restarts=restarts))
            self._event("Warning", "BackOff", f"Back-off restarting failed container {self.container['name']} "
                                              f"in pod {self.name}_{self.namespace}({self.uid})")
            if self.cancelled.wait(backoff) or self._pod() is None:
                return

    def _volume_problem(self) -> str | None:
        pod = self._pod() or {"spec": {}}
        for volume in pod["spec"].get("volumes") or []:
            secret = volume.get("secret")
            if secret and not secret.get("optional") and \
                    self.store.get("secrets", self.namespace, secret.get("secretName", "")) is None:
                message = (f'MountVolume.SetUp failed for volume "{volume["name"]}" : '
                           f'secret "{secret.get("secretName")}" not found')
                self._event("Warning", "FailedMount", message, container=False)
                return message
        return None

    def _pull_image(self) -> bool:
        image = self.container["image"]
        backoff = 1.0
        while True:
            reason = self.kubelet.faults.image_fault(image)
            if reason is None:
                break
            if self._stopped():
                return False
            self._event("Normal", "Pulling", f'Pulling image "{image}"')
            self._event("Warning", "Failed", f'Failed to pull image "{image}": rpc error: code = NotFound desc = '
                                             f'failed to pull and unpack image "{image}": failed to resolve reference '
                                             f'"{image}": {image}: not found')
            self._event("Warning", "Failed", f"Error: {reason}")
            self._waiting(reason, "rpc error: code = NotFound desc = "
                                  f'failed to pull and unpack image "{image}": not found')
            if reason == "ErrImagePull":
                if self.cancelled.wait(0.1) or self._stopped():
                    return False
                self._event("Normal", "BackOff", f'Back-off pulling image "{image}"')
                self._event("Warning", "Failed", "Error: ImagePullBackOff")
                self._waiting("ImagePullBackOff", f'Back-off pulling image "{image}"')
            if self.cancelled.wait(backoff):
                return False
            backoff = min(backoff * 2, 10.0)
        self._event("Normal", "Pulling", f'Pulling image "{image}"')
        self._event("Normal", "Pulled", f'Successfully pulled image "{image}" in 1ms (1ms including waiting). '
                                        "Image size: 0 bytes.")
        return True

    def _secret_data(self, name: str) -> dict[str, bytes] | None:
        secret = self.store.get("secrets", self.namespace, name)
        if secret is None:
            return None
        return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}

    def _build_env(self) -> tuple[dict[str, str], str | None]:
        pod = self._pod()
        if pod is None:
            return {}, None
        env: dict[str, str] = {}
        c = self.container
        for source in c.get("envFrom") or []:
            ref = source.get("secretRef")
            if ref is None:
                if not (source.get("configMapRef") or {}).get("optional"):
                    return {}, "configmaps are not served by this simulator"
                continue
            data = self._secret_data(ref.get("name", ""))
            if data is None:
                if ref.get("optional"):
                    continue
                return {}, f'secret "{ref.get("name")}" not found'
            for key, value in data.items():
                env[source.get("prefix", "") + key] = value.decode(errors="replace")
        for item in c.get("env") or []:
            name, source = item["name"], item.get("valueFrom")
            if source is None:
                env[name] = expand(str(item.get("value", "")), env)
            elif "fieldRef" in source:
                env[name] = _field_ref(pod, source["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                data = self._secret_data(ref.get("name", ""))
                if data is None or ref.get("key") not in data:
                    if ref.get("optional"):
                        continue
                    if data is None:
                        return {}, f'secret "{ref.get("name")}" not found'
                    return {}, f"couldn't find key {ref.get('key')} in Secret {self.namespace}/{ref.get('name')}"
                env[name] = data[ref["key"]].decode(errors="replace")
            elif "resourceFieldRef" in source:
                ref = source["resourceFieldRef"]
                section, _, resource = ref.get("resource", "").partition(".")
                amount = ((c.get("resources") or {}).get(section) or {}).get(resource, "0")
                env[name] = str(math.ceil(parse_quantity(amount) / parse_quantity(ref.get("divisor", "1"))))
            else:
                if not any((source.get(k) or {}).get("optional") for k in source):
                    return {}, "configmaps are not served by this simulator"
        return env, None

    def _missing_executable(self, env: dict[str, str]) -> str:
        """containerd's words when the container's command is not in the image ('' when it is)."""
        command = self.container.get("command") or self.container.get("args") or []
        if not command or command[0] in ("python", "python3"):
            return ""
        exe = expand(command[0], env)
        found = os.access(exe, os.X_OK) if "/" in exe else shutil.which(exe, path=env.get("PATH", ""))
        if found:
            return ""
        return ("failed to create containerd task: failed to create shim task: OCI runtime create failed: runc "
                f'create failed: unable to start container process: exec: "{exe}": executable file not found in $PATH: '
                "unknown")

    def _prepare_process(self, pod_env: dict[str, str]) -> tuple[list[str], str]:
        """Writes volumes; returns argv (wrapped in unshare for mounts) and the working directory."""
        pod = self._pod() or {"spec": {}}
        command = [expand(x, pod_env) for x in self.container.get("command") or []]
        args = [expand(x, pod_env) for x in self.container.get("args") or []]
        argv = command + args if command else ["sleep", "infinity"]  # no image entrypoint to run
        if argv[0] in ("python", "python3"):
            argv[0] = self.kubelet.python
            if self.kubelet.faults.is_bare_python(self.container["image"]):
                argv.insert(1, "-S")  # the image's Python has no site-packages
        # TMPDIR stands in for a container's private /tmp (files written there go with the pod).
        tmp = os.path.join(self.dir, "tmp")
        os.makedirs(tmp, exist_ok=True)
        base = {"PATH": os.pathsep.join([os.path.dirname(self.kubelet.python), "/usr/local/bin", "/usr/bin", "/bin"]),
                "HOME": self.home, "TMPDIR": tmp}
        pod_env.update({k: v for k, v in base.items() if k not in pod_env})
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        mounts: list[tuple[str, str, bool]] = []
        for mount in self.container.get("volumeMounts") or []:
            volume = volumes.get(mount["name"]) or {}
            src = os.path.join(self.dir, "volumes", mount["name"])
            if "hostPath" in volume:  # a folder of this machine, as a node's (stands in for a user's PVC)
                src = volume["hostPath"]["path"]
            elif not os.path.isdir(src):
                os.makedirs(src)
                if "secret" in volume:
                    self._write_secret(volume["secret"], src)
            readonly = bool(mount.get("readOnly")) or "secret" in volume
            mounts.append((src, mount["mountPath"], readonly))
        workdir = self.container.get("workingDir") or self.home
        if not mounts:
            if not os.path.isdir(workdir):
                self._dirs.append(self.kubelet.acquire_dir(workdir))
            return argv, workdir
        for _src, target, _ in mounts:
            self._dirs.append(self.kubelet.acquire_dir(target))
        if not self.kubelet.use_namespaces:  # fallback: the files lie at the real path on the host
            for src, target, _ in mounts:
                shutil.copytree(src, target, dirs_exist_ok=True)
            if not os.path.isdir(workdir):
                self._dirs.append(self.kubelet.acquire_dir(workdir))
            return argv, workdir
        q = shlex.quote
        steps = []
        for src, target, readonly in mounts:
            steps.append(f"mkdir -p {q(target)} && mount --bind {q(src)} {q(target)}")
            if readonly:
                steps.append(f"mount -o remount,bind,ro {q(target)}")
        steps.append(f"mkdir -p {q(workdir)} && cd {q(workdir)} && exec \"$@\"")
        return [UNSHARE, "-m", "--propagation", "private", "sh", "-c", " && ".join(steps), "sh", *argv], self.home

    def _write_secret(self, volume: dict, target: str) -> None:
        data = self._secret_data(volume.get("secretName", "")) or {}
        mode = volume.get("defaultMode", 0o644)
        items = volume.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            if item["key"] not in data:
                continue
            path = os.path.join(target, item.get("path") or item["key"])
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data[item["key"]])
            os.chmod(path, item.get("mode", mode))

    # ------------------------------------------------------------ status writers

    def _running(self, pod: dict, started: str, restarts: int, container_id: str, ready: bool = True) -> None:
        old = (pod["status"].get("containerStatuses") or [{}])[0]
        pod["status"]["phase"] = "Running"
        pod["status"]["containerStatuses"] = [_container_status(
            self.container, {"running": {"startedAt": started}}, ready, restarts, old.get("lastState"), container_id,
        )]
        if ready:
            self._ready(pod)

    def _ready(self, pod: dict) -> None:
        pod["status"]["containerStatuses"][0]["ready"] = True
        for ctype in ("ContainersReady", "Ready"):
            set_condition(pod, {"type": ctype, "status": "True"})

    def _probe_tcp(self, proc: subprocess.Popen, port: int, period: float) -> None:
        """readinessProbe.tcpSocket as a kubelet runs it: the first probe at container start, then one per
        ``periodSeconds`` (at least 1 s); Ready after the first success."""
        while proc.poll() is None and not self._stopped():
            try:
                with socket.create_connection((self.ip, port), timeout=min(period, 1.0)):
                    pass
            except OSError:
                if self.cancelled.wait(period):
                    return
                continue
            if proc.poll() is None:
                self._update(lambda p: self._ready(p) if "running" in p["status"]["containerStatuses"][0]["state"]
                             else None)
            return

    def _crash_loop(self, pod: dict, terminated: dict, restarts: int) -> None:
        pod["status"]["containerStatuses"] = [_container_status(
            self.container, {"waiting": {"reason": "CrashLoopBackOff",
                                         "message": f"back-off restarting failed container {self.container['name']}"}},
            False, restarts, {"terminated": terminated}, terminated["containerID"],
        )]
        for ctype in ("ContainersReady", "Ready"):
            set_condition(pod, {"type": ctype, "status": "False", "reason": "ContainersNotReady",
                                "message": f"containers with unready status: [{self.container['name']}]"})

    def _terminated(self, pod: dict, terminated: dict) -> None:
        if self.evicted:
            _mark_evicted(pod, self.evicted, terminated)
            return
        old = (pod["status"].get("containerStatuses") or [{}])[0]
        succeeded = terminated["exitCode"] == 0
        pod["status"]["phase"] = "Succeeded" if succeeded else "Failed"
        pod["status"]["containerStatuses"] = [_container_status(
            self.container, {"terminated": terminated}, False, old.get("restartCount", 0), old.get("lastState"),
            terminated["containerID"],
        )]
        for ctype in ("ContainersReady", "Ready"):
            set_condition(pod, {"type": ctype, "status": "False",
                                "reason": "PodCompleted" if succeeded else "PodFailed"})
