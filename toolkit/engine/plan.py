"""How a run executes: mode, workers, batch, intra-op threads and decode threads, chosen from what the backend
says of itself (:class:`backends.base.PlanningHints`), the device, the core count and the number of inputs.

Rules of ``auto`` (see :func:`make_plan`):

* CUDA device: threads; 2 inference workers so copies overlap compute, batch 16 (or the artifact's static
  batch), readers = all cores (JPEG decoding is the bottleneck on a GPU).
* CPU, few inputs (< 8 per core) or one core: one inference thread using every core (intra-op threads); one
  reader thread overlaps decoding with inference. Starting processes would cost more than it saves.
* CPU, a runtime whose hints say processes pay from N inputs per core, with at least that many: one process per
  core, one intra-op thread each (PyTorch, whose module calls hold the GIL: 250; ONNX Runtime, whose per-image Python
  work contends for it: 64).
* CPU, otherwise: one thread per core sharing one loaded model, one intra-op thread each, at the runtime's thread
  batch (OpenVINO: 4). Small models parallelise poorly inside one inference, so independent single-threaded
  inferences keep every core busy, without process start-up.
* Always workers x threads <= cores, and decode threads only get cores that inference leaves free.

Process mode counts the parent as one of its workers (see :mod:`toolkit.engine.processes`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

from backends.base import PlanningHints
from toolkit.engine.core import DetectorConfig
from toolkit.errors import InputError
from toolkit.meta import ModelMeta

MODES = ("auto", "thread", "process")


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def is_gpu(device: str) -> bool:
    """Whether a device string names a GPU (``cuda``, ``cuda:1``, ``gpu``, ``0``)."""
    d = device.strip().lower()
    return d.startswith("cuda") or d == "gpu" or d.isdigit()


@dataclass(frozen=True)
class Plan:
    """How a run executes: ``mode``, inference ``workers``, ``batch`` size, intra-op ``threads`` per worker,
    decode ``readers`` (thread mode), and why."""

    mode: str
    workers: int
    batch: int
    threads: int
    readers: int
    reason: str
    parent_works: bool = True  # process mode: the parent process is one of the workers

    def describe(self) -> str:
        readers = (f", {self.readers} reader thread(s)" if self.readers else ", decode inline") \
            if self.mode == "thread" else ""
        who = f" (this process and {self.workers - 1} started)" if self.mode == "process" and self.parent_works \
            else ""
        return (f"{self.mode} mode: {self.workers} worker(s){who} x {self.threads} intra-op thread(s), batch "
                f"{self.batch}{readers} ({self.reason})")


def plan_for(meta: ModelMeta, hints: PlanningHints, device: str, threads: int | None, n_inputs: int,
             mode: str = "auto", workers: int = 0, batch: int = 0, cores: int | None = None) -> Plan:
    """Choose mode, workers, batch and threads; explicit values are kept, zeros are filled in."""
    if mode not in MODES:
        raise InputError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if workers < 0 or batch < 0:
        raise InputError("--workers and --batch must not be negative")
    cores = cores or cpu_count()
    static = meta.batch
    gpu = is_gpu(device)
    if static is not None and batch and batch != static:
        batch = static  # a static artifact takes exactly its batch (partial batches are padded)
    per_core = hints.process_inputs_per_core
    if mode == "auto":
        if gpu:
            mode, workers, reason = "thread", workers or 2, "CUDA device: threads feed one GPU"
            batch = batch or static or 16
        elif cores == 1 or n_inputs < 8 * cores:
            mode, workers, reason = "thread", workers or 1, f"{n_inputs} inputs: too few to pay for processes"
        elif per_core is not None and n_inputs >= per_core * cores:
            mode, workers, reason = "process", workers or cores, (f"{n_inputs} inputs on {cores} cores: pays for "
                                                                  f"process start-up")
        else:
            why = "the runtime releases the GIL" if hints.releases_gil else f"{n_inputs} inputs"
            mode, workers, reason = "thread", workers or cores, f"{why}: one shared model, no process start-up"
            batch = batch or static or hints.thread_batch
    else:
        reason = "as asked"
        workers = workers or (cores if mode == "process" else 1)
    batch = batch or static or 1
    threads = int(threads) if threads else (max(1, cores // workers) if not gpu else 1)
    # on a CPU, decode threads only get the cores inference leaves free: a reader thread beside spinning
    # intra-op threads slows inference more than it saves (measured: 66 vs 40 ms/image on 2 cores)
    readers = cores if gpu else max(0, min(4, cores - workers * threads))
    return Plan(mode, workers, batch, threads, readers, reason)


def make_plan(det: PlannedDetector, n_inputs: int, mode: str = "auto", workers: int = 0, batch: int = 0,
              cores: int | None = None) -> Plan:
    """:func:`plan_for` a detector: its metadata, its backend's planning hints, its device and thread budget."""
    import backends

    hints = backends.get_backend(det.backend_name).PLANNING
    return plan_for(det.meta, hints, det.config.device, det.config.threads, n_inputs, mode, workers, batch, cores)


class PlannedDetector(Protocol):
    backend_name: str
    meta: ModelMeta

    @property
    def config(self) -> DetectorConfig: ...
