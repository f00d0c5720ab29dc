"""Detection metrics as YOLOv5 v7.0's ``val.py`` computes them: pure functions on numpy arrays.

* :func:`match_levels` (``process_batch``): which detections are true positives at each IoU level 0.50:0.05:0.95.
  IoU in float32 with a 1e-7 guard, a pair counts when its IoU is at least the level and the classes agree; per
  level, each detection keeps its best-IoU label, and each label then goes to the first detection (the most
  confident one, detections being in NMS order) that kept it.
* :func:`ap_per_class`: per class, detections ranked by confidence, AP from the 101-point interpolated
  precision envelope (trapezoidal rule); precision and recall read at the confidence where the box-smoothed mean F1
  over classes is highest.

The float32 steps, the levels' exact values and the sort calls follow ``val.py`` so that results agree to the last
digits, not only to the third.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPS = 1e-16  # ap_per_class's guard
PX = np.linspace(0, 1, 1000)  # confidences at which P, R and F1 curves are read


def iou_levels() -> np.ndarray:
    """The ten IoU levels 0.50, 0.55, ... 0.95 as float32, with the values ``torch.linspace(0.5, 0.95, 10)`` gives
    (float32 step, the upper half counted back from the end)."""
    start, end, n = np.float32(0.5), np.float32(0.95), 10
    step = (end - start) / np.float32(n - 1)
    i = np.arange(n, dtype=np.float32)
    return np.where(i < n // 2, start + step * i, end - step * (np.float32(n - 1) - i)).astype(np.float32)


IOU_LEVELS = iou_levels()


def box_iou32(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of ``(N, 4)`` and ``(M, 4)`` xyxy boxes -> ``(N, M)`` float32: intersection over the sum of the areas
    minus the intersection plus 1e-7, each step in float32."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    wh = np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2])
    wh = np.clip(wh, np.float32(0), None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter + np.float32(1e-7))


def match_levels(det_xyxy: np.ndarray, det_cls: np.ndarray, gt_xyxy: np.ndarray, gt_cls: np.ndarray,
                 levels: np.ndarray = IOU_LEVELS) -> np.ndarray:
    """``(N, len(levels))`` bool: detection ``i`` is a true positive at level ``k`` (see the module text).
    Detections must be in NMS order (most confident first)."""
    correct = np.zeros((len(det_xyxy), len(levels)), bool)
    if not len(det_xyxy) or not len(gt_xyxy):
        return correct
    iou = box_iou32(gt_xyxy, det_xyxy)  # (labels, detections)
    same = np.asarray(gt_cls, np.float32)[:, None] == np.asarray(det_cls, np.float32)[None, :]
    for k, level in enumerate(levels):
        li, di = np.nonzero((iou >= level) & same)  # row-major: by label, then detection
        if not len(li):
            continue
        m = np.stack([li.astype(np.float32), di.astype(np.float32), iou[li, di]], 1)
        if len(m) > 1:
            m = m[m[:, 2].argsort()[::-1]]  # best IoU first (numpy's default sort, as val.py)
            m = m[np.unique(m[:, 1], return_index=True)[1]]  # each detection: its best label
            m = m[np.unique(m[:, 0], return_index=True)[1]]  # each label: its first detection
        correct[m[:, 1].astype(int), k] = True
    return correct


def smooth(y: np.ndarray, f: float = 0.05) -> np.ndarray:
    """Box filter over a fraction ``f`` of the points (an odd count), the ends padded with the end values."""
    nf = round(len(y) * f * 2) // 2 + 1
    p = np.ones(nf // 2)
    yp = np.concatenate((p * y[0], y, p * y[-1]), 0)
    return np.convolve(yp, np.ones(nf) / nf, mode="valid")


def compute_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope, interpolated at 101 recall points and integrated by the trapezoidal rule."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    x = np.linspace(0, 1, 101)
    y = np.interp(x, mrec, mpre)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


@dataclass
class ClassMetrics:
    """``ap_per_class``'s result: per class with labels (``classes``, ascending): ``p``, ``r`` and ``f1`` at the
    chosen confidence, ``ap`` ``(C, levels)`` and the label count ``nt``."""

    classes: np.ndarray
    nt: np.ndarray
    p: np.ndarray
    r: np.ndarray
    f1: np.ndarray
    ap: np.ndarray

    @property
    def ap50(self) -> np.ndarray:
        return self.ap[:, 0]

    @property
    def map50(self) -> float:
        return float(self.ap[:, 0].mean()) if len(self.ap) else 0.0

    @property
    def map50_95(self) -> float:
        return float(self.ap.mean(1).mean()) if len(self.ap) else 0.0

    @property
    def mp(self) -> float:
        return float(self.p.mean()) if len(self.p) else 0.0

    @property
    def mr(self) -> float:
        return float(self.r.mean()) if len(self.r) else 0.0


def ap_per_class(tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray) -> ClassMetrics:
    """Per-class AP at every level of ``tp`` ``(N, levels)``, precision, recall and F1 (see the module text).
    ``conf`` and ``pred_cls`` are per detection, ``target_cls`` per label, all images concatenated."""
    i = np.argsort(-conf)
    tp, conf, pred_cls = tp[i], conf[i], pred_cls[i]
    classes, nt = np.unique(target_cls, return_counts=True)
    nc, nl = classes.shape[0], tp.shape[1]
    ap, p, r = np.zeros((nc, nl)), np.zeros((nc, 1000)), np.zeros((nc, 1000))
    for ci, c in enumerate(classes):
        m = pred_cls == c
        n_l, n_p = nt[ci], m.sum()
        if n_p == 0 or n_l == 0:
            continue
        fpc = (1 - tp[m]).cumsum(0)
        tpc = tp[m].cumsum(0)
        recall = tpc / (n_l + EPS)
        precision = tpc / (tpc + fpc)
        r[ci] = np.interp(-PX, -conf[m], recall[:, 0], left=0)
        p[ci] = np.interp(-PX, -conf[m], precision[:, 0], left=1)
        for j in range(nl):
            ap[ci, j] = compute_ap(recall[:, j], precision[:, j])
    f1 = 2 * p * r / (p + r + EPS)
    k = int(smooth(f1.mean(0), 0.1).argmax()) if nc else 0
    return ClassMetrics(classes.astype(int), nt, p[:, k], r[:, k], f1[:, k], ap)
