"""Sliced inference for huge images: the tile grid, the boxes every tile found (:class:`Views`), and the merges that
report each object once. Pure functions; :mod:`toolkit.engine.tiled` runs the tiles through any backend.

Merges (``TileOptions.merge``):

* ``views`` (the default): two boxes of one class from different tiles are views of one object when they agree
  where both tiles see (each box clipped to the other's tile: IoU >= ``match``). An object has at most one view
  per tile (a tile's own NMS already told its objects apart), and a true edge that one view shows where the other
  tile sees must be in the other view too, so two objects are never joined. Each object's box takes every side
  from the views that saw that side whole (not cut by an inner tile border), else from the union of its parts;
  its confidence is the highest of its views. A part whose cut sides no
  view completed is dropped only when a box of the same class covers most of it, goes on past those sides (the
  same object, seen better) and is at least half as confident. Last, class-wise NMS at the model's IoU threshold,
  which suppresses a box for one that a tile reported beside it only when the two overlap as duplicates do
  (IoU >= 0.5).
* ``nms``: class-wise NMS over all boxes at the model's IoU threshold.
* ``nmm``: greedy non-maximum merging, as SAHI's GREEDYNMM: the most confident box absorbs every box of its class
  whose intersection over the smaller box is >= ``match`` (union box, highest confidence).

Second look (``TileOptions.refocus``): objects that every tile cut get one more window centred on them (a tile, or
larger and shrunk to the model input when the object is larger), so they are seen whole.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from toolkit.errors import InputError
from toolkit.ops import nms
from toolkit.options import TILING, brief, check, option, typed

Tile = tuple[int, int, int, int]
MERGES = ("views", "nms", "nmm")
# the smallest grid level: windows of tile / 0.01 source pixels (64,000 at --tile 640), past any image's side; a
# smaller one overflowed the grid's arithmetic (1e-320: "cannot convert float infinity to integer")
MIN_SCALE = 0.01


@dataclass(frozen=True)
class TileOptions:
    """Sliced inference's settings, each declared once (:mod:`toolkit.options`; ``yolokit run`` shows them under
    "Tiling"). ``merge``: see the module; ``match``: the merge's overlap threshold (``views``: IoU of two views
    clipped to each other's tile; ``nmm``: intersection over the smaller box); ``near`` (with ``refocus``): the grid's
    NMS runs at ``near`` x conf, which leaves every box above the threshold as it was; the boxes under it are only
    targets for the second look, and only the second look's own boxes above the threshold are kept."""

    tile: int = option(640, "Sliced inference for huge images: tiles of this many source pixels (e.g. 640), merged so "
                       "each object is reported once; 0: off.", panel=TILING, affects_output=True, lo=32, off=0)
    overlap: float = option(0.2, "With --tile: the fraction of a tile shared by its neighbours.", panel=TILING,
                            affects_output=True, lo=0, hi=1, hi_open=True)
    batch: int = option(4, "With --tile: tiles per inference call.", cli_name="tile_batch", panel=TILING, lo=1)
    full_frame: bool = option(True, "With --tile: also run the whole image letterboxed, for objects larger than a "
                              "tile.", decls=("--full-frame/--no-full-frame",), panel=TILING, affects_output=True)
    merge: str = option("views", "With --tile: how the tiles' boxes become one per object. views: boxes that agree "
                        "where their tiles overlap are one object (one box per tile at most; each side from the views "
                        "that saw it whole); nms: class-wise NMS; nmm: greedy non-maximum merging (SAHI's GREEDYNMM: "
                        "union boxes).", cli_name="tile_merge", panel=TILING, affects_output=True, choices=MERGES)
    match: float = option(0.5, "The tile merge's overlap threshold.", cli=False, affects_output=True, lo=0,
                          lo_open=True, hi=1)
    scales: tuple[float, ...] = option((1.0,), "With --tile: grid levels, e.g. 1,0.5: at 0.5, tiles twice as large, "
                                       "shrunk by half. Default 1: one level (the second look, --tile-refocus, costs "
                                       "less for the same recall).", cli_name="tile_scales", text="scales",
                                       panel=TILING, affects_output=True, lo=MIN_SCALE, hi=1)
    refocus: bool = option(True, "With --tile: a second look, one window centred on each object that every tile cut, "
                           "so it is seen whole.", decls=("--tile-refocus/--no-tile-refocus",), cli_name="tile_refocus",
                           panel=TILING, affects_output=True)
    border: float = option(8.0, "A box edge this close (model-input pixels) to an inner tile border counts as cut "
                           "there.", cli=False, affects_output=True, lo=0)
    # measured: recall 0.892 -> 0.914 for 16 % more calls (docs/benchmarks.md)
    near: float = option(0.5, "With --tile and the second look (--tile-refocus): also look again, centred, at boxes "
                         "the tiles found from this fraction of --conf up to it (e.g. 0.5); only boxes above --conf "
                         "are kept. 0: off. More model calls for more recall (docs/benchmarks.md).",
                         cli_name="tile_near", panel=TILING, affects_output=True, lo=0, hi=1, hi_open=True)

    def __post_init__(self) -> None:
        scales = self.scales
        if isinstance(scales, numbers.Real) and not isinstance(scales, bool):
            scales = (scales,)  # one level: TileOptions(scales=0.5)
        scales = () if isinstance(scales, (str, bytes)) or not isinstance(scales, Iterable) else tuple(scales)
        if not all(isinstance(s, numbers.Real) and not isinstance(s, bool) for s in scales) or (
                not scales and self.scales != ()):
            raise InputError(f"--tile-scales takes scales in [{MIN_SCALE:g}, 1] like (1, 0.5), "
                             f"got {brief(self.scales)}")
        object.__setattr__(self, "scales", tuple(float(s) for s in scales))
        if not self.scales:
            raise InputError(f"--tile-scales takes scales in [{MIN_SCALE:g}, 1] like 1,0.5, got none")
        typed(self)
        check(self)


def tile_grid(height: int, width: int, tile: int, overlap: float, align: int = 32) -> list[Tile]:
    """Tiles ``(x0, y0, x1, y1)`` covering the image; neighbours share about ``overlap`` of a tile; an image
    smaller than a tile is one tile. Tile origins are multiples of ``align`` (the model stride), so the image
    sits on the same stride grid in every tile; the last row and column may be narrower (padded when run)."""
    if tile < 32:
        raise InputError(f"the tile side must be at least 32 pixels, got {tile}")
    if not 0 <= overlap < 1:
        raise InputError(f"--overlap must be in [0, 1), got {overlap}")
    step = max(align, int(round(tile * (1 - overlap) / align)) * align)

    def starts(n: int) -> list[int]:
        if n <= tile:
            return [0]
        s = list(range(0, n - tile, step))
        s.append(-(-(n - tile) // align) * align)  # the first aligned origin whose tile reaches the edge
        return sorted(set(s))

    return [(x, y, min(x + tile, width), min(y + tile, height)) for y in starts(height) for x in starts(width)]


def pyramid_grid(height: int, width: int, opts: TileOptions, align: int = 32) -> list[Tile]:
    """The tiles of every grid level (``opts.scales``), finest first; see :func:`tile_grid`."""
    grid: list[Tile] = []
    for s in sorted(set(opts.scales), reverse=True):
        size = int(round(opts.tile / s / align)) * align
        if s < 1 and size >= max(height, width):
            continue  # a coarse level as big as the image: the full-frame pass covers it
        grid.extend(tile_grid(height, width, size, opts.overlap, align))
    return grid


def refocus_windows(targets: np.ndarray, shape: tuple[int, int], tile: int, pad: int = 32,
                    align: int = 1) -> list[Tile]:
    """Windows for a second look at ``targets`` (xyxy boxes, most important first): each a ``tile``-sided square
    (larger when the box and ``pad`` on each side need it) centred on a box not yet held, with ``pad`` to spare, by
    an earlier window; origins on the ``align`` grid, inside the image. Unlike the grid's, by default they are not
    on the model's stride grid: the second look also sees the object at another stride phase, which measurably
    finds more than stride-aligned windows (docs/benchmarks.md)."""
    h, w = shape
    windows: list[Tile] = []
    for x0, y0, x1, y1 in np.asarray(targets, np.float64).reshape(-1, 4):
        if any(a + pad <= x0 and b + pad <= y0 and x1 <= c - pad and y1 <= d - pad for a, b, c, d in windows):
            continue
        side = max(tile, int(np.ceil(max(x1 - x0, y1 - y0) + 2 * pad)))
        side = -(-side // align) * align
        ox = int(np.clip(round(((x0 + x1) / 2 - side / 2) / align) * align, 0, max(0, w - side)))
        oy = int(np.clip(round(((y0 + y1) / 2 - side / 2) / align) * align, 0, max(0, h - side)))
        windows.append((ox, oy, min(ox + side, w), min(oy + side, h)))
    return windows


def cut_sides(xyxy: np.ndarray, rects: np.ndarray, shape: tuple[int, int], border: float | np.ndarray) -> np.ndarray:
    """``(N, 4)`` booleans: whether each box's left, top, right, bottom edge lies within ``border`` (pixels, one
    value or one per box) of an inner border of the tile it was found in (``rects``, one per box), i.e. the object
    may go on past it. Image borders cut nothing."""
    h, w = shape
    xyxy = np.asarray(xyxy, np.float64).reshape(-1, 4)
    r = np.asarray(rects, np.float64).reshape(-1, 4)
    border = np.asarray(border, np.float64)
    return np.stack([(r[:, 0] > 0) & (xyxy[:, 0] <= r[:, 0] + border),
                     (r[:, 1] > 0) & (xyxy[:, 1] <= r[:, 1] + border),
                     (r[:, 2] < w) & (xyxy[:, 2] >= r[:, 2] - border),
                     (r[:, 3] < h) & (xyxy[:, 3] >= r[:, 3] - border)], 1)


@dataclass
class Views:
    """Every box the tiles found, in image coordinates, before merging: ``tile[i]`` indexes ``rects`` (the tile's
    ``(x0, y0, x1, y1)`` in the image) and ``ratios`` (model pixels per source pixel in that tile)."""

    shape: tuple[int, int]
    rects: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))
    ratios: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    xyxy: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    conf: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    cls: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    tile: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def add(self, found: list[tuple[Tile, float, np.ndarray, np.ndarray, np.ndarray]]) -> None:
        """Append tiles in order: ``(rect, ratio, xyxy, conf, cls)`` each, boxes in image coordinates."""
        if not found:
            return
        first = len(self.rects)
        self.rects = np.concatenate([self.rects, np.array([f[0] for f in found], np.int64).reshape(-1, 4)])
        self.ratios = np.concatenate([self.ratios, np.array([f[1] for f in found], np.float64)])
        self.xyxy = np.concatenate([self.xyxy, *(np.asarray(f[2], np.float32).reshape(-1, 4) for f in found)])
        self.conf = np.concatenate([self.conf, *(np.asarray(f[3], np.float32) for f in found)])
        self.cls = np.concatenate([self.cls, *(np.asarray(f[4], np.int64) for f in found)])
        self.tile = np.concatenate([self.tile, *(np.full(len(f[3]), first + k, np.int64)
                                                 for k, f in enumerate(found))])

    @property
    def calls(self) -> int:
        """Tiles run through the model (each full-frame pass and second-look window counts as one)."""
        return len(self.rects)

    def cut(self, border: float = 8.0) -> np.ndarray:
        """:func:`cut_sides` of every box, ``border`` in model-input pixels (so in source pixels, larger in tiles
        shrunk to the model input)."""
        return cut_sides(self.xyxy, self.rects[self.tile], self.shape, border / self.ratios[self.tile])


def _clip_iou(a: np.ndarray, ra: np.ndarray, b: np.ndarray, rb: np.ndarray) -> np.ndarray:
    """IoU of ``a`` clipped to ``rb`` and ``b`` clipped to ``ra`` (rows broadcast): how well two views agree where
    both tiles see. 0 where either clipped box is empty."""
    ca = np.concatenate([np.maximum(a[..., :2], rb[..., :2]), np.minimum(a[..., 2:], rb[..., 2:])], -1)
    cb = np.concatenate([np.maximum(b[..., :2], ra[..., :2]), np.minimum(b[..., 2:], ra[..., 2:])], -1)
    wa, wb = np.clip(ca[..., 2:] - ca[..., :2], 0, None), np.clip(cb[..., 2:] - cb[..., :2], 0, None)
    area_a, area_b = wa.prod(-1), wb.prod(-1)
    inter = np.clip(np.minimum(ca[..., 2:], cb[..., 2:]) - np.maximum(ca[..., :2], cb[..., :2]), 0, None).prod(-1)
    union = area_a + area_b - inter
    ok = (area_a > 0) & (area_b > 0)
    return np.where(ok, inter / np.maximum(union, 1e-9), 0.0)


def _touching_pairs(xyxy: np.ndarray, cls: np.ndarray, tile: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``(i, j)`` of boxes of one class, from different tiles, that overlap (a sweep along x)."""
    order = np.argsort(xyxy[:, 0], kind="stable")
    x0 = xyxy[order, 0]
    ends = np.searchsorted(x0, xyxy[order, 2], side="left")
    first: list[np.ndarray] = []
    second: list[np.ndarray] = []
    for a in range(len(order)):
        b = order[a + 1:ends[a]]
        if not len(b):
            continue
        i = order[a]
        b = b[(cls[b] == cls[i]) & (tile[b] != tile[i]) & (xyxy[b, 1] < xyxy[i, 3]) & (xyxy[b, 3] > xyxy[i, 1])]
        first.append(np.full(len(b), i))
        second.append(b)
    if not first:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(first).astype(np.int64), np.concatenate(second).astype(np.int64)


def _contradicts(a: np.ndarray, hard: np.ndarray, tol: np.ndarray, b: np.ndarray, rb: np.ndarray,
                 frac: float = 0.25) -> np.ndarray:
    """Whether a true edge of ``a`` (``hard``: not cut) that lies clearly inside ``b``'s tile ``rb`` is missing from
    ``b``: ``b``'s edge on that side is more than ``tol`` pixels and ``frac`` of ``a``'s size away (rows
    broadcast). Two views of one object show its edges where both tiles see them."""
    out = np.zeros(np.broadcast(a[..., 0], b[..., 0]).shape, bool)
    for s in range(4):
        lo, hi = (rb[..., 0], rb[..., 2]) if s in (0, 2) else (rb[..., 1], rb[..., 3])
        size = a[..., 2] - a[..., 0] if s in (0, 2) else a[..., 3] - a[..., 1]
        e = a[..., s]
        out |= hard[..., s] & (e > lo + tol) & (e < hi - tol) & (np.abs(e - b[..., s]) > np.maximum(tol, frac * size))
    return out


def group_views(v: Views, match: float, border: float = 8.0, consistent: float = 0.3) -> np.ndarray:
    """One object id per box. Most confident first, each box not yet placed starts an object and gathers, breadth
    first, the views that agree with one of its views (:func:`_clip_iou` >= ``match``, no true edge of either
    missing from the other: :func:`_contradicts`), at most one per tile, and only those that agree at least
    ``consistent``, without contradiction, with every other view whose tile overlaps theirs."""
    n = len(v.xyxy)
    labels = np.full(n, -1, np.int64)
    if not n:
        return labels
    xyxy = v.xyxy.astype(np.float64)
    rects = v.rects[v.tile].astype(np.float64)
    cut = v.cut(border)
    # a true edge: not cut, and (for a left or right edge) the view not cut at the top or bottom, where it would
    # show the extent of a part only (and likewise for a top or bottom edge)
    hard = ~cut & ~np.stack([cut[:, [1, 3]].any(1), cut[:, [0, 2]].any(1)] * 2, 1)
    tol = border / v.ratios[v.tile]

    i, j = _touching_pairs(xyxy, v.cls, v.tile)
    score = _clip_iou(xyxy[i], rects[i], xyxy[j], rects[j])
    bad = (_contradicts(xyxy[i], hard[i], tol[i], xyxy[j], rects[j])
           | _contradicts(xyxy[j], hard[j], tol[j], xyxy[i], rects[i]))
    fits = {(min(a, b), max(a, b)): s
            for a, b, s in zip(i.tolist(), j.tolist(), np.where(bad, 0.0, score).tolist(), strict=True)}
    neighbours: dict[int, list[tuple[float, int]]] = {}
    for (a, b), s in fits.items():
        if s >= match:
            neighbours.setdefault(a, []).append((s, b))
            neighbours.setdefault(b, []).append((s, a))
    for lst in neighbours.values():
        lst.sort(key=lambda t: (-t[0], t[1]))
    box_tile = v.tile.tolist()
    tile_rect = [tuple(r) for r in v.rects.tolist()]

    def overlap(t: int, u: int) -> bool:
        (a0, b0, a1, b1), (c0, d0, c1, d1) = tile_rect[t], tile_rect[u]
        return min(a1, c1) > max(a0, c0) and min(b1, d1) > max(b0, d0)

    next_id = 0
    for seed in np.argsort(-v.conf, kind="stable").tolist():
        if labels[seed] >= 0:
            continue
        labels[seed] = next_id
        members, tiles, queue = [seed], {box_tile[seed]}, [seed]
        while queue:
            m = queue.pop(0)
            for _, c in neighbours.get(m, []):
                if labels[c] >= 0 or box_tile[c] in tiles:
                    continue
                if any(fits.get((min(k, c), max(k, c)), 0.0) < consistent for k in members
                       if overlap(box_tile[k], box_tile[c])):
                    continue
                labels[c] = next_id
                members.append(c)
                tiles.add(box_tile[c])
                queue.append(c)
        next_id += 1
    return labels


def fuse_views(v: Views, labels: np.ndarray, cut: np.ndarray) -> tuple[np.ndarray, ...]:
    """One box per object id. Each side: the median of its finest views that saw it whole (not cut there, nor across
    it: a view cut at the top shows the width of a part only); else the union of the parts that saw it; else the
    farthest cut. The confidence: the highest of its views. Returns ``(xyxy, conf, cls, open)``, ``open``:
    ``(G, 4)`` sides that no view saw (the object may go on past them)."""
    g = int(labels.max()) + 1 if len(labels) else 0
    out = np.zeros((g, 4), np.float32)
    conf = np.zeros(g, np.float32)
    cls = np.zeros(g, np.int64)
    open_ = np.zeros((g, 4), bool)
    ratio = v.ratios[v.tile] if len(v.tile) else np.zeros(0)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(g + 1))
    alone = np.diff(bounds) == 1  # one view: its own box
    out[alone], conf[alone], cls[alone] = v.xyxy[order[bounds[:-1][alone]]], v.conf[order[bounds[:-1][alone]]], \
        v.cls[order[bounds[:-1][alone]]]
    open_[alone] = cut[order[bounds[:-1][alone]]]
    for k in np.where(~alone)[0]:
        mem = order[bounds[k]:bounds[k + 1]]
        rank = np.lexsort((-v.conf[mem], -np.round(ratio[mem], 3)))  # finest view first, then most confident
        mem = mem[rank]
        box = np.empty(4, np.float32)
        for side in range(4):
            across = [1, 3] if side in (0, 2) else [0, 2]  # a view cut across this side sees only part of it
            seen = ~cut[mem, side]
            full = seen & ~cut[mem][:, across].any(1)
            if full.any():  # the median of the finest views that saw this side whole
                fine = mem[full][np.round(ratio[mem[full]], 3) == np.round(ratio[mem[full][0]], 3)]
                box[side] = np.median(v.xyxy[fine, side])
            else:  # parts only: their union (all parts seen this side; else the farthest cut)
                part = mem[seen] if seen.any() else mem
                box[side] = v.xyxy[part, side].min() if side < 2 else v.xyxy[part, side].max()
                open_[k, side] = not seen.any()
        if box[2] <= box[0] or box[3] <= box[1]:  # the views' sides contradict: the best view alone
            box, open_[k] = v.xyxy[mem[0]].copy(), cut[mem[0]]
        out[k], conf[k], cls[k] = box, v.conf[mem].max(), v.cls[mem[0]]
    return out, conf, cls, open_


def _drop_seen_better(xyxy: np.ndarray, conf: np.ndarray, cls: np.ndarray, open_: np.ndarray, border: float,
                      ratio: float = 0.5) -> np.ndarray:
    """Which boxes to keep: a box with open (cut, never completed) sides is dropped when a box of its class, at
    least ``ratio`` times as confident, covers at least half of it and goes on past every open side."""
    keep = np.ones(len(xyxy), bool)
    for f in np.where(open_.any(1))[0]:
        cand = np.where((cls == cls[f]) & (conf >= ratio * conf[f]) & keep)[0]
        cand = cand[cand != f]
        if not len(cand):
            continue
        b, c = xyxy[f], xyxy[cand]
        inter = np.clip(np.minimum(b[2:], c[:, 2:]) - np.maximum(b[:2], c[:, :2]), 0, None).prod(1)
        covers = inter >= 0.5 * max(float(np.prod(b[2:] - b[:2])), 1e-9)
        past = np.ones(len(cand), bool)
        for side in np.where(open_[f])[0]:
            past &= c[:, side] < b[side] - border if side < 2 else c[:, side] > b[side] + border
        if (covers & past).any():
            keep[f] = False
    return keep


def _classwise_nms(xyxy: np.ndarray, conf: np.ndarray, cls: np.ndarray, iou: float) -> np.ndarray:
    if not len(xyxy):
        return np.zeros(0, np.int64)
    offset = cls[:, None].astype(np.float64) * (float(np.abs(xyxy).max()) + 1.0)
    return nms(xyxy.astype(np.float64) + offset, conf, iou)


def _nms_apart(xyxy: np.ndarray, conf: np.ndarray, cls: np.ndarray, told_apart: set[tuple[int, int]],
               iou: float, same: float = 0.5) -> np.ndarray:
    """Class-wise NMS at ``iou`` (indices kept, most confident first) that suppresses a pair ``told_apart`` holds
    (``(low, high)``: one tile reported both, so they are two objects) only when they overlap as one object seen
    twice would (IoU >= ``same``)."""
    if not len(xyxy):
        return np.zeros(0, np.int64)
    from toolkit.ops import box_iou

    order = np.argsort(-conf, kind="stable")
    alive = np.ones(len(xyxy), bool)
    keep: list[int] = []
    for i in order.tolist():
        if not alive[i]:
            continue
        keep.append(i)
        cand = np.where(alive & (cls == cls[i]))[0]
        cand = cand[cand != i]
        if len(cand):
            overlap = box_iou(xyxy[i:i + 1], xyxy[cand])[0]
            alive[[j for j, o in zip(cand.tolist(), overlap.tolist(), strict=True)
                   if o >= same or (o > iou and (min(i, j), max(i, j)) not in told_apart)]] = False
        alive[i] = False
    return np.asarray(keep, np.int64)


def merge_views(v: Views, iou: float, match: float = 0.5, border: float = 8.0) -> tuple[np.ndarray, ...]:
    """The ``views`` merge (see the module): ``(xyxy, conf, cls)``, most confident first."""
    labels = group_views(v, match, border)
    xyxy, conf, cls, open_ = fuse_views(v, labels, v.cut(border))
    by_tile: dict[int, set[int]] = {}
    for t, g in zip(v.tile.tolist(), labels.tolist(), strict=True):
        by_tile.setdefault(t, set()).add(g)
    told_apart = {(a, b) for gs in by_tile.values() if len(gs) > 1 for a in gs for b in gs if a < b}
    keep = np.where(_drop_seen_better(xyxy, conf, cls, open_, border))[0]
    remap = {int(g): n for n, g in enumerate(keep.tolist())}
    apart = {(min(remap[a], remap[b]), max(remap[a], remap[b])) for a, b in told_apart if a in remap and b in remap}
    sel = keep[_nms_apart(xyxy[keep], conf[keep], cls[keep], apart, iou)]
    return xyxy[sel], conf[sel], cls[sel]


def merge_nmm(xyxy: np.ndarray, conf: np.ndarray, cls: np.ndarray, match: float) -> tuple[np.ndarray, ...]:
    """Greedy non-maximum merging, as SAHI's GREEDYNMM with its IOS metric: most confident first, a box absorbs
    every remaining box of its class whose intersection over the smaller of the two is >= ``match`` (measured
    against the box as it was): union box, highest confidence."""
    xyxy = np.asarray(xyxy, np.float64).reshape(-1, 4)
    alive = np.ones(len(xyxy), bool)
    area = np.prod(xyxy[:, 2:] - xyxy[:, :2], axis=1)
    out_box: list[np.ndarray] = []
    out: list[int] = []
    for i in np.argsort(-conf, kind="stable"):
        if not alive[i]:
            continue
        alive[i] = False
        cand = np.where(alive & (cls == cls[i]))[0]
        inter = np.clip(np.minimum(xyxy[i, 2:], xyxy[cand, 2:]) - np.maximum(xyxy[i, :2], xyxy[cand, :2]), 0,
                        None).prod(1)
        take = cand[inter / np.maximum(np.minimum(area[i], area[cand]), 1e-9) >= match]
        box = xyxy[i].copy()
        if len(take):
            box[:2] = np.minimum(box[:2], xyxy[take, :2].min(0))
            box[2:] = np.maximum(box[2:], xyxy[take, 2:].max(0))
            alive[take] = False
        out.append(int(i))
        out_box.append(box)
    idx = np.asarray(out, np.int64)
    boxes = np.asarray(out_box, np.float32).reshape(-1, 4)
    return boxes, np.asarray(conf)[idx], np.asarray(cls)[idx]


def merge(v: Views, opts: TileOptions, iou: float, max_det: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All the tiles' boxes merged by ``opts.merge`` so each object is reported once: ``(xyxy, conf, cls)``, most
    confident first, at most ``max_det``."""
    if opts.merge == "views":
        xyxy, conf, cls = merge_views(v, iou, opts.match, opts.border)
    elif opts.merge == "nmm":
        xyxy, conf, cls = merge_nmm(v.xyxy, v.conf, v.cls, opts.match)
    else:
        k = _classwise_nms(v.xyxy, v.conf, v.cls, iou)
        xyxy, conf, cls = v.xyxy[k], v.conf[k], v.cls[k]
    order = np.argsort(-conf, kind="stable")[:max_det]
    return (np.asarray(xyxy, np.float32)[order], np.asarray(conf, np.float32)[order],
            np.asarray(cls, np.int64)[order])


def near_targets(xyxy: np.ndarray, conf: np.ndarray, cls: np.ndarray, strong_xyxy: np.ndarray,
                 strong_cls: np.ndarray, cover: float = 0.5) -> np.ndarray:
    """Boxes found under the threshold that no box above it (same class) covers by ``cover`` of the weak box's
    area, most confident first: where a second look, centred, may see an object the grid scored too low."""
    xyxy = np.asarray(xyxy, np.float64).reshape(-1, 4)
    keep = np.ones(len(xyxy), bool)
    s = np.asarray(strong_xyxy, np.float64).reshape(-1, 4)
    if len(xyxy) and len(s):
        ix = np.clip(np.minimum(xyxy[:, None, 2], s[None, :, 2]) - np.maximum(xyxy[:, None, 0], s[None, :, 0]), 0,
                     None)
        iy = np.clip(np.minimum(xyxy[:, None, 3], s[None, :, 3]) - np.maximum(xyxy[:, None, 1], s[None, :, 1]), 0,
                     None)
        area = np.maximum((xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1]), 1e-9)
        same = np.asarray(cls)[:, None] == np.asarray(strong_cls)[None, :]
        keep = ~((ix * iy / area[:, None] >= cover) & same).any(1)
    idx = np.where(keep)[0]
    return xyxy[idx[np.argsort(-np.asarray(conf)[idx], kind="stable")]]


def refocus_targets(v: Views, match: float, border: float) -> np.ndarray:
    """The objects that every tile cut (fused boxes with a side no view saw), most confident first: where a second
    look can add something."""
    xyxy, conf, _, open_ = fuse_views(v, group_views(v, match, border), v.cut(border))
    sel = np.where(open_.any(1))[0]
    return xyxy[sel[np.argsort(-conf[sel], kind="stable")]]
