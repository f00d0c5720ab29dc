"""TensorRT itself, imported only here and only when a function needs it, and the GPU it runs on."""

from __future__ import annotations

from typing import Any

from backends.tensorrt.engine_file import GpuInfo
from toolkit.devices import parse_device
from toolkit.errors import BackendUnavailableError, InputError

INSTALL_HINT = "pip install 'yolokit[trt]'"
GPU_HINT = "TensorRT needs an NVIDIA GPU with CUDA"


def cuda_unavailable_reason() -> str | None:
    """Why there is no CUDA GPU for engines here (their device buffers are PyTorch's), or None."""
    try:
        import torch
    except ImportError:
        return "the trt backend needs PyTorch with CUDA for its device buffers"
    if not torch.cuda.is_available():
        return f"{GPU_HINT}; PyTorch {torch.__version__} sees no CUDA GPU"
    return None


def load_tensorrt() -> Any:
    """The ``tensorrt`` module, version 10 or newer."""
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError:
        raise BackendUnavailableError(f"the trt backend needs TensorRT: {INSTALL_HINT}") from None
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise BackendUnavailableError(f"yolokit needs TensorRT 10 or newer, found {trt.__version__}: {INSTALL_HINT}")
    return trt


def new_logger(trt: Any) -> Any:
    """A TensorRT logger for one builder or runtime; whoever creates that keeps the logger alive as long as it
    (TensorRT 10 ties a logger to the objects created through it, and no longer wants one per process)."""
    return trt.Logger(trt.Logger.WARNING)


def current_gpu(index: int) -> GpuInfo:
    import torch

    if index >= torch.cuda.device_count():
        raise BackendUnavailableError(f"cuda:{index} asked for, but PyTorch sees {torch.cuda.device_count()} GPU(s)")
    major, minor = torch.cuda.get_device_capability(index)
    return GpuInfo(torch.cuda.get_device_name(index), f"{major}.{minor}")


def cuda_index(device: str | None) -> int:
    """``cuda`` / ``cuda:N`` / ``gpu`` / ``N`` -> N (:func:`toolkit.devices.parse_device`); anything else is
    refused (TensorRT runs only on NVIDIA GPUs)."""
    try:
        spec = parse_device(device, default="cuda")
    except InputError:
        spec = None
    if spec is None or not spec.is_gpu:
        raise BackendUnavailableError(f"device {device!r}: {GPU_HINT}; use --device cuda or cuda:N")
    return spec.index
