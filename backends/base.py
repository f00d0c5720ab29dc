"""What every backend shares: the :class:`Backend` base class (whose docstring is the contract, written once), the
options a backend loads and exports with, and :class:`BaseRunner`, which every runner subclasses."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from toolkit.errors import InputError, OutputError
from toolkit.meta import BakedNMS, ModelMeta
from toolkit.options import IMGSZ

if TYPE_CHECKING:
    from toolkit.model.load import LoadedModel


@dataclass
class LoadOptions:
    device: str = "cpu"
    half: bool | None = None  # None: FP32 (PyTorch; FP16 only when asked, on CUDA); artifacts keep their precision
    threads: int | None = None  # intra-op threads; None lets the runtime choose
    imgsz: tuple[int, int] | None = None  # the input size the caller will use, when known (warm-up)
    options: dict[str, Any] = field(default_factory=dict)  # runtime-specific (e.g. OpenVINO hint)
    precision: str = "auto"  # how the runtime computes: auto (the model's own), fp32, bf16 (RUN_PRECISIONS)
    # the input shapes (B, 3, H, W) the caller expects and how many inferences each will take, given the model's
    # metadata (the letterbox rule is the caller's): a hint a runtime may prepare for while it loads (OpenVINO
    # compiles a model for a shape most of them share); it never changes an output. None: not known
    expected: Callable[[ModelMeta], dict[tuple[int, ...], int]] | None = None


# the outputs of a model with NMS inside, in this order: num_dets int32 (B, 1), det_boxes float32 (B, max_det, 4)
# xyxy in letterboxed-input pixels, det_scores float32 (B, max_det), det_classes int32 (B, max_det)
E2E_OUTPUTS = ("num_dets", "det_boxes", "det_scores", "det_classes")
RAW_OUTPUT = "raw_output"  # LoadOptions.options key: the raw predictions of a model with NMS inside
NMS_MIN_OPSET = 13  # the end-to-end graph's ops take their axes as inputs from this opset on
CALIB_IMAGES = 300  # default number of INT8 calibration images (NNCF's own default subset size)
EXPORT_EXTRA = "yolokit[export]"  # PyTorch and the ONNX tools: what every export needs beyond the target's runtime


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

    ``thread_batch``: the batch that suits it in thread mode (measured per runtime); ``int8_thread_batch``: the one
    that suits its INT8 models, where it differs (None: ``thread_batch``). ``process_inputs_per_core``:
    from how many inputs per core separate worker processes pay for their start-up (None: threads always; a
    runtime whose inference releases the GIL shares one loaded model between threads instead).
    ``costly_new_shapes``: its first inference at an input shape new to the process costs much more than a repeat
    (OpenVINO sets up its kernels per shape: 40-65 ms beyond a repeat for an INT8 model), so process mode sends each
    worker the inputs of shapes it has met (:class:`toolkit.engine.processes.ProcessPool`).
    ``workers_per_core``: thread-mode workers per core. 2 for a runtime that infers on threads of its own while the
    calling thread waits (OpenVINO's streams): each worker decodes its next input only after its inference returns,
    so with one worker per core a core waits whenever both workers are between the two; a second worker per core has
    an input decoded by the time a stream frees. The runtime's own threads still number the cores.
    """

    releases_gil: bool
    thread_batch: int = 1
    process_inputs_per_core: int | None = None
    int8_thread_batch: int | None = None
    costly_new_shapes: bool = False
    workers_per_core: int = 1

    def batch_for(self, precision: str) -> int:
        """The thread-mode batch for a model of ``precision``."""
        return self.int8_thread_batch if precision == "int8" and self.int8_thread_batch else self.thread_batch


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
    """What :meth:`Backend.load` returns (the runner contract is in :class:`Backend`)."""

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

    def expect(self, inferences: int | None) -> None:
        """A hint before a run: about how many inferences come next (None: not known, as for videos and streams). A
        runner that prepares for repeated work weighs it (OpenVINO compiles a model for a frequent input shape
        only where enough inferences remain to pay for it); others ignore it. It never changes an output."""

    def close(self) -> None:
        pass


class Backend(ABC):
    """One runtime behind one contract, so that the core never names a backend: a backend states its own facts and
    does its own work. ``backends.REGISTRY`` maps each name to one instance; a backend holds no state (its runners
    do). A runtime is one subclass that overrides only what differs from the defaults below.

    **Facts** (class attributes):

    * ``NAME``: the registry key (``--backend``, ``--to``). ``EXTRA``: the pip extra that installs its runtime, or
      None. ``DESCRIPTION``: what its files are, for messages ("an ONNX model").
    * ``SUFFIXES``: its file suffixes, the first being what :meth:`output_path` and :meth:`default_name` add.
    * ``PACKAGES``: distributions whose versions reports give. ``REQUIRES``: the modules its runner imports; the
      first one missing is why it cannot run (:meth:`unavailable_reason`).
    * ``DEFAULT_DEVICE``: the device it runs on when none is chosen (the CPU; a GPU for TensorRT engines).
      ``PRECISIONS``: device kind -> the precisions it runs there, its default first (the bench grid reads these;
      a backend without "cuda" gets the CPU rules whatever the device string, as OpenVINO's Intel "GPU").
    * ``RUN_PRECISIONS``: what ``--precision`` may ask of its runner (``auto``, ``fp32``, ``bf16``); anything else
      is refused before loading (:meth:`check_precision`).
    * ``EXPORTS``: whether ``yolokit export --to NAME`` writes its artifacts, at ``EXPORT_PRECISIONS``;
      ``EXPORT_REQUIRES``: the modules exporting needs (the ``export`` extra's), checked by
      :meth:`export_unavailable_reason`; ``TUNES_BATCH``: whether a dynamic export is tuned for ``--batch`` (a
      TensorRT profile's optimum; elsewhere ``--batch`` needs ``--static``).
    * ``PLANNING``: :class:`PlanningHints`, which :func:`toolkit.engine.plan.make_plan` reads instead of comparing
      names.

    **Methods**, with their defaults:

    * :meth:`is_available`, :meth:`unavailable_reason`: whether it can run here, else one line with the fix (``pip
      install 'yolokit[EXTRA]'``, or the device it needs). Default: every module of ``REQUIRES`` importable.
    * :meth:`claims` (by name: a file with one of ``SUFFIXES``), :meth:`sniff` (by a file's first bytes, so that
      ``--weights anything.bin`` works; default False): which backend loads a file (``backends.backend_for``).
    * :meth:`output_path` (``-o m`` gets ``SUFFIXES[0]``) and :meth:`default_name` (``yolov5n_fp16.onnx``): export
      targets; :meth:`check_target` refuses, before exporting, a target the artifact cannot be put in (default: a
      folder where a file goes); :meth:`written_files`: the files an export there writes (default: the target; an
      IR's .bin too), checked before exporting over them.
    * :meth:`read_meta`: an artifact's :class:`ModelMeta`, without loading a runtime where possible;
      :meth:`describe`: extra facts for ``yolokit info`` (default none).
    * :meth:`check_precision`: refuses a ``--precision`` outside ``RUN_PRECISIONS`` in one line.
      :meth:`export_unavailable_reason`: why ``yolokit export --to NAME`` cannot run here (the export tools missing,
      naming ``pip install 'yolokit[export]'``), or None.
    * :meth:`check_export`: refuses, before any work, options it cannot honour (default: a precision not in
      ``EXPORT_PRECISIONS``). :meth:`export` writes an artifact from a loaded checkpoint; an exporting backend
      usually starts from :func:`backends.shared.onnx_graph.export_graph` and stores
      :func:`~backends.shared.onnx_graph.export_meta` in its artifact.
    * :meth:`load`: a :class:`Runner`.

    **Runners.** A runner takes a uint8 ``(B, 3, H, W)`` RGB batch (or float32 on the same 0-255 scale: test-time
    augmentation's resized views, unrounded; a runner leaves its input unchanged) and returns ``(B, N, 5 + nc)``
    float32 predictions; it does its own normalisation and precision handling. It subclasses :class:`BaseRunner`,
    which checks every batch against the model's metadata and pads a partial batch for a static artifact, and
    implements ``_run(batch)``; one whose runtime can change its intra-op thread count in place implements
    ``set_threads`` and ``current_threads``. One whose runtime can take tensors already on its device also offers a
    :class:`DeviceRunner` (``runner.device_runner()``): the engine's GPU pipeline letterboxes on the device straight
    into the runner's input dtype and post-processes there, so only detections come back to the host.

    **Models with NMS inside** (``meta.nms`` set, see :class:`toolkit.meta.BakedNMS`) return final detections: the
    runner packs the four end-to-end outputs (:data:`E2E_OUTPUTS`) into ``(B, max_det, 6)`` rows ``x1 y1 x2 y2
    score class`` with :func:`pack_detections`, and the core post-processes nothing again.
    ``LoadOptions.options[RAW_OUTPUT] = True`` asks such a runner for the raw ``(B, N, 5 + nc)`` predictions before
    the NMS (its ``meta.nms`` is then None), where the runtime can give them.

    **INT8.** ``ExportOptions.int8_data`` (an :class:`Int8Data`, filled by the export job) holds the calibration
    images, the labelled validation images and the mAP metric: a backend quantizes with them, never choosing images
    or computing mAP itself, and records ``extra["int8"]`` in its artifact.

    **Adding a backend** is one module (or package) with one subclass, one entry in ``backends.REGISTRY``, one extra
    in ``pyproject.toml`` and its name in the ``backends-alone`` and ``core-via-registry`` import contracts there;
    the contract tests (``tests/test_layout.py``, ``tests/test_backends.py``) are parametrized over the registry and
    pick it up.
    """

    NAME: ClassVar[str]
    EXTRA: ClassVar[str | None]
    DESCRIPTION: ClassVar[str]
    SUFFIXES: ClassVar[tuple[str, ...]]
    PACKAGES: ClassVar[tuple[str, ...]]
    REQUIRES: ClassVar[tuple[str, ...]] = ()
    DEFAULT_DEVICE: ClassVar[str] = "cpu"
    PRECISIONS: ClassVar[dict[str, tuple[str, ...]]] = {"cpu": ("fp32",)}
    EXPORTS: ClassVar[bool] = False
    EXPORT_PRECISIONS: ClassVar[tuple[str, ...]] = ()
    # whether a dynamic export of this format is tuned for a batch (a TensorRT profile's optimum): elsewhere --batch
    # fixes a --static export's batch, and a dynamic export refuses it rather than ignore it
    TUNES_BATCH: ClassVar[bool] = False
    # what --precision may ask of its runner (LoadOptions.precision); anything else is refused before loading
    RUN_PRECISIONS: ClassVar[tuple[str, ...]] = ("auto", "fp32")
    # what exporting needs beyond the runtime: PyTorch reads the checkpoint, onnx builds the traced graph, onnxslim
    # simplifies it (all in the EXPORT_EXTRA, kept out of the run-only extras)
    EXPORT_REQUIRES: ClassVar[tuple[str, ...]] = ("torch", "onnx", "onnxslim")
    PLANNING: ClassVar[PlanningHints] = PlanningHints(releases_gil=False)

    def unavailable_reason(self) -> str | None:
        """Why this backend cannot run here (the module it needs and the extra that installs it), or None."""
        import importlib.util

        for module in self.REQUIRES:
            if importlib.util.find_spec(module) is None:
                return f"the {self.NAME} backend needs {module}, which is not installed: pip install " \
                       f"'yolokit[{self.EXTRA}]'"
        return None

    def is_available(self) -> bool:
        return self.unavailable_reason() is None

    def check_precision(self, precision: str) -> None:
        """Refuse, in one line, a ``--precision`` this backend's runner cannot compute in (``RUN_PRECISIONS``); a
        runner that can checks the CPU itself when it loads."""
        if precision not in self.RUN_PRECISIONS:
            raise InputError(f"--precision {precision}: the {self.NAME} backend computes in "
                             f"{' or '.join(p for p in self.RUN_PRECISIONS if p != 'auto')} only; {precision} runs "
                             f"OpenVINO models on CPUs that have it (yolokit export WEIGHTS --to openvino), or leave "
                             f"--precision at auto")

    def export_unavailable_reason(self, simplify: bool = True) -> str | None:
        """Why ``yolokit export --to NAME`` cannot run here: the export tools missing (``EXPORT_REQUIRES``; onnxslim
        only when the graph is simplified) and the extra that installs them, or None."""
        import importlib.util

        needed = [m for m in self.EXPORT_REQUIRES if simplify or m != "onnxslim"]
        missing = [m for m in needed if importlib.util.find_spec(m) is None]
        if not missing:
            return None
        return (f"exporting needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed "
                f"(the run-only extras leave the export tools out): pip install '{EXPORT_EXTRA}'")

    def claims(self, path: Path) -> bool:
        """Whether this backend loads ``path``, by its name (a file with one of ``SUFFIXES``)."""
        return path.suffix.lower() in self.SUFFIXES and not path.is_dir()

    def sniff(self, head: bytes) -> bool:
        """Whether a file's first bytes are one of this backend's artifacts."""
        return False

    def check_target(self, target: Path) -> None:
        """Refuse (:class:`OutputError`), before exporting, a ``target`` (from :meth:`output_path`) an export of
        this format cannot be put in: a folder where a file goes."""
        if target.is_dir():
            raise OutputError(f"{target}: is a folder, where the export writes a file; choose another path with -o, "
                              f"or move the folder")

    def written_files(self, target: Path) -> list[Path]:
        """The files an export to ``target`` (from :meth:`output_path`) writes: the artifact, and any file beside it
        (an IR's weights). What is already there is checked before exporting over it."""
        return [Path(target)]

    def output_path(self, path: Path) -> Path:
        """The export target: ``path`` with ``SUFFIXES[0]`` added when it has none of them (``-o m`` -> ``m.onnx``)."""
        path = Path(path)
        return path if path.suffix.lower() in self.SUFFIXES else path.with_name(path.name + self.SUFFIXES[0])

    def default_name(self, stem: str, tag: str) -> str:
        """The artifact's name when no ``-o`` is given: ``tag`` (``_fp16``, ``_int8`` or empty) before the suffix."""
        return f"{stem}{tag}{self.SUFFIXES[0]}"

    def describe(self, path: Path) -> dict[str, Any]:
        """Facts beyond the metadata, for ``yolokit info``."""
        return {}

    def check_export(self, options: ExportOptions) -> None:
        """Refuse an export precision this backend does not write (the message names the precision)."""
        if options.precision not in self.EXPORT_PRECISIONS:
            writes = ", ".join(p.upper() for p in self.EXPORT_PRECISIONS) or "nothing"
            raise InputError(f"{options.precision.upper()} export is not supported for --to {self.NAME} (it writes "
                             f"{writes})")

    @abstractmethod
    def read_meta(self, path: Path) -> ModelMeta:
        """An artifact's metadata; :class:`~toolkit.errors.ModelFileError` naming the file when it has none."""

    @abstractmethod
    def load(self, path: Path, options: LoadOptions) -> Runner:
        """A runner for the model at ``path``."""

    @abstractmethod
    def export(self, source: LoadedModel, path: Path, options: ExportOptions) -> Path:
        """Write an artifact of ``source`` to ``path`` (from :meth:`output_path`); the artifact's path."""


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
