"""Sliced inference for huge images."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers.matching import iou_matrix
from toolkit import Detector
from toolkit.ops import letterbox, to_chw_rgb
from toolkit.tiling import TileOptions, cut_mask, merge_tiles, pyramid_grid, tile_grid


def test_tile_grid_covers_with_overlap_and_edge_alignment() -> None:
    tiles = tile_grid(1000, 1500, 640, 0.2)
    cover = np.zeros((1000, 1500), bool)
    for x0, y0, x1, y1 in tiles:
        assert x0 % 32 == 0 and y0 % 32 == 0  # origins on the model's stride grid
        assert 0 < x1 - x0 <= 640 and 0 < y1 - y0 <= 640
        cover[y0:y1, x0:x1] = True
    assert cover.all()
    xs = sorted({t[0] for t in tiles})
    assert xs[1] - xs[0] == 512  # step = 640 * (1 - 0.2)
    assert max(t[2] for t in tiles) == 1500 and max(t[3] for t in tiles) == 1000
    assert tile_grid(300, 400, 640, 0.2) == [(0, 0, 400, 300)]
    with pytest.raises(ValueError):
        tile_grid(100, 100, 640, 1.0)


def test_merge_removes_overlap_duplicates_and_joins_cut_objects() -> None:
    xyxy = np.array([
        [100, 100, 200, 200],  # an object seen whole in two tiles ...
        [101, 100, 201, 200],  # ... twice
        [500, 300, 640, 400],  # left part of a big object cut by the border x=640 (tile 0) ...
        [512, 300, 800, 400],  # ... and its right part, cut by x=512 (tile 1)
        [300, 500, 350, 550],  # neighbours of the same class inside the tile, not cut: stay apart
        [352, 500, 400, 550],
        [600, 100, 640, 150],  # a partial view, cut at x=640 (tile 0), of an object seen whole in tile 1
        [590, 100, 660, 150],
    ], np.float32)
    conf = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.5, 0.4, 0.6], np.float32)
    cls = np.zeros(8, np.int64)
    tile_id = np.array([0, 1, 0, 1, 0, 0, 0, 1])
    in_tile0 = tile_id == 0
    assert cut_mask(xyxy[in_tile0], (0, 0, 640, 640), (1000, 2000), 2.0).tolist() == [False, True, False, False,
                                                                                      True]
    assert cut_mask(xyxy[[3]], (512, 0, 1152, 640), (1000, 2000), 2.0).tolist() == [True]  # cut at x=512
    cut = np.array([False, False, True, True, False, False, True, False])
    out, c, k = merge_tiles(xyxy, conf, cls, cut, tile_id, iou=0.45, merge_ios=0.2, max_det=100)
    assert len(out) == 5  # duplicate removed, cut parts joined, partial view dropped, neighbours kept
    assert any(np.allclose(b, [500, 300, 800, 400]) for b in out)
    assert any(np.allclose(b, [590, 100, 660, 150]) for b in out)
    assert not any(np.allclose(b, [600, 100, 640, 150]) for b in out)


def _reference(det: Detector, images: list[Path]) -> list[tuple[np.ndarray, np.ndarray]]:
    """What the model finds on each image alone at its native size (letterboxed without upscaling: 18 coco128
    images are smaller than 640, and the mosaic holds them at native size, as tiles never upscale)."""
    out = []
    for p in images:
        img = cv2.imread(str(p))
        assert img is not None
        lb, info = letterbox(img, det.imgsz, det.meta.stride, auto=det.auto, scaleup=False)
        d = det.postprocess(det.infer(to_chw_rgb(lb)[None])[0], info)
        out.append((d.xyxy, d.class_id))
    return out


def _recall(ref_xyxy: np.ndarray, ref_cls: np.ndarray, got_xyxy: np.ndarray, got_cls: np.ndarray) -> float:
    if not len(got_xyxy):
        return 0.0
    iou = iou_matrix(ref_xyxy.astype(np.float64), got_xyxy.astype(np.float64))
    iou[ref_cls[:, None] != got_cls[None, :]] = 0
    return float((iou.max(1) >= 0.5).mean())


def test_tiled_mosaic_recovers_what_the_model_finds_image_by_image(coco128_images: Path, yolov5n_pt: Path) -> None:
    """A 13400x9528 mosaic of coco128 images at native size (placed on 32-pixel cells); tiled inference with the
    defaults (tile 640, overlap 0.3, pyramid levels 1 and 0.5, full-frame pass) finds at least 90 % of what the
    model finds on the images one by one at native size, plain letterboxed inference almost nothing; no duplicates.
    Measured here: 0.906 (README)."""
    files = sorted(coco128_images.glob("*.jpg"))
    det = Detector(yolov5n_pt)
    canvas = np.full((9528, 13400, 3), 114, np.uint8)
    ref_boxes, ref_cls = [], []
    col = row = 0
    cell_w, cell_h = 672, 672
    for f, (xyxy, cls) in zip(files, _reference(det, files), strict=True):
        img = cv2.imread(str(f))
        assert img is not None
        h, w = img.shape[:2]
        x0, y0 = col * cell_w, row * cell_h
        canvas[y0:y0 + h, x0:x0 + w] = img
        ref_boxes.append(xyxy + np.array([x0, y0, x0, y0], np.float32))
        ref_cls.append(cls)
        col += 1
        if (col + 1) * cell_w > 13400:
            col, row = 0, row + 1
    rx, rc = np.concatenate(ref_boxes), np.concatenate(ref_cls)
    assert len(rx) > 400
    tiled = det.predict(canvas, tile=TileOptions(tile=640))[0]
    plain = det.predict(canvas)[0]
    tiled_recall = _recall(rx, rc, tiled.xyxy, tiled.class_id)
    plain_recall = _recall(rx, rc, plain.xyxy, plain.class_id)
    print(f"mosaic: {len(rx)} reference boxes; tiled recall {tiled_recall:.3f} ({len(tiled)} boxes), "
          f"plain letterbox recall {plain_recall:.3f} ({len(plain)} boxes)")
    assert tiled_recall >= 0.90
    assert plain_recall < 0.1 * tiled_recall
    # no object reported twice: no same-class pair at IoU >= 0.5
    iou = iou_matrix(tiled.xyxy.astype(np.float64), tiled.xyxy.astype(np.float64))
    same = tiled.class_id[:, None] == tiled.class_id[None, :]
    np.fill_diagonal(iou, 0)
    assert not ((iou >= 0.5) & same).any()


def test_pyramid_grid_adds_coarser_levels_and_skips_those_as_big_as_the_image() -> None:
    fine = tile_grid(2000, 3000, 640, 0.3)
    both = pyramid_grid(2000, 3000, TileOptions(tile=640, overlap=0.3, scales=(1.0, 0.5)))
    assert both[:len(fine)] == fine
    coarse = both[len(fine):]
    assert coarse == tile_grid(2000, 3000, 1280, 0.3)
    assert all(x1 - x0 <= 1280 and y1 - y0 <= 1280 for x0, y0, x1, y1 in coarse)
    # a level whose tile covers the whole image adds nothing: the full-frame pass sees it
    assert pyramid_grid(900, 1200, TileOptions(tile=640, scales=(1.0, 0.5))) == tile_grid(900, 1200, 640, 0.3)
    with pytest.raises(ValueError, match="scales"):
        pyramid_grid(900, 1200, TileOptions(scales=(2.0,)))
