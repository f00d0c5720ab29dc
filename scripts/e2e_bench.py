"""Plain exports against end-to-end ones (NMS inside the model), and what graph simplification changes.

1. For each format (ONNX, OpenVINO FP32) and each setting (default: conf 0.25, iou 0.45, max_det 1000; val: conf
   0.001, iou 0.6, max_det 300), the plain export and the end-to-end export run the same images through yolokit in
   one thread, batch 1, in the same process, interleaved repeat by repeat; reported per image: model time
   ("infer": the end-to-end model includes its NMS), yolokit's post-processing ("post": YOLOv5's NMS in numpy for
   the plain model, unpacking and scaling for the end-to-end one), their sum, and whole-run img/s (reading, decoding
   and letterboxing included), medians over the repeats; and how many boxes both found.
2. ``--slim``: the plain ONNX export with and without onnxslim: node counts and the raw model's img/s at 640x640
   (onnxruntime, batch 1, medians of interleaved timings).

Writes e2e_bench.json and e2e_bench.md into --out (exported models stay there; never commit them).

    python scripts/e2e_bench.py --weights ../shared/weights/yolov5n.pt \\
        --source ../shared/datasets/coco128/images/train2017 --images 128 --repeats 3 --slim --out bench_out/e2e
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.engine.detector import Detector
from toolkit.jobs.bench.inputs import exported
from toolkit.jobs.bench.timing import interleaved, medians, raw_rate
from toolkit.jobs.export import ExportOptions
from toolkit.meta import BakedNMS

SETTINGS = {"default": BakedNMS(conf=0.25, iou=0.45, max_det=1000), "val": BakedNMS(conf=0.001, iou=0.6, max_det=300)}
NAMES = {"onnx": "{}.onnx", "openvino": "{}_openvino"}


def artifact(weights: str, to: str, out: Path, tag: str, options: ExportOptions) -> Path:
    return exported(weights, to, out / "artifacts" / NAMES[to].format(tag), options)


def one_pass(model: Path, nms: BakedNMS, images: list[str]) -> dict[str, float]:
    t0 = time.perf_counter()
    with Detector(model, conf=nms.conf, iou=nms.iou, max_det=nms.max_det) as det:
        t1 = time.perf_counter()
        boxes = sum(len(r.detections) for r in det.predict_iter(images, mode="thread", workers=1, batch=1)
                    if r.detections is not None)
        t2 = time.perf_counter()
        ms = det.times.ms_per_image()
    return {"load_s": t1 - t0, "img_s": len(images) / (t2 - t1), "infer_ms": ms["infer"], "post_ms": ms["post"],
            "model_and_post_ms": ms["infer"] + ms["post"], "boxes": boxes}


def compare(weights: str, to: str, setting: str, images: list[str], repeats: int, out: Path) -> list[dict[str, Any]]:
    nms = SETTINGS[setting]
    plain = artifact(weights, to, out, "plain", ExportOptions())
    e2e = artifact(weights, to, out, f"e2e_{setting}", ExportOptions(nms=nms))
    models = {"plain": plain, "e2e": e2e}
    for model in models.values():
        one_pass(model, nms, images[:2])  # warm the file cache and OpenVINO's compiled-model cache
    runs = interleaved({kind: partial(one_pass, model, nms, images) for kind, model in models.items()}, repeats)
    rows = []
    for kind, rs in runs.items():
        row: dict[str, Any] = {"format": to, "setting": setting, "model": kind, **medians(rs)}
        rows.append(row)
        print(f"{to} {setting} {kind}: {row['img_s']:.1f} img/s, infer {row['infer_ms']:.2f} ms + post "
              f"{row['post_ms']:.2f} ms, {row['boxes']:.0f} boxes", flush=True)
    return rows


def slim(weights: str, out: Path, repeats: int) -> list[dict[str, Any]]:
    """Node counts and raw img/s of the plain ONNX export with and without onnxslim."""
    import onnx

    rows = []
    paths = {s: artifact(weights, "onnx", out, "plain" if s else "plain_noslim", ExportOptions(simplify=s))
             for s in (True, False)}
    x = np.full((1, 3, 640, 640), 114, np.uint8)
    with Detector(paths[True]) as a, Detector(paths[False]) as b:
        times = interleaved({s: partial(raw_rate, det.routine.infer, x, 2.0, 1) for s, det in ((True, a), (False, b))},
                            max(3, repeats))
    for s, path in paths.items():
        rows.append({"simplified": s, "nodes": len(onnx.load(str(path)).graph.node),
                     "raw_img_s": statistics.median(times[s])})
        print(f"onnxslim {'on' if s else 'off'}: {rows[-1]['nodes']} nodes, {rows[-1]['raw_img_s']:.1f} img/s raw",
              flush=True)
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# plain vs end-to-end: {result['images']} images, median of {result['repeats']} runs", "",
             "| format | setting | model | img/s (whole run) | infer ms/img | post ms/img | infer + post | boxes |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["rows"]:
        lines.append(f"| {r['format']} | {r['setting']} | {r['model']} | {r['img_s']:.1f} | {r['infer_ms']:.2f} | "
                     f"{r['post_ms']:.2f} | {r['model_and_post_ms']:.2f} | {r['boxes']:.0f} |")
    if result.get("slim"):
        lines += ["", "| ONNX graph | nodes | raw img/s (640x640, batch 1) |", "| --- | ---: | ---: |"]
        for r in result["slim"]:
            lines.append(f"| {'onnxslim' if r['simplified'] else 'as traced'} | {r['nodes']} | {r['raw_img_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--source", required=True, help="folder of images")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--formats", default="onnx,openvino")
    ap.add_argument("--settings", default="default,val")
    ap.add_argument("--slim", action="store_true", help="also compare the ONNX export with and without onnxslim")
    ap.add_argument("--out", default="bench_out/e2e")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images = [str(p) for p in sorted(Path(args.source).glob("*.jpg"))[: args.images]]
    if not images:
        sys.exit(f"{args.source}: no .jpg images")
    rows = [r for to in args.formats.split(",") for setting in args.settings.split(",")
            for r in compare(args.weights, to, setting, images, args.repeats, out)]
    result: dict[str, Any] = {"images": len(images), "repeats": args.repeats, "rows": rows,
                              "slim": slim(args.weights, out, args.repeats) if args.slim else None}
    (out / "e2e_bench.json").write_text(json.dumps(result, indent=1))
    (out / "e2e_bench.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
