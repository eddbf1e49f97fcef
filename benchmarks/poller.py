"""python -m benchmarks.poller URL TOKEN INTERVAL: GET URL every INTERVAL seconds until "stop" on stdin.

Prints "ready" after the first answer, then, when stopped, {"latencies": [seconds, ...], "errors":
{"500": count, ...}, "first_error": "..."} (one latency per request after "ready"; a failed request
counts as its time to failure, and in errors). Standard library only.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from urllib.parse import urlsplit


def main() -> int:
    url, token, interval = sys.argv[1], sys.argv[2], float(sys.argv[3])
    parts = urlsplit(url)
    headers = {"Authorization": f"token {token}"}
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)

    errors: dict[str, int] = {}
    first_error: list[str] = []

    def failed(what: str, detail: str) -> None:
        errors[what] = errors.get(what, 0) + 1
        if not first_error:
            first_error.append(detail[:2000])

    def get() -> float:
        nonlocal conn
        started = time.perf_counter()
        try:
            conn.request("GET", parts.path, headers=headers)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                failed(str(response.status), body.decode(errors="replace"))
        except (OSError, http.client.HTTPException) as err:
            failed(type(err).__name__, str(err))
            conn.close()
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        return time.perf_counter() - started

    get()
    errors.clear()
    first_error.clear()
    print("ready", flush=True)
    latencies: list[float] = []
    deadline = time.monotonic() + 900  # never poll forever, whatever happens to our parent
    next_at = time.perf_counter()
    while not stop.is_set() and time.monotonic() < deadline:
        latencies.append(get())
        next_at += interval
        pause = next_at - time.perf_counter()
        if pause > 0:
            stop.wait(pause)
        else:
            next_at = time.perf_counter()
    print(json.dumps({"latencies": latencies, "errors": errors,
                      "first_error": first_error[0] if first_error else None}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
