"""How an engine is built, decided without TensorRT (pure functions, tested here): the optimisation profile, the
output shape, the precision plan and network flags, the timing cache's place, and the NMS settings an engine's graph
takes.

Profiles: by default (dynamic) one optimisation profile covers batch 1 to ``--max-batch`` and every input height
and width from the stride up to the long side of ``--imgsz``, so an engine letterboxes each image to the same
rectangle as the ``.pt`` (a 1920x1080 photo runs at 384x640, not 640x640) and gives the same detections. TensorRT
picks its kernels for the profile's optimum, ``--batch`` images at ``--imgsz``: ``yolokit export`` defaults
``--batch`` to the batch a GPU run plans (:data:`toolkit.devices.GPU_BATCH`, within ``--max-batch``), the engine
records it (``extra["opt_batch"]``) and the plan then runs at it; give ``--imgsz 384,640`` for 16:9 input.
``--static`` builds for exactly ``--batch`` images at ``--imgsz``: fastest at that one shape, but any other
aspect ratio is letterboxed to it, which changes detections.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from toolkit.errors import ExportError, InputError
from toolkit.meta import BakedNMS

# TensorRT's TopK layer takes K <= 3840 (TensorRT 8.x documentation); its engines skip the 30000-candidate TopK
TRT_MAX_K = 3840


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


def timing_cache_path(engine: Path) -> Path:
    return engine.with_name(engine.name + ".timing.cache")


def engine_nms(nms: BakedNMS) -> BakedNMS:
    """The NMS settings an engine's graph uses: TensorRT's TopK takes K <= 3840, so the engine's graph sends every
    candidate into NMS (no 30000-candidate TopK; identical whenever at most 30000 boxes pass ``conf``, which is
    always the case at imgsz 640: 25200 anchors), and ``max_det`` must be at most 3840."""
    if nms.max_det > TRT_MAX_K:
        raise InputError(f"--max-det {nms.max_det}: a TensorRT engine with NMS inside keeps at most {TRT_MAX_K} "
                         f"boxes per image (its TopK limit); use --max-det {TRT_MAX_K} or less")
    return replace(nms, max_nms=None)
