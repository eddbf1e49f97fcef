"""Park and resume, inside the kernel: the user's namespace saved to files, and loaded back.

Runs in the kernel (the server sends one silent execute request whose user expression calls
``park`` or ``restore``), so it imports no server package. The serializer is dill: a cell's
functions and classes are saved by value and keep the live namespace as their globals (a function
restored sees today's ``scale``, not the parked one), modules by name. Instances refer to their
cell-defined class by name (dill's ``byref``), so after a resume ``type(p) is Point`` still holds.

Each variable is saved on its own (one that cannot be saved loses only itself), except PyTorch
objects, which are saved together so an optimizer keeps the parameters of its model. Tensors on a
GPU are saved as CPU copies with their device; a resume puts them back there, or on the CPU (and
says so) where that device is missing. A snapshot is complete only once every file was re-read
against its checksum and the manifest renamed into place; a failure leaves no folder behind.
A snapshot is pickle data: load it only into its owner's own kernel.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import re
import secrets
import shutil
import socket
import stat
import sys
import threading
import types
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

FORMAT = 1
MANIFEST = "manifest.json"
PARTIAL = ".partial"
# In the user's own storage (hub mode: the server's root, mounted at c.Broker.home_mount_path in kernel pods).
HOME_FOLDER = ".orion-snapshots"
ID_PATTERN = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$")
IPYTHON_CACHE = re.compile(r"^(In|Out|_|__|___|_i{1,3}|_i?\d+|_oh|_ih|_dh)$")
CHUNK = 1 << 20


class SnapshotError(Exception):
    """A park or resume that cannot go on; ``reason`` is one word for clients, the text says why."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class Report(dict):
    """What ``park`` / ``restore`` answer; shown to the server as JSON (``application/json``)."""

    def _repr_json_(self) -> dict[str, Any]:
        return dict(self)


# -- where snapshots live ----------------------------------------------------------------------
def new_id(now: datetime | None = None) -> str:
    return f"{(now or datetime.now(UTC)).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(4)}"


def is_id(value: Any) -> bool:
    return isinstance(value, str) and bool(ID_PATTERN.match(value))


def id_time(snapshot_id: str) -> datetime | None:
    """When the park of ``snapshot_id`` began (None: not an id of a real time)."""
    try:
        return datetime.strptime(snapshot_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC) if is_id(snapshot_id) else None
    except ValueError:
        return None


def user_part(user: str) -> str:
    """The folder of ``user``: the name where it is plainly safe, else a hash (one folder per exact name)."""
    if re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,62}", user) and not re.fullmatch(r"u-[0-9a-f]{40}", user):
        return user
    return "u-" + hashlib.sha1(user.encode("utf-8", "surrogatepass")).hexdigest()


def _refuse_shared(path: Path, what: str, group_may_write: bool = False) -> None:
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise SnapshotError("location", f"{what} {path} is a link or not a folder; snapshots are not kept there")
    if info.st_mode & (stat.S_IWOTH if group_may_write else stat.S_IWGRP | stat.S_IWOTH):
        raise SnapshotError("location", f"{what} {path} is writable by other users (a shared volume?); "
                                        "snapshots are pickle data and are kept only where you alone can write")


def _own_folder(path: Path, create: bool) -> bool:
    """``path`` as a folder of this user alone (created 0700); False when it is missing and not created."""
    if create:
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            pass
    elif not os.path.lexists(path):
        return False
    _refuse_shared(path, "the snapshot folder")
    if path.lstat().st_uid != os.getuid():
        raise SnapshotError("location", f"the snapshot folder {path} belongs to another user")
    return True


def user_folder(base: str | os.PathLike, user: str, create: bool = True) -> Path | None:
    """``base``/<user>, private to this user; refused where others can write ``base`` (its group too) or the
    folder holding it (its group may)."""
    base = Path(base)
    if not base.is_absolute():
        raise SnapshotError("location", f"the snapshot location {base} is not an absolute path")
    if create:
        base.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    elif not base.parent.exists():
        return None
    # The folder holding them may be group-writable: Kubernetes' fsGroup makes a volume's root rwxrwsr-x (a
    # z2jh home). One who could rename the snapshot folders there cannot make theirs pass: ours must be ours.
    _refuse_shared(base.parent, "the folder holding snapshots", group_may_write=True)
    if not _own_folder(base, create):
        return None
    folder = base / user_part(user)
    return folder if _own_folder(folder, create) else None


def used_bytes(folder: Path) -> int:
    """Bytes of every snapshot (and leftover partial one) in a user's folder."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        total += sum(os.lstat(os.path.join(root, f)).st_size for f in files)
    return total


# -- what is saved -----------------------------------------------------------------------------
def user_namespace(shell: Any) -> dict[str, Any]:
    """The user's variables: IPython's own names (hidden ones, the output cache, dunders) left out."""
    hidden = getattr(shell, "user_ns_hidden", {})
    return {name: value for name, value in shell.user_ns.items()
            if not (name.startswith("__") or IPYTHON_CACHE.match(name)
                    or (name in hidden and hidden[name] is value))}


def unsaveable(value: Any) -> str | None:
    """Why ``value`` cannot be saved, for what a pickle would get wrong or fail on late."""
    if isinstance(value, io.IOBase):
        return "an open file: its handle and position cannot be saved; open it again after resuming"
    if isinstance(value, socket.socket):
        return "a network socket: connections cannot be saved"
    if isinstance(value, threading.Thread):
        return "a thread: running code cannot be saved"
    if isinstance(value, (types.GeneratorType, types.CoroutineType, types.AsyncGeneratorType)):
        return f"a {type(value).__name__}: its paused code cannot be saved; create it again after resuming"
    if isinstance(value, Iterator):
        return f"a live iterator ({type(value).__name__}): its position cannot be saved"
    return None


def _is_torch(value: Any) -> bool:
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    if isinstance(value, (torch.Tensor, torch.nn.Module, torch.optim.Optimizer)):
        return True
    return type(value).__module__.startswith("torch.optim.lr_scheduler")


def _kind(value: Any) -> str:
    if isinstance(value, type) and value.__module__ == "__main__":
        return "class"
    if isinstance(value, types.FunctionType) and value.__module__ == "__main__":
        return "function"
    return "torch" if _is_torch(value) else "value"


def _type_name(value: Any) -> str:
    kind = type(value)
    plain = kind.__module__ in ("builtins", "__main__")
    return kind.__qualname__ if plain else f"{kind.__module__}.{kind.__qualname__}"


# -- the serializer ----------------------------------------------------------------------------
def _pickler_class() -> type:
    import dill

    class Pickler(dill.Pickler):
        """dill, plus: GPU tensors as CPU copies with their device; open files refused, never reopened."""

        devices: set[str]

        def reducer_override(self, obj: Any) -> Any:
            if isinstance(obj, (io.IOBase, socket.socket)):
                raise TypeError(f"it holds {unsaveable(obj)}")
            torch = sys.modules.get("torch")
            if torch is not None and isinstance(obj, torch.Tensor) and obj.device.type not in ("cpu", "meta"):
                self.devices.add(str(obj.device))
                return (_tensor_on, (obj.detach().to("cpu"), str(obj.device),
                                     isinstance(obj, torch.nn.Parameter), obj.requires_grad))
            return NotImplemented

    return Pickler


MOVED: list[str] = []  # devices asked for by the file being loaded that this kernel lacks


def _tensor_on(cpu: Any, device: str, parameter: bool, requires_grad: bool) -> Any:
    """A saved GPU tensor back on its device, or on the CPU when this kernel has no such device."""
    import torch

    kind, _, index = device.partition(":")
    present = kind == "cuda" and torch.cuda.is_available() and int(index or 0) < torch.cuda.device_count()
    if not present:
        MOVED.append(device)
    tensor = cpu.to(device if present else "cpu")
    if parameter:
        return torch.nn.Parameter(tensor, requires_grad=requires_grad)
    return tensor.requires_grad_(requires_grad) if requires_grad else tensor


class _Sink:
    """A file written through a checksum and the snapshot's byte budget."""

    def __init__(self, fh: Any, budget: dict[str, Any], name: str):
        self.fh, self.budget, self.name = fh, budget, name
        self.hash = hashlib.sha256()
        self.bytes = 0

    def write(self, data: Any) -> int:
        size = memoryview(data).nbytes
        if self.budget["used"] + size > self.budget["limit"]:
            raise SnapshotError("too_big", f"the snapshot passed its limit of {_size(self.budget['limit'])} "
                                           f"while saving {self.name!r} ({self.budget['why']}); delete large "
                                           "variables or old snapshots, or park fewer")
        self.budget["used"] += size
        self.bytes += size
        self.hash.update(data)
        try:
            return self.fh.write(data)
        except OSError as err:
            raise _disk(err) from None


def _disk(err: OSError) -> SnapshotError:
    """A write that failed (disk full, quota, file size limit): the whole park fails."""
    return SnapshotError("disk", f"the snapshot could not be written ({err.strerror or err}); "
                                 "nothing was parked and the kernel keeps running")


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return str(count)


def _write(path: Path, values: dict[str, Any], budget: dict[str, Any], byref: bool) -> dict[str, Any]:
    """One file of ``values``; an OSError raised here comes from a value (a write failure is a SnapshotError)."""
    Pickler = _pickler_class()
    try:
        fh = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600), "wb")
    except OSError as err:
        raise _disk(err) from None
    start = budget["used"]
    try:
        sink = _Sink(fh, budget, ", ".join(values))
        pickler = Pickler(sink, protocol=5, byref=byref)
        pickler.devices = set()
        pickler.dump(values)
        try:
            fh.flush()
            os.fsync(fh.fileno())
        except OSError as err:
            raise _disk(err) from None
    except BaseException:
        budget["used"] = start
        raise
    finally:
        fh.close()
    return {"file": path.name, "bytes": sink.bytes, "sha256": sink.hash.hexdigest(),
            "devices": sorted(pickler.devices)}


def _save_group(folder: Path, number: int, values: dict[str, Any], kind: str,
                budget: dict[str, Any]) -> dict[str, Any] | str:
    """The group's file and manifest entry, or why it could not be saved (an OSError ends the park)."""
    import pickle

    path = folder / f"v{number}.pkl"
    # A cell's class goes by value; everything else names cell classes by reference (restored first).
    attempts = (False,) if kind == "class" else (True, False)
    for byref in attempts:
        try:
            entry = _write(path, values, budget, byref)
            return {**entry, "names": list(values), "kind": kind,
                    "types": {name: _type_name(value) for name, value in values.items()}}
        except SnapshotError:
            _unlink(path)
            raise
        except (pickle.PicklingError, TypeError, AttributeError, ValueError, RecursionError,
                NotImplementedError, OSError) as err:
            _unlink(path)
            problem = f"{type(err).__name__}: {str(err)[:300]}"
    return f"could not be saved ({problem})"


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _checksum(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def park(folder: str, owner: str, *, limit_bytes: int, user_limit_bytes: int,
         info: dict[str, Any] | None = None, shell: Any = None) -> Report:
    """Save the user namespace into ``folder`` (``<base>/<user>/<id>``, its parent already private)."""
    target = Path(folder)
    if not is_id(target.name):
        raise SnapshotError("bad_id", f"{target.name!r} is not a snapshot id")
    if user_folder(target.parent.parent, owner) != target.parent:  # checked here too: the kernel writes
        raise SnapshotError("location", f"{target.parent} is not the snapshot folder of {owner!r}")
    shell = shell or _shell()
    others = used_bytes(target.parent)
    room = user_limit_bytes - others
    budget = {"used": 0, "limit": min(limit_bytes, max(room, 0)),
              "why": f"{_size(limit_bytes)} per snapshot, {_size(user_limit_bytes)} per user, "
                     f"{_size(others)} already used by your snapshots"}
    partial = target.with_name(target.name + PARTIAL)
    try:
        partial.mkdir(mode=0o700)
        manifest = _save(partial, user_namespace(shell), budget)
        for entry in manifest["entries"]:  # verified: every file read back against its checksum
            if _checksum(partial / entry["file"]) != entry["sha256"]:
                raise SnapshotError("disk", f"{entry['file']} did not read back as written; nothing was parked")
        manifest.update(id=target.name, owner=owner, created=datetime.now(UTC).isoformat(timespec="seconds"),
                        kernel=info or {}, python=sys.version.split()[0], serializer=_serializer())
        fd = os.open(partial / MANIFEST, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(manifest, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(partial, target)
    except BaseException as err:
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(err, OSError):
            raise _disk(err) from None
        raise
    saved = [n for e in manifest["entries"] for n in e["names"]] + list(manifest["modules"])
    return Report(snapshot=target.name, saved=sorted(saved), not_saved=manifest["not_saved"], bytes=manifest["bytes"])


def _serializer() -> str:
    import dill

    return f"dill {dill.__version__}"


def _shell() -> Any:
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        raise SnapshotError("no_kernel", "park and resume run inside an IPython kernel")
    return shell


def _save(folder: Path, names: dict[str, Any], budget: dict[str, Any]) -> dict[str, Any]:
    modules: dict[str, str] = {}
    not_saved: dict[str, str] = {}
    groups: dict[str, dict[str, Any]] = {"class": {}, "function": {}, "value": {}}
    together: dict[str, Any] = {}
    for name, value in names.items():
        if isinstance(value, types.ModuleType):
            modules[name] = value.__name__
        elif (reason := unsaveable(value)) is not None:
            not_saved[name] = reason
        elif (kind := _kind(value)) == "torch":
            together[name] = value
        else:
            groups[kind][name] = value
    entries = []
    plan = [(kind, {name: value}) for kind in ("class", "function", "value") for name, value in groups[kind].items()]
    if together:
        plan.append(("torch", together))
    for kind, values in plan:
        result = _save_group(folder, len(entries), values, kind, budget)
        if isinstance(result, str) and len(values) > 1:  # saved apart, each loses only itself
            plan.extend(("torch", {name: value}) for name, value in values.items())
            continue
        if isinstance(result, str):
            not_saved.update(dict.fromkeys(values, result))
        else:
            entries.append(result)
    return {"format": FORMAT, "entries": entries, "modules": modules, "not_saved": not_saved,
            "bytes": sum(e["bytes"] for e in entries)}


# -- reading back ------------------------------------------------------------------------------
def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """A complete snapshot's manifest, or a SnapshotError saying what is wrong with it."""
    path = Path(folder) / MANIFEST
    try:
        with open(path, "rb") as fh:
            manifest = json.loads(fh.read(16 << 20))
    except FileNotFoundError:
        raise SnapshotError("not_found", f"snapshot {Path(folder).name} has no manifest (not complete)") from None
    except (ValueError, UnicodeDecodeError):
        raise SnapshotError("damaged", f"the manifest of snapshot {Path(folder).name} is damaged "
                                       "(not JSON); its files are kept") from None
    entries = manifest.get("entries") if isinstance(manifest, dict) else None
    if not isinstance(entries, list) or manifest.get("format") != FORMAT or not all(
            isinstance(e, dict) and re.fullmatch(r"v\d+\.pkl", str(e.get("file"))) and isinstance(e.get("names"), list)
            for e in entries):
        raise SnapshotError("damaged", f"the manifest of snapshot {Path(folder).name} is damaged or of another "
                                       "version; its files are kept")
    return manifest


def damaged(folder: str | os.PathLike, manifest: dict[str, Any]) -> dict[str, str]:
    """Names whose file is missing, of another size or checksum than written: name -> why."""
    out: dict[str, str] = {}
    for entry in manifest["entries"]:
        path = Path(folder) / entry["file"]
        try:
            info = path.lstat()
            problem = None
            if not stat.S_ISREG(info.st_mode):
                problem = "is not a plain file"
            elif info.st_size != entry.get("bytes"):
                problem = f"is {info.st_size} bytes, {entry.get('bytes')} were written (truncated?)"
            elif _checksum(path) != entry.get("sha256"):
                problem = "does not match its checksum"
        except FileNotFoundError:
            problem = "is missing"
        if problem:
            out.update(dict.fromkeys(entry["names"], f"damaged: its file {entry['file']} {problem}"))
    return out


def restore(folder: str, owner: str, shell: Any = None) -> Report:
    """Load a snapshot into this kernel's namespace: modules, then cells' classes, functions, the rest."""
    import dill

    shell = shell or _shell()
    manifest = read_manifest(folder)
    if manifest.get("owner") != owner:
        raise SnapshotError("not_found", f"snapshot {Path(folder).name} is not yours")
    not_restored = dict(manifest.get("not_saved") or {})
    restored, moved = [], {}
    for name, module in (manifest.get("modules") or {}).items():
        try:
            shell.user_ns[name] = importlib.import_module(module)
            restored.append(name)
        except Exception as err:  # noqa: BLE001 - a module this kernel lacks loses only its name
            not_restored[name] = f"module {module} could not be imported here ({type(err).__name__}: {err})"
    bad = damaged(folder, manifest)
    not_restored.update(bad)
    order = {"class": 0, "function": 1, "value": 2, "torch": 3}
    for entry in sorted(manifest["entries"], key=lambda e: order.get(e.get("kind"), 2)):
        if entry["names"][0] in bad:
            continue
        MOVED.clear()
        try:
            with open(Path(folder) / entry["file"], "rb") as fh:
                values = dill.load(fh)
            values = {name: values[name] for name in entry["names"]}
        except Exception as err:  # noqa: BLE001 - one file that does not load loses only its names
            not_restored.update(dict.fromkeys(entry["names"], f"could not be loaded ({type(err).__name__}: {err})"))
            continue
        for name in entry["names"]:
            shell.user_ns[name] = values[name]
            restored.append(name)
            if MOVED:
                moved[name] = f"on cpu: this kernel has no {', '.join(sorted(set(MOVED)))}"
    return Report(snapshot=manifest.get("id"), restored=sorted(restored), not_restored=not_restored, moved=moved)


def answer(function: str, arguments: str) -> Report:
    """The server's entry (a silent execute's user expression): ``park`` or ``restore`` with JSON
    arguments; a refusal comes back as ``{"error", "reason"}``."""
    calls = {"park": park, "restore": restore}
    try:
        return calls[function](**json.loads(arguments))
    except SnapshotError as err:
        return Report(error=str(err), reason=err.reason)
