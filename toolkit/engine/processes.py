"""Process mode: ``spawn`` workers, each loading the model once; tasks carry paths (frames for videos), results carry
only boxes (and, when annotated images are saved, the annotated image already encoded by the worker).

A worker that dies is replaced; its in-flight inputs are retried once, one by one, then reported failed. Each worker
sends results on its own pipe; the parent waits on those pipes and on the workers' process sentinels together, so a
death wakes it at once; every wait is bounded.

The parent is one of the ``workers`` (``Plan.parent_works``): its model is loaded already, so it runs the first task
before any process starts, and only if more work remains do ``workers - 1`` processes join it (the parent then runs
with the workers' intra-op thread budget). A job done within one task starts nothing, and one process start-up (a
Python process, imports, the model) fewer is paid.

With ``Plan.shape_affinity`` (a runtime whose first inference at a new input shape is costly), the parent reads each
local image's size from its header and hands each worker the oldest inputs of a shape it has met, from a bounded
window read ahead; the oldest waiting input goes out after at most two tasks per worker, whatever its shape.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from multiprocessing.connection import wait as wait_ready
from typing import Any

import numpy as np

from toolkit.detections import Detections
from toolkit.engine.core import BatchRoutine, DetectorConfig, Item, Result, expand, intra_op_threads, set_threads
from toolkit.engine.plan import Plan
from toolkit.engine.tiled import tiled_result
from toolkit.errors import InputError, ModelFileError, YolokitError
from toolkit.host import keep_freed_memory
from toolkit.io.files import ImageReadError, read_head
from toolkit.io.imageheader import oriented_size
from toolkit.io.outputs import AnnotateStyle
from toolkit.io.sources import InputRef
from toolkit.ops import letterbox_shape
from toolkit.tiling import TileOptions

# index, xyxy, conf, cls, shape, error, annotated, crops
Lite = tuple[int, Any, Any, Any, Any, str | None, bytes | None, list[bytes | None] | None]
Factory = Callable[[DetectorConfig], BatchRoutine]  # loads a routine from a config (``ModelRoutine.load``)


@dataclass(frozen=True)
class TaskSpec:
    """How every task of a run is done, in the parent and in the workers."""

    batch: int
    fast_decode: bool
    tile: TileOptions | None = None
    annotate: bool = False  # encode the annotated image in the worker (annotated images are saved)
    crops: bool = False  # cut and encode each box's crop in the worker (--save-crop)
    style: AnnotateStyle = field(default_factory=AnnotateStyle)
    each: int | None = None  # inputs each process is expected to run (the run's, shared out); None: not known

    @property
    def keep_images(self) -> bool:
        return self.annotate or self.crops


UNGUARDED_EXIT = 86  # a worker's exit code: its script runs process mode again at import (no __main__ guard)
UNGUARDED = ("process mode started from a script without `if __name__ == '__main__':`: each worker process runs the "
             "script again as it starts (Python's spawn start method), and would start workers of its own; put the "
             "script's work under that guard, or use mode='thread'")


def run_task(routine: BatchRoutine, items: list[Item], spec: TaskSpec) -> list[Lite]:
    """One task (in a worker process or in the parent): small results for ``items``."""
    if spec.tile is not None:
        return [_lite(index, tiled_result(routine, ref, payload, spec.tile, spec.keep_images, None), spec)
                for index, ref, payload in items]
    done = routine.process(items, spec.batch, keep_images=spec.keep_images, fast_decode=spec.fast_decode)
    return [_lite(index, r, spec) for index, r in done.items()]


def _lite(index: int, r: Result, spec: TaskSpec) -> Lite:
    d = r.detections
    if d is None:
        return (index, None, None, None, None, r.error, None, None)
    encoded = crops = None
    if r.image is not None:  # annotated and cut here, in the worker, with the whole-pixel boxes outputs carry
        from toolkit.io.outputs import annotate, annotated_suffix, encode_crops, encode_image

        rounded = d.rounded()
        # a video frame goes into its video: the parent, which decoded it, annotates it there
        if spec.annotate and not r.ref.video:
            encoded = encode_image(annotate(r.image, rounded, spec.style, copy=spec.crops),
                                   annotated_suffix(r.ref.path, r.ref.frame), r.ref.name)
        if spec.crops:
            crops = encode_crops(r.image, rounded)
    return (index, d.xyxy, d.confidence, d.class_id, d.shape, None, encoded, crops)


def worker_main(wid: int, factory: Factory, config: DetectorConfig, spec: TaskSpec, tasks: Any,
                results: Any) -> None:
    """A worker process: load the model once, then turn tasks (lists of inputs) into small results. ``results`` is
    this worker's own pipe to the parent: if the worker is killed mid-message, only its own channel breaks (a queue
    shared by all workers would stay locked and hang the others)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the workers
    # started with Ctrl-C blocked (:meth:`ProcessPool._start`), so that one pressed while this interpreter imported
    # printed no traceback of its start-up; ignored now, the pending one is dropped
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(config.threads)
    keep_freed_memory()  # yolokit's own process (the command's setting of OpenBLAS is inherited)
    import cv2

    from toolkit.io.decode import quiet_decoders

    cv2.setNumThreads(1)  # this process is yolokit's own
    quiet_decoders()
    try:
        routine = factory(config)
        set_threads(routine.runner, int(config.threads or 1))
        routine.expect(spec.each, spec.batch)  # the runner prepares as far as this worker's share pays for
    except Exception as e:  # reported to the parent, which stops the run with this message
        with contextlib.suppress(OSError):  # the parent gone (killed): nobody to tell, no traceback
            results.send(("init_error", wid, None, f"{type(e).__name__}: {e}"))
        return
    try:
        results.send(("ready", wid, None, None))
    except OSError:  # the parent was killed while this worker loaded (a BrokenPipeError traceback): end quietly
        return
    sender = _Sender(results)
    parent = os.getppid()
    while not sender.broken:
        try:
            task_id, items = tasks.get(timeout=1)
        except queue.Empty:
            if os.getppid() != parent:  # the parent died without stopping this worker (SIGKILL): do not linger
                return
            continue
        try:
            sender.send(("done", wid, task_id, run_task(routine, items, spec)))
        except ModelFileError as e:  # the model itself is wrong: the run stops with it, as in thread mode
            sender.send(("model_error", wid, task_id, str(e)))
        except Exception as e:
            sender.send(("error", wid, task_id, f"{type(e).__name__}: {e}"))


class _Sender:
    """A worker's results, sent in order from a thread of their own. A result that carries annotated images (a few
    hundred KB each, encoded) fills the pipe until the parent reads it, and the parent reads between its own tasks:
    sent from the worker's main thread, that stalled the worker for part of every task. From here the worker goes on
    with its next task (measured: 1,000 1080p photos, ONNX, 2 processes, annotated images saved: 22.1-24.3 s with the
    cores idle 16 % of the time, 18.6-20.8 s and 5 %, three runs each, interleaved)."""

    def __init__(self, conn: Any) -> None:
        self.conn, self.broken = conn, False
        self.queue: queue.SimpleQueue[tuple[str, int, Any, Any]] = queue.SimpleQueue()
        threading.Thread(target=self._run, name="yolokit-send", daemon=True).start()

    def send(self, message: tuple[str, int, Any, Any]) -> None:
        self.queue.put(message)

    def _run(self) -> None:
        from multiprocessing.reduction import ForkingPickler  # what Connection.send pickles with

        while True:
            kind, wid, tid, payload = self.queue.get()
            try:
                data = ForkingPickler.dumps((kind, wid, tid, payload))
            except Exception as e:  # a result that cannot be sent fails its task, as an error in it would
                data = ForkingPickler.dumps(("error", wid, tid, f"cannot send the result: {type(e).__name__}: {e}"))
            try:
                self.conn.send_bytes(data)
            except Exception:  # the parent is gone (or the pipe broke): the worker stops
                self.broken = True
                return


@dataclass
class _Worker:
    wid: int
    proc: Any
    tasks: Any
    conn: Any  # the parent's end of this worker's result pipe
    inflight: dict[int, list[Item]] = field(default_factory=dict)
    ready: bool = False

    def close_channels(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()
            self.tasks.cancel_join_thread()  # nobody reads its task queue any more
            self.tasks.close()


class ProcessPool:
    """One process-mode run over ``items``; :meth:`results` yields every input's result, in input order."""

    def __init__(self, routine: BatchRoutine, factory: Factory, items: list[InputRef], plan: Plan,
                 spec: TaskSpec) -> None:
        self.routine, self.factory, self.plan, self.spec = routine, factory, plan, spec
        self.ctx = mp.get_context("spawn")
        self.chunk = 1 if spec.tile is not None else max(plan.batch, 2)
        self.source = expand(items, routine.config)
        self.source_done = False
        # inputs read ahead of dispatch, each with its letterboxed shape when shape affinity is on (else None): a
        # worker is given the inputs of shapes it has met (their kernels set up), from this window
        self.affinity = plan.shape_affinity and routine.auto and spec.tile is None and not any(
            r.video for r in items)
        self.held = 64 * self.chunk  # results held at most for an earlier input (the reorder buffer)
        self.next_out = 0  # the input whose result every held one waits for
        # the window read ahead: bounded (an entry may hold a downloaded image); inputs it lets go ahead of older
        # ones are held for them, and a full buffer sends only the input they wait for (next_items)
        self.lookahead = min(16 * max(1, plan.workers), 32) * self.chunk if self.affinity else self.chunk
        self.window: deque[tuple[Item, tuple[int, int] | None]] = deque()
        self.met: dict[int, set[tuple[int, int] | None]] = {}  # worker id (-1: the parent) -> shapes it has met
        self.head_skips = 0  # tasks handed out while the window's oldest input waited (bounded: see _key_for)
        self.retry: deque[tuple[int, list[Item]]] = deque()  # (attempt, items)
        self.attempts: dict[int, int] = {}
        self.task_items: dict[int, list[Item]] = {}
        self.done: dict[int, Result] = {}
        self.workers: dict[int, _Worker] = {}
        self.next_wid = self.next_task = 0
        self.started = not plan.parent_works  # the worker processes: at once, or after the parent's first task
        self.local = routine  # the parent's model, at the workers' thread budget once they run
        self.copy: BatchRoutine | None = None  # a second copy in the parent, for runtimes that fix threads at load
        self.restarts = 0
        self.max_restarts = 3 * plan.workers + 3
        self.worker_config = replace(routine.config, threads=plan.threads)
        routine.expect(spec.each, spec.batch)

    # ------------------------------------------------------------------------------------------- tasks
    def start_worker(self) -> None:
        if getattr(mp.current_process(), "_inheriting", False):
            # this is a worker starting up, running an unguarded script again as its main module (the spawn start
            # method does): ten tracebacks of multiprocessing's and 13 s before one line. It ends at once and
            # quietly, with a code its parent turns into that line.
            os._exit(UNGUARDED_EXIT)
        tq = self.ctx.Queue()
        recv_end, send_end = self.ctx.Pipe(duplex=False)
        p = self.ctx.Process(target=worker_main, name=f"yolokit-worker-{self.next_wid}", daemon=True,
                             args=(self.next_wid, self.factory, self.worker_config, self.spec, tq, send_end))
        # the new interpreter starts with Ctrl-C blocked (the mask is inherited), until worker_main ignores it: a
        # Ctrl-C while it imported printed its KeyboardInterrupt traceback. This process's own is held meanwhile.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            p.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        send_end.close()  # the worker holds the only write end: its death reads as end-of-file here
        self.workers[self.next_wid] = _Worker(self.next_wid, p, tq, recv_end)
        self.next_wid += 1

    def next_items(self, wid: int = -1) -> tuple[int, list[Item]] | None:
        """The next task for worker ``wid`` (-1: the parent): a retry first; else up to ``chunk`` inputs, the next
        in input order or, with shape affinity, the oldest of a shape that worker has met. While the reorder buffer
        is full: only the task holding the input every held result waits for, wherever it waits (without it, a full
        buffer would wait for an input never sent), or None."""
        if self._full():
            return self._unblocking()
        if self.retry:
            return self.retry.popleft()
        self._read_ahead()
        if not self.window:
            return None
        return 0, self._take(self._key_for(wid))

    def _take(self, key: tuple[int, int] | None) -> list[Item]:
        """Up to ``chunk`` inputs of shape ``key`` out of the window, in window order."""
        taken: list[Item] = []
        kept: deque[tuple[Item, tuple[int, int] | None]] = deque()
        for item, shape in self.window:
            if len(taken) < self.chunk and shape == key:
                taken.append(item)
            else:
                kept.append((item, shape))
        self.window = kept
        return taken

    def _holder(self) -> tuple[str, int] | None:
        """Where input ``next_out`` waits to go out: ``("retry", i)`` or ``("window", i)``, positions in those
        queues (an input late from its download, or one passed over for others' shapes, need not head the window);
        None when it is out already."""
        for i, (_, entries) in enumerate(self.retry):
            if any(index == self.next_out for index, _, _ in entries):
                return "retry", i
        self._read_ahead()
        for i, (item, _) in enumerate(self.window):
            if item[0] == self.next_out:
                return "window", i
        return None

    def _unblocking(self) -> tuple[int, list[Item]] | None:
        """The task holding input ``next_out`` (:meth:`_holder`): its retry, or it and the oldest inputs of its
        shape from the window; None if it is already out."""
        holder = self._holder()
        if holder is None:
            return None
        where, i = holder
        if where == "retry":
            task = self.retry[i]
            del self.retry[i]
            return task
        entry = self.window[i]
        del self.window[i]
        self.window.appendleft(entry)  # first in window order, so that _take takes it
        return 0, self._take(entry[1])

    def _read_ahead(self) -> None:
        while not self.source_done and len(self.window) < self.lookahead:
            item = next(self.source, None)
            if item is None:
                self.source_done = True
            else:
                self.window.append((item, self._shape(item)))

    def _key_for(self, wid: int) -> tuple[int, int] | None:
        """The shape worker ``wid`` takes next: the oldest waiting one it has met; the oldest waiting input's when it
        has met none of them, or when that input was passed over for 2 tasks per worker (the oldest waits no longer)."""
        head = self.window[0][1]
        met = self.met.setdefault(wid, set())
        if self.affinity and head not in met and self.head_skips < 2 * max(1, self.plan.workers):
            for _, key in self.window:
                if key in met:
                    self.head_skips += 1
                    return key
        met.add(head)
        self.head_skips = 0
        return head

    def _shape(self, item: Item) -> tuple[int, int] | None:
        """The letterboxed shape of a local image file from its header, a JPEG's EXIF orientation applied (None: not
        known before decoding). A hint for scheduling only: a wrong one costs a shape set-up, never an answer."""
        _, ref, payload = item
        if not self.affinity or payload is not None:  # a downloaded input, a failure to report
            return None
        try:
            size = oriented_size(read_head(ref.path, 1 << 16))
        except (ImageReadError, OSError):
            return None
        if not size or min(size) <= 0:
            return None
        r = self.routine
        return letterbox_shape(size, r.imgsz, r.meta.stride, auto=True)[1]

    def released(self) -> Iterator[Result]:
        """The held results that are next in input order, taken out of the reorder buffer."""
        while self.next_out in self.done:
            yield self.done.pop(self.next_out)
            self.next_out += 1

    def _full(self) -> bool:
        return len(self.done) >= self.held

    def _more(self) -> bool:
        """Whether inputs remain to hand out."""
        self._read_ahead()
        return bool(self.retry or self.window)

    def new_task(self, attempt: int, entries: list[Item]) -> int:
        tid = self.next_task
        self.next_task += 1
        self.attempts[tid] = attempt
        self.task_items[tid] = entries
        return tid

    def fail(self, entries: list[Item], reason: str) -> None:
        for index, ref, _ in entries:
            self.done[index] = Result(ref, error=reason)

    def handle(self, kind: str, wid: int, tid: Any, payload: Any) -> None:
        if kind == "ready":
            self.workers[wid].ready = True
        elif kind == "model_error":
            raise ModelFileError(str(payload))
        elif kind == "init_error":
            raise YolokitError(f"a worker process could not load the model: {payload}")
        elif kind in ("done", "error"):
            owner = self.workers.get(wid)
            entries = owner.inflight.pop(tid, []) if owner else self.task_items.get(tid, [])
            self.task_items.pop(tid, None)
            self.attempts.pop(tid, None)
            if kind == "error":
                self.fail(entries, f"worker error: {payload}")
                return
            refs = {e[0]: e[1] for e in entries}
            frames = {e[0]: e[2] for e in entries if isinstance(e[2], np.ndarray)} if self.spec.annotate else {}
            for index, xyxy, conf, cls, shape, error, encoded, crops in payload:
                ref = refs[index]
                self.done[index] = Result(ref, error=error) if error is not None else Result(
                    ref, Detections(xyxy, conf, cls, self.routine.names, ref.path, shape),
                    image=frames.get(index) if ref.video else None, annotated=encoded, crops=crops)

    # ------------------------------------------------------------------------------------------- the loop
    def work_here(self) -> bool:
        """The parent's share: run the next task here. Returns whether there was one."""
        nxt = self.next_items(-1)
        if nxt is None:
            return False
        tid = self.new_task(*nxt)
        try:
            self.handle("done", -1, tid, run_task(self.local, nxt[1], self.spec))
        except ModelFileError:
            raise
        except Exception as e:  # reported for this task's inputs, as a worker's error would be
            self.handle("error", -1, tid, f"{type(e).__name__}: {e}")
        if not self.started:
            self.started = True
            if self.plan.workers > 1 and self._more():
                for _ in range(self.plan.workers - 1):
                    self.start_worker()
                self.local = self._at_worker_threads()
        return True

    def _at_worker_threads(self) -> BatchRoutine:
        """The parent's model at the workers' intra-op budget: PyTorch changes its count in place; a runtime that
        fixes it at load time (ONNX Runtime, OpenVINO) gets a second copy in this process."""
        if self.routine.config.threads == self.plan.threads or set_threads(self.routine.runner, self.plan.threads):
            return self.routine
        self.copy = self.factory(self.worker_config)
        self.copy.expect(self.spec.each, self.spec.batch)
        return self.copy

    def dispatch(self) -> None:
        """At most two tasks in flight per ready worker, and a bounded reorder buffer."""
        for w in self.workers.values():
            while w.ready and len(w.inflight) < 2:
                nxt = self.next_items(w.wid)
                if nxt is None:
                    break
                tid = self.new_task(*nxt)
                w.inflight[tid] = nxt[1]
                w.tasks.put((tid, nxt[1]))

    def receive(self, timeout: float) -> None:
        by_conn = {w.conn: w for w in self.workers.values()}
        messages: list[tuple[str, int, Any, Any]] = []
        for ready in wait_ready([*by_conn, *(w.proc.sentinel for w in self.workers.values())], timeout=timeout):
            sender = by_conn.get(ready)
            if sender is None:
                continue  # a process sentinel: replace_dead handles it
            try:
                messages.append(sender.conn.recv())
                while sender.conn.poll():
                    messages.append(sender.conn.recv())
            except Exception:  # the pipe broke (the worker died mid-message): replace the worker
                sender.proc.kill()
                sender.proc.join(timeout=5)
        for kind, wid, tid, payload in messages:
            self.handle(kind, wid, tid, payload)

    def replace_dead(self) -> None:
        """Replace dead workers; retry their inputs once, one at a time."""
        for w in list(self.workers.values()):
            if w.proc.is_alive():
                continue
            w.proc.join(timeout=1)
            code = w.proc.exitcode
            if code == UNGUARDED_EXIT:  # the script ran again in the worker and asked for workers of its own
                raise InputError(UNGUARDED)
            del self.workers[w.wid]
            w.close_channels()
            for tid, entries in w.inflight.items():
                if self.attempts.get(tid, 0) >= 1:
                    self.fail(entries, f"worker process died (exit code {code}) twice on this input")
                else:
                    self.retry.extend((1, [e]) for e in entries)
                self.task_items.pop(tid, None)
                self.attempts.pop(tid, None)
            self.restarts += 1
            if self.restarts > self.max_restarts:
                raise YolokitError(f"worker processes keep dying (last exit code {code}); try --mode thread or "
                                   f"fewer --workers (a script that uses process mode must start under "
                                   f"`if __name__ == '__main__':`, which the spawn start method needs)")
            self.start_worker()

    def stop(self) -> None:
        """Every result is in, or the run is abandoned: no worker holds anything worth waiting for, and a graceful
        exit (the interpreter and the runtime tearing down) cost the run about 0.4 s (measured, PyTorch)."""
        for w in self.workers.values():
            w.proc.terminate()
        deadline = time.monotonic() + 5
        for w in self.workers.values():
            w.proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(timeout=2)
            w.close_channels()
        if self.copy is not None:
            self.copy.runner.close()

    def results(self) -> Iterator[Result]:
        if self.started:
            for _ in range(self.plan.workers):
                self.start_worker()
        try:
            with intra_op_threads(self.routine.runner, self.routine.config.threads):
                while True:
                    self.dispatch()
                    worked = self.plan.parent_works and self.work_here()
                    yield from self.released()
                    idle = not any(w.inflight for w in self.workers.values())
                    if not self._more() and idle and not self.done:
                        break
                    self.receive(timeout=0 if worked else 0.5)
                    self.replace_dead()
        finally:
            self.stop()
