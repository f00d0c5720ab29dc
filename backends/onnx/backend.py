"""The ONNX backend class: ``.onnx`` files exported with ``torch.onnx.export`` (:mod:`backends.shared.onnx_graph`),
run with onnxruntime (:mod:`backends.onnx.runner`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from backends.base import Backend, ExportOptions, LoadOptions, PlanningHints
from backends.onnx.runner import OnnxRunner, read_meta
from backends.shared.onnx_graph import export_graph, export_meta
from toolkit.errors import ExportError
from toolkit.meta import META_KEY, ModelMeta

if TYPE_CHECKING:
    from toolkit.model.load import LoadedModel


class OnnxBackend(Backend):
    """ONNX models: exported FP32 or FP16 (NMS inside with ``--nms``), run by ONNX Runtime on the CPU or, with
    ``onnxruntime-gpu``, on CUDA (:mod:`backends.onnx.providers`)."""

    NAME = "onnx"
    EXTRA = "onnx"
    SUFFIXES = (".onnx",)
    DESCRIPTION = "an ONNX model"
    PACKAGES = ("onnxruntime", "onnxruntime-gpu", "onnx")
    REQUIRES = ("onnxruntime",)  # running needs onnxruntime only; exporting, EXPORT_REQUIRES too
    PRECISIONS = {"cpu": ("fp32",), "cuda": ("fp16", "fp32")}
    EXPORTS = True
    EXPORT_PRECISIONS = ("fp32", "fp16")
    # measured (200/400 JPEGs of 1920x1080, 2 cores): processes 1.2-1.5x faster than threads once start-up (~1 s) is
    # paid for; the per-image Python work (letterbox, NMS) contends for the GIL in threads. That was measured while
    # thread mode still shared one two-thread session between its two inference threads; since the model is loaded
    # at the plan's threads, 400 photos took 11.7-11.8 core-s in threads and 12.0-12.6 in processes (a busy VM, wall
    # times not comparable): re-measure on a quiet machine (scripts/ceiling.py) before moving this threshold
    PLANNING = PlanningHints(releases_gil=True, thread_batch=1, process_inputs_per_core=64)

    def sniff(self, head: bytes) -> bool:
        """Whether a file's first bytes are an ONNX ``ModelProto``: protobuf field 1 (``ir_version``, a small varint)
        followed by another of ModelProto's fields (producer name/version, domain, model version, doc string, graph,
        opset imports)."""
        if len(head) < 4 or head[0] != 0x08 or not 1 <= head[1] <= 30:
            return False
        return head[2] in (0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42)

    def export(self, source: LoadedModel, path: Path, options: ExportOptions) -> Path:
        """Write ``path`` (.onnx) with yolokit metadata; FP32, or FP16 with ``options.half``."""
        import onnx
        import torch

        if options.int8:
            raise ExportError("INT8 is not supported for ONNX export; use --to openvino --int8")
        proto, notes = export_graph(source, path, options, nms=options.nms)
        meta = export_meta(source, options, "onnx", options.precision,
                           {"onnx": onnx.__version__, "torch": torch.__version__},
                           extra={"opset": options.opset, "exporter": "torch.onnx.export (TorchScript, dynamo=False)",
                                  "notes": notes}, nms=options.nms)
        onnx.helper.set_model_props(proto, {META_KEY: meta.to_json()})
        onnx.save(proto, str(path))
        return path

    def read_meta(self, path: Path) -> ModelMeta:
        return read_meta(path)

    def load(self, path: Path, options: LoadOptions) -> OnnxRunner:
        return OnnxRunner(Path(path), options)
