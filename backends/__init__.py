"""Backend registry: one module per runtime, one entry here (a plain dict). Runtimes are imported lazily by the
modules, so importing the registry loads none of them. See :mod:`backends.base` for the contract."""

from __future__ import annotations

import os
from pathlib import Path

from backends import onnx_backend, openvino_backend, tensorrt_backend, torch_backend
from backends.base import BackendModule, ExportOptions, LoadOptions, Runner
from toolkit.errors import BackendUnavailableError, InputError, ModelFileError

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
    """The backend module, or a clear error saying why it cannot run here (which extra installs its runtime, or
    which device it needs)."""
    backend = get_backend(name)
    reason = backend.unavailable_reason()
    if reason:
        raise BackendUnavailableError(reason)
    return backend


def backend_for(path: Path) -> str:
    """The name of the backend that loads this file or folder: by its suffix, else by its first bytes (an artifact
    saved under any name is still recognised)."""
    for name, backend in REGISTRY.items():
        if backend.claims(path):
            return name
    from toolkit.io.files import ImageReadError, read_head

    if os.path.isdir(path):
        raise ModelFileError(f"{path}: a folder that holds no model yolokit knows")
    try:
        head = read_head(str(path))
    except ImageReadError as e:
        raise ModelFileError(f"{path}: cannot read the model file ({e.reason})") from None
    for name, backend in REGISTRY.items():
        if backend.sniff(head):
            return name
    kinds = ", ".join(b.DESCRIPTION for b in REGISTRY.values())
    raise ModelFileError(f"{path}: not a model file yolokit knows, by its name or its content (looked for {kinds}); "
                         f"check the path, or pass --backend to choose one")


def checkpoint_backend() -> str:
    """The backend that runs ``.pt`` checkpoints, the source of every export (the bench's baseline)."""
    return next(n for n, b in REGISTRY.items() if b.claims(Path("model.pt")))


def exporters() -> dict[str, BackendModule]:
    """The backends ``yolokit export`` writes artifacts for."""
    return {n: b for n, b in REGISTRY.items() if b.EXPORTS}


__all__ = ["REGISTRY", "BackendModule", "ExportOptions", "LoadOptions", "Runner", "backend_for",
           "checkpoint_backend", "exporters", "get_backend", "require"]
