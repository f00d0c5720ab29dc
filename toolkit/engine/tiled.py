"""Sliced inference of one huge image through the batch routine: overlapping native-resolution tiles, batched
(in a thread pool when given), boxes shifted back and merged by :func:`toolkit.tiling.merge_tiles`."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from toolkit.detections import Detections
from toolkit.engine.core import BatchRoutine, Payload, Result, ordered_map
from toolkit.errors import first_line
from toolkit.io.sources import InputRef
from toolkit.ops import LetterboxInfo, letterbox, scale_boxes, to_chw_rgb
from toolkit.tiling import TileOptions, cut_mask, merge_tiles, pyramid_grid

Tile = tuple[int, int, int, int]


def predict_tiled(routine: BatchRoutine, image: np.ndarray, tile: TileOptions, path: str | None = None,
                  pool: ThreadPoolExecutor | None = None, in_flight: int = 4) -> Detections:
    """Detections for one (huge) image by sliced inference: overlapping native-resolution tiles, batched through the
    backend (in ``pool`` threads when given, at most ``in_flight`` tile batches at once), boxes shifted back and
    merged; with ``tile.full_frame`` also the whole image letterboxed."""
    h, w = image.shape[:2]
    grid = pyramid_grid(h, w, tile)
    stride = routine.meta.stride
    times = routine.times
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def run(chunk: list[tuple[int, Tile]]) -> None:
        # tiles are letterboxed only when their batch runs: memory stays at one batch of tiles
        t0 = time.perf_counter()
        groups: dict[tuple[int, ...], list[tuple[int, Tile, np.ndarray, LetterboxInfo]]] = {}
        for k, box in chunk:
            x0, y0, x1, y1 = box
            lb, info = letterbox(image[y0:y1, x0:x1], routine.imgsz, stride, auto=routine.auto, scaleup=False)
            groups.setdefault(lb.shape, []).append((k, box, to_chw_rgb(lb), info))
        times.add("pre", time.perf_counter() - t0)
        for group in groups.values():
            t1 = time.perf_counter()
            preds = routine.infer(np.stack([g[2] for g in group]))
            t2 = time.perf_counter()
            for (k, box, _, info), pred in zip(group, preds, strict=True):
                xyxy, conf, cls = routine.detect(pred)
                xyxy = scale_boxes(xyxy, info) + np.array([box[0], box[1], box[0], box[1]], np.float32)
                parts.append((xyxy, conf, cls, cut_mask(xyxy, box, (h, w), tile.border), np.full(len(xyxy), k)))
            times.add("infer", t2 - t1)
            times.add("post", time.perf_counter() - t2)

    indexed = list(enumerate(grid))
    chunks = [indexed[i:i + tile.batch] for i in range(0, len(indexed), tile.batch)]
    if pool is not None:
        for _ in ordered_map(pool, run, chunks, window=in_flight):
            pass
    else:
        for c in chunks:
            run(c)
    if tile.full_frame and len(grid) > 1:
        chw, info = routine.preprocess(image)
        d = routine.postprocess(routine.infer(chw[None])[0], info)
        parts.append((d.xyxy, d.confidence, d.class_id, np.zeros(len(d), bool), np.full(len(d), -1)))
    times.add("read", 0.0, images=1)
    if not parts:
        return Detections.empty(routine.names, path, (h, w))
    cat = [np.concatenate([p[k] for p in parts]) for k in range(5)]
    xyxy, conf, cls = merge_tiles(cat[0], cat[1], cat[2], cat[3], cat[4], routine.nms.iou, tile.merge_ios,
                                  routine.nms.max_det)
    return Detections(xyxy, conf, cls, routine.names, path, (h, w))


def tiled_result(routine: BatchRoutine, ref: InputRef, payload: Payload, tile: TileOptions, keep_images: bool,
                 pool: ThreadPoolExecutor | None, in_flight: int = 4) -> Result:
    """One input through tiled inference: read whole (tiles are native resolution), or its failure."""
    if isinstance(payload, str):
        return Result(ref, error=payload)
    if payload is None:
        got = routine.load_input(ref, fast_decode=False)
        if isinstance(got, str):
            return Result(ref, error=got)
        payload = got[0]
    try:
        d = predict_tiled(routine, payload, tile, ref.path, pool, in_flight)
    except Exception as e:  # this image fails, the run goes on
        return Result(ref, error=f"tiled inference failed: {first_line(e)}")
    return Result(ref, d, image=payload if keep_images else None)
