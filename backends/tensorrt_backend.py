"""TensorRT backend: engines built from the traced ONNX graph, run on an NVIDIA GPU through torch.cuda buffers.

Written against the documented TensorRT 10 Python API (and TensorRT 11, where every network is strongly
typed and the FP16/INT8 builder flags are gone). TensorRT is imported only inside the functions that need
it; everything that can be decided without it (the file header, metadata, version/GPU compatibility,
optimisation-profile shapes, output shapes, precision plan) is a pure function below, tested without
TensorRT.

Engine file layout: ``b"YKTR"`` magic, a 4-byte little-endian length, that many bytes of UTF-8 JSON (the
:class:`ModelMeta`, with ``runtime_versions["tensorrt"]`` and ``extra["gpu"]`` = name and compute
capability of the GPU it was built on), then the serialized engine. A TensorRT engine only runs with the
TensorRT version and the GPU it was built for, so the loader refuses any other with the fix (rebuild).

Profiles: by default (dynamic) one optimisation profile covers batch 1 to ``--max-batch`` and every input height
and width from the stride up to the long side of ``--imgsz``, so an engine letterboxes each image to the same
rectangle as the ``.pt`` (a 1920x1080 photo runs at 384x640, not 640x640) and gives the same detections. TensorRT
picks its kernels for the profile's optimum, ``--batch`` images at ``--imgsz``: ``yolokit export`` defaults
``--batch`` to the batch a GPU run plans (:data:`toolkit.devices.GPU_BATCH`, within ``--max-batch``), the engine
records it (``extra["opt_batch"]``) and the plan then runs at it; give ``--imgsz 384,640`` for 16:9 input.
``--static`` builds for exactly ``--batch`` images at ``--imgsz``: fastest at that one shape, but any other
aspect ratio is letterboxed to it, which changes detections. The runtime side (per-thread contexts and
preallocated I/O) is :mod:`backends.tensorrt_runner`.
INT8 is not offered (TensorRT 10 deprecates implicit calibration; explicit Q/DQ export is future work).

NMS inside (``--nms``): the engine is built from the same end-to-end graph as the ONNX export
(:mod:`backends.onnx_nms`); TensorRT's ONNX parser maps ``NonMaxSuppression`` to its NMS layer (TensorRT 8.5 and
newer, per its operator support list; yolokit needs 10). The graph skips the 30000-candidate TopK (TensorRT's TopK
takes K <= 3840, see :func:`backends.onnx_nms.for_tensorrt`). Such an engine cannot return the raw predictions, so
its export parity check compares final detections only. None of this has run on TensorRT here.
"""

from __future__ import annotations

import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backends.base import ExportOptions, LoadOptions, PlanningHints, no_export_precision, suffixed
from backends.onnx_graph import INPUT_NAME, export_graph, export_meta
from backends.onnx_nms import for_tensorrt
from toolkit.devices import parse_device
from toolkit.errors import BackendUnavailableError, ExportError, InputError, ModelFileError
from toolkit.meta import ModelMeta

if TYPE_CHECKING:
    from toolkit.model.load import LoadedModel

NAME = "trt"
EXTRA = "trt"
SUFFIXES = (".engine", ".plan")
PACKAGES = ("tensorrt",)
DEFAULT_DEVICE = "cuda"  # engines are built on, and for, an NVIDIA GPU
PRECISIONS = {"cuda": ("fp16", "fp32")}
EXPORTS = True
EXPORT_PRECISIONS = ("fp32", "fp16")
PLANNING = PlanningHints(releases_gil=True, thread_batch=1, process_inputs_per_core=None)
DESCRIPTION = "a yolokit TensorRT engine"
FORMAT = "tensorrt"
MAGIC = b"YKTR"
_LEN = struct.Struct("<I")
HEADER_PREFIX = len(MAGIC) + _LEN.size
MAX_HEADER = 16 * 1024 * 1024
INSTALL_HINT = "pip install 'yolokit[trt]'"
GPU_HINT = "TensorRT needs an NVIDIA GPU with CUDA"


# ------------------------------------------------------------------------------------------- pure functions


def pack_engine(meta: ModelMeta, engine: bytes) -> bytes:
    """The engine file's bytes: magic, header length, metadata JSON, engine."""
    header = meta.to_json().encode()
    return MAGIC + _LEN.pack(len(header)) + header + bytes(engine)


def _parse_header(prefix: bytes, head: bytes, name: str) -> tuple[ModelMeta, int]:
    if len(prefix) < HEADER_PREFIX or prefix[:4] != MAGIC:
        raise ModelFileError(f"{name}: not a yolokit TensorRT engine (no YKTR header; a plain trtexec engine "
                             f"carries no class names or input size); rebuild it with "
                             f"`yolokit export WEIGHTS --to trt`")
    (length,) = _LEN.unpack(prefix[4:HEADER_PREFIX])
    if length > MAX_HEADER or len(head) < length:
        raise ModelFileError(f"{name}: the engine header is truncated or corrupt; rebuild it with "
                             f"`yolokit export WEIGHTS --to trt`")
    try:
        meta = ModelMeta.from_json(head[:length].decode())
    except (ValueError, TypeError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{name}: the engine's yolokit metadata is unreadable ({e}); rebuild it with "
                             f"`yolokit export WEIGHTS --to trt`") from None
    return meta, HEADER_PREFIX + length


def unpack_engine(data: bytes, name: str = "engine") -> tuple[ModelMeta, bytes]:
    """``(meta, engine bytes)`` of an engine file's contents; ModelFileError without a valid header."""
    meta, offset = _parse_header(data[:HEADER_PREFIX], data[HEADER_PREFIX:], name)
    engine = data[offset:]
    if not engine:
        raise ModelFileError(f"{name}: the engine file is truncated (header only); rebuild it with "
                             f"`yolokit export WEIGHTS --to trt`")
    return meta, engine


def read_meta(path: Path) -> ModelMeta:
    """The metadata of an engine file, read from its header alone (no TensorRT needed)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such TensorRT engine file")
    with path.open("rb") as f:
        prefix = f.read(HEADER_PREFIX)
        length = _LEN.unpack(prefix[4:])[0] if len(prefix) == HEADER_PREFIX and prefix[:4] == MAGIC else 0
        head = f.read(min(length, MAX_HEADER))
    return _parse_header(prefix, head, str(path))[0]


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "8.9"

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "compute_capability": self.compute_capability}


def check_compat(meta: ModelMeta, trt_version: str, gpu: GpuInfo, name: str = "engine") -> None:
    """Refuse an engine built by another TensorRT version or for another GPU, saying how to fix it."""
    fix = "rebuild the engine on this machine with `yolokit export WEIGHTS --to trt`"
    built = meta.runtime_versions.get("tensorrt")
    if meta.format != FORMAT or not built:
        raise ModelFileError(f"{name}: the header does not describe a TensorRT engine; {fix}")
    if built != trt_version:
        raise ModelFileError(f"{name}: built with TensorRT {built}, but this machine has TensorRT {trt_version}; "
                             f"engines only run with the TensorRT version that built them; {fix}")
    want = meta.extra.get("gpu") or {}
    if not isinstance(want, dict) or "compute_capability" not in want:
        raise ModelFileError(f"{name}: the header does not name the GPU the engine was built for; {fix}")
    if str(want["compute_capability"]) != gpu.compute_capability or want.get("name") != gpu.name:
        raise ModelFileError(f"{name}: built for {want.get('name')} (compute capability "
                             f"{want['compute_capability']}), but this GPU is {gpu.name} (compute capability "
                             f"{gpu.compute_capability}); {fix}")


@dataclass(frozen=True)
class ProfilePlan:
    """Input shapes of the optimisation profile (``None`` for a static engine, which needs none)."""

    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]


def plan_profile(imgsz: tuple[int, int], batch: int, dynamic: bool, max_batch: int,
                 stride: int = 32) -> ProfilePlan | None:
    """The optimisation profile. Dynamic: min (1, 3, stride, stride), opt (``batch``, 3, ``imgsz``), max
    (``max_batch``, 3, L, L) with L the long side of ``imgsz``: every rectangle a letterbox to L can produce.
    Static: None (the engine takes exactly its build shape)."""
    h, w = int(imgsz[0]), int(imgsz[1])
    if h <= 0 or w <= 0 or h % stride or w % stride:
        raise InputError(f"--imgsz {h},{w}: height and width must be positive multiples of the stride {stride}")
    if batch < 1:
        raise InputError(f"--batch {batch}: must be at least 1")
    if not dynamic:
        return None
    if max_batch < 1:
        raise InputError(f"--max-batch {max_batch}: must be at least 1")
    if batch > max_batch:
        raise InputError(f"--batch {batch} is above --max-batch {max_batch}")
    side = max(h, w)
    return ProfilePlan((1, 3, stride, stride), (batch, 3, h, w), (max_batch, 3, side, side))


def output_shape(batch: int, imgsz: tuple[int, int], strides: list[float] | tuple[float, ...], na: int = 3,
                 nc: int = 80) -> tuple[int, int, int]:
    """``(B, N, 5 + nc)`` of the model's output for a batch at ``imgsz``: ``N = na * sum(h/s * w/s)``."""
    h, w = imgsz
    n = sum(na * (h // int(s)) * (w // int(s)) for s in strides)
    return (int(batch), int(n), int(nc) + 5)


@dataclass(frozen=True)
class PrecisionPlan:
    precision: str  # fp32 | fp16
    fp16_flag: bool  # set BuilderFlag.FP16 (TensorRT 10, weakly typed network)
    strongly_typed: bool  # create the network STRONGLY_TYPED (precision comes from the ONNX types)
    onnx_half: bool  # trace the ONNX graph in float16
    clear_tf32: bool  # FP32 engines: no TF32 convolutions, so results match PyTorch FP32


def plan_precision(half: bool, int8: bool, has_fp16_flag: bool) -> PrecisionPlan:
    """How to build an engine of the asked precision with this TensorRT: TensorRT 10 takes an FP32 graph
    and the FP16 builder flag; TensorRT 11 has no precision flags, so FP16 comes from an FP16 ONNX graph in
    a strongly typed network."""
    if int8:
        raise ExportError("INT8 TensorRT engines are not supported by yolokit (TensorRT 10 deprecates "
                          "implicit INT8 calibration); use --half, or --to openvino --int8")
    if not half:
        return PrecisionPlan("fp32", False, False, False, True)
    if has_fp16_flag:
        return PrecisionPlan("fp16", True, False, False, False)
    return PrecisionPlan("fp16", False, True, True, False)


def network_flags(strongly_typed: bool, strongly_typed_bit: int | None) -> int:
    """``create_network`` flags: TensorRT 10 networks are always explicit batch (the EXPLICIT_BATCH flag is
    deprecated and ignored), so only STRONGLY_TYPED is ever set. ``strongly_typed_bit`` is None where the TensorRT
    has no such flag (every network strongly typed, as TensorRT 11 plans): then nothing is set."""
    return (1 << int(strongly_typed_bit)) if strongly_typed and strongly_typed_bit is not None else 0


def strongly_typed_bit(trt: Any) -> int | None:
    """``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` of this TensorRT, read defensively (None when absent)."""
    flags = getattr(trt, "NetworkDefinitionCreationFlag", None)
    flag = getattr(flags, "STRONGLY_TYPED", None) if flags is not None else None
    return None if flag is None else int(flag)


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


def grown(capacity: int, needed: int) -> int:
    """The capacity (elements) of a buffer that must hold ``needed``: unchanged when it does, else at least
    doubled, so that a run of growing shapes reallocates a few times, not at every call."""
    if needed <= capacity:
        return capacity
    return max(needed, 2 * capacity)


def timing_cache_path(engine: Path) -> Path:
    return engine.with_name(engine.name + ".timing.cache")


# ------------------------------------------------------------------------------------------- runtime side


def unavailable_reason() -> str | None:
    """Why this backend cannot run here, or None when it can."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return f"the trt backend needs TensorRT: {INSTALL_HINT}"
    try:
        import torch
    except ImportError:
        return "the trt backend needs PyTorch with CUDA for its device buffers"
    if not torch.cuda.is_available():
        return f"{GPU_HINT}; PyTorch {torch.__version__} sees no CUDA GPU"
    return None


def is_available() -> bool:
    return unavailable_reason() is None


def claims(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES and not path.is_dir()


def sniff(head: bytes) -> bool:
    """Whether a file's first bytes are a yolokit engine (the ``YKTR`` header)."""
    return head[:4] == MAGIC


def output_path(path: Path) -> Path:
    """The export target with ``.engine`` added when it has no engine suffix (``-o m`` -> ``m.engine``)."""
    return suffixed(path, SUFFIXES)


def default_name(stem: str, tag: str) -> str:
    return f"{stem}{tag}.engine"


def check_export(options: ExportOptions) -> None:
    no_export_precision(NAME, options, EXPORT_PRECISIONS)
    if options.nms is not None:
        for_tensorrt(options.nms)


def describe(path: Path) -> dict[str, Any]:
    return {}


def _runtime() -> Any:
    reason = unavailable_reason()
    if reason:
        raise BackendUnavailableError(reason)
    import tensorrt as trt  # type: ignore[import-not-found]

    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise BackendUnavailableError(f"yolokit needs TensorRT 10 or newer, found {trt.__version__}: {INSTALL_HINT}")
    return trt


def current_gpu(index: int) -> GpuInfo:
    import torch

    if index >= torch.cuda.device_count():
        raise BackendUnavailableError(f"cuda:{index} asked for, but PyTorch sees {torch.cuda.device_count()} GPU(s)")
    major, minor = torch.cuda.get_device_capability(index)
    return GpuInfo(torch.cuda.get_device_name(index), f"{major}.{minor}")


_LOGGER: Any = None


def _logger(trt: Any) -> Any:
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


def export(source: LoadedModel, path: Path, options: ExportOptions) -> Path:
    """Build an engine for this GPU from the traced ONNX graph and write it with the yolokit header."""
    import torch

    from toolkit.io.outputs import atomic_write_bytes

    trt = _runtime()
    index = cuda_index(options.device)
    gpu = current_gpu(index)
    plan = plan_precision(options.half, options.int8, hasattr(trt.BuilderFlag, "FP16"))
    profile = plan_profile(options.imgsz, options.batch, options.dynamic, options.max_batch, source.meta.stride)
    logger = _logger(trt)
    with tempfile.TemporaryDirectory(prefix="yolokit_trt_") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        nms = for_tensorrt(options.nms) if options.nms is not None else None
        _, notes = export_graph(source, onnx_path, options, half=plan.onnx_half, nms=nms)
        with torch.cuda.device(index):
            builder = trt.Builder(logger)
            flags = network_flags(plan.strongly_typed, strongly_typed_bit(trt))
            network = builder.create_network(flags)
            parser = trt.OnnxParser(network, logger)
            if not parser.parse(onnx_path.read_bytes(), str(onnx_path)):
                errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
                raise ExportError(f"TensorRT's ONNX parser rejected the graph: {errors}")
            config = builder.create_builder_config()
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gb * (1 << 30)))
            if plan.fp16_flag:
                config.set_flag(trt.BuilderFlag.FP16)
            if plan.clear_tf32 and hasattr(trt.BuilderFlag, "TF32"):
                config.clear_flag(trt.BuilderFlag.TF32)
            if profile is not None:
                prof = builder.create_optimization_profile()
                prof.set_shape(INPUT_NAME, profile.min, profile.opt, profile.max)
                config.add_optimization_profile(prof)
            cache_file = timing_cache_path(Path(path))
            cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
            config.set_timing_cache(cache, False)
            serialized = builder.build_serialized_network(network, config)
            if serialized is None:
                raise ExportError("TensorRT could not build an engine (see the TensorRT log above); try a larger "
                                  "--workspace or --no-simplify")
            engine_bytes = bytes(serialized)
            try:
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                cache_file.write_bytes(bytes(config.get_timing_cache().serialize()))
            except OSError as e:
                notes.append(f"timing cache not saved ({e})")
    meta = export_meta(
        source, options, FORMAT, plan.precision, {"tensorrt": str(trt.__version__), "torch": torch.__version__},
        extra={"gpu": gpu.to_dict(), "workspace_gb": options.workspace_gb, "notes": notes,
               "profile": None if profile is None else {"min": profile.min, "opt": profile.opt, "max": profile.max},
               "opt_batch": int(options.batch), "strongly_typed": plan.strongly_typed},
        dynamic_hw=profile is not None, nms=nms)
    if profile is not None:
        meta.max_batch = int(options.max_batch)
        meta.max_imgsz = (int(profile.max[2]), int(profile.max[3]))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(path), pack_engine(meta, engine_bytes))
    return Path(path)


def load(path: Path, options: LoadOptions) -> Any:
    """A :class:`backends.tensorrt_runner.TrtRunner` (the runtime side lives in its own module)."""
    from backends.tensorrt_runner import TrtRunner

    return TrtRunner(Path(path), options)
