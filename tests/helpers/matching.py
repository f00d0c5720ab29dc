"""Box matching used by parity tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def read_label_file(path: Path) -> np.ndarray:
    """Rows of ``class xc yc w h [conf]`` as a float64 array (0 rows when the file is absent)."""
    if not path.is_file():
        return np.zeros((0, 6))
    rows = [list(map(float, line.split())) for line in path.read_text().splitlines() if line.strip()]
    arr = np.array(rows, dtype=np.float64)
    if arr.shape[1] == 5:
        arr = np.concatenate([arr, np.ones((len(arr), 1))], 1)
    return arr


def xywhn_to_xyxy(a: np.ndarray, w: int, h: int) -> np.ndarray:
    xc, yc, bw, bh = a[:, 1] * w, a[:, 2] * h, a[:, 3] * w, a[:, 4] * h
    return np.stack([xc - bw / 2, yc - bh / 2, xc + bw / 2, yc + bh / 2], 1)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area_a = (a[:, 2:] - a[:, :2]).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).prod(1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def match(ref_xyxy: np.ndarray, ref_cls: np.ndarray, ref_conf: np.ndarray, got_xyxy: np.ndarray,
          got_cls: np.ndarray, got_conf: np.ndarray, min_iou: float, conf_tol: float | None) -> tuple[int, int]:
    """Greedy one-to-one matching of reference boxes: (matched, unmatched extras among ``got``)."""
    if not len(ref_xyxy):
        return 0, len(got_xyxy)
    if not len(got_xyxy):
        return 0, 0
    iou = iou_matrix(ref_xyxy, got_xyxy)
    ok = (ref_cls[:, None] == got_cls[None, :]) & (iou >= min_iou)
    if conf_tol is not None:
        ok &= np.abs(ref_conf[:, None] - got_conf[None, :]) <= conf_tol
    score = np.where(ok, iou, -1)
    used = np.zeros(len(got_xyxy), bool)
    matched = 0
    for i in np.argsort(-ref_conf):
        cand = np.where((score[i] >= 0) & ~used)[0]
        if len(cand):
            j = cand[np.argmax(score[i, cand])]
            used[j] = True
            matched += 1
    return matched, int((~used).sum())
