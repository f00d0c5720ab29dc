"""Measuring tiled inference the way it is used: images at native size placed at random (not on the stride grid) on a
large canvas, against what the model finds on each image alone. Measurement beside the bench, shared by
``tests/test_tiling.py`` and ``scripts/tiling_bench.py``; nothing in yolokit's run path imports it.

Figures (:class:`TilingScore`), all against the reference, same class, IoU >= 0.5:

* recall: reference boxes matched one to one (most confident box first) by the merged output; raw recall: those
  that some tile found as an object of its own (matched one to one among that tile's boxes), before merging; the
  merge loss is their difference;
* unmatched: output boxes that match no reference box at all;
* fragments: same-class pairs nested in each other (intersection over the smaller box >= 0.5, IoU < 0.5), to be
  compared with the reference's own count;
* duplicates: same-class pairs at IoU >= 0.5 (the model's own NMS never leaves one);
* model calls (tiles run) and wall time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from toolkit.ops import box_iou, letterbox, match_greedy, to_chw_rgb

if TYPE_CHECKING:
    from toolkit.engine.core import BatchRoutine

Boxes = tuple[np.ndarray, np.ndarray, np.ndarray]  # xyxy, conf, cls


def place(sizes: Sequence[tuple[int, int]], canvas: tuple[int, int], seed: int, gap: int = 8,
          tries: int = 4000) -> np.ndarray:
    """Random top-left corners ``(x, y)`` for images of ``sizes`` ``(h, w)`` on a ``canvas`` ``(h, w)``: uniform
    integer positions (so not on any stride grid), no two images closer than ``gap``; larger images are placed
    first. Raises ``ValueError`` when the canvas is too crowded."""
    rng = np.random.default_rng(seed)
    ch, cw = canvas
    out = np.zeros((len(sizes), 2), np.int64)
    placed = np.zeros((0, 4), np.int64)
    for k in sorted(range(len(sizes)), key=lambda i: -sizes[i][0] * sizes[i][1]):
        h, w = sizes[k]
        if h > ch or w > cw:
            raise ValueError(f"an image of {w}x{h} does not fit on a {cw}x{ch} canvas")
        for _ in range(0, tries, 256):
            x = rng.integers(0, cw - w + 1, 256)
            y = rng.integers(0, ch - h + 1, 256)
            free = ~((x[:, None] < placed[None, :, 2] + gap) & (x[:, None] + w + gap > placed[None, :, 0])
                     & (y[:, None] < placed[None, :, 3] + gap) & (y[:, None] + h + gap > placed[None, :, 1])).any(1)
            if free.any():
                i = int(np.argmax(free))
                out[k] = x[i], y[i]
                placed = np.concatenate([placed, [[x[i], y[i], x[i] + w, y[i] + h]]])
                break
        else:
            raise ValueError(f"could not place {len(sizes)} images on a {cw}x{ch} canvas: use a larger canvas")
    return out


def mosaic(images: Sequence[np.ndarray], canvas: tuple[int, int], seed: int, fill: int = 114) -> tuple[np.ndarray,
                                                                                                           np.ndarray]:
    """The images at native size on a grey canvas at :func:`place`'s positions: ``(canvas image, offsets)``."""
    offsets = place([im.shape[:2] for im in images], canvas, seed)
    out = np.full((*canvas, 3), fill, np.uint8)
    for im, (x, y) in zip(images, offsets, strict=True):
        out[y:y + im.shape[0], x:x + im.shape[1]] = im
    return out, offsets


def native_reference(routine: BatchRoutine, images: Sequence[np.ndarray]) -> list[Boxes]:
    """What the model finds on each image alone at its native size: letterboxed without upscaling, as the mosaic
    holds it and as tiles are never upscaled (18 coco128 images are smaller than 640)."""
    out = []
    for im in images:
        lb, info = letterbox(im, routine.imgsz, routine.meta.stride, auto=routine.auto, scaleup=False)
        d = routine.postprocess(routine.infer(to_chw_rgb(lb)[None])[0], info)
        out.append((d.xyxy, d.confidence, d.class_id))
    return out


def shifted(reference: Sequence[Boxes], offsets: np.ndarray) -> Boxes:
    """Per-image boxes moved to their places on the canvas, concatenated."""
    xyxy = [r[0] + np.array([x, y, x, y], np.float32) for r, (x, y) in zip(reference, offsets, strict=True)]
    return (np.concatenate(xyxy).reshape(-1, 4), np.concatenate([r[1] for r in reference]),
            np.concatenate([r[2] for r in reference]))


def matched(ref: Boxes, got: Boxes, iou: float = 0.5) -> int:
    """Reference boxes matched one to one by ``got`` (same class, IoU >= ``iou``, most confident box first)."""
    return int((match_greedy(got[0], got[1], got[2], ref[0], ref[2], iou) >= 0).sum())


def found_by_tiles(ref: Boxes, raw: Boxes, tile: np.ndarray, iou: float = 0.5) -> int:
    """Reference boxes that some tile found as an object of its own: matched one to one among the boxes of one
    tile (``tile``: the tile of each raw box). Two tiles' views of one object never count as two objects."""
    found = np.zeros(len(ref[0]), bool)
    tile = np.asarray(tile)
    order = np.argsort(tile, kind="stable")
    cuts = np.flatnonzero(np.diff(tile[order])) + 1
    for idx in np.split(order, cuts):
        if len(idx):
            m = match_greedy(raw[0][idx], raw[1][idx], raw[2][idx], ref[0], ref[2], iou)
            found[m[m >= 0]] = True
    return int(found.sum())


def unmatched(ref: Boxes, got: Boxes, iou: float = 0.5) -> int:
    """Boxes of ``got`` that overlap no reference box of their class at IoU >= ``iou``."""
    if not len(got[0]):
        return 0
    if not len(ref[0]):
        return len(got[0])
    ok = (box_iou(got[0], ref[0]) >= iou) & (got[2][:, None] == ref[2][None, :])
    return int((~ok.any(1)).sum())


def _same_class_pairs(boxes: Boxes) -> tuple[np.ndarray, np.ndarray]:
    """IoU and intersection over the smaller box of every same-class pair ``i < j``."""
    xyxy, cls = np.asarray(boxes[0], np.float64).reshape(-1, 4), np.asarray(boxes[2])
    ious, ioss = [], []
    for c in np.unique(cls):
        b = xyxy[cls == c]
        if len(b) < 2:
            continue
        iou = box_iou(b, b)
        area = np.prod(b[:, 2:] - b[:, :2], axis=1)
        inter = np.clip(np.minimum(b[:, None, 2:], b[None, :, 2:]) - np.maximum(b[:, None, :2], b[None, :, :2]),
                        0, None).prod(-1)
        ios = inter / np.maximum(np.minimum(area[:, None], area[None, :]), 1e-9)
        iu = np.triu_indices(len(b), 1)
        ious.append(iou[iu])
        ioss.append(ios[iu])
    if not ious:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(ious), np.concatenate(ioss)


def duplicates(boxes: Boxes, iou: float = 0.5) -> int:
    """Same-class pairs at IoU >= ``iou``: one object reported twice."""
    return int((_same_class_pairs(boxes)[0] >= iou).sum())


def fragments(boxes: Boxes, ios: float = 0.5, iou: float = 0.5) -> int:
    """Same-class pairs nested in each other (intersection over the smaller box >= ``ios``) without being
    duplicates (IoU < ``iou``): the part of a cut object left beside the whole, or two objects one in front of
    the other."""
    u, s = _same_class_pairs(boxes)
    return int(((s >= ios) & (u < iou)).sum())


@dataclass
class TilingScore:
    """One tiled inference of a mosaic against its reference (see the module)."""

    reference: int
    found: int
    raw_found: int
    boxes: int
    unmatched: int
    fragments: int
    reference_fragments: int
    duplicates: int
    calls: int
    seconds: float

    @property
    def recall(self) -> float:
        return self.found / max(self.reference, 1)

    @property
    def raw_recall(self) -> float:
        return self.raw_found / max(self.reference, 1)

    @property
    def merge_loss(self) -> float:
        """What the tiles found and the merge lost, as a fraction of the reference."""
        return (self.raw_found - self.found) / max(self.reference, 1)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "recall": self.recall, "raw_recall": self.raw_recall, "merge_loss": self.merge_loss}


def score(ref: Boxes, raw: Boxes, raw_tile: np.ndarray, final: Boxes, calls: int, seconds: float) -> TilingScore:
    """Every figure of one run: ``raw``, the boxes of all tiles before merging, ``raw_tile`` the tile of each;
    ``final``, the merged output."""
    return TilingScore(reference=len(ref[0]), found=matched(ref, final), raw_found=found_by_tiles(ref, raw, raw_tile),
                       boxes=len(final[0]), unmatched=unmatched(ref, final), fragments=fragments(final),
                       reference_fragments=fragments(ref), duplicates=duplicates(final), calls=calls,
                       seconds=seconds)


def mean_scores(scores: Sequence[TilingScore]) -> dict[str, float]:
    """The mean of every figure over several mosaics (seeds)."""
    rows = [s.to_dict() for s in scores]
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
