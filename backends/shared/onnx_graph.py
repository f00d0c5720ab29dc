"""The ONNX graph every exporting backend starts from: the traced model, without yolokit metadata, and the metadata
an artifact carries. ONNX, OpenVINO (converted from it) and TensorRT (parsed from it) share both.

Exporter choice: the TorchScript-based exporter (``dynamo=False``). With torch 2.13 it traces this model
(including the shape-derived grids of the Detect head when ``Detect.dynamic`` is set) to a plain opset-17
graph with real dynamic batch/height/width axes, and needs nothing beyond ``onnx``. The torch.export-based
exporter (``dynamo=True``) needs the extra ``onnxscript`` package, specialises shapes unless every dimension
is declared with ``torch.export.Dim`` constraints (height and width must be multiples of the stride, which
it cannot express without rewriting the model), and gained nothing here; it stays an option for later.

The graph takes ``images`` ``(B, 3, H, W)`` float32 (float16 with ``--half``) in [0, 1]; normalisation
(/255) is done by the runner, not in the graph. It returns ``output0`` ``(B, N, 5 + nc)``.
"""

from __future__ import annotations

import copy
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backends.base import EXPORT_EXTRA, ExportOptions
from backends.shared.onnx_nms import RAW_NAME, append_nms
from toolkit.errors import ExportError
from toolkit.meta import BakedNMS, ModelMeta

if TYPE_CHECKING:
    from toolkit.model.load import LoadedModel

INPUT_NAME = "images"
OUTPUT_NAME = RAW_NAME  # what the NMS part reads


def _grid_fp32(self: Any, i: int, nx: int, ny: int, like: Any) -> tuple[Any, Any]:
    """Detect grids built in float32 and cast: ONNX ``Range`` has no float16 kernel, so an FP16 trace must
    not call ``arange`` in half precision (installed on the export copy of the head only)."""
    from toolkit.model.yolov5 import Detect

    grid, anchor_grid = Detect._grid(self, i, nx, ny, like.float())
    return grid.to(like.dtype), anchor_grid.to(like.dtype)


def export_graph(source: LoadedModel, path: Path, options: ExportOptions, *, half: bool | None = None,
                 dynamic: bool | None = None, simplify: bool | None = None,
                 nms: BakedNMS | None = None, suppresses_at_equal: bool = False) -> tuple[Any, list[str]]:
    """Trace ``source`` to an ONNX file at ``path`` without yolokit metadata (OpenVINO and TensorRT build
    from this), simplified, with NMS appended when ``nms`` is given (:mod:`backends.shared.onnx_nms`). Returns the
    checked ``onnx.ModelProto`` and notes about what was done or skipped."""
    import warnings

    import onnx
    import torch

    half = options.half if half is None else half
    dynamic = options.dynamic if dynamic is None else dynamic
    simplify = options.simplify if simplify is None else simplify
    notes: list[str] = []
    model = copy.deepcopy(source.model).eval()
    det = model.detect
    det._grids.clear()
    # dynamic: grids are computed from the traced shapes (so any H/W works); static: the grids of the one
    # export size become constants
    det.dynamic = dynamic
    dtype = torch.float16 if half else torch.float32
    if half:
        det.dynamic = True  # never reuse fp32 grids cached on the source
        det._grid = types.MethodType(_grid_fp32, det)  # type: ignore[method-assign]
    model = model.to(dtype)
    h, w = options.imgsz
    b = 1 if dynamic else options.batch
    x = torch.zeros(b, 3, h, w, dtype=dtype)
    axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, OUTPUT_NAME: {0: "batch", 1: "anchors"}} \
        if dynamic else None
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=options.opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=axes,
                              do_constant_folding=True)
    except Exception as e:  # the exporter raises many kinds (RuntimeError, OnnxExporterError, ...)
        raise ExportError(f"torch.onnx.export failed (opset {options.opset}): {e}") from e
    proto = onnx.load(str(path))
    if simplify:
        try:
            import onnxslim  # type: ignore[import-not-found]
        except ImportError:
            notes.append(f"onnxslim is not installed: graph not simplified, {len(proto.graph.node)} nodes "
                         f"(pip install '{EXPORT_EXTRA}' installs it)")
        else:
            try:
                before = len(proto.graph.node)
                proto = onnxslim.slim(proto)
                notes.append(f"simplified with onnxslim {getattr(onnxslim, '__version__', '')}: {before} -> "
                             f"{len(proto.graph.node)} nodes")
            except Exception as e:  # slimming is an optimisation: keep the traced graph
                notes.append(f"onnxslim failed ({e}); kept the unsimplified graph")
    if nms is not None:
        before = len(proto.graph.node)
        proto = append_nms(proto, nms, suppresses_at_equal)
        notes.append(f"NMS inside: {len(proto.graph.node) - before} standard ONNX nodes appended (conf {nms.conf}, "
                     f"iou {nms.iou}, max_det {nms.max_det}, agnostic {nms.agnostic}, max_nms {nms.max_nms})")
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"the exported ONNX graph does not pass onnx.checker: {e}") from e
    onnx.save(proto, str(path))
    return proto, notes


def export_meta(source: LoadedModel, options: ExportOptions, fmt: str, precision: str,
                runtime_versions: dict[str, str], extra: dict[str, Any] | None = None,
                dynamic_hw: bool | None = None, nms: BakedNMS | None = None) -> ModelMeta:
    """Metadata of an artifact exported from ``source`` with ``options``."""
    dynamic = options.dynamic
    dynamic_hw = dynamic if dynamic_hw is None else dynamic_hw
    return ModelMeta(
        names=dict(source.meta.names), stride=source.meta.stride, nms=nms,
        imgsz=None if dynamic_hw else (int(options.imgsz[0]), int(options.imgsz[1])),
        batch=None if dynamic else int(options.batch),
        max_batch=None if dynamic else int(options.batch),
        precision=precision, format=fmt, source_sha256=source.meta.source_sha256,
        runtime_versions=dict(runtime_versions),
        extra={**source.meta.extra, "dynamic": dynamic, **(extra or {})},
    )
