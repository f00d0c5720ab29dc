"""Backend registry: one module per runtime, one entry here. Runtimes are imported lazily by the modules."""

from __future__ import annotations

from pathlib import Path

from backends import onnx_backend, openvino_backend, tensorrt_backend, torch_backend
from backends.base import BackendModule, ExportOptions, LoadOptions, Runner
from toolkit.errors import BackendUnavailableError, InputError

REGISTRY: dict[str, BackendModule] = {
    "torch": torch_backend,  # type: ignore[dict-item]
    "onnx": onnx_backend,  # type: ignore[dict-item]
    "openvino": openvino_backend,  # type: ignore[dict-item]
    "trt": tensorrt_backend,  # type: ignore[dict-item]
}


def get_backend(name: str) -> BackendModule:
    try:
        return REGISTRY[name]
    except KeyError:
        raise InputError(f"unknown backend {name!r}; choose one of {', '.join(REGISTRY)}") from None


def require(name: str) -> BackendModule:
    """The backend module, or a clear error telling which extra installs its runtime."""
    backend = get_backend(name)
    if not backend.is_available():
        hint = f"pip install 'yolokit[{backend.EXTRA}]'" if backend.EXTRA else "see the README"
        raise BackendUnavailableError(f"the {name} backend's runtime is not installed: {hint}")
    return backend


def backend_for(path: Path) -> str:
    """The name of the backend that loads this file or folder."""
    for name, backend in REGISTRY.items():
        if backend.claims(path):
            return name
    raise InputError(f"{path}: no backend loads this kind of file (known: .pt, .onnx, OpenVINO .xml or folder, "
                     f".engine); pass --backend to choose one")


__all__ = ["REGISTRY", "BackendModule", "ExportOptions", "LoadOptions", "Runner", "backend_for",
           "get_backend", "require"]
