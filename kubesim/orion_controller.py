"""A stand-in Orion Controller: the HTTP answers `orion-check` reads, with counts a test sets.

``GET /info?data_version&api_version`` -> ``data_version=0.1,api_version=0.1``; with those two
headers, ``GET /devices?res=nvidia_cuda`` -> ``...=<total>`` and ``...&used=true`` -> ``...=<free>``
(the upstream controller's shape, as ORION.md records it). ``garbage = True`` answers HTML
instead; :meth:`stop` makes it a controller that is down (the port refuses connections).
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

VERSIONS = {"data_version": "0.1", "api_version": "0.1"}


class FakeOrionController:
    def __init__(self, total: int = 8, free: int | None = None):
        self.total = total
        self.free = total if free is None else free
        self.garbage = False
        self.requests: list[str] = []
        controller = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                controller.requests.append(self.path)
                status, body = controller.answer(self.path, dict(self.headers))
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host}:{port}"

    def answer(self, path: str, headers: dict[str, str]) -> tuple[int, str]:
        if self.garbage:
            return 200, "<html><body>502 Bad Gateway</body></html>"
        url = urlsplit(path)
        query = parse_qs(url.query, keep_blank_values=True)
        if url.path == "/info":
            return 200, ",".join(f"{k}={v}" for k, v in VERSIONS.items())
        if url.path == "/devices" and query.get("res") == ["nvidia_cuda"]:
            lowered = {k.lower(): v for k, v in headers.items()}
            if any(lowered.get(k) != v for k, v in VERSIONS.items()):
                return 400, "data_version and api_version headers are required"
            used = query.get("used") == ["true"]
            return 200, f"res=nvidia_cuda{'&used=true' if used else ''}={self.free if used else self.total}"
        return 404, "not found"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
