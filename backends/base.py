"""The contract every backend module implements, so that the core never has to name a backend.

A backend module states its own facts and does its own work:

* ``NAME`` (its registry key), ``EXTRA`` (the pip extra that installs its runtime, or None), ``DESCRIPTION`` (what
  its files are, for messages), ``SUFFIXES`` (the first is what ``output_path`` adds), ``PACKAGES`` (distributions
  whose versions reports give);
* ``DEFAULT_DEVICE``, ``PRECISIONS`` (device kind -> precisions it runs there, the first being its default) and
  ``EXPORTS`` (whether ``export`` writes artifacts of it) with ``EXPORT_PRECISIONS``;
* ``PLANNING``: :class:`PlanningHints`, which :func:`toolkit.engine.plan.make_plan` reads instead of comparing names;
* ``is_available()`` and ``unavailable_reason()`` (None when available);
* ``claims(path)`` (by name), ``sniff(head)`` (by the file's first bytes), ``output_path(path)`` and
  ``default_name(stem, tag)`` (export targets);
* ``read_meta(path)`` (an artifact's :class:`ModelMeta`, without loading a runtime where possible),
  ``describe(path)`` (extra facts for ``yolokit info``);
* ``check_export(options)`` (refuses options it cannot honour, before any work), ``export(source, path, options)``
  and ``load(path, options) -> Runner``.

A runner takes a uint8 ``(B, 3, H, W)`` RGB batch (or float32 on the same 0-255 scale: test-time augmentation's
resized views, unrounded) and returns ``(B, N, 5 + nc)`` float32 predictions; it does its
own normalisation and precision handling. A model exported with NMS inside (``meta.nms`` set, see
:class:`toolkit.meta.BakedNMS`) returns final detections instead: its runner packs the four end-to-end outputs
(:data:`E2E_OUTPUTS`) into ``(B, max_det, 6)`` rows ``x1 y1 x2 y2 score class`` with :func:`pack_detections`, and
the core post-processes nothing again. ``LoadOptions.options[RAW_OUTPUT] = True`` asks such a runner for the raw
``(B, N, 5 + nc)`` predictions before the NMS (its ``meta.nms`` is then None), where the runtime can give them.
:class:`BaseRunner` checks the batch and pads a partial batch for a static artifact, once for every backend. A runner
whose runtime can take tensors already on its device also offers a :class:`DeviceRunner` (``runner.device_runner()``):
the engine's GPU pipeline letterboxes on the device straight into the runner's input dtype and post-processes on the
device, so only detections come back to the host.
Adding a backend is one module, one registry entry in ``backends/__init__.py`` and one extra in ``pyproject.toml``;
the contract tests pick it up.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from toolkit.errors import InputError
from toolkit.meta import BakedNMS, ModelMeta
from toolkit.options import IMGSZ

if TYPE_CHECKING:
    from toolkit.model.load import LoadedModel


@dataclass
class LoadOptions:
    device: str = "cpu"
    half: bool | None = None  # None: FP16 on CUDA, FP32 on CPU (PyTorch); artifacts keep their precision
    threads: int | None = None  # intra-op threads; None lets the runtime choose
    imgsz: tuple[int, int] | None = None  # the input size the caller will use, when known (warm-up)
    options: dict[str, Any] = field(default_factory=dict)  # runtime-specific (e.g. OpenVINO hint)


# the outputs of a model with NMS inside, in this order: num_dets int32 (B, 1), det_boxes float32 (B, max_det, 4)
# xyxy in letterboxed-input pixels, det_scores float32 (B, max_det), det_classes int32 (B, max_det)
E2E_OUTPUTS = ("num_dets", "det_boxes", "det_scores", "det_classes")
RAW_OUTPUT = "raw_output"  # LoadOptions.options key: the raw predictions of a model with NMS inside
NMS_MIN_OPSET = 13  # the end-to-end graph's ops take their axes as inputs from this opset on
CALIB_IMAGES = 300  # default number of INT8 calibration images (NNCF's own default subset size)


@dataclass
class Int8Data:
    """What INT8 quantization calibrates and validates on, chosen by the export job so that every backend uses the
    same images. Items are opaque to the backend: ``to_input(item)`` is the float32 ``(1, 3, H, W)`` input in
    [0, 1]. ``metric(items, outputs)`` is mAP50-95 on the ``validation`` items from the model's outputs on them, in
    the runner format (raw ``(1, N, 5 + nc)``, or packed final detections for a model with NMS inside); None when the
    data has no labels. ``max_drop``: accuracy-controlled quantization, at most this absolute mAP50-95 drop.
    ``max_iterations``: at most this many layer groups returned to float by the accuracy control (None: no limit;
    0: none, the drop is only measured and checked against ``max_drop``).
    ``record``: facts for the artifact's metadata (how many images, out of how many, which)."""

    calibration: list[Any]
    to_input: Callable[[Any], np.ndarray]
    validation: list[Any] = field(default_factory=list)
    metric: Callable[[list[Any], list[np.ndarray]], float] | None = None
    max_drop: float | None = None
    max_iterations: int | None = None
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExportOptions:
    imgsz: tuple[int, int] = (IMGSZ.default, IMGSZ.default)
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
    nms: BakedNMS | None = None  # NMS inside the model, with these settings (end-to-end outputs)
    calib_images: int = CALIB_IMAGES  # INT8: at most this many calibration images ...
    fraction: float = 1.0  # ... and at most this fraction of the images under calib_data
    max_drop: float | None = None  # INT8: accuracy-controlled, at most this mAP50-95 drop (labelled calib_data)
    max_drop_iterations: int | None = None  # ... returning at most this many layer groups to float (None: any)
    int8_data: Int8Data | None = None  # filled by the export job from the options above

    @property
    def precision(self) -> str:
        return "int8" if self.int8 else "fp16" if self.half else "fp32"


@dataclass(frozen=True)
class PlanningHints:
    """What a runtime is like, for the automatic plan on a CPU (see :func:`toolkit.engine.plan.make_plan`).

    ``thread_batch``: the batch that suits it in thread mode (measured per runtime). ``process_inputs_per_core``:
    from how many inputs per core separate worker processes pay for their start-up (None: threads always; a
    runtime whose inference releases the GIL shares one loaded model between threads instead).
    """

    releases_gil: bool
    thread_batch: int = 1
    process_inputs_per_core: int | None = None


class DeviceRunner(Protocol):
    """A runner's device side, for the engine's GPU pipeline (``toolkit.engine.gpu``).

    ``forward(x)`` takes a normalised ``(B, 3, H, W)`` torch tensor already on ``device``, in ``dtype``, enqueues the
    model on the calling thread's current torch stream (no host synchronisation) and returns the ``(B, N, 5 + nc)``
    output on the device, valid until that thread's next ``forward``. ``graphable``: the same kernels may be
    captured once in a CUDA graph at a fixed shape and replayed (a PyTorch module; not a runtime that brings its own
    launches). ``static_batch``: the batch ``forward`` must always get (a static artifact), else None.
    """

    device: Any
    dtype: Any
    graphable: bool
    static_batch: int | None

    def forward(self, x: Any) -> Any: ...


class Runner(Protocol):
    meta: ModelMeta

    def infer(self, batch: np.ndarray) -> np.ndarray: ...

    def device_runner(self) -> DeviceRunner | None: ...

    def set_threads(self, n: int) -> bool: ...

    def current_threads(self) -> int | None: ...

    def close(self) -> None: ...


class BaseRunner:
    """What every runner does the same way: check the batch, pad a partial batch up to a static artifact's batch
    and cut the padding off the output. Subclasses set ``meta`` and implement :meth:`_run`."""

    meta: ModelMeta

    def infer(self, batch: np.ndarray) -> np.ndarray:
        check_batch(batch, self.meta)
        n = len(batch)
        static = self.meta.batch
        if static is not None and n < static:  # a static graph takes exactly its batch
            batch = np.concatenate([batch, np.zeros((static - n, *batch.shape[1:]), batch.dtype)])
        out = self._run(batch)
        return out[:n] if len(out) != n else out

    def _run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def device_runner(self) -> DeviceRunner | None:
        """The runner's device side (see :class:`DeviceRunner`), or None when its runtime only takes host arrays."""
        return None

    def set_threads(self, n: int) -> bool:
        """Change the intra-op thread count in place, where the runtime can; whether it could. Runtimes that fix
        it when the model loads (ONNX Runtime, OpenVINO) say no, and the caller loads another copy."""
        return False

    def current_threads(self) -> int | None:
        """The intra-op thread count where :meth:`set_threads` can change it, else None."""
        return None

    def close(self) -> None:
        pass


class BackendModule(Protocol):
    NAME: str
    EXTRA: str | None
    DESCRIPTION: str
    SUFFIXES: tuple[str, ...]
    PACKAGES: tuple[str, ...]
    DEFAULT_DEVICE: str
    PRECISIONS: dict[str, tuple[str, ...]]
    EXPORTS: bool
    EXPORT_PRECISIONS: tuple[str, ...]
    PLANNING: PlanningHints

    def is_available(self) -> bool: ...

    def unavailable_reason(self) -> str | None: ...

    def claims(self, path: Path) -> bool: ...

    def sniff(self, head: bytes) -> bool: ...

    def output_path(self, path: Path) -> Path: ...

    def default_name(self, stem: str, tag: str) -> str: ...

    def read_meta(self, path: Path) -> ModelMeta: ...

    def describe(self, path: Path) -> dict[str, Any]: ...

    def check_export(self, options: ExportOptions) -> None: ...

    def load(self, path: Path, options: LoadOptions) -> Runner: ...

    def export(self, source: LoadedModel, path: Path, options: ExportOptions) -> Path: ...


def pack_detections(num: np.ndarray, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The four end-to-end outputs as one ``(B, max_det, 6)`` float32 array: ``x1 y1 x2 y2 score class`` per row,
    class -1 in the rows past each image's ``num_dets`` (which the model leaves zero)."""
    boxes = np.asarray(boxes, np.float32)
    b, k = boxes.shape[:2]
    out = np.zeros((b, k, 6), np.float32)
    out[..., :4] = boxes
    out[..., 4] = np.asarray(scores, np.float32).reshape(b, k)
    out[..., 5] = np.asarray(classes).reshape(b, k)
    n = np.asarray(num).reshape(b, -1)[:, 0].astype(np.int64)
    out[np.arange(k)[None, :] >= n[:, None], 5] = -1
    return out


def check_batch(batch: np.ndarray, meta: ModelMeta) -> None:
    """Raise a clear error for a batch this model cannot take."""
    if batch.ndim != 4 or batch.shape[1] != 3 or batch.dtype not in (np.uint8, np.float32):
        raise InputError(f"a runner takes a uint8 (or 0-255 float32) (B, 3, H, W) batch, got {batch.dtype} "
                         f"{tuple(batch.shape)}")
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


def no_export_precision(name: str, options: ExportOptions, supported: tuple[str, ...]) -> None:
    """Refuse an export precision this backend does not write (the message names the precision, not a backend)."""
    if options.precision not in supported:
        raise InputError(f"{options.precision.upper()} export is not supported for --to {name} (it writes "
                         f"{', '.join(p.upper() for p in supported)})")


def suffixed(path: Path, suffixes: tuple[str, ...]) -> Path:
    """``path`` with ``suffixes[0]`` added when it has none of ``suffixes`` (``-o mymodel`` -> ``mymodel.onnx``)."""
    path = Path(path)
    return path if path.suffix.lower() in suffixes else path.with_name(path.name + suffixes[0])


def cache_dir(options: dict[str, Any], env: str, name: str) -> Path | None:
    """A runtime's cache folder: ``options["cache_dir"]``, else ``$env`` (``off``, ``0``, ``none``, ``false`` or
    empty disable it), else ``~/.cache/yolokit/<name>``; created if needed, None when off or not writable."""
    given = options.get("cache_dir", os.environ.get(env))
    if given is not None and str(given).strip().lower() in ("", "off", "0", "none", "false"):
        return None
    path = Path(str(given)).expanduser() if given is not None else Path.home() / ".cache" / "yolokit" / name
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return path if os.access(path, os.W_OK | os.X_OK) else None
