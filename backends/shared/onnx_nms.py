"""NMS inside the model: standard ONNX nodes appended to the traced graph so that it returns final detections.

Why nodes appended with ``onnx.helper`` rather than torch code traced through a custom ``NonMaxSuppression``
symbolic: the tracer records one concrete run, so a candidate count such as ``min(30000, N)`` (N depends on the
input's height and width) or ``min(max_det, K)`` would be frozen at the traced size, and the fake forward a symbolic
needs returns a made-up number of boxes. Written as nodes, every shape is computed in the graph from the input's, so
dynamic batch, height and width work as in the plain export; the same graph goes to ONNX Runtime, OpenVINO
(converted) and TensorRT (parsed); and building it needs only the ``onnx`` package.

The graph reads ``output0`` ``(B, N, 5 + nc)`` and follows YOLOv5's ``non_max_suppression`` (single label):

1. score = objectness x class score; the best class per box (first on ties, as ``argmax``); candidates have
   objectness > conf and score > conf (both strict, in float32, as YOLOv5 compares);
2. the ``max_nms`` (30000) highest-scoring candidates (``TopK``; non-candidates score -1 and never pass NMS's
   score threshold of -0.5, so the strictness of that threshold does not matter);
3. ``NonMaxSuppression`` on boxes offset by class x 7680 (YOLOv5's ``max_wh``) unless agnostic, one "class" per
   image, at most ``max_det`` kept. YOLOv5 (torchvision) suppresses a box whose IoU with a kept box is greater than
   the threshold, and so does ONNX Runtime; OpenVINO's CPU plugin (2026.4) suppresses at IoU >= its threshold, so
   the graph converted for OpenVINO carries the next float32 above it, which gives the same rule
   (``tests/test_e2e.py`` checks both runtimes at an IoU of exactly the threshold);
4. the kept boxes scattered into a dense ``(B, K)`` score matrix, the ``min(max_det, K)`` best taken with
   ``TopK`` (best first; kept scores are > conf >= 0, so a zero marks "not kept"), gathered, zeroed past
   ``num_dets`` and padded to ``max_det`` rows.

Outputs (``backends.base.E2E_OUTPUTS``): ``num_dets`` int32 ``(B, 1)``, ``det_boxes`` float32 ``(B, max_det, 4)``
xyxy in letterboxed-input pixels, ``det_scores`` float32 ``(B, max_det)``, ``det_classes`` int32 ``(B, max_det)``.
Ops: Cast, Slice, Mul, Add, Sub, Div, ArgMax, GatherElements, Greater, And, Where, Squeeze, Unsqueeze, Concat,
Shape, Gather, Min, TopK, Expand, NonMaxSuppression, GatherND, ScatterND, ConstantOfShape, ReduceSum, Pad (opset
13 or newer, where Squeeze, Unsqueeze and ReduceSum take their axes as an input).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from backends.base import E2E_OUTPUTS, NMS_MIN_OPSET
from toolkit.errors import ExportError
from toolkit.meta import BakedNMS
from toolkit.ops import iou_cut

MIN_OPSET = NMS_MIN_OPSET
MAX_WH = 7680.0  # YOLOv5's class offset for per-class NMS in one pass
PREFIX = "/nms/"  # node and tensor names of the appended part (INT8 quantization leaves it alone)
RAW_NAME = "output0"


class _Builder:
    """Nodes and constants with unique names under :data:`PREFIX`."""

    def __init__(self) -> None:
        from onnx import helper

        self.helper = helper
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.count = 0

    def _name(self, hint: str) -> str:
        self.count += 1
        return f"{PREFIX}{hint}_{self.count}"

    def const(self, value: Any, dtype: Any, hint: str = "c") -> str:
        from onnx import numpy_helper

        name = self._name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, **attrs: Any) -> Any:
        names = outputs if isinstance(outputs, list) else [self._name(op_type) for _ in range(outputs)]
        self.nodes.append(self.helper.make_node(op_type, inputs, names, name=self._name(op_type), **attrs))
        return names[0] if len(names) == 1 else names


def opset_of(proto: Any) -> int:
    return max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)


def iou_threshold(iou: float, suppresses_at_equal: bool) -> float:
    """The float32 threshold to give a runtime's ``NonMaxSuppression`` so that it suppresses exactly the boxes whose
    float32 IoU with a kept box is greater than ``iou`` in double precision (YOLOv5's rule, torchvision's
    comparison: :func:`toolkit.ops.iou_cut`): that cut where the runtime suppresses above its threshold (ONNX
    Runtime), else the next float32 above it (OpenVINO suppresses at IoU >= its threshold). ``float32(0.6)``, above
    0.6, kept a box at an IoU of exactly 60/100 that YOLOv5 suppresses with ``--iou 0.6``."""
    t = np.float32(iou_cut(iou))
    return float(np.nextafter(t, np.float32(np.inf))) if suppresses_at_equal else float(t)


def append_nms(proto: Any, nms: BakedNMS, suppresses_at_equal: bool = False) -> Any:
    """``proto`` (a traced YOLOv5 graph with output ``output0``) with NMS appended: its outputs become
    :data:`backends.base.E2E_OUTPUTS`. ``output0`` stays in ``value_info`` so a runtime can still expose it.
    ``suppresses_at_equal``: the graph is for a runtime whose NMS suppresses at IoU == threshold (see
    :func:`iou_threshold`)."""
    from onnx import TensorProto, helper

    opset = opset_of(proto)
    if opset < MIN_OPSET:
        raise ExportError(f"--nms needs --opset {MIN_OPSET} or newer (the graph has opset {opset})")
    graph = proto.graph
    raw = next((o for o in graph.output if o.name == RAW_NAME), None)
    if raw is None or len(graph.output) != 1:
        raise ExportError(f"the traced graph does not have the single output {RAW_NAME!r} NMS is appended to")
    batch_dim = raw.type.tensor_type.shape.dim[0]
    batch: str | int = batch_dim.dim_param if batch_dim.dim_param else int(batch_dim.dim_value)
    f32, i64 = np.float32, np.int64
    b = _Builder()
    op, const = b.op, b.const
    ax2 = const([2], i64, "axis2")

    def cut(x: str, start: int, end: int) -> str:
        return op("Slice", [x, const([start], i64), const([end], i64), ax2])

    p = op("Cast", [RAW_NAME], to=TensorProto.FLOAT)
    xy, wh, obj = cut(p, 0, 2), cut(p, 2, 4), cut(p, 4, 5)
    scores = op("Mul", [cut(p, 5, np.iinfo(np.int64).max), obj])  # (B, N, nc): objectness x class score
    best = op("ArgMax", [scores], axis=2, keepdims=1)  # (B, N, 1) int64
    score = op("GatherElements", [scores, best], axis=2)  # (B, N, 1)
    conf = const(nms.conf, f32, "conf")
    cand = op("And", [op("Greater", [obj, conf]), op("Greater", [score, conf])])
    flat = op("Squeeze", [op("Where", [cand, score, const(-1.0, f32, "neg")]), ax2])  # (B, N)
    half = op("Div", [wh, const(2.0, f32, "two")])
    boxes = op("Concat", [op("Sub", [xy, half]), op("Add", [xy, half])], axis=2)  # (B, N, 4) xyxy
    one, four = const([1], i64, "one"), const([4], i64, "four")

    def gather_rows(x: str, idx: str, width: str | None) -> str:
        """x (B, N, C)[b, idx[b, k], :] -> (B, K, C) for idx (B, K)."""
        i3 = op("Unsqueeze", [idx, ax2])
        if width is not None:
            i3 = op("Expand", [i3, op("Concat", [op("Shape", [idx]), width], axis=0)])
        return op("GatherElements", [x, i3], axis=1)

    if nms.max_nms is not None:
        k = op("Min", [op("Gather", [op("Shape", [flat]), one], axis=0), const([nms.max_nms], i64, "max_nms")])
        top_v, top_i = op("TopK", [flat, k], outputs=2, axis=1, largest=1, sorted=1)  # (B, K)
        cls_k, boxes_k = gather_rows(best, top_i, None), gather_rows(boxes, top_i, four)
    else:
        top_v, cls_k, boxes_k = flat, best, boxes
    offset = boxes_k if nms.agnostic else op(
        "Add", [boxes_k, op("Mul", [op("Cast", [cls_k], to=TensorProto.FLOAT), const(MAX_WH, f32, "max_wh")])])
    selected = op("NonMaxSuppression", [offset, op("Unsqueeze", [top_v, one]), const([nms.max_det], i64, "max_det"),
                                        const([iou_threshold(nms.iou, suppresses_at_equal)], f32, "iou"),
                                        const([-0.5], f32, "score_thr")],
                  center_point_box=0)  # (M, 3): image, class (always 0), box
    where = op("Gather", [selected, const([0, 2], i64, "cols")], axis=1)  # (M, 2)
    dense = op("ScatterND", [op("ConstantOfShape", [op("Shape", [top_v])],
                                value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])),
                             where, op("GatherND", [top_v, where])])  # (B, K): kept scores, else 0
    k2 = op("Min", [op("Gather", [op("Shape", [top_v]), one], axis=0), const([nms.max_det], i64, "max_det")])
    final_v, final_i = op("TopK", [dense, k2], outputs=2, axis=1, largest=1, sorted=1)  # (B, K2), best first
    valid = op("Greater", [final_v, const(0.0, f32, "zero_f")])
    valid_f = op("Cast", [valid], to=TensorProto.FLOAT)
    valid_i = op("Cast", [valid], to=TensorProto.INT32)
    det_boxes = op("Mul", [gather_rows(boxes_k, final_i, four), op("Unsqueeze", [valid_f, ax2])])
    det_cls = op("Mul", [op("Cast", [op("Squeeze", [gather_rows(cls_k, final_i, None), ax2])], to=TensorProto.INT32),
                         valid_i])
    det_scores = op("Mul", [final_v, valid_f])
    pad = op("Sub", [const([nms.max_det], i64, "max_det"), k2])  # rows to add at the end of axis 1
    # pads are [begin of each axis..., end of each axis...]: rows added at the end of axis 1 only
    pads2 = op("Concat", [const([0, 0, 0], i64, "zeros"), pad], axis=0)
    pads3 = op("Concat", [const([0, 0, 0, 0], i64, "zeros"), pad, const([0], i64, "zero")], axis=0)
    num, out_boxes, out_scores, out_classes = E2E_OUTPUTS
    op("ReduceSum", [valid_i, one], outputs=[num], keepdims=1)
    op("Pad", [det_boxes, pads3], outputs=[out_boxes])
    op("Pad", [det_scores, pads2], outputs=[out_scores])
    op("Pad", [det_cls, pads2], outputs=[out_classes])

    graph.node.extend(b.nodes)
    graph.initializer.extend(b.inits)
    graph.value_info.append(raw)
    del graph.output[:]
    graph.output.extend([
        helper.make_tensor_value_info(num, TensorProto.INT32, [batch, 1]),
        helper.make_tensor_value_info(out_boxes, TensorProto.FLOAT, [batch, nms.max_det, 4]),
        helper.make_tensor_value_info(out_scores, TensorProto.FLOAT, [batch, nms.max_det]),
        helper.make_tensor_value_info(out_classes, TensorProto.INT32, [batch, nms.max_det]),
    ])
    return proto


def raw_graph(proto: Any) -> Any:
    """An end-to-end graph whose only output is the raw ``output0`` again (the NMS part is then unused)."""
    from onnx import TensorProto, helper

    raw = next((v for v in proto.graph.value_info if v.name == RAW_NAME), None)
    if raw is None:
        raw = helper.make_tensor_value_info(RAW_NAME, TensorProto.FLOAT, None)
    del proto.graph.output[:]
    proto.graph.output.append(raw)
    return proto

