"""Park and resume in direct mode: the REST handlers, where snapshots live, and the kernel's part.

Park sends the kernel one silent execute request whose user expression runs
``orion_jupyter.snapshot.park`` (nothing reaches the user's history); the server then reads the
snapshot back against its checksums and only then shuts the kernel down through the kernel
manager, which frees its vGPU. Resume starts a kernel as any launch does (the same checks, the
same refusal when the pool is full) and restores the snapshot into it before answering.

One folder of snapshots has two sides (:class:`Where`): this server reads, lists, verifies and deletes
at its own path, the kernel writes and reads at the path its pod sees. Local backend: one path,
``Snapshots.location``. Direct mode on Kubernetes: ``Snapshots.location`` here and
``Snapshots.kernel_location`` in kernel pods (which mount it: ``VGPUProvisioner.volumes``). Hub mode:
the user's storage, this server's root here and the broker's ``home_mount_path`` in kernel pods, each
with ``snapshot.HOME_FOLDER`` in it. Snapshots are loaded only from the owner's own folder in it, by an
id the server checks; a request never names a path.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.auth.decorator import authorized
from jupyter_server.utils import ensure_async
from tornado import web
from traitlets import Bool, Float, Int, Unicode
from traitlets.config import Configurable

from .. import snapshot
from ..errors import KernelLaunchError
from ..kernel_calls import call_snapshot
from ..kernelspecs import vgpu_specs
from ..metrics import SNAPSHOT_BYTES, SNAPSHOT_SECONDS
from ..snapshot import SnapshotError
from .handlers import OrionHandler
from .kernels import checked_path
from .usage import kernel_client

STATUS = {"not_found": 404, "bad_id": 404, "too_big": 413, "disk": 507, "damaged": 422, "timeout": 504,
          "unsupported": 501, "location": 409, "busy": 409, "kernel": 500, "no_kernel": 500, "unavailable": 503}


class Snapshots(Configurable):
    """Where snapshots of parked kernels live, and how large they may grow."""

    location = Unicode("", config=True,
                       help="Folder of snapshots as this server sees it (one private folder per user inside it). "
                            "Local backend: default <Jupyter data folder>/orion-snapshots. Direct mode on Kubernetes: "
                            "the server's path of storage kernel pods mount (with kernel_location: both, or no "
                            "snapshots). Hub mode: not used (<server root>/.orion-snapshots). Refused when others "
                            "can write it, or everyone the folder holding it (a class-shared volume); that folder's "
                            "group may (fsGroup).")
    kernel_location = Unicode("", config=True,
                              help="Direct mode on Kubernetes: the same folder as location, inside kernel pods "
                                   "(mounted with c.VGPUProvisioner.volumes / volume_mounts), e.g. "
                                   "/home/jovyan/.orion-snapshots. Kernel pods and this server write it as one user.")
    max_snapshot_bytes = Int(4 << 30, config=True, help="Bytes one snapshot may take; a larger park is refused.")
    max_user_bytes = Int(16 << 30, config=True,
                         help="Bytes all of one user's snapshots may take together; a park past it is refused.")
    timeout_seconds = Float(600.0, config=True,
                            help="Seconds the kernel may take to save or restore a snapshot.")
    park_idle = Bool(True, config=True,
                     help="Direct mode: idle culling parks a vGPU kernel (its variables saved here) instead of "
                          "stopping it, where this server keeps snapshots (the local backend; on Kubernetes with "
                          "location and kernel_location); a park that fails stops it. Hub mode: the broker culls.")


@contextmanager
def timed(action: str) -> Iterator[None]:
    """Records the seconds of a park or resume, with its outcome, in the metrics."""
    started, outcome = time.monotonic(), "error"
    try:
        yield
        outcome = "ok"
    except SnapshotError as err:
        outcome = err.reason
        raise
    except Exception as err:  # a launch refused as any launch (its reason), or a fault (its class)
        outcome = str(getattr(err, "reason", "") or type(err).__name__)
        raise
    finally:
        SNAPSHOT_SECONDS.labels(action, outcome).observe(time.monotonic() - started)


async def idle_soon(km: Any, seconds: float = 2.0) -> bool:
    """Whether the kernel is idle, or turns idle within ``seconds`` (a cell that just ended: its idle
    status may reach the server a moment after its reply reached the user)."""
    deadline = time.monotonic() + seconds
    while getattr(km, "execution_state", None) == "busy":
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


@dataclass(frozen=True)
class Where:
    """The folder of snapshots as this server sees it (``server``) and as kernel pods see it (``kernel``)."""

    server: Path
    kernel: PurePosixPath
    mounted_by: str = ""  # the settings that mount it in kernel pods, for a park whose files this server misses

    def kernel_path(self, owner: str, snapshot_id: str) -> str:
        return str(self.kernel / snapshot.user_part(owner) / snapshot_id)


class SnapshotService:
    """Park, list, resume and delete, for one server (``state`` is the extension's OrionState)."""

    def __init__(self, state: Any, settings: Snapshots):
        self.state = state
        self.settings = settings
        self.kernel_manager = state.kernels.kernel_manager
        self.parking: set[str] = set()
        self.resuming: set[str] = set()
        self.writing: set[Path] = set()  # snapshots being written now (their .partial folders)

    async def where(self) -> Where:
        """Where this backend keeps snapshots, or SnapshotError("unsupported") saying why it keeps none."""
        view = self.state.view
        if view.kind != "broker":
            return self.direct_where()
        try:
            home = await view.kernel_home()
        except KernelLaunchError as err:  # the broker down: nothing is lost, try again
            raise SnapshotError("unavailable", f"the vGPU broker does not answer ({err}); try again in a minute") \
                from None
        if not home:
            raise SnapshotError("unsupported", "park and resume need your storage in kernel pods, and the vGPU "
                                               "broker's kernel pods mount none of yours: its operator sets "
                                               "c.Broker.home_mount_path with c.Broker.volumes / volume_mounts")
        root = Path(self.state.kernels.serverapp.root_dir).expanduser()
        return Where(root / snapshot.HOME_FOLDER, PurePosixPath(home) / snapshot.HOME_FOLDER,
                     "the broker's c.Broker.volumes / volume_mounts at c.Broker.home_mount_path")

    def direct_where(self) -> Where:
        """Direct mode: the local backend's one path, or Kubernetes' configured pair."""
        settings = self.settings
        if self.state.view.kind == "local":
            base = Path(settings.location or Path(jupyter_data_dir()) / "orion-snapshots")
            return Where(base, PurePosixPath(base))
        if not (settings.location and settings.kernel_location):
            missing = [f"c.Snapshots.{name}" for name in ("location", "kernel_location") if not getattr(settings, name)]
            raise SnapshotError("unsupported", "park and resume on Kubernetes need storage that kernel pods mount "
                                               "(c.VGPUProvisioner.volumes / volume_mounts) and where it is: "
                                               "c.Snapshots.location on this server, c.Snapshots.kernel_location "
                                               f"in kernel pods ({' and '.join(missing)} not set)")
        if not PurePosixPath(settings.kernel_location).is_absolute():
            raise SnapshotError("location", f"c.Snapshots.kernel_location {settings.kernel_location!r} is not an "
                                            "absolute path")
        return Where(Path(settings.location), PurePosixPath(settings.kernel_location),
                     "c.VGPUProvisioner.volumes / volume_mounts at c.Snapshots.kernel_location")

    def path_in_kernel(self, where: Where, kernel_id: str, owner: str, snapshot_id: str) -> str:
        """The snapshot as ``kernel_id`` sees it: at the pods' side of ``where`` for a vGPU kernel, at this
        server's own path for a kernel it runs as a process beside itself (a spec without the provisioner)."""
        if self.state.kernels.provisioner(kernel_id) is None:
            return str(where.server / snapshot.user_part(owner) / snapshot_id)
        return where.kernel_path(owner, snapshot_id)

    def parks_idle(self) -> bool:
        """Idle culling parks here: it is on, and this backend keeps snapshots (hub mode: the broker culls)."""
        if not self.settings.park_idle or self.state.view.kind == "broker":
            return False
        try:
            self.direct_where()
        except SnapshotError:
            return False
        return True

    def find(self, where: Where, owner: str, snapshot_id: str) -> tuple[Path, dict[str, Any]]:
        """A complete snapshot of ``owner``'s; another user's, a bad or unknown id: not found."""
        folder = snapshot.user_folder(where.server, owner, create=False) if snapshot.is_id(snapshot_id) else None
        if folder is None or not (folder / snapshot_id).is_dir():
            raise SnapshotError("not_found", f'no snapshot "{snapshot_id[:80]}" of yours')
        manifest = snapshot.read_manifest(folder / snapshot_id)
        if manifest.get("owner") != owner or manifest.get("id") != snapshot_id:
            raise SnapshotError("not_found", f'no snapshot "{snapshot_id}" of yours')
        return folder / snapshot_id, manifest

    async def list(self, owner: str) -> list[dict[str, Any]]:
        folder = snapshot.user_folder((await self.where()).server, owner, create=False)
        out = []
        for path in sorted(folder.iterdir(), reverse=True) if folder else []:
            if not snapshot.is_id(path.name):
                continue  # a park under way (.partial) or not ours
            try:
                manifest = snapshot.read_manifest(path)
            except SnapshotError as err:
                out.append({"id": path.name, "error": str(err)})
                continue
            kernel = manifest.get("kernel") or {}
            out.append({"id": path.name, "created": manifest.get("created"), "bytes": manifest.get("bytes"),
                        "spec": kernel.get("spec"), "path": kernel.get("path"), "vgpu": kernel.get("vgpu"),
                        "saved": sorted([n for e in manifest["entries"] for n in e["names"]]
                                        + list(manifest.get("modules") or {})),
                        "not_saved": manifest.get("not_saved") or {}})
        return out

    async def delete(self, owner: str, snapshot_id: str) -> None:
        path, _manifest = self.find(await self.where(), owner, snapshot_id)
        if snapshot_id in self.resuming:
            raise SnapshotError("busy", f"snapshot {snapshot_id} is being resumed; delete it afterwards")
        shutil.rmtree(path)

    async def ask(self, kernel_id: str, function: str, **arguments: Any) -> dict[str, Any]:
        """``snapshot.<function>(**arguments)`` in the kernel, through a client of its own."""
        import zmq.asyncio

        client = kernel_client(self.kernel_manager.get_kernel(kernel_id), zmq.asyncio.Context.instance())
        client.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=False)
        try:
            return await call_snapshot(client, function, arguments, self.settings.timeout_seconds)
        finally:
            client.stop_channels()

    async def park(self, kernel_id: str, owner: str) -> dict[str, Any]:
        """Save the kernel's namespace; once the snapshot reads back whole, shut the kernel down."""
        km = self.kernel_manager.get_kernel(kernel_id)
        if kernel_id in self.parking:
            raise SnapshotError("busy", f"kernel {kernel_id} is being parked already")
        if not await idle_soon(km):
            raise SnapshotError("busy", f"kernel {kernel_id} is running a cell; park it once it is idle "
                                        "(or interrupt it first)")
        if not await ensure_async(km.is_alive()):
            raise SnapshotError("busy", f"kernel {kernel_id} is not running (it died or is restarting); "
                                        "there is nothing to park")
        where = await self.where()
        folder = snapshot.user_folder(where.server, owner, create=True)
        target = folder / snapshot.new_id()
        self.forget_partial(folder)
        self.parking.add(kernel_id)
        self.writing.add(target)
        try:
            with timed("park"):
                report = await self._park(kernel_id, owner, target, where)
        finally:
            self.parking.discard(kernel_id)
            self.writing.discard(target)
        SNAPSHOT_BYTES.labels("park").inc(report["bytes"])
        return {"snapshot": report["snapshot"], "saved": report["saved"], "not_saved": report["not_saved"],
                "bytes": report["bytes"], "kernel_id": kernel_id, "stopped": True}

    async def park_course(self, course: str) -> dict[str, Any]:
        """Park every vGPU kernel of ``course`` this server runs (the end of a lab); one that fails keeps
        running and says why. Its kernels' course is the provisioner's (c.VGPUProvisioner.course)."""
        kernels = self.state.kernels
        owners = {kernel_id: provisioner.user for kernel_id in list(self.kernel_manager.list_kernel_ids())
                  if (provisioner := kernels.provisioner(kernel_id)) is not None and provisioner.course == course}
        if not owners and course != self.state.settings.course:
            raise SnapshotError("not_found", f'no course "{course[:80]}" on this server (its course: '
                                             f'"{self.state.settings.course}")')
        parked, not_parked = [], []
        for kernel_id, owner in owners.items():
            try:
                parked.append({**await self.park(kernel_id, owner), "user": owner})
            except SnapshotError as err:
                not_parked.append({"kernel_id": kernel_id, "user": owner, "reason": err.reason, "message": str(err)})
        return {"course": course, "parked": parked, "not_parked": not_parked}

    def forget_partial(self, folder: Path) -> None:
        """Remove what a park that died half-way left (a kernel killed while saving): it counts against the limit.
        A park begun less than ``timeout_seconds`` ago (its id says when) may be under way, here or by the
        broker in the same storage (hub mode), and is left alone."""
        started_since = datetime.now(UTC) - timedelta(seconds=self.settings.timeout_seconds)
        for path in folder.glob("*" + snapshot.PARTIAL):
            snapshot_id = path.name[:-len(snapshot.PARTIAL)]
            begun = snapshot.id_time(snapshot_id)
            if path.with_name(snapshot_id) in self.writing or (begun is not None and begun > started_since):
                continue
            shutil.rmtree(path, ignore_errors=True)

    async def _park(self, kernel_id: str, owner: str, target: Path, where: Where) -> dict[str, Any]:
        """The kernel writes at its side of ``where``; this server reads the snapshot back at its own."""
        written = self.path_in_kernel(where, kernel_id, owner, target.name)
        report = await self.ask(kernel_id, "park", folder=written, owner=owner,
                                limit_bytes=self.settings.max_snapshot_bytes,
                                user_limit_bytes=self.settings.max_user_bytes, info=await self.kernel_info(kernel_id))
        if not target.is_dir():  # a pod without the storage (a warm kernel, a missing mount) wrote its own disk
            raise SnapshotError("location", f"the kernel saved its snapshot at {written}, which is not this "
                                            f"server's {target}: its pod does not mount the snapshot storage "
                                            f"({where.mounted_by}); nothing was parked and the kernel keeps running")
        bad = snapshot.damaged(target, snapshot.read_manifest(target))
        if bad:
            shutil.rmtree(target, ignore_errors=True)
            raise SnapshotError("disk", f"the snapshot did not read back whole ({', '.join(sorted(bad))}); "
                                        "nothing was parked and the kernel keeps running")
        await ensure_async(self.kernel_manager.shutdown_kernel(kernel_id))
        return report

    async def kernel_info(self, kernel_id: str) -> dict[str, Any]:
        """What the manifest records of the kernel: its spec, vGPU request and notebook."""
        km = self.kernel_manager.get_kernel(kernel_id)
        provisioner = self.state.kernels.provisioner(kernel_id)
        path = None
        for session in await ensure_async(self.state.kernels.serverapp.session_manager.list_sessions()):
            if (session.get("kernel") or {}).get("id") == kernel_id:
                path = session.get("path")
        return {"kernel_id": kernel_id, "spec": km.kernel_name, "path": path,
                "vgpu": provisioner.allocation_summary() if provisioner else None}

    async def resume(self, owner: str, snapshot_id: str, spec: str | None) -> dict[str, Any]:
        """A new kernel (``spec``, or the parked one's) with the snapshot restored in it."""
        where = await self.where()
        path, manifest = self.find(where, owner, snapshot_id)
        if snapshot_id in self.resuming:
            raise SnapshotError("busy", f"snapshot {snapshot_id} is being resumed already")
        self.resuming.add(snapshot_id)
        try:
            with timed("resume"):
                result = await self._resume(path, manifest, owner, spec, where)
        finally:
            self.resuming.discard(snapshot_id)
        SNAPSHOT_BYTES.labels("resume").inc(manifest.get("bytes") or 0)
        return result

    async def _resume(self, path: Path, manifest: dict[str, Any], owner: str, spec: str | None,
                      where: Where) -> dict[str, Any]:
        """``path``: the snapshot as this server sees it (in ``where``); the new kernel reads it at its side."""
        kernel = manifest.get("kernel") or {}
        spec = spec or kernel.get("spec")
        notebook = checked_path(kernel.get("path") if isinstance(kernel.get("path"), str) else None)
        if spec in vgpu_specs():  # as any launch: policy, quota, capacity (a full pool refuses)
            kernel_id = (await self.state.kernels.start({"spec": spec}, owner, path=notebook, own_storage=True))["id"]
        elif spec in self.kernel_manager.kernel_spec_manager.find_kernel_specs():
            kernel_id = await ensure_async(self.kernel_manager.start_kernel(kernel_name=spec, path=notebook))
        else:
            raise SnapshotError("bad_spec", f'no kernel spec named "{str(spec)[:80]}" to resume on')
        in_kernel = self.path_in_kernel(where, kernel_id, owner, path.name)
        try:
            report = await self.ask(kernel_id, "restore", folder=in_kernel, owner=owner)
        except BaseException as err:
            await ensure_async(self.kernel_manager.shutdown_kernel(kernel_id))
            if isinstance(err, SnapshotError) and err.reason == "not_found":  # found here, not in the new pod
                raise SnapshotError("location", f"the new kernel does not see the snapshot at {in_kernel}: its pod "
                                                f"does not mount the snapshot storage ({where.mounted_by}); the "
                                                "snapshot is kept") from None
            raise
        saved = {n for e in manifest["entries"] for n in e["names"]} | set(manifest.get("modules") or {})
        kept = bool(saved - set(report["restored"]))  # something did not come back: keep it to try again
        if not kept:
            shutil.rmtree(path, ignore_errors=True)
        return {"kernel_id": kernel_id, "spec": spec, "path": notebook, "snapshot": path.name,
                "restored": report["restored"], "not_restored": report["not_restored"], "moved": report["moved"],
                "snapshot_kept": kept}


class SnapshotHandler(OrionHandler):
    @property
    def snapshots(self) -> SnapshotService:
        return self.settings["orion_jupyter_snapshots"]

    async def answer(self, work: Any, status: int = 200) -> None:
        try:
            self.reply(await work, status)
        except SnapshotError as err:
            self.refuse(STATUS.get(err.reason, 400), str(err), reason=err.reason)


class ParkHandler(SnapshotHandler):
    @web.authenticated
    @authorized
    async def post(self, kernel_id: str) -> None:
        """Park one of the caller's kernels (an instructor: anyone's); the snapshot is the kernel user's."""
        if kernel_id not in self.kernel_manager:
            return self.refuse(404, f'no kernel "{kernel_id[:80]}" of yours')
        owner = self.state.kernels.kernel_user(kernel_id)
        if owner is None:  # a kernel started through Jupyter's own API: the server user's
            owner = self.username if self.state.access.owns(self.current_user, self.state.access.server_user) else None
        elif not self.state.access.owns(self.current_user, owner):
            owner = None
        if owner is None:
            return self.refuse(404, f'no kernel "{kernel_id}" of yours')
        await self.answer(self.snapshots.park(kernel_id, owner), 201)


class BrokerParking(SnapshotHandler):
    async def from_broker(self, work: Any, status: int) -> None:
        """The broker's answer, or its refusal with its status and sentence (not yours, not an instructor, a
        park that failed and why)."""
        try:
            self.reply(await work, status)
        except Exception as err:
            code = getattr(err, "status", None)
            if not isinstance(code, int):
                raise
            self.refuse(code, str(err))


class ClassParkHandler(ParkHandler, BrokerParking):
    @web.authenticated
    @authorized
    async def post(self, kernel_id: str) -> None:
        """The class view's Park: in hub mode the broker decides with this user's own token (the owner, or an
        instructor: anyone's); in direct mode as ``kernels/{id}/park``."""
        view = self.state.view
        if view.kind != "broker":
            return await super().post(kernel_id)
        await self.from_broker(view.park_kernel(kernel_id), 201)


class CourseParkHandler(BrokerParking):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        """``{"course": "<course>"}``: an instructor parks every kernel of a course (the end of a lab)."""
        body = self.json_body()
        if body is None:
            return
        course = body.get("course")
        if set(body) != {"course"} or not isinstance(course, str) or not course:
            return self.refuse(400, 'send {"course": "<course>"}, the course whose kernels to park', field="course")
        view = self.state.view
        if view.kind == "broker":  # the broker decides who is an instructor
            return await self.from_broker(view.park_course(course), 200)
        if not self.is_instructor:
            return self.refuse(403, "only instructors may park a course's kernels")
        await self.answer(self.snapshots.park_course(course))


class SnapshotsHandler(SnapshotHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        await self.answer(self._list())

    async def _list(self) -> dict[str, Any]:
        """The caller's snapshots; where this backend keeps none (no storage in kernel pods) an empty list
        that says so and why, not an error: the page asks on every refresh."""
        try:
            return {"snapshots": await self.snapshots.list(self.username), "supported": True}
        except SnapshotError as err:
            if err.reason != "unsupported":
                raise
            return {"snapshots": [], "supported": False, "reason": str(err)}


class ResumeHandler(SnapshotHandler):
    @web.authenticated
    @authorized
    async def post(self, snapshot_id: str) -> None:
        body = self.json_body()
        if body is None:
            return
        spec = body.get("spec")
        if set(body) - {"spec"} or not (spec is None or isinstance(spec, str)):
            return self.refuse(400, 'send {} or {"spec": "<kernel spec>"} (the parked kernel\'s spec by default)',
                               field="spec")
        try:
            await self.answer(self.snapshots.resume(self.username, snapshot_id, spec or None))
        except SnapshotError as err:
            self.refuse(STATUS.get(err.reason, 400), str(err), reason=err.reason)

    async def answer(self, work: Any, status: int = 200) -> None:
        result = await self.or_refuse(work)  # a launch refused as any launch (a full pool: 409)
        if result is not None:
            self.reply(result, status)


class DeleteHandler(SnapshotHandler):
    @web.authenticated
    @authorized
    async def delete(self, snapshot_id: str) -> None:
        await self.answer(self._delete(snapshot_id))

    async def _delete(self, snapshot_id: str) -> dict[str, Any]:
        await self.snapshots.delete(self.username, snapshot_id)
        return {"deleted": snapshot_id}


def snapshot_routes(prefix: str) -> list[tuple[str, type]]:
    return [
        (rf"{prefix}/kernels/([^/]+)/park", ParkHandler),
        (rf"{prefix}/class/park", CourseParkHandler),  # before the class view's class/{pod}
        (rf"{prefix}/class/kernels/([^/]+)/park", ClassParkHandler),
        (rf"{prefix}/snapshots", SnapshotsHandler),
        (rf"{prefix}/snapshots/([^/]+)/resume", ResumeHandler),
        (rf"{prefix}/snapshots/([^/]+)", DeleteHandler),
    ]
