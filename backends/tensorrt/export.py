"""Building an engine: the traced ONNX graph (:mod:`backends.shared.onnx_graph`) parsed by TensorRT's ONNX parser, built
for this GPU with the profile and precision of :mod:`backends.tensorrt.plan`, written with the yolokit header
(:mod:`backends.tensorrt.engine_file`).

NMS inside (``--nms``): the engine is built from the same end-to-end graph as the ONNX export
(:mod:`backends.shared.onnx_nms`); TensorRT's ONNX parser maps ``NonMaxSuppression`` to its NMS layer (TensorRT 8.5
and newer, per its operator support list; yolokit needs 10). The graph skips the 30000-candidate TopK (TensorRT's
TopK takes K <= 3840, see :func:`backends.tensorrt.plan.engine_nms`). Such an engine cannot return the raw
predictions, so its export parity check compares final detections only. None of this has run on TensorRT here.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from backends.base import ExportOptions
from backends.shared.onnx_graph import INPUT_NAME, export_graph, export_meta
from backends.tensorrt.engine_file import FORMAT, pack_engine
from backends.tensorrt.plan import (
    engine_nms,
    network_flags,
    plan_precision,
    plan_profile,
    strongly_typed_bit,
    timing_cache_path,
)
from backends.tensorrt.runtime import cuda_index, current_gpu, load_tensorrt, new_logger
from toolkit.errors import ExportError

if TYPE_CHECKING:
    from toolkit.model.load import LoadedModel


def build_engine(source: LoadedModel, path: Path, options: ExportOptions) -> Path:
    """Build an engine for this GPU from the traced ONNX graph and write it with the yolokit header."""
    import torch

    from toolkit.io.outputs import atomic_write_bytes

    trt = load_tensorrt()
    index = cuda_index(options.device)
    gpu = current_gpu(index)
    plan = plan_precision(options.half, options.int8, hasattr(trt.BuilderFlag, "FP16"))
    profile = plan_profile(options.imgsz, options.batch, options.dynamic, options.max_batch, source.meta.stride)
    logger = new_logger(trt)  # held until the build is done
    with tempfile.TemporaryDirectory(prefix="yolokit_trt_") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        nms = engine_nms(options.nms) if options.nms is not None else None
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
