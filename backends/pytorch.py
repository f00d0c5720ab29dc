"""PyTorch backend: ``.pt`` checkpoints (and built-in configs), FP32 on the CPU, FP16 (default) or FP32 on CUDA."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from backends.base import Backend, BaseRunner, ExportOptions, LoadOptions, PlanningHints
from toolkit.errors import BackendUnavailableError, ExportError, InputError
from toolkit.meta import ModelMeta

if TYPE_CHECKING:
    from toolkit.model.load import LoadedModel

class TorchDeviceRunner:
    """The device side of a :class:`TorchRunner` (see :class:`backends.base.DeviceRunner`): the module called on
    tensors already on its device. Capturable in a CUDA graph."""

    static_batch: int | None = None

    def __init__(self, model: Any, device: Any, dtype: Any) -> None:
        self.model, self.device, self.dtype = model, device, dtype
        self.graphable = device.type == "cuda"

    def forward(self, x: Any) -> Any:
        import torch

        with torch.inference_mode():
            return self.model(x)


class _HostBuffers:
    """One thread's CUDA stream and page-locked staging buffers (grown on demand), for the host path on a GPU."""

    def __init__(self, torch: Any, device: Any) -> None:
        self.torch = torch
        self.stream = torch.cuda.Stream(device)
        self.inp = torch.empty(0, dtype=torch.uint8, pin_memory=True)
        self.out = torch.empty(0, dtype=torch.float32, pin_memory=True)

    def host_in(self, n: int) -> Any:
        if self.inp.numel() < n:
            self.inp = self.torch.empty(n, dtype=self.torch.uint8, pin_memory=True)
        return self.inp[:n]

    def host_out(self, n: int) -> Any:
        if self.out.numel() < n:
            self.out = self.torch.empty(n, dtype=self.torch.float32, pin_memory=True)
        return self.out[:n]


class TorchRunner(BaseRunner):
    """A model in this process. Its intra-op thread count is PyTorch's process-wide one: the runner leaves it alone
    when it loads, and :meth:`set_threads` changes it when a run plans it.

    On a CUDA device each calling thread gets its own stream and page-locked staging buffers: the batch is copied
    into pinned memory, to the device without blocking, normalised there, and the output comes back through pinned
    memory with one synchronisation per call. :meth:`device_runner` serves the GPU pipeline."""

    def __init__(self, loaded: LoadedModel, options: LoadOptions) -> None:
        import torch

        from toolkit.devices import parse_device

        spec = parse_device(options.device)
        if spec.kind == "other":
            raise InputError(f"device {options.device!r}: the torch backend runs on cpu, cuda, cuda:N, gpu or a GPU "
                             f"index")
        device = torch.device(spec.torch)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError(f"device {options.device!r} asked for, but PyTorch sees no CUDA GPU "
                                          f"(torch {torch.__version__}); use --device cpu")
        if device.type == "cuda" and spec.index >= torch.cuda.device_count():
            raise BackendUnavailableError(f"device {options.device!r} asked for, but PyTorch sees "
                                          f"{torch.cuda.device_count()} GPU(s)")
        half = bool(options.half)  # FP32 unless asked: FP16 moves boxes against detect.py, whose default is FP32
        if half and device.type == "cpu":
            raise BackendUnavailableError("FP16 PyTorch inference needs a CUDA device; use FP32 on the CPU")
        self._torch = torch
        self.device = device
        self.threads = options.threads
        self.dtype = torch.float16 if half else torch.float32
        self.model = loaded.model.to(device=device, dtype=self.dtype).eval()
        self.meta = ModelMeta(**{**loaded.meta.__dict__, "precision": "fp16" if half else "fp32",
                                 "runtime_versions": {"torch": torch.__version__}})
        self._local = threading.local()
        self._device_side: TorchDeviceRunner | None = None

    def _run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        if self.device.type == "cuda":
            return self._run_cuda(batch)
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device, non_blocking=True)
            x = x.to(self.dtype, copy=True).div_(255)  # a copy: a float32 batch is the caller's own array
            y = self.model(x)
            return y.float().cpu().numpy()

    def _run_cuda(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        bufs: _HostBuffers | None = getattr(self._local, "bufs", None)
        if bufs is None:
            bufs = self._local.bufs = _HostBuffers(torch, self.device)
        batch = np.ascontiguousarray(batch)
        with torch.cuda.device(self.device), torch.cuda.stream(bufs.stream), torch.inference_mode():
            host = bufs.host_in(batch.nbytes)
            np.copyto(host.numpy().reshape(batch.shape), batch)
            x = host.view(batch.shape).to(self.device, non_blocking=True).to(self.dtype).div_(255)
            y = self.model(x).float()
            out = bufs.host_out(y.numel()).view(y.shape)
            out.copy_(y, non_blocking=True)
            bufs.stream.synchronize()  # the one wait: output copied back, pinned input free again
            return out.numpy().copy()

    def device_runner(self) -> TorchDeviceRunner:
        if self._device_side is None:
            self._device_side = TorchDeviceRunner(self.model, self.device, self.dtype)
        return self._device_side

    def set_threads(self, n: int) -> bool:
        """Intra-op threads (PyTorch's are per process: a run sets them for its workers)."""
        if self.device.type == "cpu":
            self._torch.set_num_threads(max(1, n))
        return True  # on a GPU the count does not matter: nothing to reload

    def current_threads(self) -> int | None:
        return int(self._torch.get_num_threads()) if self.device.type == "cpu" else None

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        self._device_side = None
        self._local = threading.local()


class TorchBackend(Backend):
    """``.pt`` checkpoints and model yamls (the built-in configs too), run in this process by PyTorch."""

    NAME = "torch"
    EXTRA = "torch"
    SUFFIXES = (".pt", ".pth", ".yaml", ".yml")
    DESCRIPTION = "a PyTorch .pt checkpoint or model yaml"
    PACKAGES = ("torch",)
    REQUIRES = ("torch",)
    PRECISIONS = {"cpu": ("fp32",), "cuda": ("fp32", "fp16")}  # FP32 first: the default, as detect.py's
    # PyTorch's Python-level module calls hold the GIL: separate processes pay once there are many inputs per core
    PLANNING = PlanningHints(releases_gil=False, thread_batch=1, process_inputs_per_core=250)

    def claims(self, path: Path) -> bool:
        from toolkit.model.configs import is_builtin_config

        return path.suffix.lower() in self.SUFFIXES or is_builtin_config(path.name)

    def sniff(self, head: bytes) -> bool:
        """Whether a file's first bytes are a PyTorch checkpoint: a zip archive (``torch.save``'s format since 1.6)
        or a pickle (the legacy format and plain pickles start with the PROTO opcode)."""
        return head[:4] == b"PK\x03\x04" or (len(head) > 2 and head[0] == 0x80 and 2 <= head[1] <= 5)

    def read_meta(self, path: Path) -> ModelMeta:
        """The metadata of a checkpoint or architecture yaml (the model is built, nothing of the file runs)."""
        from toolkit.model.load import load_model

        return load_model(path).meta

    def describe(self, path: Path) -> dict[str, Any]:
        """Parameters and GFLOPs at 640, for ``yolokit info``."""
        from toolkit.model.load import load_model
        from toolkit.model.yolov5 import count_gflops, count_parameters

        loaded = load_model(path)
        return {"format": "pt", "parameters": count_parameters(loaded.model),
                "gflops_640": round(count_gflops(loaded.model), 2)}

    def check_export(self, options: ExportOptions) -> None:
        raise InputError("a .pt checkpoint is run as it is; export it to another format")

    def load(self, path: Path, options: LoadOptions) -> TorchRunner:
        from toolkit.model.load import load_model

        return TorchRunner(load_model(path), options)

    def export(self, source: LoadedModel, path: Path, options: ExportOptions) -> Path:
        raise ExportError("the torch backend runs .pt checkpoints directly; export to another format")
