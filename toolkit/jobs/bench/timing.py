"""Timing helpers for the benchmark scripts: whole commands in fresh processes, a model alone on a batch, and
configurations interleaved repeat by repeat (so the noise of a shared machine falls on all of them alike)."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from toolkit.errors import YolokitError

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


def yolokit_command(*args: str) -> list[str]:
    """``yolokit ARGS`` as a fresh process of this interpreter (the environment the script runs in)."""
    return [sys.executable, "-m", "toolkit.cli", *args]


def run_timed(cmd: list[str], cwd: Path | None = None, timeout: float | None = None) -> tuple[float, str]:
    """Wall seconds and standard output of ``cmd``; a failed command, or one still running after ``timeout``
    seconds (stopped then), raises (every image must be processed, or the time means nothing)."""
    where = f" (in {cwd})" if cwd else ""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise YolokitError(f"{' '.join(cmd)}{where} did not finish in {timeout} s; stopped") from e
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise YolokitError(f"{' '.join(cmd)}{where} failed: {proc.stderr[-800:]}")
    return dt, proc.stdout


def timed_command(cmd: list[str], cwd: Path | None = None) -> float:
    """Wall seconds of ``cmd`` (:func:`run_timed` without the output)."""
    return run_timed(cmd, cwd)[0]


def interleaved(runs: Mapping[K, Callable[[], T]], repeats: int) -> dict[K, list[T]]:
    """Every configuration of ``runs`` once per repeat, in turn, ``repeats`` times; each one's results in order.

    Running A B C A B C rather than A A B B C C puts a shared machine's slow minutes on every configuration alike,
    so their medians compare."""
    out: dict[K, list[T]] = {key: [] for key in runs}
    for _ in range(repeats):
        for key, run in runs.items():
            out[key].append(run())
    return out


def medians(samples: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Field by field median of several measurements of one configuration (the fields of the first one)."""
    rows = list(samples)
    return {k: statistics.median(float(r[k]) for r in rows) for k in rows[0]} if rows else {}


def raw_rate(infer: Callable[[np.ndarray], object], batch: np.ndarray | Sequence[np.ndarray], seconds: float = 5.0,
             warmup: int = 2, min_calls: int = 3) -> float:
    """img/s of ``infer`` alone on pre-letterboxed uint8 batches (one, or several taken in turn), repeated for at
    least ``seconds`` and at least ``min_calls`` calls."""
    batches = [batch] if isinstance(batch, np.ndarray) else list(batch)
    for i in range(warmup):
        infer(batches[i % len(batches)])
    n = calls = 0
    t0 = time.perf_counter()
    while True:
        b = batches[calls % len(batches)]
        infer(b)
        calls += 1
        n += len(b)
        dt = time.perf_counter() - t0
        if dt >= seconds and calls >= min_calls:
            return n / dt
