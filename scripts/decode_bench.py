"""What ``--fast-decode`` (reduced-size JPEG decoding) costs in accuracy and saves in time, against the exact default.

1. Accuracy: mAP50-95 (``yolokit val`` metric) on coco128 enlarged 3x (1920x1440 and similar, ``cv2.resize``
   INTER_CUBIC, JPEG quality 92; the normalised YOLO labels stay valid), exact decode vs ``fast_decode=True``.
2. Speed: whole-process ``yolokit run LIST --weights MODEL --nosave [--fast-decode]`` wall time on the 1920x1080
   JPEG set made from the coco128 photos (``toolkit.jobs.bench.inputs.photo_set``), with the default (dynamic) ONNX
   and OpenVINO exports; the configurations are interleaved repeat by repeat, so the noise of a shared machine falls
   on all of them alike; medians are compared.

Writes decode_bench.json and decode_bench.md into --out (generated images stay there; never commit them).

    python scripts/decode_bench.py --weights ../shared/weights/yolov5n.pt \\
        --data ../shared/datasets/coco128 --out bench_out/decode --images 200 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from functools import partial
from pathlib import Path

import cv2

from toolkit.jobs.bench.inputs import exported, list_file, photo_set
from toolkit.jobs.bench.timing import interleaved, timed_command, yolokit_command
from toolkit.jobs.val import ValOptions, validate


def enlarged_dataset(data: Path, out: Path, factor: int) -> Path:
    """coco128 with every image enlarged ``factor`` times; the labels are copied (normalised, so still valid)."""
    root = out / f"coco128_x{factor}"
    img_out, lab_out = root / "images" / "train2017", root / "labels" / "train2017"
    img_out.mkdir(parents=True, exist_ok=True)
    lab_out.mkdir(parents=True, exist_ok=True)
    for src in sorted((data / "images" / "train2017").glob("*.jpg")):
        dst = img_out / src.name
        if not dst.exists():
            img = cv2.imread(str(src))
            if img is None:
                sys.exit(f"{src}: cannot be read as an image")
            big = cv2.resize(img, (img.shape[1] * factor, img.shape[0] * factor), interpolation=cv2.INTER_CUBIC)
            cv2.imwrite(str(dst), big, [cv2.IMWRITE_JPEG_QUALITY, 92])
        label = data / "labels" / "train2017" / f"{src.stem}.txt"
        if label.is_file():
            shutil.copy(label, lab_out / label.name)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True, help="the .pt checkpoint")
    ap.add_argument("--data", required=True, help="coco128 (a folder with images/train2017 and labels/train2017)")
    ap.add_argument("--out", default="bench_out/decode")
    ap.add_argument("--images", type=int, default=200, help="how many 1920x1080 JPEGs to time on")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-map", action="store_true", help="time only")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    models = {to: exported(args.weights, to, out / name)  # the default export: dynamic batch and shape
              for to, name in (("onnx", "yolov5n.onnx"), ("openvino", "yolov5n_openvino"))}
    result: dict[str, object] = {"command": " ".join(sys.argv)}
    if not args.skip_map:
        big = enlarged_dataset(data, out, 3)
        acc = {}
        for fast in (False, True):
            m = validate(ValOptions(weights=str(models["onnx"]), data=str(big), fast_decode=fast))
            acc["fast" if fast else "exact"] = {k: m[k] for k in ("map50_95", "map50", "precision", "recall")}
        result["accuracy"] = {"set": f"coco128 enlarged 3x ({big})", "model": "yolov5n ONNX (default export)", **acc}
    lst = list_file(photo_set(data / "images" / "train2017", out / "gen_1920x1080", args.images),
                    out / f"gen_1920x1080_{args.images}.txt")
    times = interleaved({f"{to} {'fast' if fast else 'exact'}": partial(timed_command, yolokit_command(
        "run", str(lst), "--weights", str(model), "--nosave", "--project", str(out / "runs"), "--name", "r",
        "--exist-ok", *(["--fast-decode"] if fast else []))) for to, model in models.items() for fast in (False, True)},
        args.repeats)
    speed = {}
    for to in models:
        exact_s, fast_s = statistics.median(times[f"{to} exact"]), statistics.median(times[f"{to} fast"])
        speed[to] = {"exact_s": exact_s, "fast_s": fast_s, "exact_img_s": args.images / exact_s,
                     "fast_img_s": args.images / fast_s, "exact_vs_fast": fast_s / exact_s,
                     "runs_exact": times[f"{to} exact"], "runs_fast": times[f"{to} fast"]}
    result["speed"] = {"images": args.images, "size": "1920x1080", "repeats": args.repeats, **speed}
    (out / "decode_bench.json").write_text(json.dumps(result, indent=1))
    lines = [f"`{result['command']}`", ""]
    if "accuracy" in result:
        a = result["accuracy"]
        assert isinstance(a, dict)
        lines += [f"Accuracy on {a['set']}, {a['model']}:", "",
                  "| decode | mAP50-95 | mAP50 | P | R |", "| --- | ---: | ---: | ---: | ---: |"]
        for k in ("exact", "fast"):
            m = a[k]
            lines.append(f"| {k} | {m['map50_95']:.4f} | {m['map50']:.4f} | {m['precision']:.3f} | "
                         f"{m['recall']:.3f} |")
        lines.append("")
    lines += [f"Whole-process `yolokit run --nosave` on {args.images} 1920x1080 JPEGs, median of {args.repeats} "
              f"interleaved runs:", "", "| model | exact s | fast s | exact img/s | fast img/s | exact / fast |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for to, s in speed.items():
        lines.append(f"| {to} | {s['exact_s']:.2f} | {s['fast_s']:.2f} | {s['exact_img_s']:.1f} | "
                     f"{s['fast_img_s']:.1f} | {s['exact_vs_fast']:.2f} |")
    (out / "decode_bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
