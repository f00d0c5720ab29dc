"""``yolokit run --engine ray``: the same job on a Ray cluster.

The driver lists the inputs (paths or object URLs; it never reads an image) and hands them, a batch at a time, to a
fixed pool of inference actors, at most two batches in flight per actor. Each actor loads the model once (weights
given as a store URL are downloaded by each node into its own cache), then per batch reads its inputs (local files,
http(s) URLs or objects, within the run's limits), decodes them with OpenCV, runs the model and writes that batch's
labels and annotated images itself, into the run folder's store: a shared disk, or object storage, so that the
nodes need share nothing else. Only small records (key, counts, COCO results) come back to the driver, which keeps
the run folder's bookkeeping (``manifest.jsonl`` and the rest) exactly as a local run does, in the same store.

Lost work is retried within the run. When an actor dies (killed, out of memory, or its node lost), its batches go
back to the queue and run on the actors still alive, and a new actor is started wherever the cluster has room. A
batch whose actor died twice is split and each of its inputs tried once more alone; an input that kills its actor
again is reported failed (``--resume`` retries it). Inputs are reported lost only when no actor is left and none
could be started again within :data:`START_GRACE` seconds. Every input the driver hands out is recorded once,
whichever actor finished it; a batch done twice writes the same outputs twice, each object whole.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.engine.core import DetectorConfig, in_order, set_threads
from toolkit.errors import BackendUnavailableError, InputError, OutputError, YolokitError, first_line, last_line
from toolkit.io.files import os_reason
from toolkit.io.remote import is_url
from toolkit.io.sources import InputRef, SourceList, in_listing_order
from toolkit.io.store import Store, is_store_url, open_store
from toolkit.jobs.records import Outcome, RunOptions, write_outputs

LOST_REASON = "its Ray worker died twice while processing it (killed or out of memory); it was retried once"
NO_WORKER_REASON = ("no Ray worker was left to process it: every inference actor died and none could be started "
                    "again (the cluster lost its nodes, or has no room)")
VIDEO_REASON = "videos are not supported by --engine ray; run them with the local engine"
DEPTH = 2  # batches in flight per actor: one running, one waiting beside it
START_GRACE = 120.0  # seconds the driver waits for a new actor when none is left
RESTARTS = 3  # new actors started per actor of the pool, over the whole run


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BackendUnavailableError("--engine ray needs Ray: pip install 'yolokit[ray]'") from None
    return ray


def _reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse, in one line, a Ray address (``HOST:PORT``, ``ray://HOST:PORT``) nothing answers at: ray.init tried it
    for ever, logging a line every few seconds ("Failed to connect to GCS ... within 5 seconds"), with no word from
    yolokit. ``auto`` and other forms are Ray's to find."""
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    try:
        conn = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    except OSError as e:
        raise BackendUnavailableError(f"cannot reach Ray at {address} ({os_reason(e)}): nothing answers there; start "
                                      f"a cluster with 'ray start --head' on that machine, check the address, or drop "
                                      f"--address for a local one") from None
    with conn:
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("0", "false", ""):
            _speaks_grpc(conn, address, timeout)


def _speaks_grpc(conn: Any, address: str, timeout: float) -> None:
    """Refuse an address whose server is no gRPC server, as Ray's GCS and its client server are (an HTTP/2 server
    answers a connection preface with a SETTINGS frame): the dashboard's port 8265 given for the cluster's 6379 left
    ray.init waiting for ever."""
    conn.settimeout(timeout)
    try:
        conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
        head = b""
        while len(head) < 9:
            got = conn.recv(9 - len(head))
            if not got:
                break
            head += got
    except OSError:
        head = b""
    if len(head) < 9 or head[3] != 4:  # the frame type of SETTINGS
        raise BackendUnavailableError(f"{address} answers, but not as a Ray cluster does (Ray's GCS speaks gRPC): is "
                                      f"it the dashboard's port (8265)? give the cluster's address (port 6379 by "
                                      f"default, as 'ray start --head' prints it), or drop --address for a local one")

class InferActor:
    """One Ray actor: loads the model once, then reads, detects and writes outputs batch by batch, through the same
    batch routine as a local run."""

    def __init__(self, config: DetectorConfig, run_options: RunOptions, out_dir: str) -> None:
        from toolkit.engine.detector import ModelRoutine
        from toolkit.host import keep_freed_memory
        from toolkit.io.decode import quiet_decoders

        quiet_decoders()  # an actor process is yolokit's own: unreadable inputs are reported in its results
        keep_freed_memory()  # and its freed memory is kept for the next image (toolkit.host)
        self.routine = ModelRoutine.load(config)
        set_threads(self.routine.runner, int(config.threads or 1))
        self.opts = run_options
        self.out_dir = open_store(out_dir)
        self.pid = os.getpid()

    def ready(self) -> str:
        return f"{os.uname().nodename}:{self.pid}"

    def run(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        det = self.routine
        refs = [InputRef(str(r["path"]), str(r["key"])) for r in rows]
        before = det.times.snapshot()
        fatal = ""
        try:
            outcomes = self._process(rows, refs)
        except (OSError, OutputError) as e:  # writing outputs failed (disk full, permissions): the run stops
            fatal = (f"{self.out_dir}: cannot write outputs ({e.strerror or e}); free some space or fix the "
                     f"permissions, then continue the run with --resume") if isinstance(e, OSError) else str(e)
            outcomes = [Outcome(r.key, r.name, fatal) for r in refs]
        except Exception as e:  # noqa: BLE001 - anything else fails this batch's images, not the run
            outcomes = [Outcome(r.key, r.name, f"worker error: {first_line(e)}") for r in refs]
        after = det.times.snapshot()
        ms = [1000 * (a - b) / max(len(refs), 1) for a, b in zip(after, before, strict=True)]
        worker = f"{os.uname().nodename}:{self.pid}"
        nms = det.nms  # a model with NMS inside takes its export's settings where none was asked for
        meta = {"imgsz": list(det.imgsz), "precision": det.meta.precision, "fixed": not det.auto,
                "stride": det.meta.stride, "conf": nms.conf, "iou": nms.iou, "max_det": nms.max_det}
        return [{"i": int(r["i"]), "key": o.key, "path": o.path, "error": o.error or "", "fatal": fatal,
                 "n": o.n, "classes": o.classes, "coco": o.coco, "shape": o.shape, "rows": o.rows, "files": o.files,
                 "ms": ms, "worker": worker, "meta": meta} for r, o in zip(rows, outcomes, strict=True)]

    def _process(self, rows: list[dict[str, Any]], refs: list[InputRef]) -> list[Outcome]:
        """The batch routine over this batch: files are read by their absolute paths (an actor may run in another
        folder), results keep the paths the user gave."""
        items = [(i, InputRef(str(r["abs"]), ref.key), None) for i, (r, ref) in enumerate(zip(rows, refs,
                                                                                             strict=True))]
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


@dataclass
class _Batch:
    rows: list[dict[str, Any]]
    deaths: int = 0  # actors that died while holding it


class RayJob:
    """Runs one ``yolokit run`` job on a Ray cluster; ``outcomes()`` streams the finished inputs."""

    def __init__(self, opts: RunOptions, out_dir: Store) -> None:
        import backends
        from toolkit.model.configs import resolve_model

        self.ray = _import_ray()
        self.opts = opts
        # absolute: actors may start in another folder (a store URL stays a URL: each node reads it itself)
        self.out_dir = out_dir.root if out_dir.local is None else str(out_dir.local.resolve())
        weights = opts.detector.weights
        path = resolve_model(weights).resolve()  # a model in a store is downloaded here too, to be checked
        self.weights: str = weights if weights is not None and is_store_url(weights) else str(path)
        self.backend = opts.detector.backend or backends.backend_for(path)
        _check_model(self.backend, path)
        self._owns_ray = False
        self._ms: list[list[float]] = []
        self._workers: set[str] = set()
        self._meta: dict[str, Any] = {}
        self._actors: list[Any] = []
        self.lost = 0
        self.retried = 0
        self.deaths = 0
        self.n_workers = 0
        self.cpus = 0.0
        self.batch = 0

    # ----------------------------------------------------------------------------------------- set-up
    def _connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        address = self.opts.engine.address
        if address:
            _reachable(address)
        # ray.init puts its own SIGTERM handler in, which aborted the run with a crash dump (exit 134, or 15, or 1
        # against a running cluster) where yolokit's writes the summary and exits 143: the process's handlers are
        # put back as they were
        main = threading.current_thread() is threading.main_thread()
        handlers = {n: signal.getsignal(n) for n in (signal.SIGTERM, signal.SIGINT)} if main else {}
        try:
            ray.init(address=address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as e:
            where = address or "a new local cluster"
            raise BackendUnavailableError(f"cannot start or reach Ray at {where}: {first_line(e)}; "
                                          f"start one with 'ray start --head' or drop --address") from None
        finally:
            for number, handler in handlers.items():
                if handler is not None:
                    signal.signal(number, handler)
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
    def outcomes(self, sources: SourceList) -> Iterator[Outcome]:
        yield from in_listing_order(sources, self._outcomes(sources), lambda oc: oc.video or oc.key,
                                    lambda ref, why: Outcome(ref.key, ref.name, why))

    def _outcomes(self, sources: SourceList) -> Iterator[Outcome]:
        """The items' outcomes in input order: the actors finish batches in any order, and the records (the
        manifest, predictions.json and .csv) are written as outcomes come, so they came in the order of completion
        where docs/guide/concurrency.md promises the local run's files."""
        place = {ref.key: i for i, ref in enumerate(sources.items)}  # every outcome is of one of the items
        yield from in_order((place[oc.key], oc) for oc in self._unordered(sources))

    def _unordered(self, sources: SourceList) -> Iterator[Outcome]:
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
        yield from _Dispatch(self, items).run()

    def _record(self, row: dict[str, Any]) -> Outcome:
        self._ms.append([float(v) for v in row["ms"]])
        self._workers.add(str(row["worker"]))
        self._meta = self._meta or dict(row["meta"])
        shape = tuple(row["shape"]) if row.get("shape") else None
        return Outcome(str(row["key"]), str(row["path"]), str(row["error"]) or None, int(row["n"]),
                       {str(k): int(v) for k, v in (row["classes"] or {}).items()}, row["coco"], shape,
                       row.get("rows"), files=[str(f) for f in row.get("files") or ()])

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
        died = (f"; {self.deaths} actor(s) died, {self.retried} batch(es) retried on the others"
                if self.deaths else "")
        lost = f"; {self.lost} input(s) lost to dead workers" if self.lost else ""
        return (f"ray: {self.n_workers} actors x {self.cpus:g} CPU{gpus}, batch {self.batch}, "
                f"{len(self._workers)} actor processes served results{died}{lost}")

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
        out["fixed_input"] = bool(self._meta.get("fixed"))
        return out

    def close(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            for actor in self._actors:
                with contextlib.suppress(Exception):  # already gone
                    ray.kill(actor, no_restart=True)
        self._actors = []
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()


class _Dispatch:
    """One pass of a :class:`RayJob` over its inputs (see the module's description): batches to actors, lost
    batches back to the queue, dead actors replaced where the cluster has room."""

    def __init__(self, job: RayJob, items: list[InputRef]) -> None:
        self.job, self.ray = job, job.ray
        o = job.opts
        config = o.detector_config(weights=job.weights, backend=job.backend, threads=max(1, int(job.cpus)))
        self.make = self.ray.remote(InferActor).options(
            num_cpus=job.cpus, num_gpus=o.engine.gpus_per_worker or None, max_restarts=0, max_task_retries=0)
        self.args = (config, o, job.out_dir)
        self.expected = dict(enumerate(items))  # by position: a list file may name the same image twice
        self.rows = ({"i": i, "abs": _readable(r.path), "path": r.path, "key": r.key} for i, r in enumerate(items))
        self.queue: deque[_Batch] = deque()  # batches handed back by dead actors, run before new ones
        self.starting: dict[Any, Any] = {}  # the ready() call of an actor starting -> the actor
        self.alive: dict[Any, int] = {}  # an actor that answered ready() -> its batches in flight
        self.inflight: dict[Any, tuple[Any, _Batch]] = {}  # a run() call -> (its actor, its batch)
        self.restarts = RESTARTS * job.n_workers
        self.alone_since: float | None = None  # when the last actor was lost, while none is alive
        self.start_error: YolokitError | None = None
        self.start_failure = ""  # why the last actor that could not start did not

    def _start(self) -> None:
        actor = self.make.remote(*self.args)
        self.job._actors.append(actor)
        self.starting[actor.ready.remote()] = actor

    def _next(self) -> _Batch | None:
        if self.queue:
            return self.queue.popleft()
        rows = [r for _, r in zip(range(self.job.batch), self.rows, strict=False)]
        return _Batch(rows) if rows else None

    def _feed(self) -> None:
        for actor in list(self.alive):
            while self.alive[actor] < DEPTH:
                batch = self._next()
                if batch is None:
                    return
                self.inflight[actor.run.remote(batch.rows)] = (actor, batch)
                self.alive[actor] += 1

    def _lose(self, actor: Any) -> None:
        """An actor that died (or cannot be reached): dropped, and replaced while the run may start more."""
        if actor in self.alive:
            del self.alive[actor]
            self.job.deaths += 1
            with contextlib.suppress(Exception):  # already gone
                self.ray.kill(actor, no_restart=True)
            if self.restarts > 0:
                self.restarts -= 1
                self._start()
            if not self.alive and self.alone_since is None:
                self.alone_since = time.monotonic()

    def _requeue(self, batch: _Batch) -> Iterator[Outcome]:
        """A batch whose actor died: retried on the others; after a second death, each input alone; an input that
        kills its actor again is failed."""
        batch.deaths += 1
        self.job.retried += 1
        if batch.deaths < 2:
            self.queue.appendleft(batch)
        elif len(batch.rows) > 1:
            self.queue.extendleft(_Batch([r], 1) for r in reversed(batch.rows))
        else:
            yield from self._fail(batch.rows, LOST_REASON)

    def _fail(self, rows: list[dict[str, Any]], reason: str) -> Iterator[Outcome]:
        for r in rows:
            ref = self.expected.pop(int(r["i"]), None)
            if ref is not None:
                self.job.lost += 1
                yield Outcome(ref.key, ref.name, reason)

    def _started(self, ref: Any) -> None:
        actor = self.starting.pop(ref)
        try:
            self.ray.get(ref)
        except Exception as e:  # noqa: BLE001 - the actor died in its constructor, or its node did
            cause = _yolokit_cause(e)
            self.start_failure = str(cause) if cause is not None else last_line(e)
            if cause is not None:  # e.g. the model file, found bad by the actor: no other actor would do better
                self.start_error = cause
            elif self.restarts > 0:
                self.restarts -= 1
                self._start()
            return
        self.alive[actor] = 0
        self.alone_since = None

    def _finished(self, ref: Any) -> Iterator[Outcome]:
        actor, batch = self.inflight.pop(ref)
        if actor in self.alive:
            self.alive[actor] -= 1
        try:
            rows = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as e:  # the batch's own code failed: its inputs fail
            cause = _yolokit_cause(e)
            yield from self._fail(batch.rows, f"worker error: {cause or last_line(e)}")
            return
        except self.ray.exceptions.RayError:  # the actor died or cannot be reached, or its result was lost
            self._lose(actor)
            yield from self._requeue(batch)
            return
        for row in rows:
            if row["fatal"]:
                raise OutputError(str(row["fatal"]))
            if self.expected.pop(int(row["i"]), None) is None:
                continue  # already reported (a batch handed back that had in fact finished)
            yield self.job._record(row)

    def run(self) -> Iterator[Outcome]:
        for _ in range(self.job.n_workers):
            self._start()
        while self.expected:
            self._feed()
            if self.start_error is not None and not self.alive and not self.inflight:
                raise self.start_error
            if not self.inflight and not self.alive:
                waited = time.monotonic() - (self.alone_since or time.monotonic())
                if not self.starting or (self.alone_since is not None and waited > START_GRACE):
                    why = f" (the last actor that tried to start: {self.start_failure})" if self.start_failure else ""
                    yield from self._fail([{"i": i} for i in list(self.expected)], NO_WORKER_REASON + why)
                    return
            refs = [*self.inflight, *self.starting]
            if not refs:  # nothing in flight or starting, yet inputs unaccounted for: never left unreported
                yield from self._fail([{"i": i} for i in list(self.expected)], NO_WORKER_REASON)
                return
            ready, _ = self.ray.wait(refs, num_returns=1, timeout=5.0)
            for ref in ready:
                if ref in self.starting:
                    self._started(ref)
                else:
                    yield from self._finished(ref)


def _readable(path: str) -> str:
    """Where an actor reads an input: a URL or object as given, a local path made absolute."""
    return path if is_url(path) or is_store_url(path) else os.path.abspath(path)


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


__all__ = ["InferActor", "RayJob", "LOST_REASON", "NO_WORKER_REASON", "VIDEO_REASON"]
