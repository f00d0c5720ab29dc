"""Device memory, streams and graphs for the GPU pipeline (:mod:`toolkit.engine.gpu.pipeline`).

* :class:`DeviceContext`: a compute stream and a copy stream on a CUDA device, and their events. On the CPU device
  the same calls run inline (events are always complete), so the pipeline's logic runs, and is tested, on the CPU.
* :class:`PinnedRing`: recycled page-locked host buffers that reader threads decode into; a slot is handed out
  again only after the event of its last host-to-device copy has completed. Bounded in count and bytes: when none
  is free the image is copied from ordinary memory instead (slower, never blocking, never deadlocking).
* :class:`DeviceRing`: a few device buffers that raw images are copied into on the copy stream; before a slot is
  overwritten the copy stream waits for the event that the compute stream recorded after it last read the slot
  (events, not whole-stream waits, so copies overlap compute).
* :class:`CapturedForward`: a forward function captured in a CUDA graph at a fixed input shape and replayed.
* :func:`cuda_settings`: cuDNN autotuning on, and TF32 off for FP32 models, for the duration of a run (these are
  process-wide switches; they are restored when the last run that set them ends).
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from toolkit.errors import InputError

__all__ = ["CapturedForward", "DeviceContext", "DeviceRing", "PinnedRing", "cuda_settings"]

MiB = 1 << 20


class _Done:
    """The event of work that ran inline (CPU device): always complete."""

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True


class DeviceContext:
    """Streams and events on ``device``; inline no-ops on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.compute: Any = torch.cuda.Stream(device) if self.cuda else None
        self.copy: Any = torch.cuda.Stream(device) if self.cuda else None

    def on(self, stream: Any) -> contextlib.AbstractContextManager[Any]:
        return torch.cuda.stream(stream) if self.cuda else contextlib.nullcontext()

    def record(self, stream: Any, timing: bool = False) -> Any:
        if not self.cuda:
            return _Done()
        ev = torch.cuda.Event(enable_timing=timing)
        ev.record(stream)
        return ev

    def wait(self, stream: Any, event: Any) -> None:
        if self.cuda:
            stream.wait_event(event)

    def host_empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A host tensor that copies to and from the device asynchronously (page-locked on a CUDA device)."""
        return torch.empty(shape, dtype=dtype, pin_memory=self.cuda)


@dataclass
class PinnedSlot:
    buf: torch.Tensor  # 1-D uint8, page-locked
    ready: Any  # the event after which the slot may be written again

    @property
    def capacity(self) -> int:
        return int(self.buf.numel())


def _round_up(n: int, unit: int = MiB) -> int:
    return max(unit, -(-n // unit) * unit)


class PinnedRing:
    """Up to ``slots`` page-locked buffers, ``budget`` bytes in all, recycled in order. Thread-safe."""

    def __init__(self, ctx: DeviceContext, slots: int, budget: int = 2 << 30, first: int = MiB) -> None:
        if slots < 1:
            raise InputError(f"a pinned ring needs at least one slot, got {slots}")
        self.ctx, self.slots, self.budget, self.first = ctx, slots, budget, first
        self._free: deque[PinnedSlot] = deque()
        self._made = 0
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def pinned_bytes(self) -> int:
        return self._bytes

    def acquire(self, nbytes: int) -> PinnedSlot | None:
        """A slot of at least ``nbytes`` whose last copy has finished, or None (copy from ordinary memory)."""
        with self._lock:
            if self._free:
                slot = self._free.popleft()
            elif self._made < self.slots:
                size = _round_up(max(nbytes, self.first))
                if self._bytes + size > self.budget:
                    return None
                self._made += 1
                self._bytes += size
                return PinnedSlot(self.ctx.host_empty((size,), torch.uint8), _Done())
            else:
                return None
            if slot.capacity < nbytes:  # grow it, within the budget
                size = _round_up(nbytes)
                if self._bytes - slot.capacity + size > self.budget:
                    self._free.append(slot)
                    return None
                self._bytes += size - slot.capacity
                grown = True
            else:
                grown = False
        slot.ready.synchronize()  # its previous copy to the device has read it
        if grown:
            slot.buf = self.ctx.host_empty((_round_up(nbytes),), torch.uint8)
        return slot

    def release(self, slot: PinnedSlot, ready: Any) -> None:
        slot.ready = ready
        with self._lock:
            self._free.append(slot)


class DeviceRing:
    """``slots`` device buffers for raw images, used round-robin by one thread (the pipeline's driver)."""

    def __init__(self, ctx: DeviceContext, slots: int = 4) -> None:
        self.ctx = ctx
        self.bufs: list[torch.Tensor | None] = [None] * slots
        self.consumed: list[Any] = [_Done()] * slots
        self.next_slot = 0

    def take(self, nbytes: int) -> tuple[int, torch.Tensor]:
        """The next slot (grown to ``nbytes``); the copy stream is made to wait until its last reader is done."""
        k = self.next_slot
        self.next_slot = (k + 1) % len(self.bufs)
        buf = self.bufs[k]
        if buf is None or buf.numel() < nbytes:
            with self.ctx.on(self.ctx.compute):
                buf = torch.empty(_round_up(nbytes), dtype=torch.uint8, device=self.ctx.device)
            if self.ctx.cuda:
                buf.record_stream(self.ctx.copy)
                self.ctx.copy.wait_stream(self.ctx.compute)  # new memory: the compute stream may have used it last
            self.bufs[k] = buf
        else:
            self.ctx.wait(self.ctx.copy, self.consumed[k])
        return k, buf

    def done(self, k: int) -> None:
        """The compute stream has enqueued its last read of slot ``k``."""
        self.consumed[k] = self.ctx.record(self.ctx.compute)


class CapturedForward:
    """``forward`` captured in a CUDA graph at the input ``(batch, 3, h, w)`` in ``dtype``: write the batch into
    :attr:`static_in`, then :meth:`replay` on the capturing context's compute stream. Build it inside
    :func:`cuda_settings` so that cuDNN picks its fastest kernels before they are frozen into the graph."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], ctx: DeviceContext, batch: int,
                 shape: tuple[int, int], dtype: torch.dtype, warmup: int = 2) -> None:
        if not ctx.cuda:
            raise InputError("CUDA graphs need a CUDA device")
        self.ctx = ctx
        self.static_in = torch.zeros((batch, 3, *shape), dtype=dtype, device=ctx.device)
        side = torch.cuda.Stream(ctx.device)
        side.wait_stream(ctx.compute)
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(max(1, warmup)):  # cuDNN autotuning, the model's cached grids
                forward(self.static_in)
        ctx.compute.wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self.graph, stream=side, capture_error_mode="thread_local"):
            self.static_out = forward(self.static_in)
        ctx.compute.wait_stream(side)

    def replay(self) -> torch.Tensor:
        """Replay on the current stream (the context's compute stream); the output is valid until the next replay."""
        self.graph.replay()
        return self.static_out

    def close(self) -> None:
        self.graph.reset()


_settings_lock = threading.Lock()
_settings_depth = 0
_settings_saved: dict[str, Any] = {}


def _tf32_get() -> Any:
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        return ("new", conv.fp32_precision)
    return ("old", torch.backends.cudnn.allow_tf32)


def _tf32_set(value: Any) -> None:
    kind, v = value
    if kind == "new":
        setattr(getattr(torch.backends.cudnn, "conv"), "fp32_precision", v)  # noqa: B009, B010
    else:
        torch.backends.cudnn.allow_tf32 = v


@contextlib.contextmanager
def cuda_settings(device: torch.device, fp32: bool) -> Iterator[None]:
    """For a run on a CUDA device: ``cudnn.benchmark`` on (the input shapes repeat, so autotuning pays), and for an
    FP32 model no TF32 convolutions (TF32 keeps 10 mantissa bits: FP32 results would drift from the CPU's). Nested
    and concurrent runs share the settings; the values from before the first run are restored after the last one.
    Nothing changes on the CPU."""
    global _settings_depth
    if device.type != "cuda":
        yield
        return
    with _settings_lock:
        if _settings_depth == 0:
            _settings_saved.update(benchmark=torch.backends.cudnn.benchmark, tf32=_tf32_get())
        _settings_depth += 1
        torch.backends.cudnn.benchmark = True
        if fp32:
            _tf32_set((_settings_saved["tf32"][0], "ieee" if _settings_saved["tf32"][0] == "new" else False))
    try:
        yield
    finally:
        with _settings_lock:
            _settings_depth -= 1
            if _settings_depth == 0:
                torch.backends.cudnn.benchmark = _settings_saved["benchmark"]
                _tf32_set(_settings_saved["tf32"])
