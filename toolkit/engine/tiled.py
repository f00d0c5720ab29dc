"""Sliced inference of one huge image through the batch routine: overlapping native-resolution tiles, batched
(in a thread pool when given), boxes shifted back (:class:`toolkit.tiling.Views`); with ``refocus``, a second look
centred on the objects every tile cut; then merged by :func:`toolkit.tiling.merge`."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np

from toolkit.detections import Detections
from toolkit.engine.core import CLOSED_WHILE_RUNNING, BatchRoutine, Payload, Result, ordered_map
from toolkit.errors import DetectorClosedError, first_line
from toolkit.io.sources import InputRef
from toolkit.io.transfer import Download
from toolkit.ops import LetterboxInfo, NMSOptions, letterbox, scale_boxes, to_chw_rgb
from toolkit.tiling import (
    Tile,
    TileOptions,
    Views,
    merge,
    near_targets,
    pyramid_grid,
    refocus_targets,
    refocus_windows,
)

Found = tuple[Tile, float, np.ndarray, np.ndarray, np.ndarray]


def run_tiles(routine: BatchRoutine, image: np.ndarray, tiles: list[Tile], batch: int,
              pool: ThreadPoolExecutor | None = None, in_flight: int = 4, nms: NMSOptions | None = None) -> list[Found]:
    """The boxes each tile of ``image`` holds, in image coordinates, in tile order: ``(rect, ratio, xyxy, conf,
    cls)``. Tiles are letterboxed (never upscaled) only when their batch runs, so memory stays at a few batches;
    batches run in ``pool`` threads when given, at most ``in_flight`` at once. ``nms``: other NMS settings than the
    routine's (a lower confidence threshold, for the near-threshold second look)."""
    stride = routine.meta.stride
    times = routine.times

    def run(chunk: list[Tile]) -> list[Found]:
        t0 = time.perf_counter()
        groups: dict[tuple[int, ...], list[tuple[int, np.ndarray, LetterboxInfo]]] = {}
        for k, (x0, y0, x1, y1) in enumerate(chunk):
            lb, info = letterbox(image[y0:y1, x0:x1], routine.imgsz, stride, auto=routine.auto, scaleup=False)
            groups.setdefault(lb.shape, []).append((k, to_chw_rgb(lb), info))
        times.add("pre", time.perf_counter() - t0)
        out: list[Found | None] = [None] * len(chunk)
        for group in groups.values():
            t1 = time.perf_counter()
            preds = routine.infer(np.stack([g[1] for g in group]))
            t2 = time.perf_counter()
            for (k, _, info), pred in zip(group, preds, strict=True):
                xyxy, conf, cls = routine.detect(pred, nms)
                x0, y0 = chunk[k][:2]
                xyxy = scale_boxes(xyxy, info) + np.array([x0, y0, x0, y0], np.float32)
                out[k] = (chunk[k], float(info.ratio), xyxy, conf, cls)
            times.add("infer", t2 - t1)
            times.add("post", time.perf_counter() - t2)
        return [o for o in out if o is not None]

    chunks = [tiles[i:i + batch] for i in range(0, len(tiles), batch)]
    found: list[Found] = []
    results = ordered_map(pool, run, chunks, window=in_flight) if pool is not None else map(run, chunks)
    for part in results:
        found.extend(part)
    return found


def collect_views(routine: BatchRoutine, image: np.ndarray, tile: TileOptions, pool: ThreadPoolExecutor | None = None,
                  in_flight: int = 4) -> Views:
    """Every box the tiles of ``image`` found, before merging: the grid (every level of ``tile.scales``), the
    whole image letterboxed (``tile.full_frame``), and with ``tile.refocus`` one window centred on each object that
    every tile cut."""
    h, w = image.shape[:2]
    grid = pyramid_grid(h, w, tile)
    views = Views((h, w))
    thr = routine.nms.conf
    near = tile.near > 0 and tile.refocus and len(grid) > 1
    found = run_tiles(routine, image, grid, tile.batch, pool, in_flight,
                      replace(routine.nms, conf=thr * tile.near) if near else None)
    weak: list[np.ndarray] = []
    if near:  # the boxes under the threshold are only targets for the second look
        weak = [np.concatenate([f[2][f[3] <= thr].reshape(-1, 4) for f in found] or [np.zeros((0, 4))]),
                np.concatenate([f[3][f[3] <= thr] for f in found] or [np.zeros(0)]),
                np.concatenate([f[4][f[3] <= thr] for f in found] or [np.zeros(0)])]
        found = [(r, q, xyxy[c > thr], c[c > thr], k[c > thr]) for r, q, xyxy, c, k in found]  # as NMS keeps
    views.add(found)
    if tile.full_frame and len(grid) > 1:
        chw, info = routine.preprocess(image)
        d = routine.postprocess(routine.infer(chw[None])[0], info)
        views.add([((0, 0, w, h), float(info.ratio), d.xyxy, d.confidence, d.class_id)])
    if tile.refocus and len(grid) > 1:
        t0 = time.perf_counter()
        targets = refocus_targets(views, tile.match, tile.border)
        if near:
            targets = np.concatenate([targets.reshape(-1, 4),
                                      near_targets(weak[0], weak[1], weak[2], views.xyxy, views.cls)])
        windows = refocus_windows(targets, (h, w), tile.tile)
        routine.times.add("post", time.perf_counter() - t0)
        views.add(run_tiles(routine, image, windows, tile.batch, pool, in_flight))
    return views


def predict_tiled(routine: BatchRoutine, image: np.ndarray, tile: TileOptions, path: str | None = None,
                  pool: ThreadPoolExecutor | None = None, in_flight: int = 4) -> Detections:
    """Detections for one (huge) image by sliced inference (:func:`collect_views`, then :func:`toolkit.tiling.merge`
    by ``tile.merge``)."""
    h, w = image.shape[:2]
    if len(pyramid_grid(h, w, tile)) <= 1:  # it fits one tile: the plain pass (the tile alone is not enlarged, and
        chw, info = routine.preprocess(image)  # found 5 of plain predict's 7 boxes on a 500x381 photo at --tile 640)
        routine.times.add("read", 0.0, images=1)
        return routine.postprocess(routine.infer(chw[None])[0], info, path)
    views = collect_views(routine, image, tile, pool, in_flight)
    t0 = time.perf_counter()
    xyxy, conf, cls = merge(views, tile, routine.nms.iou, routine.nms.max_det)
    routine.times.add("post", time.perf_counter() - t0)
    routine.times.add("read", 0.0, images=1)
    return Detections(xyxy, conf, cls, routine.names, path, (h, w))


def tiled_result(routine: BatchRoutine, ref: InputRef, payload: Payload, tile: TileOptions, keep_images: bool,
                 pool: ThreadPoolExecutor | None, in_flight: int = 4) -> Result:
    """One input through tiled inference: read whole (tiles are native resolution), or its failure."""
    if isinstance(payload, str):
        return Result(ref, error=payload)
    if payload is None or isinstance(payload, Download):
        got = routine.load_input(ref, fast_decode=False, data=payload)
        if isinstance(got, str):
            return Result(ref, error=got)
        payload = got[0]
    try:
        d = predict_tiled(routine, payload, tile, ref.path, pool, in_flight)
    except DetectorClosedError:
        raise
    except Exception as e:  # this image fails, the run goes on
        if routine.closed:
            raise DetectorClosedError(CLOSED_WHILE_RUNNING) from None
        return Result(ref, error=f"tiled inference failed: {first_line(e)}")
    return Result(ref, d, image=payload if keep_images else None)
