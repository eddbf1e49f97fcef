"""What crosses the wire between a kernel and its manager, and between a server and the broker.

One home for the kernel's ports (their names, the range a launch picks from, fresh ports per
launch), the connection-info dict a kernel reads, and the broker's launch protocol: the fields of
a launch body, the kinds of lines its answer streams, and the idle-culling fields of a kernel row.
Both the broker (``broker/``) and its client backend (``hubclient.py``) import it.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .vgpu import VGPURequest, VGPURequestError, short

# jupyter_client's order (jupyter_client.connect.port_names), spelled here so that leaves need no import of it.
PORT_NAMES = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
PORT_RANGE = (40000, 60000)  # a launch's ports: from the first up to, not including, the second
SIGNATURE_SCHEME = "hmac-sha256"


def fresh_ports(previous: Iterable[Any] = ()) -> tuple[int, ...]:
    """Five kernel ports unlike the last launch's: each pod has its own IP, so only change matters
    (jupyter_server notices a restarted kernel by its ports)."""
    old = set(previous)
    ports: list[int] = []
    while len(ports) < len(PORT_NAMES):
        port = secrets.choice(range(*PORT_RANGE))
        if port not in old and port not in ports:
            ports.append(port)
    return tuple(ports)


def connection_info(ports: Iterable[int], key: str, kernel_name: str = "", ip: str = "0.0.0.0",
                    signature_scheme: str = SIGNATURE_SCHEME) -> dict[str, Any]:
    """The connection file a kernel pod reads (its ports in PORT_NAMES order; ``ip`` where it listens)."""
    return {"transport": "tcp", "ip": ip, "key": key, "signature_scheme": signature_scheme,
            "kernel_name": kernel_name, **dict(zip(PORT_NAMES, ports, strict=True))}


def ports_of(info: Mapping[str, Any]) -> tuple[int, ...]:
    """A connection info's (or a ready line's ``ports``) ports in PORT_NAMES order."""
    return tuple(int(info[name]) for name in PORT_NAMES)


def iopub_port(ports: Iterable[int]) -> int:
    return dict(zip(PORT_NAMES, ports, strict=True))["iopub_port"]


def host_ports(ports: Iterable[int]) -> tuple[int, int]:
    """The ports of a user's kernel the broker's pod reaches: shell (one silent execute request that parks
    it) and iopub (its execution state, for idle culling)."""
    named = dict(zip(PORT_NAMES, ports, strict=True))
    return named["shell_port"], named["iopub_port"]


# Requests on a kernel's shell channel: the kernel's work for its user. Its status messages answering these
# (and nothing else: a usage probe or kernel_info on the control channel) say whether it is busy.
SHELL_REQUESTS = frozenset({"execute_request", "complete_request", "inspect_request", "history_request",
                            "is_complete_request", "comm_open", "comm_msg", "comm_close"})


# -- the broker's launch protocol ------------------------------------------------------------------
LAUNCH_FIELDS = frozenset({"kernel_id", "vgpus", "memory", "compute", "server_name", "kernel_spec_name", "key",
                           "signature_scheme", "ports", "cwd", "image", "curve_publickey", "curve_secretkey",
                           "ticket", "own_storage"})  # "ticket": see TICKET below
_KEY_RE = re.compile(r"^[A-Za-z0-9-]{16,128}$")
_TICKET_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_Z85_RE = re.compile(r"^[0-9A-Za-z.:+=^!/*?&<>()\[\]{}@%$#-]{40}$")

@dataclass(frozen=True)
class LaunchBody:
    kernel_id: str
    request: VGPURequest
    server_name: str
    kernel_spec_name: str
    key: str
    ports: tuple[int, ...]  # in PORT_NAMES order
    cwd: str
    image: str | None
    curve: tuple[str, str] = ("", "")  # CurveZMQ (public, secret) keys, Z85; empty: plaintext
    ticket: str = ""  # a waiting launch coming back for its place (its queued lines' ticket); empty: a new launch
    own_storage: bool = False  # the kernel must mount the user's own storage (a resume reads its snapshot there)


def _text(body: dict, field: str, limit: int, default: str | None = None) -> str:
    value = body.get(field, default)
    if not isinstance(value, str) or len(value) > limit:
        raise VGPURequestError(field, short(value), f'field "{field}" must be a text of at most {limit} characters')
    return value


def parse_launch(body: dict[str, Any]) -> LaunchBody:
    """A launch request, checked field by field; the user is never part of it (the token says who)."""
    known = LAUNCH_FIELDS
    unknown = sorted(set(body) - known)
    if unknown:
        raise VGPURequestError(short(unknown[0]), None,
                               f'field "{short(unknown[0])}" is not known; use {", ".join(sorted(known))}')
    try:
        kernel_id = str(uuid.UUID(_text(body, "kernel_id", 64)))
    except ValueError:
        raise VGPURequestError("kernel_id", short(body.get("kernel_id")), 'field "kernel_id" must be a UUID') from None
    request = VGPURequest.from_mapping({k: body[k] for k in ("vgpus", "memory", "compute") if k in body})
    key = _text(body, "key", 128)
    if not _KEY_RE.match(key):
        raise VGPURequestError("key", None, 'field "key" must be the session key (16-128 letters, digits or "-")')
    if body.get("signature_scheme", "hmac-sha256") != "hmac-sha256":
        raise VGPURequestError("signature_scheme", short(body.get("signature_scheme")),
                               'field "signature_scheme" must be "hmac-sha256"')
    ports = body.get("ports")
    if not isinstance(ports, dict) or sorted(ports) != sorted(PORT_NAMES) or len(set(map(str, ports.values()))) != 5 \
            or not all(type(p) is int and 1024 <= p <= 65535 for p in ports.values()):
        raise VGPURequestError("ports", short(ports), 'field "ports" must name 5 different TCP ports from 1024 to '
                                                      f'65535: {{{", ".join(f"{n!r}: ..." for n in PORT_NAMES)}}}')
    cwd = _text(body, "cwd", 1024, "")
    if cwd.startswith("/") or ".." in cwd.split("/") or "\0" in cwd:
        raise VGPURequestError("cwd", short(cwd), 'field "cwd" must be a folder inside the server\'s root, like "labs"')
    image = body.get("image")
    if image is not None:
        image = _text(body, "image", 512)
    curve = (_text(body, "curve_publickey", 40, ""), _text(body, "curve_secretkey", 40, ""))
    if any(curve) and not all(_Z85_RE.match(k) for k in curve):
        raise VGPURequestError("curve_secretkey", None, 'fields "curve_publickey" and "curve_secretkey" must both be '
                                                        "CurveZMQ keys (40 Z85 characters)")
    ticket = _text(body, "ticket", 64, "")
    if ticket and not _TICKET_RE.match(ticket):
        raise VGPURequestError("ticket", None, 'field "ticket" must be the ticket of the launch\'s queued lines')
    own_storage = body.get("own_storage", False)
    if type(own_storage) is not bool:
        raise VGPURequestError("own_storage", short(own_storage), 'field "own_storage" must be true or false')
    return LaunchBody(kernel_id, request, _text(body, "server_name", 255, ""), _text(body, "kernel_spec_name", 64, ""),
                      key, tuple(ports[name] for name in PORT_NAMES), cwd.strip("/"), image, curve, ticket,
                      own_storage)


# The lines of POST api/kernels' answer: {"queued": place} while it waits, {"progress": text}..., then
# {"ready": fields} or {"error": {"reason", "message"}}. A queued line's place has a "ticket": the same
# launch sent again with it (after its stream broke) keeps its place.
LINE_QUEUED, LINE_PROGRESS, LINE_READY, LINE_ERROR = "queued", "progress", "ready", "error"
TICKET = "ticket"
# What a kernel row says of idle culling (the broker's and the server's alike).
# cull_parks: an idle kernel is parked (its variables saved), not just stopped.
CULL_FIELDS = ("cull_at", "cull_warning", "keeps_left", "exempt", "cull_parks")
