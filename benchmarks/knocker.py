"""python -m benchmarks.knocker: when a kernel first listens, seen from outside the process under test.

Reads lines "KEY IP PORT" on stdin; for each, connects to IP:PORT every ``INTERVAL`` seconds (0.5 ms)
until a connection is accepted, then prints "KEY SECONDS" (time.monotonic(), CLOCK_MONOTONIC: the
same clock as the parent's time.monotonic() and time.perf_counter() on Linux) and forgets it. A
separate process, so that knocking takes no GIL from the event loop being measured. Standard library only.
"""

from __future__ import annotations

import socket
import sys
import threading
import time

INTERVAL = 0.0005
GIVE_UP = 120.0


def knock(key: str, ip: str, port: int, out_lock: threading.Lock) -> None:
    deadline = time.monotonic() + GIVE_UP
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((ip, port), timeout=0.2):
                seen = time.monotonic()
        except OSError:
            time.sleep(INTERVAL)
            continue
        with out_lock:
            print(f"{key} {seen:.6f}", flush=True)
        return
    with out_lock:
        print(f"{key} timeout", flush=True)


def main() -> int:
    out_lock = threading.Lock()
    print("ready", flush=True)
    for line in sys.stdin:
        parts = line.split()
        if len(parts) != 3:
            continue
        key, ip, port = parts
        threading.Thread(target=knock, args=(key, ip, int(port), out_lock), daemon=True).start()
    return 0


if __name__ == "__main__":
    sys.exit(main())
