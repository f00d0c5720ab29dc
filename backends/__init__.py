"""Backend registry: one module per runtime, one entry here. Runtimes are imported lazily by the modules."""

from __future__ import annotations

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
    """The backend module, or a clear error telling which extra installs its runtime."""
    backend = get_backend(name)
    if not backend.is_available():
        hint = f"pip install 'yolokit[{backend.EXTRA}]'" if backend.EXTRA else "see the README"
        raise BackendUnavailableError(f"the {name} backend's runtime is not installed: {hint}")
    return backend


def backend_for(path: Path) -> str:
    """The name of the backend that loads this file or folder: by its suffix, else by its first bytes (an artifact
    saved under any name is still recognised)."""
    for name, backend in REGISTRY.items():
        if backend.claims(path):
            return name
    head = _head(Path(path))
    for name, backend in REGISTRY.items():
        if backend.sniff(head):
            return name
    kinds = ", ".join(b.DESCRIPTION for b in REGISTRY.values())
    raise ModelFileError(f"{path}: not a model file yolokit knows, by its name or its content (looked for {kinds}); "
                         f"check the path, or pass --backend to choose one")


def _head(path: Path, size: int = 4096) -> bytes:
    """The first bytes of a regular file, opened without blocking (a named pipe or a device is refused, not read)."""
    import os
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except IsADirectoryError:
        raise ModelFileError(f"{path}: a folder that holds no model yolokit knows") from None
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read the model file ({e.strerror or e})") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ModelFileError(f"{path}: a folder that holds no model yolokit knows")
        if not stat.S_ISREG(mode):
            raise ModelFileError(f"{path}: not a regular file, so not a model file; give the path of the file itself")
        return os.read(fd, size)
    finally:
        os.close(fd)


__all__ = ["REGISTRY", "BackendModule", "ExportOptions", "LoadOptions", "Runner", "backend_for",
           "get_backend", "require"]
