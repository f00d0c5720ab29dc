"""Backend registry: one :class:`~backends.base.Backend` subclass per runtime, one instance of it here (a plain dict).
Runtimes are imported lazily by the backends, so importing the registry loads none of them. The contract is
:class:`backends.base.Backend`'s docstring."""

from __future__ import annotations

import os
from pathlib import Path

from backends.base import Backend, ExportOptions, LoadOptions, Runner
from backends.onnx import OnnxBackend
from backends.openvino import OpenVinoBackend
from backends.pytorch import TorchBackend
from backends.tensorrt import TensorRTBackend
from toolkit.errors import BackendUnavailableError, InputError, ModelFileError

REGISTRY: dict[str, Backend] = {
    "torch": TorchBackend(),
    "onnx": OnnxBackend(),
    "openvino": OpenVinoBackend(),
    "trt": TensorRTBackend(),
}


def get_backend(name: str) -> Backend:
    try:
        return REGISTRY[name]
    except KeyError:
        raise InputError(f"unknown backend {name!r}; choose one of {', '.join(REGISTRY)}") from None


def require(name: str) -> Backend:
    """The backend, or a clear error saying why it cannot run here (which extra installs its runtime, or
    which device it needs)."""
    backend = get_backend(name)
    reason = backend.unavailable_reason()
    if reason:
        raise BackendUnavailableError(reason)
    return backend


def backend_for(path: Path) -> str:
    """The name of the backend that loads this file or folder: by its first bytes where they say what it is (a
    checkpoint named .onnx is still a checkpoint), else by its name (a folder holding an IR, an engine, a yaml)."""
    found = content_backend(path) or _claimed(path)
    if found is not None:
        return found
    from toolkit.io.files import ImageReadError, read_head

    if os.path.isdir(path):
        raise ModelFileError(f"{path}: a folder that holds no model yolokit knows; give the model file, or the "
                             f"folder an OpenVINO export wrote (NAME_openvino/)")
    try:
        read_head(str(path))
    except ImageReadError as e:
        raise ModelFileError(f"{path}: cannot read the model file ({e.reason})") from None
    kinds = ", ".join(b.DESCRIPTION for b in REGISTRY.values())
    raise ModelFileError(f"{path}: not a model file yolokit knows, by its name or its content (looked for {kinds}); "
                         f"check the path")


def content_backend(path: Path) -> str | None:
    """The backend whose artifact a file's first bytes are, or None (a folder, a file that cannot be read, content
    no backend recognises)."""
    from toolkit.io.files import ImageReadError, read_head

    if not os.path.isfile(path):
        return None
    try:
        head = read_head(str(path))
    except ImageReadError:
        return None
    return next((name for name, backend in REGISTRY.items() if backend.sniff(head)), None)


def _claimed(path: Path) -> str | None:
    """The backend that claims ``path`` by its name (a suffix; a folder holding an IR), or None."""
    return next((name for name, backend in REGISTRY.items() if backend.claims(path)), None)


def artifact_backend(path: Path) -> str | None:
    """Whose artifact ``path`` is, where it says so itself: a file by its first bytes, a folder by what it holds
    (an IR's .xml); None otherwise."""
    return _claimed(path) if os.path.isdir(path) else content_backend(path)


def check_backend(name: str, path: Path) -> None:
    """Refuse (:class:`ModelFileError`) a backend asked for by name (``--backend``) for a file whose content is
    another backend's artifact: it failed with that backend's words for a corrupt file ("truncated, corrupt or not
    ONNX", "the .bin beside it is missing") about a sound model."""
    found = artifact_backend(path)
    if found is not None and found != name:
        raise ModelFileError(f"{path}: is {REGISTRY[found].DESCRIPTION}, which the {name} backend does not run; "
                             f"leave --backend out (the file says what it is) or give --backend {found}")


def checkpoint_backend() -> str:
    """The backend that runs ``.pt`` checkpoints, the source of every export (the bench's baseline)."""
    return next(n for n, b in REGISTRY.items() if b.claims(Path("model.pt")))


def exporters() -> dict[str, Backend]:
    """The backends ``yolokit export`` writes artifacts for."""
    return {n: b for n, b in REGISTRY.items() if b.EXPORTS}


__all__ = ["REGISTRY", "Backend", "ExportOptions", "LoadOptions", "Runner", "artifact_backend", "backend_for",
           "check_backend", "checkpoint_backend", "content_backend", "exporters", "get_backend", "require"]
