"""Raw-model throughput (and optionally mAP) of yolokit models, printed as a markdown table.

The model alone: a pre-letterboxed 640x640 uint8 batch straight into the backend's runner (normalisation
included, no reading, letterboxing or NMS), batch 1 and, for models with a dynamic batch, batch 8.

    python scripts/bench_backends.py yolov5n.pt yolov5n.onnx yolov5n_openvino --threads 2 \\
        --data ../shared/datasets/coco128 --val
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from toolkit import Detector
from toolkit.io.decode import read_image
from toolkit.io.sources import list_sources
from toolkit.jobs.bench.timing import raw_rate
from toolkit.ops import letterbox, to_chw_rgb


def _images(data: str | None, n: int, size: int) -> np.ndarray:
    if data:
        refs = [r for r in list_sources(data).items if r.frame is None][:n]
        imgs = [to_chw_rgb(letterbox(read_image(r.path), size, auto=False)[0]) for r in refs]
        while len(imgs) < n:
            imgs += imgs[: n - len(imgs)]
        return np.stack(imgs)
    return np.random.default_rng(0).integers(0, 256, (n, 3, size, size), dtype=np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help=".pt, .onnx, OpenVINO folder/.xml, .engine")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--seconds", type=float, default=8.0, help="timing per measurement")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data", default=None, help="images to letterbox for the timed batch (and --val dataset)")
    ap.add_argument("--val", action="store_true", help="also run `yolokit val` on --data (mAP50-95)")
    args = ap.parse_args()

    rows = []
    for model in args.models:
        path = Path(model)
        det = Detector(path, device=args.device, threads=args.threads, imgsz=args.imgsz)
        det.routine.runner.set_threads(args.threads)
        name, meta = det.backend_name, det.meta
        executes = meta.extra.get("inference_precision") or meta.precision
        b1 = raw_rate(det.routine.runner.infer, _images(args.data, 1, args.imgsz), args.seconds)
        b8 = None
        if meta.batch is None and (meta.max_batch is None or meta.max_batch >= 8):
            b8 = raw_rate(det.routine.runner.infer, _images(args.data, 8, args.imgsz), args.seconds)
        det.close()
        m = None
        if args.val and args.data:
            from toolkit.jobs.val import ValOptions, validate

            m = validate(ValOptions(weights=model, data=args.data, imgsz=args.imgsz))["map50_95"]
        rows.append((path.name, name, meta.precision, str(executes), m, b1, b8))
        print(f"done {model}", file=sys.stderr)

    print(f"\n{args.imgsz}x{args.imgsz}, {args.threads} threads, device {args.device}; img/s of the model alone\n")
    print("| model | backend | precision | executes | mAP50-95 | img/s batch 1 | img/s batch 8 |")
    print("|---|---|---|---|---|---|---|")
    for file, name, prec, ex, m, b1, b8 in rows:
        print(f"| {file} | {name} | {prec} | {ex} | {'' if m is None else f'{m:.4f}'} | {b1:.1f} | "
              f"{'n/a (static batch)' if b8 is None else f'{b8:.1f}'} |")


if __name__ == "__main__":
    main()
