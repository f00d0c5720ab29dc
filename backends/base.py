"""The small contract every backend module implements.

A backend module has: ``NAME``, ``EXTRA`` (the pip extra that installs its runtime), ``SUFFIXES``,
``is_available()``, ``claims(path)`` (can it load this file or folder), ``load(path, options) -> Runner``
and ``export(source, path, options) -> Path``. A runner takes a uint8 ``(B, 3, H, W)`` RGB batch and returns
``(B, N, 5 + nc)`` float32 predictions; it does its own normalisation and precision handling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from toolkit.meta import ModelMeta

if TYPE_CHECKING:
    from toolkit.loader import LoadedModel


@dataclass
class LoadOptions:
    device: str = "cpu"
    half: bool | None = None  # None: FP16 on CUDA, FP32 on CPU (PyTorch); artifacts keep their precision
    threads: int | None = None  # intra-op threads; None lets the runtime choose
    imgsz: tuple[int, int] | None = None  # the input size the caller will use, when known (warm-up)
    options: dict[str, Any] = field(default_factory=dict)  # runtime-specific (e.g. OpenVINO hint)


@dataclass
class ExportOptions:
    imgsz: tuple[int, int] = (640, 640)
    batch: int = 1
    dynamic: bool = True  # dynamic batch, height and width: the artifact letterboxes as the .pt does
    max_batch: int = 32
    half: bool = False
    int8: bool = False
    calib_data: str | None = None
    opset: int = 17
    simplify: bool = True
    workspace_gb: float = 4.0
    device: str = "cpu"


class Runner(Protocol):
    meta: ModelMeta

    def infer(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


class BackendModule(Protocol):
    NAME: str
    EXTRA: str | None
    SUFFIXES: tuple[str, ...]
    DESCRIPTION: str

    def is_available(self) -> bool: ...

    def claims(self, path: Path) -> bool: ...

    def sniff(self, head: bytes) -> bool: ...

    def output_path(self, path: Path) -> Path: ...

    def load(self, path: Path, options: LoadOptions) -> Runner: ...

    def export(self, source: LoadedModel, path: Path, options: ExportOptions) -> Path: ...


def check_batch(batch: np.ndarray, meta: ModelMeta) -> None:
    """Raise a clear error for a batch this model cannot take."""
    from toolkit.errors import InputError

    if batch.ndim != 4 or batch.shape[1] != 3 or batch.dtype != np.uint8:
        raise InputError(f"a runner takes a uint8 (B, 3, H, W) batch, got {batch.dtype} {tuple(batch.shape)}")
    b, _, h, w = batch.shape
    if meta.imgsz is not None and (h, w) != tuple(meta.imgsz):
        raise InputError(f"this {meta.format} model was exported for {meta.imgsz[0]}x{meta.imgsz[1]} input, "
                         f"got {h}x{w}; re-export with --imgsz {h},{w}, or without --static")
    if meta.max_imgsz is not None and (h > meta.max_imgsz[0] or w > meta.max_imgsz[1]):
        raise InputError(f"this {meta.format} model takes inputs up to {meta.max_imgsz[0]}x{meta.max_imgsz[1]}, got "
                         f"{h}x{w}; use a smaller --imgsz or re-export with --imgsz {max(h, w)}")
    if meta.imgsz is None and (h % meta.stride or w % meta.stride):
        raise InputError(f"input {h}x{w} is not a multiple of the model stride {meta.stride}")
    if meta.batch is not None and b > meta.batch:
        raise InputError(f"this {meta.format} model has a static batch of {meta.batch}, got {b}; "
                         f"re-export with --batch {b}, or without --static")
    if meta.max_batch is not None and b > meta.max_batch:
        raise InputError(f"this {meta.format} model takes at most {meta.max_batch} images a batch, got {b}")
