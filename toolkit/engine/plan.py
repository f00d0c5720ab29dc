"""How a run executes: mode, workers, batch, intra-op threads and decode threads, chosen from what the backend
says of itself (:class:`backends.base.PlanningHints`), the device, the core count and the number of inputs.

Rules of ``auto`` (see :func:`make_plan`):

* CUDA device (``cuda``, ``cuda:N``, ``gpu``, ``N``: :func:`toolkit.devices.parse_device`): threads; the GPU
  pipeline (:mod:`toolkit.engine.gpu`) when the runner has a device side, one driver thread, reader threads on all
  cores (JPEG decoding is the bottleneck on a GPU); batch: the artifact's static batch, else the batch its
  TensorRT profile was tuned for, else :data:`toolkit.devices.GPU_BATCH`; never above the artifact's ``max_batch``.
  A runner without a device side gets 2 inference workers so that copies overlap compute.
* CPU, few inputs (< 8 per core) or one core: one inference thread using every core (intra-op threads); one
  reader thread overlaps decoding with inference. Starting processes would cost more than it saves.
* CPU, a runtime whose hints say processes pay from N inputs per core, with at least that many: one process per
  core, one intra-op thread each (PyTorch, whose module calls hold the GIL: 250; ONNX Runtime, whose per-image Python
  work contends for it: 64).
* CPU, otherwise: one thread per core sharing one loaded model, one intra-op thread each, at the runtime's thread
  batch (OpenVINO: 1, and 4 for an INT8 model). Small models parallelise poorly inside one inference, so
  independent single-threaded inferences keep every core busy, without process start-up. A runtime that infers on
  threads of its own while the calling thread waits (OpenVINO) gets two worker threads per core
  (``workers_per_core``): one decodes its next input while the other's inference runs, so a decoded input is
  ready whenever the runtime frees a core; the runtime's own threads still number the cores.
* Always inference threads <= cores, and decode threads only get cores that inference leaves free.
* Process mode for a runtime whose first inference at a new shape is costly (``costly_new_shapes``: OpenVINO): each
  worker is given the inputs of shapes it has met (``shape_affinity``; :class:`toolkit.engine.processes.ProcessPool`).

Process mode counts the parent as one of its workers (see :mod:`toolkit.engine.processes`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

from backends.base import PlanningHints
from toolkit.devices import GPU_BATCH, parse_device
from toolkit.engine.core import DetectorConfig
from toolkit.errors import InputError
from toolkit.meta import ModelMeta

MODES = ("auto", "thread", "process")


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def tuned_batch(meta: ModelMeta) -> int | None:
    """The batch an artifact was tuned for (a TensorRT profile's optimum), when its metadata says."""
    opt = meta.extra.get("opt_batch")
    if opt is None:
        profile = meta.extra.get("profile")
        opt = profile.get("opt", [None])[0] if isinstance(profile, dict) and profile.get("opt") else None
    try:
        return int(opt) if opt is not None and int(opt) > 0 else None
    except (TypeError, ValueError):
        return None


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
    gpu: bool = False  # a CUDA device: thread mode runs the GPU pipeline when the runner has a device side
    pipeline: str = "host"  # "device" once a run uses the GPU pipeline (letterbox and NMS on the device)
    shape_affinity: bool = False  # process mode: each worker gets the inputs of shapes it has met (costly new shapes)

    def describe(self) -> str:
        readers = (f", {self.readers} reader thread(s)" if self.readers
                   else ", each decodes its own inputs" if self.workers > 1 and not self.gpu else ", decode inline") \
            if self.mode == "thread" else ""
        if self.pipeline == "device":
            return (f"{self.mode} mode: GPU pipeline (letterbox, graph/engine, NMS on the device), batch "
                    f"{self.batch}{readers} ({self.reason})")
        who = f" (this process and {self.workers - 1} started)" if self.mode == "process" and self.parent_works \
            else ""
        shapes = ", each worker given the image shapes it has met" if self.shape_affinity else ""
        return (f"{self.mode} mode: {self.workers} worker(s){who} x {self.threads} intra-op thread(s), batch "
                f"{self.batch}{readers}{shapes} ({self.reason})")


def plan_for(meta: ModelMeta, hints: PlanningHints, device: str | None, threads: int | None, n_inputs: int,
             mode: str = "auto", workers: int = 0, batch: int = 0, cores: int | None = None,
             gpu: bool | None = None, whole: bool = False) -> Plan:
    """Choose mode, workers, batch and threads; explicit values are kept, zeros are filled in, except that process
    mode starts no more workers than ``n_inputs`` make batches for where they are the whole work (``whole``: no video
    to expand, no tiles): 64 workers for 3 images started 63 processes, and 2 for 18 images in batches of 32 said
    "1 started" where none was. ``gpu`` (default: whether ``device`` names a CUDA device) selects the CUDA rules."""
    if mode not in MODES:
        raise InputError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if workers < 0 or batch < 0:
        raise InputError("--workers and --batch must not be negative")
    cores = cores or cpu_count()
    static = meta.batch
    gpu = parse_device(device).is_gpu if gpu is None else gpu
    if static is not None and batch and batch != static:
        batch = static  # a static artifact takes exactly its batch (partial batches are padded)
    per_core = hints.process_inputs_per_core
    if gpu:
        batch = batch or static or tuned_batch(meta) or GPU_BATCH
    if mode == "auto":
        if gpu:
            mode, workers, reason = "thread", workers or 2, "CUDA device: reader threads decode, the GPU infers"
        elif cores == 1 or n_inputs < 8 * cores:
            mode, workers, reason = "thread", workers or 1, f"{n_inputs} inputs: too few to pay for processes"
        elif per_core is not None and n_inputs >= per_core * cores:
            mode, workers, reason = "process", workers or cores, (f"{n_inputs} inputs on {cores} cores: pays for "
                                                                  f"process start-up")
        else:
            why = "the runtime releases the GIL" if hints.releases_gil else f"{n_inputs} inputs"
            mode, reason = "thread", f"{why}: one shared model, no process start-up"
            workers = workers or cores * hints.workers_per_core
            batch = batch or static or hints.batch_for(meta.precision)
    else:
        reason = "as asked"
        workers = workers or (cores if mode == "process" else 1)
    batch = batch or static or 1
    if meta.max_batch is not None and batch > meta.max_batch:
        batch = int(meta.max_batch)
        reason += f"; batch capped at the model's largest, {batch}"
    if whole and mode == "process" and n_inputs > 0 and workers > -(-n_inputs // batch):
        workers = -(-n_inputs // batch)
        reason += f"; {workers} worker(s): {n_inputs} input(s) in batches of {batch} give no more work"
    threads = int(threads) if threads else (max(1, cores // workers) if not gpu else 1)
    # on a CPU, decode threads only get the cores inference leaves free: a reader thread beside spinning
    # intra-op threads slows inference more than it saves (measured: 66 vs 40 ms/image on 2 cores)
    readers = cores if gpu else max(0, min(4, cores - workers * threads))
    affinity = mode == "process" and workers > 1 and hints.costly_new_shapes
    return Plan(mode, workers, batch, threads, readers, reason, gpu=gpu, shape_affinity=affinity)


def make_plan(det: PlannedDetector, n_inputs: int, mode: str = "auto", workers: int = 0, batch: int = 0,
              cores: int | None = None, whole: bool = False) -> Plan:
    """:func:`plan_for` a loaded model (a detector or its routine): its metadata, its backend's planning hints, its
    device and thread budget."""
    import backends

    module = backends.get_backend(str(det.config.backend))
    # a runtime that has no CUDA build (OpenVINO's "GPU" is an Intel GPU) gets the CPU rules whatever the string
    gpu = parse_device(det.config.device).is_gpu and "cuda" in module.PRECISIONS
    return plan_for(det.meta, module.PLANNING, det.config.device, det.config.threads, n_inputs, mode, workers, batch,
                    cores, gpu=gpu, whole=whole)


def preplan(config: DetectorConfig, n_inputs: int, mode: str = "auto", workers: int = 0,
            cores: int | None = None) -> Plan | None:
    """The plan a run over ``n_inputs`` will get on a CPU, known before the model loads as far as the mode, the
    workers and their intra-op threads go (those depend on the backend's facts, the device and the counts, not on
    the model; the batch may still change with the model's own). None on a CUDA device."""
    import backends
    from toolkit.model.configs import resolve_model

    name = config.backend or backends.backend_for(resolve_model(config.weights))
    module = backends.get_backend(name)
    device = config.device or module.DEFAULT_DEVICE
    if parse_device(device).is_gpu and "cuda" in module.PRECISIONS:
        return None
    return plan_for(ModelMeta(names={}), module.PLANNING, device, config.threads, n_inputs, mode, workers, 0, cores,
                    gpu=False)


def load_threads(config: DetectorConfig, n_inputs: int, mode: str = "auto", workers: int = 0,
                 cores: int | None = None) -> int | None:
    """The intra-op threads each worker of a run over ``n_inputs`` will get (:func:`preplan`): load the model at
    this count, and a runtime that fixes its count at load (ONNX Runtime, OpenVINO) runs the plan it is given,
    without a second copy. ``config.threads`` when set; None on a CUDA device (the runtime's own choice)."""
    if config.threads:
        return config.threads
    plan = preplan(config, n_inputs, mode, workers, cores)
    return plan.threads if plan is not None else None


class PlannedDetector(Protocol):
    """A loaded model: its ``config`` names the backend and device it resolved to."""

    @property
    def meta(self) -> ModelMeta: ...

    @property
    def config(self) -> DetectorConfig: ...
