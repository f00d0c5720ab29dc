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
    inference call; ``scales``: pyramid levels; ``full_frame``: also run the whole image letterboxed (for objects
    larger than every tile);
    ``merge_ios``: parts of a cut object whose intersection over the smaller box exceeds this are joined."""

    tile: int = 640
    overlap: float = 0.3
    batch: int = 4
    full_frame: bool = True
    merge_ios: float = 0.5
    border: float = 2.0  # a box edge this close (pixels) to an inner tile border counts as cut there
    scales: tuple[float, ...] = (1.0, 0.5)  # pyramid levels: at scale s, tiles of tile/s source pixels,
    # shrunk to tile (0.5: objects cut at full resolution are seen whole at half)


def pyramid_grid(height: int, width: int, opts: TileOptions, align: int = 32) -> list[tuple[int, int, int, int]]:
    """The tiles of every pyramid level (``opts.scales``), finest first; see :func:`tile_grid`."""
    grid: list[tuple[int, int, int, int]] = []
    for s in opts.scales:
        if not 0 < s <= 1:
            raise ValueError(f"tile scales must be in (0, 1], got {s}")
        size = int(round(opts.tile / s / align)) * align
        if s < 1 and size >= max(height, width):
            continue  # a coarse level as big as the image: the full-frame pass covers it
        grid.extend(tile_grid(height, width, size, opts.overlap, align))
    return grid


def tile_grid(height: int, width: int, tile: int, overlap: float, align: int = 32) -> list[tuple[int, int, int, int]]:
    """Tiles ``(x0, y0, x1, y1)`` covering the image; neighbours share about ``overlap`` of a tile; an image
    smaller than a tile is one tile. Tile origins are multiples of ``align`` (the model stride), so the image
    sits on the same stride grid in every tile; the last row and column may be narrower (padded when run)."""
    if tile < 32:
        raise ValueError(f"tile must be at least 32 pixels, got {tile}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    step = max(align, int(round(tile * (1 - overlap) / align)) * align)

    def starts(n: int) -> list[int]:
        if n <= tile:
            return [0]
        s = list(range(0, n - tile, step))
        s.append(-(-(n - tile) // align) * align)  # the first aligned origin whose tile reaches the edge
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


def _ios(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Intersection over the smaller box, of one box against many."""
    lt = np.maximum(box[:2], others[:, :2])
    rb = np.minimum(box[2:], others[:, 2:])
    inter = np.clip(rb - lt, 0, None).prod(1)
    small = np.minimum(np.prod(box[2:] - box[:2]), np.prod(others[:, 2:] - others[:, :2], axis=1))
    return np.asarray(inter / np.maximum(small, 1e-9))


def merge_tiles(xyxy: np.ndarray, conf: np.ndarray, cls: np.ndarray, cut: np.ndarray, tile_id: np.ndarray,
                iou: float, merge_ios: float, max_det: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge detections gathered from all tiles (and the full frame) so each object is reported once.

    1. Class-wise NMS at ``iou``: an object seen whole in two overlapping tiles is kept once.
    2. A box cut by an inner tile border is dropped when a whole (uncut) box of the same class from another
       tile covers it (intersection over the smaller box > ``merge_ios``): the whole view wins.
    3. The remaining cut parts of one object, from different tiles, are joined (box union, higher confidence)
       when they overlap by more than ``merge_ios`` of the smaller part.
    Uncut boxes are never joined with each other, so neighbouring objects stay apart.
    """
    if not len(xyxy):
        return xyxy, conf, cls
    offset = cls[:, None].astype(np.float32) * (float(np.abs(xyxy).max()) + 1.0)
    keep = nms(xyxy + offset, conf, iou)
    xyxy, conf, cls, cut, tile_id = xyxy[keep].copy(), conf[keep].copy(), cls[keep], cut[keep], tile_id[keep]
    alive = np.ones(len(xyxy), bool)
    whole = np.where(~cut)[0]
    for i in np.where(cut)[0]:
        cand = whole[(cls[whole] == cls[i]) & (tile_id[whole] != tile_id[i])]
        if len(cand) and (_ios(xyxy[i], xyxy[cand]) > merge_ios).any():
            alive[i] = False
    for i in np.argsort(-conf, kind="stable"):
        if not alive[i] or not cut[i]:
            continue
        cand = np.where(alive & cut & (cls == cls[i]) & (tile_id != tile_id[i]))[0]
        cand = cand[cand != i]
        if not len(cand):
            continue
        for j in cand[_ios(xyxy[i], xyxy[cand]) > merge_ios]:
            xyxy[i, :2] = np.minimum(xyxy[i, :2], xyxy[j, :2])
            xyxy[i, 2:] = np.maximum(xyxy[i, 2:], xyxy[j, 2:])
            conf[i] = max(conf[i], conf[j])
            alive[j] = False
    idx = np.where(alive)[0]
    idx = idx[np.argsort(-conf[idx], kind="stable")][:max_det]
    return xyxy[idx], conf[idx], cls[idx]
