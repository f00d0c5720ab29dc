"""Running a TensorRT engine: a deserialized engine run with ``execute_async_v3``, one execution context, CUDA stream
and set of preallocated I/O buffers per thread, and its device side for the GPU pipeline.

Not run here: no machine of this project has had TensorRT. Its buffer arithmetic (:func:`grown`) is tested.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from backends.base import E2E_OUTPUTS, BaseRunner, DeviceRunner, LoadOptions, pack_detections
from backends.tensorrt.engine_file import REBUILD_HINT, check_compat, unpack_engine
from backends.tensorrt.runtime import cuda_index, current_gpu, load_tensorrt, new_logger
from toolkit.errors import InputError, ModelFileError, YolokitError

__all__ = ["TrtDeviceRunner", "TrtRunner", "grown"]


def grown(capacity: int, needed: int) -> int:
    """The capacity (elements) of a buffer that must hold ``needed``: unchanged when it does, else at least
    doubled, so that a run of growing shapes reallocates a few times, not at every call."""
    if needed <= capacity:
        return capacity
    return max(needed, 2 * capacity)


class _ThreadState:
    """One thread's execution context, stream and preallocated I/O (device and page-locked host buffers, grown on
    demand and reused; the output address is set again only when the input shape changes)."""

    def __init__(self, torch: Any, ctx: Any, device: Any) -> None:
        self.torch, self.ctx, self.device = torch, ctx, device
        self.stream = torch.cuda.Stream(device)
        self.shape: tuple[int, ...] | None = None
        self.outs: list[Any] = []
        self._bufs: dict[str, Any] = {}

    def buffer(self, key: str, n: int, dtype: Any, pinned: bool = False) -> Any:
        """A 1-D buffer of at least ``n`` elements (``pinned``: page-locked host memory, else on the device)."""
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < n or buf.dtype != dtype:
            size = grown(0 if buf is None or buf.dtype != dtype else int(buf.numel()), n)
            torch = self.torch
            buf = torch.empty(size, dtype=dtype, pin_memory=True) if pinned else \
                torch.empty(size, dtype=dtype, device=self.device)
            self._bufs[key] = buf
        return buf[:n]


class TrtDeviceRunner:
    """The device side of a :class:`TrtRunner` (see :class:`backends.base.DeviceRunner`): ``execute_async_v3`` on
    the calling thread's context, on its current stream, into that thread's preallocated output."""

    graphable = False

    def __init__(self, runner: TrtRunner) -> None:
        self.runner = runner
        self.device = runner.device
        self.dtype = runner._in_dtype
        self.static_batch = runner.meta.batch

    def forward(self, x: Any) -> Any:
        torch = self.runner._torch
        return self.runner._enqueue(self.runner._state(), x.contiguous(), torch.cuda.current_stream(self.device))[0]


class TrtRunner(BaseRunner):
    """A deserialized engine; one execution context, CUDA stream and set of preallocated I/O buffers per thread.

    Host path (:meth:`infer`): the uint8 batch is copied into the thread's page-locked buffer, to the device without
    blocking, normalised there into the engine's input dtype, run with ``execute_async_v3`` and copied back into
    page-locked memory: one synchronisation per call, no allocation once the buffers have grown to the largest
    shape. :meth:`device_runner` serves the GPU pipeline. An engine with NMS inside (``meta.nms``) has the four
    end-to-end outputs, returned packed (:func:`backends.base.pack_detections`); it has no device side, since the GPU
    pipeline post-processes raw predictions."""

    def __init__(self, path: Path, options: LoadOptions) -> None:
        import torch

        trt = load_tensorrt()
        self._trt, self._torch = trt, torch
        self.index = cuda_index(options.device)
        data = Path(path).read_bytes()
        meta, engine_bytes = unpack_engine(data, str(path))
        check_compat(meta, str(trt.__version__), current_gpu(self.index), str(path))
        self.device = torch.device("cuda", self.index)
        with torch.cuda.device(self.index):
            self._logger = new_logger(trt)  # lives as long as the runtime and the engine
            self.runtime = trt.Runtime(self._logger)
            self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise ModelFileError(f"{path}: TensorRT could not deserialize the engine (corrupt file?); "
                                 f"{REBUILD_HINT}")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        ins = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        want = list(E2E_OUTPUTS) if meta.nms is not None else outs[:1]  # an engine cannot give NMS's input back
        if len(ins) != 1 or sorted(outs) != sorted(want):
            raise ModelFileError(f"{path}: expected one input and the output tensors {want}, found {ins} and {outs}")
        self._in, self._outs = ins[0], want
        self._e2e = meta.nms is not None
        self._in_dtype = self._dtype(self.engine.get_tensor_dtype(self._in))
        self._out_dtypes = [self._dtype(self.engine.get_tensor_dtype(n)) for n in want]
        self.meta = meta
        self._local = threading.local()
        self._device_side: TrtDeviceRunner | None = None

    def _dtype(self, t: Any) -> Any:
        trt, torch = self._trt, self._torch
        table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32}
        if t not in table:
            raise ModelFileError(f"unsupported engine I/O type {t}")
        return table[t]

    def _state(self) -> _ThreadState:
        st: _ThreadState | None = getattr(self._local, "state", None)
        if st is None:
            with self._torch.cuda.device(self.index):
                st = _ThreadState(self._torch, self.engine.create_execution_context(), self.device)
            self._local.state = st
        return st

    def _enqueue(self, st: _ThreadState, x: Any, stream: Any) -> list[Any]:
        """Run the engine on ``x`` (on the device, the engine's input dtype) on ``stream``; the thread's outputs."""
        ctx, shape = st.ctx, tuple(int(v) for v in x.shape)
        if x.dtype != self._in_dtype:
            raise InputError(f"the engine takes {self._in_dtype} input, got {x.dtype}")
        if st.shape != shape:
            if not ctx.set_input_shape(self._in, shape):
                raise InputError(f"the engine does not accept input shape {shape} (profile: "
                                 f"{self.meta.extra.get('profile')})")
            st.outs = []
            for name, dtype in zip(self._outs, self._out_dtypes, strict=True):
                out_shape = tuple(int(v) for v in ctx.get_tensor_shape(name))
                n = 1
                for v in out_shape:
                    n *= v
                out = st.buffer(f"out:{name}", n, dtype).view(out_shape)
                ctx.set_tensor_address(name, out.data_ptr())
                st.outs.append(out)
            st.shape = shape
        ctx.set_tensor_address(self._in, x.data_ptr())
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise YolokitError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        return st.outs

    def _run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        st = self._state()
        batch = np.ascontiguousarray(batch)
        shape = tuple(batch.shape)
        with torch.cuda.device(self.index), torch.cuda.stream(st.stream):
            host = st.buffer("host_in", batch.size, torch.uint8, pinned=True)
            np.copyto(host.numpy().reshape(shape), batch)
            raw = st.buffer("dev_u8", batch.size, torch.uint8).view(shape)
            raw.copy_(host.view(shape), non_blocking=True)
            x = st.buffer("dev_in", batch.size, self._in_dtype).view(shape)
            x.copy_(raw).div_(255)
            backs = []
            for name, y in zip(self._outs, self._enqueue(st, x, st.stream), strict=True):
                back = st.buffer(f"host_out:{name}", y.numel(), y.dtype, pinned=True).view(y.shape)
                back.copy_(y, non_blocking=True)
                backs.append(back)
            st.stream.synchronize()  # the one wait per call
        if self._e2e:  # NMS inside: the four outputs, packed
            return pack_detections(*(b.numpy() for b in backs))
        return backs[0].numpy().astype(np.float32)

    def device_runner(self) -> DeviceRunner | None:
        if self._e2e:
            return None
        if self._device_side is None:
            self._device_side = TrtDeviceRunner(self)
        return self._device_side

    def close(self) -> None:
        self._local = threading.local()
        self._device_side = None
        self.engine = None
        self.runtime = None
