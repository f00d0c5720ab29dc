"""ONNX Runtime on a CUDA device (``onnxruntime-gpu``): which execution providers, with which options.

The TensorRT provider comes first when present, with its engine and timing caches (:func:`ort_cache_dir`), FP16 for
FP16 models or ``--half``, and a shape profile over the letterbox rectangles (:func:`trt_profile_options`); then the
CUDA provider, then the CPU. None of this has run here (no GPU): :func:`provider_list` is tested as a pure function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from backends.base import cache_dir
from backends.shared.onnx_graph import INPUT_NAME
from toolkit.devices import GPU_BATCH, parse_device
from toolkit.errors import BackendUnavailableError, InputError
from toolkit.meta import ModelMeta
from toolkit.options import IMGSZ

ENV_CACHE = "YOLOKIT_ORT_CACHE"


def ort_cache_dir(options: dict[str, Any]) -> Path | None:
    """Where ONNX Runtime's TensorRT provider keeps its engines and timing cache: ``options["cache_dir"]``, else
    ``$YOLOKIT_ORT_CACHE`` (``off`` disables it), else ``~/.cache/yolokit/onnxruntime``; created if needed, None when
    off or not writable. Without it every process rebuilds its TensorRT engines, for minutes."""
    return cache_dir(options, ENV_CACHE, "onnxruntime")


def trt_profile_options(meta: ModelMeta, imgsz: tuple[int, int] | None, batch: int = GPU_BATCH,
                        max_batch: int = GPU_BATCH) -> dict[str, str]:
    """The TensorRT provider's shape profile (``trt_profile_{min,opt,max}_shapes``) for a model with dynamic axes:
    batch 1 to ``max_batch`` (tuned for ``batch``), height and width from the stride up to the long side of
    ``imgsz`` (tuned for ``imgsz``), as the TensorRT backend builds its own engines. Empty for a fully
    static model (nothing to profile)."""
    if meta.batch is not None and meta.imgsz is not None:
        return {}
    s = meta.stride
    h, w = imgsz if imgsz is not None else (IMGSZ.default, IMGSZ.default)
    h, w = max(s, -(-int(h) // s) * s), max(s, -(-int(w) // s) * s)
    side = max(h, w)
    b_min, b_opt, b_max = (meta.batch,) * 3 if meta.batch is not None else (1, min(batch, max_batch), max_batch)
    if meta.imgsz is not None:
        lo = opt = hi = (int(meta.imgsz[0]), int(meta.imgsz[1]))
    else:
        lo, opt, hi = (s, s), (h, w), (side, side)

    def dims(b: int, hw: tuple[int, int]) -> str:
        return f"{INPUT_NAME}:{b}x3x{hw[0]}x{hw[1]}"

    return {"trt_profile_min_shapes": dims(b_min, lo), "trt_profile_opt_shapes": dims(b_opt, opt),
            "trt_profile_max_shapes": dims(b_max, hi)}


def provider_list(device: str | None, available: list[str], meta: ModelMeta, extra: dict[str, Any],
                  half: bool | None = None, imgsz: tuple[int, int] | None = None,
                  cache_dir: Path | None = None) -> list[Any]:
    """The execution providers (with their options) for ``device``, from the ``available`` ones: the CPU; or on a
    CUDA device TensorRT (engine and timing caches in ``cache_dir``, FP16 for an FP16 model or when ``half`` asks,
    the shape profile of :func:`trt_profile_options`), then CUDA, then the CPU. ``extra["providers"]`` overrides
    everything; ``extra["tensorrt"] = False`` leaves TensorRT out."""
    if "providers" in extra:
        given = extra["providers"]
        if isinstance(given, str | bytes) or not isinstance(given, list | tuple) or not all(
                isinstance(p, str) or (isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str)) for p in given):
            raise InputError(f"options['providers'] takes a list of ONNX Runtime provider names (or (name, options) "
                             f"pairs), such as ['CPUExecutionProvider'], got {given!r:.80}")
        return list(given)
    spec = parse_device(device)
    if spec.kind == "cpu":
        return ["CPUExecutionProvider"]
    if spec.kind != "cuda":
        raise InputError(f"device {device!r}: the onnx backend runs on cpu, cuda or cuda:N")
    if "CUDAExecutionProvider" not in available:
        raise BackendUnavailableError(f"device {device!r} asked for, but this onnxruntime has no CUDA provider "
                                      f"(has {', '.join(available)}): pip install 'yolokit[gpu]', or use --device cpu")
    providers: list[Any] = []
    if "TensorrtExecutionProvider" in available and extra.get("tensorrt", True):
        trt: dict[str, Any] = {"device_id": spec.index, "trt_fp16_enable": bool(half) or meta.precision == "fp16"}
        if cache_dir is not None:
            trt.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache_dir / "trt_engines"),
                       trt_timing_cache_enable=True, trt_timing_cache_path=str(cache_dir / "trt_timing"))
        trt.update(trt_profile_options(meta, imgsz, int(extra.get("trt_batch", GPU_BATCH)),
                                       int(extra.get("trt_max_batch", GPU_BATCH))))
        providers.append(("TensorrtExecutionProvider", trt))
    providers.append(("CUDAExecutionProvider", {"device_id": spec.index}))
    providers.append("CPUExecutionProvider")
    return providers
