"""The GPU pipeline: what ``yolokit run --device cuda`` and ``Detector(..., device="cuda")`` run when the backend's
runner has a device side (:class:`backends.base.DeviceRunner`: the PyTorch and TensorRT backends, ONNX Runtime
through IOBinding).

::

    reader threads:  read + decode (whole images; reduced only with fast_decode) ─► OpenCV resize ─► pinned slot
    driver thread:   copy stream:    pinned slot ─► device slot (non_blocking)          ─┐ events, no
                     compute stream: pad + normalise into the batch of its shape         ─┘ whole-stream waits
                                     full batch ─► CUDA graph replay (PyTorch) or forward (execute_async_v3)
                                     ─► batched fixed-K NMS ─► (B, max_det, 6) + (B, 3) to pinned host memory
                     host:           one event wait per batch, two batches in flight ─► Detections, in input order

* **Shapes.** Each image goes to the batch of its letterboxed shape (shape buckets, as the CPU path groups them): a
  16:9 photo runs at 384x640 like the ``.pt`` on the CPU. A bucket's batch runs when it is full, when its oldest
  image is more than four batches behind the newest input, or at the end. A partial batch runs in the bucket's
  static-batch graph, padded with whatever the slots held (those rows are computed and ignored); a runner without a
  graph runs exactly the images (a static artifact always gets its full batch).
* **Graphs.** A PyTorch model is captured once per bucket shape at the plan's batch (at most ``max_graphs``
  shapes; further shapes run eagerly), inside :func:`toolkit.engine.gpu.memory.cuda_settings` (cuDNN autotuning on,
  TF32 off for FP32).
* **Letterbox, exact by default.** The reader thread resizes the decoded image with OpenCV exactly as the CPU path
  does (:func:`toolkit.ops.letterbox_resize`; a 1920x1080 photo becomes 640x360, a ninth of the bytes to copy), and
  the device pads it, swaps BGR to RGB and divides by 255 straight into the runner's input dtype
  (:func:`toolkit.engine.gpu.letterbox.pad_normalise`): the model sees the CPU path's input, bit for bit. With
  ``gpu_resize`` the device resizes too (bilinear in float32, rounded to whole grey levels), sparing the CPU the
  resize; OpenCV's ``INTER_LINEAR`` uses 11-bit fixed-point weights, so resized pixels can differ by one grey level
  and about 1 % of boxes move (measured on coco128 at 512: 524 of 529 boxes within IoU 0.9 and 0.02 conf).
* **Results.** The batched NMS (:mod:`toolkit.engine.gpu.nms`) gives :func:`toolkit.ops.postprocess`'s
  detections; boxes are scaled to the original image on the host with :func:`toolkit.ops.scale_boxes`, as on the
  CPU path. A failed batch fails only its images.

On the CPU device the same code runs inline (no streams, no graphs, no pinned memory): the tests run it there.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from toolkit.detections import Detections
from toolkit.engine.core import BatchRoutine, Item, Result, check_output, image_array_problem, ordered_map, to_original
from toolkit.engine.gpu.letterbox import letterbox_torch, pad_normalise
from toolkit.engine.gpu.memory import (
    CapturedForward,
    DeviceContext,
    DeviceRing,
    PinnedRing,
    PinnedSlot,
    cuda_settings,
)
from toolkit.engine.gpu.nms import BatchedNMS, Candidates
from toolkit.errors import ModelFileError, first_line, last_line
from toolkit.io.sources import InputRef
from toolkit.io.transfer import Download
from toolkit.ops import LetterboxInfo, letterbox_info, letterbox_padding, letterbox_resize, scale_boxes

if TYPE_CHECKING:
    from backends.base import DeviceRunner

__all__ = ["DevicePipeline", "background"]

T = TypeVar("T")


@dataclass
class _Loaded:
    ref: InputRef
    image: np.ndarray  # as decoded (kept for annotation)
    upload: np.ndarray  # what goes to the device: resized for the letterbox, unless the device resizes
    info: LetterboxInfo
    orig_shape: tuple[int, int]
    slot: PinnedSlot | None


@dataclass
class _Staged:
    seq: int  # arrival order in this pass (results come out in this order)
    ref: InputRef
    info: LetterboxInfo
    image: np.ndarray | None
    orig_shape: tuple[int, int]


@dataclass
class _Bucket:
    shape: tuple[int, int]
    input: torch.Tensor  # (batch, 3, h, w) in the runner's dtype: the graph's static input, or a buffer of its own
    graph: CapturedForward | None
    entries: list[_Staged] = field(default_factory=list)


@dataclass
class _Batch:
    entries: list[_Staged]
    cand: Candidates
    out: torch.Tensor  # (b, max_det, 6) float32, host (pinned on a GPU)
    info: torch.Tensor  # (b, 3) int32, host
    ready: Any  # event after the copies back


class DevicePipeline:
    """The pipeline of one detector on one device; see the module docstring. ``results`` runs one pass at a time
    (a lock); :meth:`busy` tells a caller to build another pipeline for a concurrent pass."""

    def __init__(self, routine: BatchRoutine, dev: DeviceRunner, batch: int, max_graphs: int = 8, depth: int = 2,
                 gpu_resize: bool = False) -> None:
        self.routine, self.dev = routine, dev
        self.device = torch.device(dev.device)
        self.ctx = DeviceContext(self.device)
        self.batch = int(dev.static_batch or max(1, batch))
        self.depth, self.gpu_resize, self.max_graphs = max(1, depth), gpu_resize, max_graphs
        self.nms = BatchedNMS(routine.nms)
        self.ring = DeviceRing(self.ctx, slots=max(4, 2 * self.batch))  # copies may run a batch ahead
        self.pinned: PinnedRing | None = None
        self.buckets: dict[tuple[int, int], _Bucket] = {}
        self.graphs_on = self.ctx.cuda and bool(dev.graphable)
        self.notes: list[str] = []
        self._lock = threading.Lock()
        self._done: dict[int, Result] = {}
        self._inflight: deque[_Batch] = deque()

    def busy(self) -> bool:
        return self._lock.locked()

    @contextlib.contextmanager
    def _on_device(self) -> Iterator[None]:
        """The device and compute stream current, for the work of one step (never held across a yield)."""
        if not self.ctx.cuda:
            yield
            return
        with torch.cuda.device(self.device), torch.cuda.stream(self.ctx.compute):
            yield

    # ------------------------------------------------------------------------------------------------ readers
    def _load(self, item: Item, keep_images: bool, fast_decode: bool) -> Result | _Loaded:
        """Reader thread: read and decode one input, and copy it into a pinned slot."""
        _, ref, payload = item
        if isinstance(payload, str):
            return Result(ref, error=payload)
        if payload is None or isinstance(payload, Download):
            got = self.routine.load_input(ref, fast_decode, payload)
            if isinstance(got, str):
                return Result(ref, error=got)
            img, shape = got
        else:
            img, shape = payload, (int(payload.shape[0]), int(payload.shape[1]))
        problem = image_array_problem(img)  # as the host path's preprocess refuses it
        if problem is not None:
            return Result(ref, error=f"cannot prepare the image: {problem}")
        r = self.routine
        t0 = time.perf_counter()
        try:
            info = letterbox_info((int(img.shape[0]), int(img.shape[1])), r.imgsz, r.meta.stride, r.auto)
            up = img if self.gpu_resize else letterbox_resize(img, info)  # OpenCV's resize: the CPU path's pixels
        except Exception as e:  # one image that cannot be prepared fails alone
            return Result(ref, error=f"cannot prepare the image: {last_line(e)}")
        slot = self.pinned.acquire(up.nbytes) if self.pinned is not None else None
        if slot is not None:
            np.copyto(slot.buf[: up.nbytes].numpy().reshape(up.shape), up)
        r.times.add("pre", time.perf_counter() - t0)
        return _Loaded(ref, img, up, info, shape, slot)

    # ------------------------------------------------------------------------------------------------- driver
    def _bucket(self, shape: tuple[int, int]) -> _Bucket:
        bucket = self.buckets.get(shape)
        if bucket is not None:
            return bucket
        graph = None
        if self.graphs_on and sum(b.graph is not None for b in self.buckets.values()) < self.max_graphs:
            try:
                graph = CapturedForward(self.dev.forward, self.ctx, self.batch, shape, self.dev.dtype)
            except Exception as e:  # a model that cannot be captured still runs, eagerly
                self.graphs_on = False
                self.notes.append(f"CUDA graph capture failed ({first_line(e)}); running eagerly")
        inp = graph.static_in if graph is not None else torch.zeros(
            (self.batch, 3, *shape), dtype=self.dev.dtype, device=self.device)
        bucket = self.buckets[shape] = _Bucket(shape, inp, graph)
        return bucket

    def _stage(self, seq: int, got: _Loaded, keep_images: bool) -> None:
        """Copy one decoded image to the device and letterbox it into its bucket's batch."""
        t0 = time.perf_counter()
        r, ctx, up, info = self.routine, self.ctx, got.upload, got.info
        h, w = int(up.shape[0]), int(up.shape[1])
        try:
            with self._on_device():
                bucket = self._bucket(info.dst_shape)
                n = up.nbytes
                k, dbuf = self.ring.take(n)
                with ctx.on(ctx.copy):
                    src = got.slot.buf[:n] if got.slot is not None else \
                        torch.from_numpy(np.ascontiguousarray(up)).reshape(-1)
                    dbuf[:n].copy_(src, non_blocking=True)
                    copied = ctx.record(ctx.copy)
                if got.slot is not None and self.pinned is not None:
                    self.pinned.release(got.slot, copied)
                    got.slot = None
                ctx.wait(ctx.compute, copied)
                slot = bucket.input[len(bucket.entries)]
                raw = dbuf[:n].view(h, w, 3)
                if self.gpu_resize:
                    letterbox_torch(raw, r.imgsz, r.meta.stride, r.auto, quantize=True, out=slot)
                else:
                    top, _, left, _ = letterbox_padding(info)
                    pad_normalise(raw, slot, top, left)
                self.ring.done(k)
        except Exception as e:  # one image that cannot be prepared fails alone
            self._done[seq] = Result(got.ref, error=f"cannot prepare the image: {last_line(e)}")
            return
        finally:
            if got.slot is not None and self.pinned is not None:
                self.pinned.release(got.slot, ctx.record(ctx.copy))
        bucket.entries.append(_Staged(seq, got.ref, info, got.image if keep_images else None, got.orig_shape))
        r.times.add("pre", time.perf_counter() - t0)
        if len(bucket.entries) >= self.batch:
            self._launch(bucket)

    def _launch(self, bucket: _Bucket) -> None:
        """Run one bucket's batch and its NMS, and start copying the detections back (no host wait)."""
        entries, bucket.entries = bucket.entries, []
        if not entries:
            return
        b = len(entries)
        t0 = time.perf_counter()
        ctx = self.ctx
        try:
            with self._on_device(), torch.inference_mode():
                if bucket.graph is not None:
                    preds = bucket.graph.replay()[:b]
                else:
                    x = bucket.input if self.dev.static_batch else bucket.input[:b]
                    preds = self.dev.forward(x)[:b]
                check_output(self.routine.meta, preds, str(self.routine.config.weights))
                cand, out, info = self.nms(preds)
                out = out.contiguous()  # one plain copy back
                out_h = ctx.host_empty(tuple(out.shape), out.dtype)
                info_h = ctx.host_empty(tuple(info.shape), info.dtype)
                out_h.copy_(out, non_blocking=True)
                info_h.copy_(info, non_blocking=True)
                ready = ctx.record(ctx.compute)
        except ModelFileError:
            raise  # the model itself is wrong: every image would fail the same way
        except Exception as e:
            for s in entries:
                self._done[s.seq] = Result(s.ref, error=f"inference failed: {first_line(e)}")
            return
        self._inflight.append(_Batch(entries, cand, out_h, info_h, ready))
        self.routine.times.add("infer", time.perf_counter() - t0)

    def _finish(self, batch: _Batch) -> None:
        """Wait for one batch (the one host synchronisation per batch) and turn it into results."""
        r = self.routine
        t0 = time.perf_counter()
        try:
            batch.ready.synchronize()
        except Exception as e:
            for s in batch.entries:
                self._done[s.seq] = Result(s.ref, error=f"inference failed: {first_line(e)}")
            return
        t1 = time.perf_counter()
        out, info = batch.out.numpy(), batch.info.numpy()
        self.nms.observe(info)
        for j, s in enumerate(batch.entries):
            try:
                with self._on_device():
                    rows = self.nms.rows(batch.cand, out, info, j)
                det = Detections(scale_boxes(rows[:, :4], s.info), rows[:, 4].copy(), rows[:, 5].astype(np.int64),
                                 r.names, s.ref.path, s.info.src_shape)
                to_original(det, s.orig_shape, s.info.src_shape)
                self._done[s.seq] = Result(s.ref, det, image=s.image)
            except Exception as e:
                self._done[s.seq] = Result(s.ref, error=f"post-processing failed: {first_line(e)}")
        r.times.add("infer", t1 - t0)
        r.times.add("post", time.perf_counter() - t1, images=len(batch.entries))

    def _drain(self, keep: int) -> None:
        while len(self._inflight) > keep:
            self._finish(self._inflight.popleft())

    # ----------------------------------------------------------------------------------------------- the pass
    def results(self, items: Iterable[Item], readers: int = 0, keep_images: bool = False,
                fast_decode: bool = False, stop: threading.Event | None = None) -> Iterator[tuple[int, Result]]:
        """``(index, result)`` for each of ``items`` (routine items: see :func:`toolkit.engine.core.expand`), in
        their order; ``readers`` decoding threads (0: decode in this thread). A generator; one pass at a time."""
        with self._lock:
            yield from self._pass(items, readers, keep_images, fast_decode, stop)

    def _pass(self, items: Iterable[Item], readers: int, keep_images: bool, fast_decode: bool,
              stop: threading.Event | None) -> Iterator[tuple[int, Result]]:
        window = max(1, readers) * 4
        if self.ctx.cuda:
            self.pinned = PinnedRing(self.ctx, slots=window + 4)
        pool = ThreadPoolExecutor(readers, thread_name_prefix="yolokit-read") if readers else None
        self._done, self._inflight = {}, deque()
        max_wait = 4 * self.batch
        next_out = 0

        indices: dict[int, int] = {}  # seq -> the item's index

        def numbered() -> Iterator[Item]:
            for seq, item in enumerate(items):
                indices[seq] = item[0]
                yield seq, item[1], item[2]

        def load(item: Item) -> tuple[int, Result | _Loaded]:
            return item[0], self._load(item, keep_images, fast_decode)

        settings = cuda_settings(self.device, fp32=self.dev.dtype == torch.float32)
        settings.__enter__()
        try:
            loaded: Iterable[tuple[int, Result | _Loaded]] = (
                ordered_map(pool, load, numbered(), window) if pool is not None else map(load, numbered()))
            for seq, got in loaded:
                if stop is not None and stop.is_set():
                    return
                if isinstance(got, Result):
                    self._done[seq] = got
                else:
                    self._stage(seq, got, keep_images)
                for bucket in list(self.buckets.values()):  # a partial batch does not wait for ever
                    if bucket.entries and bucket.entries[0].seq < seq - max_wait:
                        self._launch(bucket)
                self._drain(self.depth)
                while next_out in self._done:
                    yield indices.pop(next_out), self._done.pop(next_out)
                    next_out += 1
            for bucket in self.buckets.values():
                self._launch(bucket)
            self._drain(0)
            for seq in sorted(self._done):
                yield indices.pop(seq), self._done.pop(seq)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            if self.ctx.cuda:  # nothing in flight may outlive the buffers of this pass
                self.ctx.compute.synchronize()
                self.ctx.copy.synchronize()
            for bucket in self.buckets.values():
                bucket.entries.clear()
            self._inflight.clear()
            self.pinned = None
            settings.__exit__(None, None, None)

    def close(self) -> None:
        for bucket in self.buckets.values():
            if bucket.graph is not None:
                bucket.graph.close()
        self.buckets.clear()


_END = object()


def background(produce: Callable[[threading.Event], Iterator[T]], maxsize: int = 256) -> Iterator[T]:
    """Run ``produce(stop)`` in its own thread and yield what it yields, so that the caller's work on each item
    (writing outputs) overlaps the producer's (the GPU driver). Errors are re-raised here; closing this generator
    (or an exception in the caller) sets ``stop`` and waits for the producer to wind down."""
    q: queue.Queue[Any] = queue.Queue(maxsize)
    stop = threading.Event()

    def put(x: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        gen = produce(stop)
        try:
            for x in gen:
                if not put((True, x)):
                    break
        except BaseException as e:  # handed to the consumer
            put((False, e))
        finally:
            close = getattr(gen, "close", None)
            if close is not None:
                close()
            put(_END)

    thread = threading.Thread(target=work, name="yolokit-gpu", daemon=True)
    thread.start()
    try:
        while True:
            got = q.get()
            if got is _END:
                return
            ok, x = got
            if not ok:
                raise x
            yield x
    finally:
        stop.set()
        thread.join(timeout=60)
