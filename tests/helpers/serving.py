"""``yolokit serve`` started as a user starts it (``python -m toolkit.cli serve ...``) on loopback ports, for tests:
:func:`start` waits until it reports ready; :meth:`Served.stop` sends SIGTERM and returns the exit code."""

from __future__ import annotations

import os
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.helpers.ports import free_port


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    port: int
    grpc_port: int
    log: Path
    headers: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        """host:port, as tritonclient.http takes it."""
        return f"127.0.0.1:{self.port}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics (summed over the samples whose labels include ``labels``)."""
        text = httpx.get(self.url + "/metrics", headers=self.headers, timeout=30).text
        total, found = 0.0, False
        for m in re.finditer(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", text, re.M):
            got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
            if all(got.get(k) == v for k, v in labels.items()):
                total, found = total + float(m.group(2)), True
        if not found:
            raise KeyError(f"no metric {name} {labels} in /metrics")
        return total

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then the exit code (the process is killed if it does not stop within ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"the server did not stop within {timeout} s after SIGTERM:\n"
                                 f"{self.output()}") from None


def start(model: str | Path, log: Path, *args: str, env: dict[str, str] | None = None, grpc: bool = True,
          headers: dict[str, str] | None = None, timeout: float = 180) -> Served:
    """Start ``yolokit serve MODEL ARGS`` on free loopback ports and wait until /v2/health/ready answers 200."""
    port, grpc_port = free_port(), free_port() if grpc else 0
    cmd = [sys.executable, "-m", "toolkit.cli", "serve", str(model), "--port", str(port), "--grpc-port",
           str(grpc_port), *args]
    out = log.open("wb")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    out.close()
    served = Served(proc, port, grpc_port, log, headers or {})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"yolokit serve exited with {proc.returncode}:\n{served.output()}")
        try:
            if httpx.get(served.url + "/v2/health/ready", timeout=5).status_code == 200:
                return served
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    served.stop()
    raise AssertionError(f"yolokit serve was not ready within {timeout} s:\n{served.output()}")


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (a pixel bomb: nothing behind it)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = zlib.compress(b"\x00" * 16)
    idat = b"IDAT" + data
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
            + struct.pack(">I", len(data)) + idat + struct.pack(">I", zlib.crc32(idat))
            + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND")))
