"""A free TCP port on the loopback interface (for local servers and clusters started by tests)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process ``pid`` holds open (from /proc/PID/fd)."""
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                out.add(target[8:-1])
    except OSError:
        pass
    return out


def _running(pid: int) -> bool:
    """Whether process ``pid`` runs (an exited child not yet waited for is a zombie: not running)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def wait_listening(port: int, timeout: float = 15.0, pid: int | None = None) -> bool:
    """Wait until something (process ``pid``, when given) listens on 127.0.0.1:``port``, without connecting to it
    (a one-client server such as ``ffmpeg -listen 1`` must keep its one client for the test). Reads Linux's
    /proc/net/tcp; elsewhere it waits a fixed second. Returns whether the port was seen listening (False at once
    when process ``pid`` has ended)."""
    table = Path("/proc/net/tcp")
    if not table.exists():
        time.sleep(1.0)
        return False
    want = f":{port:04X}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        owned = _socket_inodes(pid) if pid is not None else None
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            listens = len(fields) > 9 and fields[1].endswith(want) and fields[3] == "0A"  # 0A: LISTEN
            if listens and (owned is None or fields[9] in owned):
                return True
        if pid is not None and not _running(pid):
            return False
        time.sleep(0.05)
    return False


def ctrl_c_reaches() -> None:
    """``preexec_fn`` for a child a test interrupts with SIGINT: Ctrl-C's default action, whatever the test run
    inherited (a suite started as a background job of a non-interactive shell, ``bash scripts/test.sh &``, ignores
    SIGINT, and so would every command it starts: Python keeps an ignored SIGINT ignored)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
