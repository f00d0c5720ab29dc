"""Pure pre- and post-processing functions: letterbox, NMS, box conversions and scaling.

All work on numpy arrays, hold no state, and follow YOLOv5's semantics (documented per function) so
that detections match the official code.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from toolkit.options import CONF, IMGSZ, IOU, MAX_DET

PAD_VALUE = 114


@dataclass(frozen=True)
class LetterboxInfo:
    """How an image was letterboxed: scale ``ratio`` and the left/top padding, and both shapes (h, w)."""

    ratio: float
    pad: tuple[float, float]  # (dw, dh): padding on the left and top, before rounding
    src_shape: tuple[int, int]
    dst_shape: tuple[int, int]


def letterbox_shape(src_shape: tuple[int, int], imgsz: int | tuple[int, int], stride: int = 32,
                    auto: bool = True, scaleup: bool = True) -> tuple[tuple[int, int], tuple[int, int], float]:
    """Shapes of a letterbox without doing it: ``(resized (h, w), output (h, w), ratio)``.

    ``auto=True`` (rect): the long side goes to ``imgsz`` and the short side is padded only up to the
    next multiple of ``stride``. ``auto=False``: padded to the fixed ``imgsz``.
    """
    h0, w0 = src_shape
    th, tw = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    r = min(th / h0, tw / w0)
    if not scaleup:
        r = min(r, 1.0)
    nw, nh = max(1, int(round(w0 * r))), max(1, int(round(h0 * r)))
    if auto:
        oh = nh + (th - nh) % stride
        ow = nw + (tw - nw) % stride
    else:
        oh, ow = th, tw
    return (nh, nw), (oh, ow), r


def letterbox(img: np.ndarray, imgsz: int | tuple[int, int] = IMGSZ.default, stride: int = 32, auto: bool = True,
              scaleup: bool = True, color: int = PAD_VALUE) -> tuple[np.ndarray, LetterboxInfo]:
    """Resize keeping the aspect ratio (bilinear) and pad with grey, padding split evenly.

    Returns the HWC image (same channel order as the input) and the :class:`LetterboxInfo` to map boxes back.
    """
    h0, w0 = img.shape[:2]
    info = letterbox_info((h0, w0), imgsz, stride, auto, scaleup)
    img = letterbox_resize(img, info)
    top, bottom, left, right = letterbox_padding(info)
    if top or bottom or left or right:
        img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT,
                                 value=(color, color, color))
    return img, info


def letterbox_info(src_shape: tuple[int, int], imgsz: int | tuple[int, int] = IMGSZ.default, stride: int = 32,
                   auto: bool = True, scaleup: bool = True) -> LetterboxInfo:
    """The :class:`LetterboxInfo` :func:`letterbox` gives an image of ``src_shape`` (h, w), without the image."""
    (nh, nw), (oh, ow), r = letterbox_shape(src_shape, imgsz, stride, auto, scaleup)
    return LetterboxInfo(r, ((ow - nw) / 2, (oh - nh) / 2), (int(src_shape[0]), int(src_shape[1])), (oh, ow))


def letterbox_resize(img: np.ndarray, info: LetterboxInfo) -> np.ndarray:
    """The resize step of :func:`letterbox` (bilinear, OpenCV's ``INTER_LINEAR``): ``img`` at the size it takes
    inside the padded output (unchanged when it already has it)."""
    (oh, ow), (dw, dh) = info.dst_shape, info.pad
    nh, nw = int(round(oh - 2 * dh)), int(round(ow - 2 * dw))
    if img.shape[:2] != (nh, nw):
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return img


def letterbox_padding(info: LetterboxInfo) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) padding of :func:`letterbox`: the padding split evenly, as YOLOv5 rounds it."""
    dw, dh = info.pad
    return int(round(dh - 0.1)), int(round(dh + 0.1)), int(round(dw - 0.1)), int(round(dw + 0.1))


def to_chw_rgb(img_bgr: np.ndarray) -> np.ndarray:
    """HWC BGR uint8 -> contiguous CHW RGB uint8 (the model's input layout, before /255)."""
    return np.ascontiguousarray(img_bgr[:, :, ::-1].transpose(2, 0, 1))


def xywh2xyxy(x: np.ndarray) -> np.ndarray:
    y = np.empty_like(x)
    y[..., 0] = x[..., 0] - x[..., 2] / 2
    y[..., 1] = x[..., 1] - x[..., 3] / 2
    y[..., 2] = x[..., 0] + x[..., 2] / 2
    y[..., 3] = x[..., 1] + x[..., 3] / 2
    return y


def xyxy2xywh(x: np.ndarray) -> np.ndarray:
    y = np.empty_like(x)
    y[..., 0] = (x[..., 0] + x[..., 2]) / 2
    y[..., 1] = (x[..., 1] + x[..., 3]) / 2
    y[..., 2] = x[..., 2] - x[..., 0]
    y[..., 3] = x[..., 3] - x[..., 1]
    return y


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``(N, 4)`` and ``(M, 4)`` xyxy boxes -> ``(N, M)``."""
    a = a.astype(np.float64, copy=False)
    b = b.astype(np.float64, copy=False)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def match_greedy(xyxy: np.ndarray, conf: np.ndarray, cls: np.ndarray, target_xyxy: np.ndarray,
                 target_cls: np.ndarray, iou_thres: float) -> np.ndarray:
    """One-to-one matching of boxes to target boxes: highest confidence first, each box takes the unused target of
    the same class with the highest IoU >= ``iou_thres``. Returns the matched target index per box, -1 if none."""
    out = np.full(len(xyxy), -1, dtype=np.int64)
    if not len(xyxy) or not len(target_xyxy):
        return out
    iou = box_iou(xyxy, target_xyxy)
    ok = (np.asarray(cls)[:, None] == np.asarray(target_cls)[None, :]) & (iou >= iou_thres)
    taken = np.zeros(len(target_xyxy), bool)
    for i in np.argsort(-np.asarray(conf), kind="stable"):
        cand = np.where(ok[i] & ~taken)[0]
        if len(cand):
            out[i] = cand[np.argmax(iou[i, cand])]
            taken[out[i]] = True
    return out


def iou_cut(iou_thres: float) -> float:
    """The float32 value ``c`` for which a float32 IoU ``x > c`` exactly when ``x > iou_thres`` in double precision,
    as torchvision's NMS compares them (its float IoU against a double threshold): ``iou_thres`` rounded down to
    float32. A float32 comparison with the threshold rounded to nearest kept boxes at an IoU of exactly 60/100 with
    ``--iou 0.6`` (float32(0.6) is above 0.6) that YOLOv5 suppresses."""
    t = np.float32(iou_thres)
    return float(t if float(t) <= iou_thres else np.nextafter(t, np.float32(-np.inf)))


def nms(boxes: np.ndarray, scores: np.ndarray, iou_thres: float, max_keep: int | None = None) -> np.ndarray:
    """Greedy NMS: indices of kept boxes, highest score first. A box is suppressed when its IoU with a
    kept box is strictly greater than ``iou_thres`` (torchvision's rule, :func:`iou_cut`). Stops after
    ``max_keep``."""
    cut = iou_cut(iou_thres)
    order = np.argsort(-scores, kind="stable")
    boxes = boxes.astype(np.float32, copy=False)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    keep: list[int] = []
    limit = len(order) if max_keep is None else max_keep
    while order.size and len(keep) < limit:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        xx1 = np.maximum(x1[i], x1[rest])
        yy1 = np.maximum(y1[i], y1[rest])
        xx2 = np.minimum(x2[i], x2[rest])
        yy2 = np.minimum(y2[i], y2[rest])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        union = areas[i] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= cut]
    return np.asarray(keep, dtype=np.int64)


@dataclass(frozen=True)
class NMSOptions:
    """YOLOv5's NMS settings (see :func:`postprocess`); the defaults are the declared ones (:mod:`toolkit.options`)."""

    conf: float = CONF.default
    iou: float = IOU.default
    max_det: int = MAX_DET.default
    classes: tuple[int, ...] | None = None
    agnostic: bool = False
    multi_label: bool = False
    max_nms: int = 30000
    max_wh: float = 7680.0


def postprocess(pred: np.ndarray, opts: NMSOptions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's raw predictions ``(N, 5 + nc)`` (xywh, objectness, class scores) -> ``(xyxy, conf, cls)``
    in model-input pixels, after YOLOv5's filtering and per-class NMS.

    objectness > conf; score = objectness x class score; the best class (or, with ``multi_label``, every
    class whose score > conf); optional class filter; the ``max_nms`` highest scores go into NMS, boxes
    offset by class unless ``agnostic``; at most ``max_det`` kept. There is no time limit.
    """
    pred = np.asarray(pred, dtype=np.float32)
    x = pred[pred[:, 4] > opts.conf]
    empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    if not len(x):
        return empty
    cls_scores = x[:, 5:] * x[:, 4:5]
    box = xywh2xyxy(x[:, :4])
    if opts.multi_label:
        i, j = np.nonzero(cls_scores > opts.conf)
        box, conf, cls = box[i], cls_scores[i, j], j
    else:
        cls = cls_scores.argmax(1)
        conf = cls_scores[np.arange(len(cls)), cls]
        m = conf > opts.conf
        box, conf, cls = box[m], conf[m], cls[m]
    if opts.classes is not None:
        m = np.isin(cls, np.asarray(opts.classes))
        box, conf, cls = box[m], conf[m], cls[m]
    if not len(box):
        return empty
    order = np.argsort(-conf, kind="stable")[: opts.max_nms]
    box, conf, cls = box[order], conf[order], cls[order]
    offset = 0.0 if opts.agnostic else opts.max_wh
    keep = nms(box + cls[:, None].astype(np.float32) * offset, conf, opts.iou, opts.max_det)
    return box[keep], conf[keep], cls[keep].astype(np.int64)


def final_detections(rows: np.ndarray, opts: NMSOptions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's final detections from a model with NMS inside: ``(max_det, 6)`` rows ``x1 y1 x2 y2 score
    class``, best first, class -1 in the rows past its detections -> ``(xyxy, conf, cls)`` in model-input pixels.

    What ``opts`` asks for is applied on top of what the model did, which gives the same boxes as NMS at these
    settings would: score > ``conf`` (a box never suppresses a higher-scored one), the ``classes`` filter (exact for
    per-class NMS), the first ``max_det``. The model's own IoU threshold and agnostic setting stay as exported."""
    rows = np.asarray(rows, dtype=np.float32).reshape(-1, 6)
    keep = (rows[:, 5] >= 0) & (rows[:, 4] > opts.conf)
    if opts.classes is not None:
        keep &= np.isin(rows[:, 5].astype(np.int64), np.asarray(opts.classes))
    rows = rows[keep][: opts.max_det]
    return rows[:, :4].copy(), rows[:, 4].copy(), rows[:, 5].astype(np.int64)


def unletterbox_params(info: LetterboxInfo) -> tuple[float, float, float]:
    """(gain, pad x, pad y) mapping letterboxed pixels back to the source, recomputed from the two shapes as
    YOLOv5 does: ``source = (letterboxed - pad) / gain``."""
    (h1, w1), (h0, w0) = info.dst_shape, info.src_shape
    gain = min(h1 / h0, w1 / w0)
    return gain, (w1 - w0 * gain) / 2, (h1 - h0 * gain) / 2


def scale_boxes(boxes: np.ndarray, info: LetterboxInfo, clip: bool = True) -> np.ndarray:
    """Map xyxy boxes from letterboxed-input pixels back to the source image, clipped to it.

    Like YOLOv5, the gain and padding are recomputed from the two shapes.
    """
    gain, padx, pady = unletterbox_params(info)
    h0, w0 = info.src_shape
    out = boxes.astype(np.float32, copy=True)
    out[:, [0, 2]] -= padx
    out[:, [1, 3]] -= pady
    out[:, :4] /= gain
    if clip:
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, w0)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, h0)
    return out
