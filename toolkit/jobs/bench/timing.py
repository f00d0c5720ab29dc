"""Timing helpers for the benchmark scripts: whole commands in fresh processes, and a model alone on a batch."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from toolkit.errors import YolokitError


def timed_command(cmd: list[str], cwd: Path | None = None) -> float:
    """Wall seconds of ``cmd``; a failed command raises (every image must be processed, or the time means nothing)."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        where = f" (in {cwd})" if cwd else ""
        raise YolokitError(f"{' '.join(cmd)}{where} failed: {proc.stderr[-800:]}")
    return dt


def raw_rate(infer: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, seconds: float = 5.0,
             warmup: int = 2) -> float:
    """img/s of ``infer`` alone on one pre-letterboxed uint8 batch, repeated for at least ``seconds`` (3 calls)."""
    for _ in range(warmup):
        infer(batch)
    n, t0 = 0, time.perf_counter()
    while True:
        infer(batch)
        n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds and n >= 3:
            return n * len(batch) / dt
