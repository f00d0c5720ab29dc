"""``yolokit run --engine ray``: the same job on a Ray cluster, through Ray Data.

The driver lists the inputs (paths only; it never reads an image) and streams them, in blocks, to a fixed
pool of inference actors. Each actor loads the model once, then per batch reads the files' raw bytes,
decodes them with OpenCV, runs the model and writes that batch's labels and annotated images itself. Only
small records (key, counts, COCO results) come back to the driver, which writes ``manifest.jsonl``,
``failures.jsonl`` and the summary exactly as a local run does. Ray Data's streaming executor bounds what is
in flight, and images never pass through the object store, so memory does not grow with the inputs.

A killed actor is restarted by Ray and its batch retried once; a batch that fails again is dropped by
Ray Data (``max_errored_blocks``) and its images are reported failed with the reason (``--resume`` retries
them). Outputs go under the run folder, which every node must see (shared storage) on a multi-node cluster.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.engine.core import DetectorConfig, set_threads
from toolkit.errors import BackendUnavailableError, InputError, OutputError, YolokitError, first_line, last_line
from toolkit.io.remote import is_url
from toolkit.io.sources import InputRef, SourceList
from toolkit.jobs.records import Outcome, RunOptions, write_outputs

LOST_REASON = "its Ray worker died twice while processing it (killed or out of memory); it was retried once"
VIDEO_REASON = "videos are not supported by --engine ray; run them with the local engine"


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise BackendUnavailableError("--engine ray needs Ray Data: pip install 'yolokit[ray]'") from None
    return ray


class InferActor:
    """One Ray actor: loads the model once, then reads, detects and writes outputs batch by batch, through the same
    batch routine as a local run."""

    def __init__(self, config: DetectorConfig, run_options: RunOptions, out_dir: str) -> None:
        from toolkit.engine.detector import ModelRoutine
        from toolkit.io.decode import quiet_decoders

        quiet_decoders()  # an actor process is yolokit's own: unreadable inputs are reported in its results
        self.routine = ModelRoutine.load(config)
        set_threads(self.routine.runner, int(config.threads or 1))
        self.opts = run_options
        self.out_dir = Path(out_dir)
        self.pid = os.getpid()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        det = self.routine
        refs = [InputRef(str(p), str(k)) for p, k in zip(batch["path"], batch["key"], strict=True)]
        before = det.times.snapshot()
        fatal = ""
        try:
            outcomes = self._process(batch, refs)
        except (OSError, OutputError) as e:  # writing outputs failed (disk full, permissions): the run stops
            fatal = (f"{self.out_dir}: cannot write outputs ({e.strerror or e}); free some space or fix the "
                     f"permissions, then continue the run with --resume") if isinstance(e, OSError) else str(e)
            outcomes = [Outcome(r.key, r.name, fatal) for r in refs]
        except Exception as e:  # noqa: BLE001 - anything else fails this batch's images, not the run
            outcomes = [Outcome(r.key, r.name, f"worker error: {first_line(e)}") for r in refs]
        after = det.times.snapshot()
        ms = json.dumps([1000 * (a - b) / max(len(refs), 1) for a, b in zip(after, before, strict=True)])
        worker = f"{os.uname().nodename}:{self.pid}"
        meta = json.dumps({"imgsz": list(det.imgsz), "precision": det.meta.precision, "fixed": not det.auto,
                           "stride": det.meta.stride})
        return {
            "i": [int(i) for i in batch["i"]],
            "key": [o.key for o in outcomes],
            "path": [o.path for o in outcomes],
            "error": [o.error or "" for o in outcomes],
            "fatal": [fatal] * len(outcomes),
            "record": [json.dumps({"n": o.n, "classes": o.classes, "coco": o.coco, "shape": o.shape, "rows": o.rows,
                                   "files": o.files}) for o in outcomes],
            "ms": [ms] * len(outcomes),
            "worker": [worker] * len(outcomes),
            "meta": [meta] * len(outcomes),
        }

    def _process(self, batch: dict[str, np.ndarray], refs: list[InputRef]) -> list[Outcome]:
        """The batch routine over this batch: files are read by their absolute paths (an actor may run in another
        folder), results keep the paths the user gave. The actor reads its own batch: a separate Ray read stage
        (object-store copies, more worker processes) was slower on a 2-core machine than the reads themselves."""
        items = [(i, InputRef(str(batch["abs"][i]), ref.key), None) for i, ref in enumerate(refs)]
        done = self.routine.process(items, keep_images=not self.opts.save.nosave,
                                    fast_decode=self.opts.detector.fast_decode)
        outcomes = []
        for i, ref in enumerate(refs):
            res = done[i]
            res.ref = ref
            if res.detections is not None:
                res.detections.path = ref.path
            outcomes.append(write_outputs(res, self.opts, self.out_dir))
        return outcomes


class RayJob:
    """Runs one ``yolokit run`` job on a Ray cluster; ``outcomes()`` streams the finished inputs."""

    def __init__(self, opts: RunOptions, out_dir: Path) -> None:
        import backends
        from toolkit.model.configs import resolve_model

        self.ray = _import_ray()
        self.opts = opts
        self.out_dir = out_dir.resolve()
        # absolute: actors may start in another folder (a built-in config name stays a name there)
        path = resolve_model(opts.detector.weights).resolve()
        self.weights = str(path)
        self.backend = opts.detector.backend or backends.backend_for(path)
        _check_model(self.backend, path)
        self._owns_ray = False
        self._ms: list[list[float]] = []
        self._workers: set[str] = set()
        self._meta: dict[str, Any] = {}
        self.lost = 0
        self.n_workers = 0
        self.cpus = 0.0
        self.batch = 0

    # ----------------------------------------------------------------------------------------- set-up
    def _connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        try:
            ray.init(address=self.opts.engine.address, include_dashboard=False, logging_level="ERROR",
                     log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as e:
            where = self.opts.engine.address or "a new local cluster"
            raise BackendUnavailableError(f"cannot start or reach Ray at {where}: {first_line(e)}; "
                                          f"start one with 'ray start --head' or drop --address") from None
        self._owns_ray = True

    def _sizes(self) -> None:
        """Workers, CPUs per worker and batch, from the options and the cluster's resources."""
        res = self.ray.cluster_resources()
        cpus, gpus = float(res.get("CPU", 1.0)), float(res.get("GPU", 0.0))
        o = self.opts.engine
        if o.gpus_per_worker > 0 and gpus < o.gpus_per_worker:
            raise BackendUnavailableError(f"--gpus-per-worker {o.gpus_per_worker}: the Ray cluster has "
                                          f"{gpus:g} GPUs")
        if o.workers > 0:
            n = o.workers
        elif o.gpus_per_worker > 0:
            n = max(1, int(gpus // o.gpus_per_worker))
        else:
            n = max(1, int(cpus // (o.cpus_per_worker or 1.0)))
        self.n_workers = n
        self.cpus = o.cpus_per_worker or max(1.0, float(int(cpus // n)))
        if self.cpus * n > cpus:
            raise InputError(f"{n} workers x {self.cpus:g} CPUs need {self.cpus * n:g} CPUs; the Ray cluster "
                             f"has {cpus:g}. Lower --workers or --cpus-per-worker")
        self.batch = o.batch or 8

    # ------------------------------------------------------------------------------------------- run
    def outcomes(self, sources: SourceList) -> Iterator[Any]:

        for ref, reason in sources.failed:
            yield Outcome(ref.key, ref.name, reason)
        items: list[InputRef] = []
        for ref in sources.items:
            if ref.frame is not None:
                yield Outcome(ref.key, ref.path, VIDEO_REASON)
            else:
                items.append(ref)
        if not items:
            return
        self._connect()
        self._sizes()
        ray = self.ray
        o = self.opts
        rows = [{"i": i, "abs": r.path if is_url(r.path) else os.path.abspath(r.path), "path": r.path, "key": r.key}
                for i, r in enumerate(items)]
        # one batch per block: an actor returns a block's records when the whole block is done, so small blocks
        # mean early, steady results (and a killed actor loses less); capped at 20,000 blocks for huge jobs
        per_block = max(self.batch, -(-len(rows) // 20_000))
        ds = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // per_block)))
        config = o.detector_config(weights=self.weights, backend=self.backend, threads=max(1, int(self.cpus)))
        with warnings.catch_warnings():
            # Ray Data's default for actors is to retry a dead actor's batch forever (a batch that kills its
            # actor every time would never end); retrying once needs the ray_remote_args that Ray deprecates
            # without a named replacement yet.
            warnings.simplefilter("ignore", DeprecationWarning)
            ds = ds.map_batches(InferActor, batch_size=self.batch, batch_format="numpy",
                                compute=ray.data.ActorPoolStrategy(size=self.n_workers),
                                fn_constructor_kwargs=dict(config=config, run_options=o, out_dir=str(self.out_dir)),
                                num_cpus=self.cpus, num_gpus=o.engine.gpus_per_worker or None,
                                max_restarts=-1, max_task_retries=1)
        ctx = ds.context  # this dataset's own copy: the process-wide DataContext is left alone
        ctx.max_errored_blocks = -1  # a batch that fails after its retry is dropped, then reported below
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        expected = dict(enumerate(items))  # by position: a list file may name the same image twice
        try:
            for row in ds.iter_rows():
                if row["fatal"]:
                    raise OutputError(str(row["fatal"]))
                if expected.pop(int(row["i"]), None) is None:
                    continue  # already reported (a retried batch that had in fact finished)
                rec = json.loads(row["record"])
                self._ms.append(json.loads(row["ms"]))
                self._workers.add(str(row["worker"]))
                self._meta = self._meta or json.loads(row["meta"])
                shape = tuple(rec["shape"]) if rec.get("shape") else None
                yield Outcome(str(row["key"]), str(row["path"]), str(row["error"]) or None, int(rec["n"]),
                              {str(k): int(v) for k, v in rec["classes"].items()}, rec["coco"], shape,
                              rec.get("rows"), files=[str(f) for f in rec.get("files") or ()])
        except YolokitError:
            raise
        except Exception as e:  # noqa: BLE001 - Ray wraps worker errors in its own exception types
            cause = _yolokit_cause(e)
            if cause is not None:  # e.g. the model file, found bad by every actor
                raise cause from None
            # Ray stopped the job (e.g. actors dying faster than they restart): what did not finish is
            # reported, with the reason, so the summary still accounts for every input
            reason = f"the Ray job stopped before this input finished: {last_line(e)}"
            for ref in expected.values():
                yield Outcome(ref.key, ref.name, reason)
            return
        for ref in expected.values():  # batches Ray gave up on after their retry
            self.lost += 1
            yield Outcome(ref.key, ref.name, LOST_REASON)

    # ----------------------------------------------------------------------------------------- report
    def ms_per_image(self) -> dict[str, float]:
        if not self._ms:
            return {}
        mean = np.mean(np.array(self._ms), axis=0)
        return {k: round(float(v), 2) for k, v in zip(("read", "pre", "infer", "post"), mean, strict=True)}

    def describe(self) -> str:
        if not self.n_workers:
            return "ray: nothing to run"
        gpus = f", {self.opts.engine.gpus_per_worker:g} GPU" if self.opts.engine.gpus_per_worker else ""
        lost = f"; {self.lost} lost to dead workers" if self.lost else ""
        return (f"ray: {self.n_workers} actors x {self.cpus:g} CPU{gpus}, batch {self.batch}, "
                f"{len(self._workers)} actor processes served results{lost}")

    def letterbox_differs(self, shape: tuple[int, int]) -> bool:
        """See :meth:`toolkit.engine.detector.Detector.letterbox_differs` (from what the actors reported)."""
        if not self._meta.get("fixed"):
            return False
        from toolkit.ops import letterbox_shape

        fixed = tuple(int(v) for v in self._meta["imgsz"])
        return tuple(letterbox_shape(shape, max(fixed), int(self._meta["stride"]), auto=True)[1]) != fixed

    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {"batch": self.batch, "workers": self.n_workers, "cpus_per_worker": self.cpus,
                               "gpus_per_worker": self.opts.engine.gpus_per_worker,
                               "address": self.opts.engine.address}
        out.update({k: v for k, v in self._meta.items() if k not in ("fixed", "stride")})
        return out

    def close(self) -> None:
        if self._owns_ray and self.ray.is_initialized():
            self.ray.shutdown()


def _check_model(backend: str, path: Path) -> None:
    """Find a bad model file on the driver, in one line, before any actor tries (and Ray retries) to load it.
    Only where the driver has the backend's runtime; otherwise the actors report it."""
    import backends

    module = backends.get_backend(backend)  # an unknown backend name fails here
    if str(path).endswith(".yaml") or not module.is_available():
        return
    module.read_meta(path)


def _yolokit_cause(e: BaseException) -> YolokitError | None:
    """The YolokitError behind a Ray exception (e.g. a bad model file in an actor's constructor), if any."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, YolokitError):
            return cur
        nxt = getattr(cur, "cause", None)
        cur = nxt if isinstance(nxt, BaseException) else (cur.__cause__ or cur.__context__)
    # an actor that died in its constructor reaches the driver as text only: "toolkit.errors.Name: message"
    import toolkit.errors

    m = re.search(r"toolkit\.errors\.(\w+): ([^\n]+)", str(e))
    cls = getattr(toolkit.errors, m.group(1), None) if m else None
    if m and isinstance(cls, type) and issubclass(cls, YolokitError):
        return cls(m.group(2).strip())
    return None


__all__ = ["InferActor", "RayJob", "LOST_REASON", "VIDEO_REASON"]
