"""Batched, pipelined execution with bounded queues: reader threads decode and letterbox, inference runs in
worker threads (one shared model) or worker processes (one model each), results come back in input order.

Rules of ``auto`` (see :func:`make_plan`):

* CUDA device: threads; 2 inference workers so copies overlap compute, batch 16 (or the artifact's static
  batch), readers = all cores (JPEG decoding is the bottleneck on a GPU).
* CPU, few inputs (< 8 per core) or one core: one inference thread using every core (intra-op threads); one
  reader thread overlaps decoding with inference. Starting processes would cost more than it saves.
* CPU, more inputs, a native runtime (onnxruntime, OpenVINO: they release the GIL): one thread per core, each
  with one intra-op thread, sharing one loaded model; decoding inline. Small models parallelise poorly inside
  one inference, so independent single-threaded inferences keep every core busy, without process start-up.
* CPU, PyTorch, at least 250 inputs per core: one process per core with one intra-op thread each (PyTorch's
  Python-level module calls hold the GIL); below that, threads as above (process start-up does not pay).
* Always workers x threads <= cores, and decode threads only get cores that inference leaves free.

Process mode counts the parent as one of its workers: the parent has loaded the model already, runs the first
task itself, and starts ``workers - 1`` processes only if more work remains (see :func:`_run_processes`).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_ready
from typing import TYPE_CHECKING, Any

import numpy as np

from toolkit.detections import Detections
from toolkit.errors import InputError, YolokitError
from toolkit.sources import InputRef, iter_video
from toolkit.tiling import TileOptions

if TYPE_CHECKING:
    from toolkit.detector import Detector, Result, _Prepared

MODES = ("auto", "thread", "process")


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


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


def make_plan(det: Detector, n_inputs: int, mode: str = "auto", workers: int = 0, batch: int = 0,
              cores: int | None = None) -> Plan:
    """Choose mode, workers, batch and threads; explicit values are kept, zeros are filled in."""
    if mode not in MODES:
        raise InputError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if workers < 0 or batch < 0:
        raise InputError("--workers and --batch must not be negative")
    cores = cores or cpu_count()
    static = det.meta.batch
    gpu = str(det.init_kwargs.get("device", "cpu")).startswith("cuda")
    if static is not None and batch and batch != static:
        batch = static  # a static artifact takes exactly its batch (partial batches are padded)
    if mode == "auto":
        if gpu:
            mode, workers, reason = "thread", workers or 2, "CUDA device: threads feed one GPU"
            batch = batch or static or 16
        elif cores == 1 or n_inputs < 8 * cores:
            mode, workers, reason = "thread", workers or 1, f"{n_inputs} inputs: too few to pay for processes"
        elif det.backend_name == "openvino":
            # measured (200/400 JPEGs of 1920x1080, 2 cores): threads with batch 4 beat batch 1 by 1.2-1.3x and
            # processes by 1.6x; OpenVINO runs one compiled model's infer requests in parallel without the GIL
            mode, workers, reason = "thread", workers or cores, "OpenVINO: infer requests share one compiled model"
            batch = batch or static or 4
        elif det.backend_name == "onnx" and n_inputs >= 64 * cores:
            # measured (same sets): processes 1.2-1.5x faster than threads once start-up (~1 s) is paid for;
            # the per-image Python work (letterbox, NMS) contends for the GIL in threads
            mode, workers, reason = "process", workers or cores, f"{n_inputs} ONNX inputs: pays for process start-up"
        elif det.backend_name != "torch" or n_inputs < 250 * cores:
            why = "the runtime releases the GIL" if det.backend_name != "torch" else f"{n_inputs} inputs"
            mode, workers, reason = "thread", workers or cores, f"{why}: one shared model, no process start-up"
        else:
            mode, workers, reason = "process", workers or cores, f"{n_inputs} PyTorch inputs on {cores} cores"
    else:
        reason = "as asked"
        workers = workers or (cores if mode == "process" else 1)
    batch = batch or static or 1
    asked = det.init_kwargs.get("threads")
    threads = int(asked) if asked else (max(1, cores // workers) if not gpu else 1)
    # on a CPU, decode threads only get the cores inference leaves free: a reader thread beside spinning
    # intra-op threads slows inference more than it saves (measured: 66 vs 40 ms/image on 2 cores)
    readers = cores if gpu else max(0, min(4, cores - workers * threads))
    return Plan(mode, workers, batch, threads, readers, reason)


# --------------------------------------------------------------------------------------------- helpers
Payload = np.ndarray | str | None  # a decoded frame, a failure reason, or None: read the file


def expand(items: Iterable[InputRef]) -> Iterator[tuple[int, InputRef, Payload]]:
    """Number the inputs, expanding videos into frames (decoded here, in order)."""
    index = 0
    for ref in items:
        if ref.frame == -1:
            for fref, frame, reason in iter_video(ref):
                yield index, fref, frame if frame is not None else (reason or "unreadable frame")
                index += 1
        else:
            yield index, ref, None
            index += 1


def ordered_map(pool: ThreadPoolExecutor, fn: Callable[[Any], Any], items: Iterable[Any],
                 window: int) -> Iterator[Any]:
    """``map`` over a thread pool with at most ``window`` items in flight, results in order."""
    pending: deque[Future[Any]] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _load_and_prepare(det: Detector, item: tuple[int, InputRef, Payload], keep_images: bool,
                      fast_decode: bool) -> tuple[int, Result | _Prepared]:
    from toolkit.detector import Result

    index, ref, payload = item
    if isinstance(payload, str):
        return index, Result(ref, error=payload)
    if payload is None:
        got = det.load_input(ref, fast_decode)
        if isinstance(got, str):
            return index, Result(ref, error=got)
        img, shape = got
    else:
        img, shape = payload, (payload.shape[0], payload.shape[1])
    return index, det.prepare(index, ref, img, shape, keep_images)


def run_pipeline(det: Detector, items: list[InputRef], plan: Plan, keep_images: bool = False,
                 fast_decode: bool = True, tile: TileOptions | None = None) -> Iterator[Result]:
    if plan.mode == "process":
        yield from _run_processes(det, items, plan, fast_decode, tile, keep_images)
    elif tile is not None:
        yield from _run_tiled(det, items, plan, keep_images, tile)
    else:
        yield from _run_threads(det, items, plan, keep_images, fast_decode)


def _tiled_result(det: Detector, index: int, ref: InputRef, payload: Payload, tile: TileOptions,
                  keep_images: bool, pool: ThreadPoolExecutor | None, in_flight: int = 4) -> Result:
    from toolkit.detector import Result

    if isinstance(payload, str):
        return Result(ref, error=payload)
    if payload is None:
        got = det.load_input(ref, fast_decode=False)
        if isinstance(got, str):
            return Result(ref, error=got)
        payload = got[0]
    try:
        d = det.predict_tiled(payload, tile, ref.path, pool, in_flight)
    except Exception as e:  # this image fails, the run goes on
        return Result(ref, error=f"tiled inference failed: {e}")
    return Result(ref, d, image=payload if keep_images else None)


def _run_tiled(det: Detector, items: list[InputRef], plan: Plan, keep_images: bool,
               tile: TileOptions) -> Iterator[Result]:
    """Huge images one at a time (the next one decoding meanwhile: at most two held), their tile batches over
    the inference threads."""
    _set_threads(det, plan.threads)
    reader = ThreadPoolExecutor(1, thread_name_prefix="yolokit-read")
    pool = ThreadPoolExecutor(plan.workers, thread_name_prefix="yolokit-infer") if plan.workers > 1 else None

    def load(item: tuple[int, InputRef, Payload]) -> tuple[int, InputRef, Payload]:
        index, ref, payload = item
        if payload is None:
            got = det.load_input(ref, fast_decode=False)
            payload = got if isinstance(got, str) else got[0]
        return index, ref, payload

    try:
        for index, ref, payload in ordered_map(reader, load, expand(items), window=2):
            # two tile batches in flight per inference thread: every thread busy, memory bounded
            result = _tiled_result(det, index, ref, payload, tile, keep_images, pool, 2 * plan.workers)
            del payload  # release this image before the next one starts decoding
            yield result
    finally:
        reader.shutdown(wait=True, cancel_futures=True)
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------------------------- threads
def _run_threads(det: Detector, items: list[InputRef], plan: Plan, keep_images: bool,
                 fast_decode: bool) -> Iterator[Result]:
    from toolkit.detector import Result

    _set_threads(det, plan.threads)
    readers = ThreadPoolExecutor(max(1, plan.readers), thread_name_prefix="yolokit-read")
    infer_pool = ThreadPoolExecutor(plan.workers, thread_name_prefix="yolokit-infer")
    inline = plan.workers == 1 and plan.readers == 0  # exactly the sequential loop, nothing in parallel
    results: dict[int, Result] = {}
    groups: dict[tuple[int, ...], list[_Prepared]] = {}
    futures: deque[Future[list[tuple[int, Result]]]] = deque()
    next_out = 0
    max_wait = 4 * plan.batch  # a partial group older than this many inputs is flushed (bounded memory)

    def submit(group: list[_Prepared]) -> None:
        if inline:
            results.update(det.run_batch(group))
        else:
            futures.append(infer_pool.submit(det.run_batch, group))

    def collect(block: bool) -> None:
        while futures and (block or futures[0].done()):
            results.update(futures.popleft().result())
            block = False

    try:
        def load(it: tuple[int, InputRef, Payload]) -> tuple[int, Result | _Prepared]:
            return _load_and_prepare(det, it, keep_images, fast_decode)

        prepared: Iterable[tuple[int, Result | _Prepared]] = (
            ordered_map(readers, load, expand(items), window=plan.readers * 4) if plan.readers
            else map(load, expand(items)))
        for index, item in prepared:
            if isinstance(item, Result):
                results[index] = item
            else:
                key = item.chw.shape
                group = groups.setdefault(key, [])
                group.append(item)
                if len(group) >= plan.batch:
                    submit(groups.pop(key))
            for key in [k for k, g in groups.items() if g[0].index < index - max_wait]:
                submit(groups.pop(key))
            while len(futures) > plan.workers * 2:
                collect(block=True)
            collect(block=False)
            while next_out in results:
                yield results.pop(next_out)
                next_out += 1
        for group in groups.values():
            submit(group)
        while futures:
            collect(block=True)
        while next_out in results:
            yield results.pop(next_out)
            next_out += 1
    finally:
        readers.shutdown(wait=True, cancel_futures=True)
        infer_pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------------------------- processes
_Lite = tuple[int, Any, Any, Any, Any, str | None, bytes | None]  # index, xyxy, conf, cls, shape, error, annotated


def _worker_main(wid: int, init_kwargs: dict[str, Any], threads: int, batch: int, fast_decode: bool,
                 tasks: Any, results: Any, tile: TileOptions | None = None, annotate: bool = False) -> None:
    """A worker process: load the model once, then turn tasks (lists of inputs) into small results."""
    # ``results`` is this worker's own pipe to the parent: if the worker is killed mid-message, only its own
    # channel breaks (a queue shared by all workers would stay locked and hang the others)
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the workers
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    import cv2

    cv2.setNumThreads(1)
    from toolkit.detector import Detector
    from toolkit.sources import quiet_decoders

    quiet_decoders()

    try:
        det = Detector(**{**init_kwargs, "threads": threads})
    except Exception as e:  # reported to the parent, which stops the run with this message
        results.send(("init_error", wid, None, f"{type(e).__name__}: {e}"))
        return
    results.send(("ready", wid, None, None))
    parent = os.getppid()
    while True:
        try:
            task_id, items = tasks.get(timeout=1)
        except queue.Empty:
            if os.getppid() != parent:  # the parent died without stopping this worker (SIGKILL): do not linger
                return
            continue
        try:
            results.send(("done", wid, task_id, _run_task(det, items, batch, fast_decode, tile, annotate)))
        except Exception as e:
            results.send(("error", wid, task_id, f"{type(e).__name__}: {e}"))


def _run_task(det: Detector, items: list[tuple[int, InputRef, Payload]], batch: int, fast_decode: bool,
              tile: TileOptions | None, annotate: bool = False) -> list[_Lite]:
    """One task of process mode (in a worker process or in the parent): small results for ``items``: boxes and,
    with ``annotate``, the annotated image already encoded (never the decoded image)."""
    if tile is not None:
        return [_lite(index, _tiled_result(det, index, ref, payload, tile, annotate, None))
                for index, ref, payload in items]
    out: list[_Lite] = []
    prepared: list[_Prepared] = []
    for item in items:
        index, res = _load_and_prepare(det, item, annotate, fast_decode and not annotate)
        if hasattr(res, "chw"):
            prepared.append(res)  # type: ignore[arg-type]
        else:
            out.append(_lite(index, res))  # type: ignore[arg-type]
    out.extend(_lite(index, r) for index, r in det.run_prepared(prepared, batch).items())
    return out


def _lite(index: int, r: Result) -> _Lite:
    d = r.detections
    if d is None:
        return (index, None, None, None, None, r.error, None)
    encoded = None
    if r.image is not None:  # annotated here, in the worker, with the whole-pixel boxes that outputs carry
        from pathlib import Path

        from toolkit.outputs import annotate, encode_image, image_suffix

        suffix = image_suffix(Path(r.ref.path)) if r.ref.frame is None else ".jpg"
        encoded = encode_image(annotate(r.image, d.rounded()), suffix, r.ref.name)
    return (index, d.xyxy, d.confidence, d.class_id, d.shape, None, encoded)


def _set_threads(det: Detector, threads: int) -> bool:
    """Give ``det`` ``threads`` intra-op threads in place, where its runtime can (PyTorch); whether it could."""
    set_threads = getattr(det.runner, "set_threads", None)
    if set_threads is not None:
        set_threads(threads)
    return set_threads is not None


def _with_threads(det: Detector, threads: int) -> Detector:
    """``det`` running ``threads`` intra-op threads: PyTorch changes its count in place; a runtime fixed at load
    time (ONNX Runtime, OpenVINO) gets a second copy of the model in this process."""
    from toolkit.detector import Detector

    if det.init_kwargs.get("threads") == threads or _set_threads(det, threads):
        return det
    return Detector(**{**det.init_kwargs, "threads": threads})


@dataclass
class _Worker:
    wid: int
    proc: Any
    tasks: Any
    conn: Any  # the parent's end of this worker's result pipe
    inflight: dict[int, list[tuple[int, InputRef, Payload]]]
    ready: bool = False

    def close_channels(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()
            self.tasks.cancel_join_thread()  # nobody reads its task queue any more
            self.tasks.close()


def _run_processes(det: Detector, items: list[InputRef], plan: Plan, fast_decode: bool,
                   tile: TileOptions | None = None, keep_images: bool = False) -> Iterator[Result]:
    """Process mode: ``spawn`` workers, each loading the model once; tasks carry paths (frames for videos),
    results carry only boxes. A worker that dies is replaced; its in-flight inputs are retried once, one by
    one, then reported failed. Each worker sends results on its own pipe; the parent waits on those pipes and
    on the workers' process sentinels together, so a death wakes it at once; every wait is bounded.

    The parent is one of the ``workers`` (``plan.parent_works``): its model is loaded already, so it runs the
    first task before any process starts, and only if more work remains do ``workers - 1`` processes join it
    (the parent then runs with the workers' intra-op thread budget). A job done within one task starts nothing,
    and one process start-up (a Python process, imports, the model) fewer is paid.
    """
    from toolkit.detector import Result

    ctx = mp.get_context("spawn")
    chunk = 1 if tile is not None else max(plan.batch, 2)
    source = expand(items)
    retry: deque[tuple[int, list[tuple[int, InputRef, Payload]]]] = deque()  # (attempt, items)
    attempts: dict[int, int] = {}
    task_items: dict[int, list[tuple[int, InputRef, Payload]]] = {}
    done: dict[int, Result] = {}
    workers: dict[int, _Worker] = {}
    next_wid = 0
    next_task = 0
    next_out = 0
    exhausted = False
    spawned = not plan.parent_works  # the worker processes: started at once, or after the parent's first task
    local = det  # the parent's model
    restarts = 0
    max_restarts = 3 * plan.workers + 3
    names = det.names

    def start_worker() -> None:
        nonlocal next_wid
        tq = ctx.Queue()
        recv_end, send_end = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_worker_main, name=f"yolokit-worker-{next_wid}", daemon=True,
                        args=(next_wid, det.init_kwargs, plan.threads, plan.batch, fast_decode, tq, send_end, tile,
                              keep_images))
        p.start()
        send_end.close()  # the worker holds the only write end: its death reads as end-of-file here
        workers[next_wid] = _Worker(next_wid, p, tq, recv_end, {})
        next_wid += 1

    def next_items() -> tuple[int, list[tuple[int, InputRef, Payload]]] | None:
        nonlocal exhausted
        if retry:
            return retry.popleft()
        if exhausted:
            return None
        batch_items = []
        for item in source:
            batch_items.append(item)
            if len(batch_items) >= chunk:
                break
        else:
            exhausted = True
        return (0, batch_items) if batch_items else None

    def fail(entries: list[tuple[int, InputRef, Payload]], reason: str) -> None:
        for index, ref, _ in entries:
            done[index] = Result(ref, error=reason)

    def handle(kind: str, wid: int, tid: Any, payload: Any) -> None:
        if kind == "ready":
            workers[wid].ready = True
        elif kind == "init_error":
            raise YolokitError(f"a worker process could not load the model: {payload}")
        elif kind in ("done", "error"):
            owner = workers.get(wid)
            entries = owner.inflight.pop(tid, []) if owner else task_items.get(tid, [])
            task_items.pop(tid, None)
            attempts.pop(tid, None)
            emap = {e[0]: e[1] for e in entries}
            if kind == "error":
                fail(entries, f"worker error: {payload}")
            else:
                for index, xyxy, conf, cls, shape, error, encoded in payload:
                    ref = emap[index]
                    if error is not None:
                        done[index] = Result(ref, error=error)
                    else:
                        done[index] = Result(ref, Detections(xyxy, conf, cls, names, ref.path, shape),
                                             annotated=encoded)

    def new_task(attempt: int, entries: list[tuple[int, InputRef, Payload]]) -> int:
        nonlocal next_task
        tid = next_task
        next_task += 1
        attempts[tid] = attempt
        task_items[tid] = entries
        return tid

    def work_here() -> bool:
        """The parent's share: run the next task here. Returns whether there was one."""
        nonlocal spawned, local
        if len(done) >= 64 * chunk:
            return False
        nxt = next_items()
        if nxt is None:
            return False
        tid = new_task(*nxt)
        try:
            handle("done", -1, tid, _run_task(local, nxt[1], plan.batch, fast_decode, tile, keep_images))
        except Exception as e:  # reported for this task's inputs, as a worker's error would be
            handle("error", -1, tid, f"{type(e).__name__}: {e}")
        if not spawned:
            spawned = True
            more = next_items() if plan.workers > 1 else None
            if more is not None:
                retry.appendleft(more)  # a peek: back to the front of the queue
                for _ in range(plan.workers - 1):
                    start_worker()
                local = _with_threads(det, plan.threads)
        return True

    if spawned:
        for _ in range(plan.workers):
            start_worker()
    try:
        while True:
            # dispatch: at most two tasks in flight per ready worker, and a bounded reorder buffer
            for w in workers.values():
                while w.ready and len(w.inflight) < 2 and len(done) < 64 * chunk:
                    nxt = next_items()
                    if nxt is None:
                        break
                    tid = new_task(*nxt)
                    w.inflight[tid] = nxt[1]
                    w.tasks.put((tid, nxt[1]))
            worked = plan.parent_works and work_here()
            while next_out in done:
                yield done.pop(next_out)
                next_out += 1
            if exhausted and not retry and not any(w.inflight for w in workers.values()) and not done:
                break
            by_conn = {w.conn: w for w in workers.values()}
            messages: list[tuple[str, int, Any, Any]] = []
            waitables = [*by_conn, *(w.proc.sentinel for w in workers.values())]
            for ready in wait_ready(waitables, timeout=0 if worked else 0.5):
                sender = by_conn.get(ready)
                if sender is None:
                    continue  # a process sentinel: the liveness check below handles it
                try:
                    messages.append(sender.conn.recv())
                    while sender.conn.poll():
                        messages.append(sender.conn.recv())
                except Exception:  # the pipe broke (the worker died mid-message): replace the worker
                    sender.proc.kill()
                    sender.proc.join(timeout=5)
            for kind, wid, tid, payload in messages:
                handle(kind, wid, tid, payload)
            # liveness: replace dead workers; retry their inputs once, one at a time
            for w in list(workers.values()):
                if w.proc.is_alive():
                    continue
                w.proc.join(timeout=1)
                code = w.proc.exitcode
                del workers[w.wid]
                w.close_channels()
                for tid, entries in w.inflight.items():
                    if attempts.get(tid, 0) >= 1:
                        fail(entries, f"worker process died (exit code {code}) twice on this input")
                    else:
                        retry.extend((1, [e]) for e in entries)
                    task_items.pop(tid, None)
                    attempts.pop(tid, None)
                restarts += 1
                if restarts > max_restarts:
                    raise YolokitError(f"worker processes keep dying (last exit code {code}); try --mode thread "
                                       f"or fewer --workers (a script that uses process mode must start under "
                                       f"`if __name__ == '__main__':`, which the spawn start method needs)")
                start_worker()
    finally:
        # every result is in, or the run is abandoned: no worker holds anything worth waiting for, and a graceful
        # exit (the interpreter and the runtime tearing down) cost the run about 0.4 s (measured, PyTorch)
        for w in workers.values():
            w.proc.terminate()
        deadline = time.monotonic() + 5
        for w in workers.values():
            w.proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(timeout=2)
            w.close_channels()
