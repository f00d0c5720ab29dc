"""A real S3-compatible server on loopback for the object-storage tests: moto's server mode, started as a subprocess
on 127.0.0.1 with test credentials, reached by the real clients (s3fs, botocore) through ``AWS_ENDPOINT_URL``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.ports import free_port, wait_listening

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_SESSION_TOKEN": "testing"}


@contextmanager
def moto_server() -> Iterator[dict[str, str]]:
    """Start moto's S3 server on a free loopback port; yield the environment that points clients at it."""
    pytest.importorskip("moto.server", reason="moto's server mode is not installed: pip install 'moto[server]'")
    pytest.importorskip("s3fs", reason="the cloud extra is not installed: pip install 'yolokit[cloud]'")
    port = free_port()
    env = {**CREDENTIALS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    proc = subprocess.Popen([sys.executable, "-c", "from moto.server import main; main()", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **env})
    try:
        if not wait_listening(port, 60, proc.pid):
            pytest.fail("moto's S3 server did not start")
        yield env
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def fresh_clients() -> None:
    """Forget the S3 clients fsspec cached (they hold the endpoint they were made with)."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


def filesystem() -> Any:
    import s3fs

    return s3fs.S3FileSystem()


def upload(fs: Any, folder: Path, prefix: str, pattern: str = "*") -> list[str]:
    """Put every regular file of ``folder`` matching ``pattern`` below ``prefix`` (``bucket/key``); their keys."""
    files = sorted(p for p in folder.glob(pattern) if p.is_file() and not p.is_symlink())
    fs.pipe({f"{prefix}/{p.name}": p.read_bytes() for p in files})
    return [f"{prefix}/{p.name}" for p in files]


def objects(fs: Any, prefix: str) -> dict[str, bytes]:
    """Every object below ``prefix``, by its name relative to it."""
    names = fs.find(prefix)
    return {n[len(prefix) + 1:]: fs.cat_file(n) for n in names}


class Calls:
    """Counts the S3 API calls (by operation name) the cached s3fs client makes in this process."""

    def __init__(self, fs: Any) -> None:
        self.fs = fs
        self.counts: dict[str, int] = {}
        fs.connect()  # the client exists now

        def count(model: Any = None, **_: Any) -> None:
            name = getattr(model, "name", "?")
            self.counts[name] = self.counts.get(name, 0) + 1

        self._count = count
        fs.s3.meta.events.register("before-call.s3", count)

    def __getitem__(self, op: str) -> int:
        return int(self.counts.get(op, 0))

    def close(self) -> None:
        self.fs.s3.meta.events.unregister("before-call.s3", self._count)
