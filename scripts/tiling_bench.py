"""yolokit's tiled inference against SAHI on the same mosaics, with the same model and the same letterbox.

Each mosaic holds the first --images coco128 images at native size, placed at random (not on the 32-pixel stride) on a
--canvas (default 13400x9528), one mosaic per seed. The reference is what the model finds on each image alone at
native size (letterboxed without upscaling, as tiles never are). Figures (``toolkit.jobs.bench.tiling_eval``), mean
over the seeds: recall and raw-tile recall (the merge loss is the difference), boxes, boxes matching nothing, nested
same-class fragments (and the reference's own count), duplicates (same-class pairs at IoU >= 0.5), model calls (tiles
run) and wall time. yolokit runs as ``yolokit run --tile`` does for one image: the automatic plan (one inference
thread, every core as intra-op threads); variants that differ only in the merge share one tile pass, and their time
is that pass plus their own merge.

SAHI (0.12.x) is optional (``pip install --no-deps sahi shapely tqdm``: its opencv-python requirement would clash with
opencv-python-headless, which it imports just as well). It gets the yolokit detector through a small DetectionModel
subclass (below) that letterboxes each slice as yolokit does and runs the same runtime session, one slice per call,
with its full-image pass on (its default).

--throughput also times the raw model on full 640x640 tiles (batches of --tile-batch, the same detector and threads)
and compares the defaults' tiles per second with it.

Writes tiling_bench.json and tiling_bench.md into --out (never commit them).

    python scripts/tiling_bench.py --weights bench_out/tiling/yolov5n.onnx --data ../shared/datasets/coco128 \\
        --images 128 --canvas 13400x9528 --seeds 0,1,2 --throughput --out bench_out/tiling
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from toolkit import Detector
from toolkit.engine.core import intra_op_threads
from toolkit.engine.plan import make_plan
from toolkit.engine.tiled import collect_views
from toolkit.jobs.bench.inputs import exported
from toolkit.jobs.bench.tiling_eval import TilingScore, mean_scores, mosaic, native_reference, score, shifted
from toolkit.jobs.bench.timing import raw_rate
from toolkit.ops import letterbox, postprocess, scale_boxes, to_chw_rgb
from toolkit.tiling import TileOptions, merge

DEFAULTS = TileOptions()
VARIANTS: list[tuple[str, TileOptions]] = [
    ("yolokit defaults (views merge, overlap 0.2, second look at cut and near-threshold boxes, full frame)", DEFAULTS),
    ("yolokit --tile-merge nms", replace(DEFAULTS, merge="nms")),
    ("yolokit --tile-merge nmm", replace(DEFAULTS, merge="nmm")),
    ("yolokit --no-tile-refocus (one pass)", replace(DEFAULTS, refocus=False)),
    ("yolokit --no-tile-refocus --tile-merge nms", replace(DEFAULTS, refocus=False, merge="nms")),
    ("yolokit --overlap 0.3", replace(DEFAULTS, overlap=0.3)),
    ("yolokit --tile-scales 1,0.5", replace(DEFAULTS, scales=(1.0, 0.5))),
    ("yolokit --tile-scales 1,0.5 --no-tile-refocus", replace(DEFAULTS, scales=(1.0, 0.5), refocus=False)),
    ("yolokit --overlap 0.3 --tile-scales 1,0.5", replace(DEFAULTS, overlap=0.3, scales=(1.0, 0.5))),
    ("yolokit --overlap 0.3 --tile-scales 1,0.5 --no-tile-refocus (last default grid)",
     replace(DEFAULTS, overlap=0.3, scales=(1.0, 0.5), refocus=False)),
    ("yolokit --tile-near 0 (second look only at cut objects: the default before)", replace(DEFAULTS, near=0.0)),
    ("yolokit --tile-near 0.7", replace(DEFAULTS, near=0.7)),
]
SAHI_VARIANTS = [("SAHI 640, overlap 0.2, NMS (IOU 0.5)", "NMS", "IOU"),
                 ("SAHI 640, overlap 0.2, GREEDYNMM (IOS 0.5, its default)", "GREEDYNMM", "IOS")]


def run_yolokit(det: Detector, canvas: np.ndarray, ref: Any, variants: list[tuple[str, TileOptions]],
                threads: int) -> dict[str, TilingScore]:
    """Every variant on one mosaic; variants differing only in the merge share one tile pass."""
    out: dict[str, TilingScore] = {}
    passes: dict[TileOptions, tuple[Any, float]] = {}
    with intra_op_threads(det.routine.runner, threads):
        for label, opts in variants:
            key = replace(opts, merge="views")
            if key not in passes:
                t0 = time.perf_counter()
                views = collect_views(det.routine, canvas, opts)
                passes[key] = (views, time.perf_counter() - t0)
            views, seconds = passes[key]
            t0 = time.perf_counter()
            final = merge(views, opts, det.nms.iou, det.nms.max_det)
            seconds += time.perf_counter() - t0
            out[label] = score(ref, (views.xyxy, views.conf, views.cls), views.tile, final, views.calls, seconds)
            print(f"  {label}: {out[label].to_dict()}", flush=True)
    return out


def sahi_model(det: Detector) -> Any:
    """A SAHI DetectionModel that runs ``det`` on each slice: letterboxed as yolokit's tiles (never upscaled), the
    same runtime session, yolokit's NMS; it also keeps every box it returned (SAHI's raw slice boxes)."""
    from sahi.models.base import DetectionModel
    from sahi.prediction import ObjectPrediction

    class YolokitModel(DetectionModel):  # type: ignore[misc]
        def __init__(self) -> None:
            self.raw: list[tuple[np.ndarray, ...]] = []
            self.calls = 0
            super().__init__(model=det, confidence_threshold=det.nms.conf, category_mapping={
                str(k): v for k, v in det.names.items()})

        def set_device(self, device: str | None = None) -> None:
            self.device = "cpu"  # the runtime session is yolokit's

        def set_model(self, model: Any, **kwargs: Any) -> None:
            self.model = model

        def perform_inference(self, image: np.ndarray) -> None:  # RGB HWC, as SAHI hands slices over
            lb, info = letterbox(image, det.imgsz, det.meta.stride, auto=det.routine.auto, scaleup=False)
            pred = det.routine.infer(np.ascontiguousarray(lb.transpose(2, 0, 1))[None])[0]
            xyxy, conf, cls = postprocess(pred, det.nms)
            self._original_predictions = (scale_boxes(xyxy, info), conf, cls)
            self.calls += 1

        def _create_object_prediction_list_from_original_predictions(
                self, shift_amount_list: Any = None, full_shape_list: Any = None) -> None:
            def first(pairs: Any) -> Any:  # SAHI passes [[x, y]] from slices, [x, y] from its full-image pass
                return None if not pairs else list(pairs[0]) if isinstance(pairs[0], (list, tuple)) else list(pairs)

            shift, full = first(shift_amount_list) or [0, 0], first(full_shape_list)
            xyxy, conf, cls = self._original_predictions
            preds = [ObjectPrediction(bbox=[float(v) for v in b], category_id=int(c), category_name=det.names[int(c)],
                                      score=float(s), shift_amount=shift, full_shape=full)
                     for b, s, c in zip(xyxy, conf, cls, strict=True)]
            self.raw.append((xyxy + np.array(shift * 2, np.float32), conf, cls, np.full(len(conf), len(self.raw))))
            self._object_prediction_list_per_image = [preds]

    return YolokitModel()


def run_sahi(det: Detector, canvas_bgr: np.ndarray, ref: Any, threads: int) -> dict[str, TilingScore]:
    from sahi.predict import get_sliced_prediction

    rgb = np.ascontiguousarray(canvas_bgr[:, :, ::-1])
    out: dict[str, TilingScore] = {}
    with intra_op_threads(det.routine.runner, threads):
        for label, kind, metric in SAHI_VARIANTS:
            model = sahi_model(det)
            t0 = time.perf_counter()
            res = get_sliced_prediction(rgb, model, slice_height=640, slice_width=640, overlap_height_ratio=0.2,
                                        overlap_width_ratio=0.2, postprocess_type=kind, postprocess_match_metric=metric,
                                        postprocess_match_threshold=0.5, verbose=0)
            seconds = time.perf_counter() - t0
            preds = res.object_prediction_list
            final = (np.array([p.bbox.to_xyxy() for p in preds], np.float32).reshape(-1, 4),
                     np.array([p.score.value for p in preds], np.float32),
                     np.array([p.category.id for p in preds], np.int64))
            raw = [np.concatenate([r[k] for r in model.raw]) for k in range(4)]
            out[label] = score(ref, (raw[0], raw[1], raw[2]), raw[3], final, model.calls, seconds)
            print(f"  {label}: {out[label].to_dict()}", flush=True)
    return out


def raw_tile_rate(det: Detector, canvas: np.ndarray, batch: int, threads: int, n: int = 64) -> float:
    """Tiles per second of the model alone on ``n`` full 640x640 tiles of ``canvas``, in batches of ``batch``."""
    h, w = canvas.shape[:2]
    rng = np.random.default_rng(0)
    tiles = []
    for _ in range(n):
        x, y = int(rng.integers(0, w - 640)), int(rng.integers(0, h - 640))
        lb, _ = letterbox(canvas[y:y + 640, x:x + 640], det.imgsz, det.meta.stride, auto=det.routine.auto,
                          scaleup=False)
        tiles.append(to_chw_rgb(lb))
    batches = [np.stack(tiles[i:i + batch]) for i in range(0, n, batch)]
    with intra_op_threads(det.routine.runner, threads):
        return raw_rate(det.routine.infer, batches, seconds=0.0, warmup=1, min_calls=len(batches))  # every tile once


def table(means: dict[str, dict[str, float]], seeds: list[int]) -> str:
    lines = [f"Mean of {len(seeds)} mosaic(s) (seeds {', '.join(map(str, seeds))}).", "",
             "| variant | recall | raw-tile recall | merge loss | boxes | matching nothing | fragments (reference) "
             "| duplicates | model calls | wall |", "| --- |" + " ---: |" * 9]
    for label, m in means.items():
        lines.append(f"| {label} | {m['recall']:.3f} | {m['raw_recall']:.3f} | {100 * m['merge_loss']:.1f} % | "
                     f"{m['boxes']:.0f} | {m['unmatched']:.0f} | {m['fragments']:.1f} ({m['reference_fragments']:.0f}) "
                     f"| {m['duplicates']:.1f} | {m['calls']:.0f} | {m['seconds']:.1f} s |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default="bench_out/tiling/yolov5n.onnx",
                    help="the model (exported from --pt with the default options when this .onnx is absent)")
    ap.add_argument("--pt", default="../shared/weights/yolov5n.pt")
    ap.add_argument("--data", default="../shared/datasets/coco128")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--canvas", default="13400x9528", help="WIDTHxHEIGHT")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--no-sahi", action="store_true")
    ap.add_argument("--variants", default="", help="yolokit variants to run, by number in the list (0: defaults); "
                                                   "default: all")
    ap.add_argument("--throughput", action="store_true")
    ap.add_argument("--out", default="bench_out/tiling")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = Path(args.weights)
    if weights.suffix == ".onnx":
        exported(args.pt, "onnx", weights)  # the default export (dynamic batch and shape), when absent
    cw, ch = (int(v) for v in args.canvas.lower().split("x"))
    seeds = [int(s) for s in args.seeds.split(",") if s]
    files = sorted((Path(args.data) / "images" / "train2017").glob("*.jpg"))[:args.images]
    read = [cv2.imread(str(f)) for f in files]
    images = [im for im in read if im is not None]
    if not images or len(images) < len(read):
        sys.exit(f"{args.data}: no readable images in images/train2017")
    det = Detector(weights)
    plan = make_plan(det, 1)  # what `yolokit run --tile` plans for one image
    print(f"{det.backend_name} {weights}: {plan.describe()}", flush=True)
    with intra_op_threads(det.routine.runner, plan.threads):
        reference = native_reference(det.routine, images)
    variants = [VARIANTS[int(k)] for k in args.variants.split(",")] if args.variants else VARIANTS
    runs: dict[str, list[TilingScore]] = {}
    rates: list[tuple[float, float]] = []  # (raw model, tiled defaults) tiles/s, measured back to back per mosaic
    for seed in seeds:
        canvas, offsets = mosaic(images, (ch, cw), seed)
        ref = shifted(reference, offsets)
        print(f"seed {seed}: {len(ref[0])} reference boxes", flush=True)
        got = run_yolokit(det, canvas, ref, variants, plan.threads)
        if args.throughput and VARIANTS[0][0] in got:
            d = got[VARIANTS[0][0]]
            rates.append((raw_tile_rate(det, canvas, DEFAULTS.batch, plan.threads), d.calls / d.seconds))
        if not args.no_sahi:
            got.update(run_sahi(det, canvas, ref, plan.threads))
        for k, v in got.items():
            runs.setdefault(k, []).append(v)
    means = {k: mean_scores(v) for k, v in runs.items()}
    report: dict[str, Any] = {"weights": str(weights), "backend": det.backend_name, "plan": plan.describe(),
                              "images": len(images), "canvas": [cw, ch], "seeds": seeds, "means": means,
                              "runs": {k: [s.to_dict() for s in v] for k, v in runs.items()}}
    md = [f"# Tiled inference: yolokit vs SAHI\n\n{len(images)} coco128 images on a {cw}x{ch} canvas, "
          f"{det.backend_name} ({weights.name}), {plan.describe()}.\n", table(means, seeds)]
    if rates:
        rate, tiled = float(np.mean([r[0] for r in rates])), float(np.mean([r[1] for r in rates]))
        ratios = [t / r for r, t in rates]
        report["throughput"] = {"raw_tiles_per_s": rate, "tiled_tiles_per_s": tiled, "ratios": ratios}
        md.append(f"\nThroughput (each mosaic: the defaults, then the model alone on 64 640x640 tiles of it in "
                  f"batches of {DEFAULTS.batch}): raw {rate:.1f} tiles/s, tiled inference with the defaults (tiling, "
                  f"letterbox, NMS, second-look planning, merge included) {tiled:.1f} tiles/s; per mosaic "
                  f"{', '.join(f'{100 * x:.0f} %' for x in ratios)} of the raw rate.\n")
    (out / "tiling_bench.json").write_text(json.dumps(report, indent=1))
    (out / "tiling_bench.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
