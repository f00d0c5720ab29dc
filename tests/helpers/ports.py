"""A free TCP port on the loopback interface (for local servers and clusters started by tests)."""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, timeout: float = 15.0) -> bool:
    """Wait until something listens on 127.0.0.1:``port``, without connecting to it (a one-client server such as
    ``ffmpeg -listen 1`` must keep its one client for the test). Reads Linux's /proc/net/tcp; elsewhere it waits
    a fixed second. Returns whether the port was seen listening."""
    import time
    from pathlib import Path

    table = Path("/proc/net/tcp")
    if not table.exists():
        time.sleep(1.0)
        return False
    want = f":{port:04X}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 3 and fields[1].endswith(want) and fields[3] == "0A":  # 0A: LISTEN
                return True
        time.sleep(0.05)
    return False
