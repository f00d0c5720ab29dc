"""PyTorch backend: ``.pt`` checkpoints (and built-in configs), FP32 on the CPU, FP16 or FP32 on CUDA."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from backends.base import ExportOptions, LoadOptions, check_batch
from toolkit.errors import BackendUnavailableError, ExportError
from toolkit.meta import ModelMeta

if TYPE_CHECKING:
    from toolkit.loader import LoadedModel

NAME = "torch"
EXTRA = None
SUFFIXES = (".pt", ".pth", ".yaml", ".yml")
DESCRIPTION = "a PyTorch .pt checkpoint or model yaml"


def is_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def claims(path: Path) -> bool:
    from toolkit.configs import is_builtin_config

    return path.suffix.lower() in SUFFIXES or is_builtin_config(path.name)


def sniff(head: bytes) -> bool:
    """Whether a file's first bytes are a PyTorch checkpoint: a zip archive (``torch.save``'s format since 1.6)
    or a pickle (the legacy format and plain pickles start with the PROTO opcode)."""
    return head[:4] == b"PK\x03\x04" or (len(head) > 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def output_path(path: Path) -> Path:
    return Path(path)


class TorchRunner:
    def __init__(self, loaded: LoadedModel, options: LoadOptions) -> None:
        import torch

        device = torch.device(options.device if options.device not in ("", "gpu") else "cuda")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError(f"device {options.device!r} asked for, but PyTorch sees no CUDA GPU "
                                          f"(torch {torch.__version__}); use --device cpu")
        half = options.half if options.half is not None else device.type == "cuda"
        if half and device.type == "cpu":
            raise BackendUnavailableError("FP16 PyTorch inference needs a CUDA device; use FP32 on the CPU")
        if options.threads and device.type == "cpu":
            torch.set_num_threads(options.threads)
        self._torch = torch
        self.device = device
        self.dtype = torch.float16 if half else torch.float32
        self.model = loaded.model.to(device=device, dtype=self.dtype).eval()
        self.meta = ModelMeta(**{**loaded.meta.__dict__, "precision": "fp16" if half else "fp32",
                                 "runtime_versions": {"torch": torch.__version__}})
        self._lock = threading.Lock()  # grid caches are shared state; torch modules are otherwise reentrant

    def infer(self, batch: np.ndarray) -> np.ndarray:
        check_batch(batch, self.meta)
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device, non_blocking=True)
            x = x.to(self.dtype).div_(255)
            y = self.model(x)
            return y.float().cpu().numpy()

    def set_threads(self, n: int) -> None:
        """Intra-op threads for this process (thread mode with several workers sets cores // workers)."""
        if self.device.type == "cpu":
            self._torch.set_num_threads(max(1, n))

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]


def load(path: Path, options: LoadOptions) -> TorchRunner:
    from toolkit.loader import load_model

    return TorchRunner(load_model(path), options)


def export(source: LoadedModel, path: Path, options: ExportOptions) -> Path:
    raise ExportError("the torch backend runs .pt checkpoints directly; export to onnx, openvino or trt")
