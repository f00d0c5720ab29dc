"""Sliced inference for huge images: overlapping native-resolution tiles, boxes shifted back, merged.

Pure functions: the tile grid, shifting, and the merge (class-wise NMS across tiles, then joining the parts of
objects cut by tile borders). ``Detector.predict_tiled`` runs them with any backend.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from toolkit.ops import nms


@dataclass(frozen=True)
class TileOptions:
    """``tile``: tile side in source pixels; ``overlap``: fraction shared by neighbours; ``batch``: tiles per
    inference call; ``full_frame``: also run the whole image letterboxed (for objects larger than a tile);
    ``merge_ios``: parts of a cut object whose intersection over the smaller box exceeds this are joined."""

    tile: int = 640
    overlap: float = 0.2
    batch: int = 4
    full_frame: bool = True
    merge_ios: float = 0.5
    border: float = 2.0  # a box edge this close (pixels) to an inner tile border counts as cut there


def tile_grid(height: int, width: int, tile: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """Tiles ``(x0, y0, x1, y1)`` covering the image; neighbours share ``overlap`` of a tile; the last row and
    column are aligned to the image edge; an image smaller than a tile is one tile."""
    if tile < 32:
        raise ValueError(f"tile must be at least 32 pixels, got {tile}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    step = max(1, int(round(tile * (1 - overlap))))

    def starts(n: int) -> list[int]:
        if n <= tile:
            return [0]
        s = list(range(0, n - tile, step))
        s.append(n - tile)
        return sorted(set(s))

    return [(x, y, min(x + tile, width), min(y + tile, height)) for y in starts(height) for x in starts(width)]


def cut_mask(xyxy: np.ndarray, tile: tuple[int, int, int, int], shape: tuple[int, int], border: float) -> np.ndarray:
    """For boxes in image coordinates found in ``tile``: which touch an inner tile border (cut objects)."""
    x0, y0, x1, y1 = tile
    h, w = shape
    near = np.zeros(len(xyxy), bool)
    if x0 > 0:
        near |= xyxy[:, 0] <= x0 + border
    if y0 > 0:
        near |= xyxy[:, 1] <= y0 + border
    if x1 < w:
        near |= xyxy[:, 2] >= x1 - border
    if y1 < h:
        near |= xyxy[:, 3] >= y1 - border
    return near


def merge_tiles(xyxy: np.ndarray, conf: np.ndarray, cls: np.ndarray, cut: np.ndarray, iou: float,
                merge_ios: float, max_det: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge detections gathered from all tiles (and the full frame) so each object is reported once.

    1. Class-wise NMS at ``iou``: an object seen whole in two overlapping tiles is kept once.
    2. Cut objects: a box that touches an inner tile border is joined (box union, higher confidence) with a
       same-class box when their intersection over the smaller box exceeds ``merge_ios``; repeated until
       nothing more joins. Boxes that touch no inner border are never joined, so neighbours stay apart.
    """
    if not len(xyxy):
        return xyxy, conf, cls
    offset = cls[:, None].astype(np.float32) * (float(np.abs(xyxy).max()) + 1.0)
    keep = nms(xyxy + offset, conf, iou)
    xyxy, conf, cls, cut = xyxy[keep].copy(), conf[keep].copy(), cls[keep], cut[keep].copy()
    alive = np.ones(len(xyxy), bool)
    changed = True
    while changed:
        changed = False
        for i in np.argsort(-conf, kind="stable"):
            if not alive[i]:
                continue
            others = np.where(alive & (cls == cls[i]) & (np.arange(len(xyxy)) != i) & (cut | cut[i]))[0]
            if not len(others):
                continue
            lt = np.maximum(xyxy[i, :2], xyxy[others, :2])
            rb = np.minimum(xyxy[i, 2:], xyxy[others, 2:])
            inter = np.clip(rb - lt, 0, None).prod(1)
            area_i = np.prod(xyxy[i, 2:] - xyxy[i, :2])
            area_o = np.prod(xyxy[others, 2:] - xyxy[others, :2], axis=1)
            ios = inter / np.maximum(np.minimum(area_i, area_o), 1e-9)
            for j in others[ios > merge_ios]:
                xyxy[i, :2] = np.minimum(xyxy[i, :2], xyxy[j, :2])
                xyxy[i, 2:] = np.maximum(xyxy[i, 2:], xyxy[j, 2:])
                conf[i] = max(conf[i], conf[j])
                cut[i] = cut[i] or cut[j]
                alive[j] = False
                changed = True
    idx = np.where(alive)[0]
    idx = idx[np.argsort(-conf[idx], kind="stable")][:max_det]
    return xyxy[idx], conf[idx], cls[idx]
