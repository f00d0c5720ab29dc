"""The experiment that motivated yolokit, with yolokit: sequential vs threads vs processes vs auto.

Whole-process wall time (`python -m toolkit.cli run ...` in a fresh process, model load included), median of
--repeats interleaved runs, over JPEGs of 1920x1080 (and 13400x9528) generated from the coco128 photos into --out
(``toolkit.jobs.bench.inputs.photo_set``; never commit them). The baseline is the seed loop
(``toolkit.jobs.bench.seed``: PyTorch FP32, one image at a time, cv2.imread in the loop), in a fresh process on the
same images. Also measured: the raw-model img/s of each artifact at the same input shape and thread budget (the
model alone on pre-letterboxed arrays). Writes seed_experiment.md, .json and a .png chart.

    python scripts/seed_experiment.py --weights ../shared/weights/yolov5n.pt \\
        --images ../shared/datasets/coco128/images/train2017 --out bench_out/seed --counts 2,100,200 --huge 2,20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from toolkit import Detector
from toolkit.engine.plan import cpu_count
from toolkit.jobs.bench.inputs import exported, list_file, photo_set
from toolkit.jobs.bench.seed import seed_command
from toolkit.jobs.bench.timing import interleaved, raw_rate, timed_command, yolokit_command

SEED = "seed loop (torch fp32)"


def raw_model_rate(model: str, shape: tuple[int, int], threads: int, seconds: float = 5.0) -> float:
    """img/s of the model alone on a pre-letterboxed uint8 batch of 1 at ``shape`` with ``threads``."""
    det = Detector(model, threads=threads)
    det.routine.runner.set_threads(threads)
    batch = np.random.default_rng(0).integers(0, 256, (1, 3, *shape), dtype=np.uint8)
    return raw_rate(det.routine.infer, batch, seconds, warmup=3)


def chart(rows: list[dict[str, object]], path: Path) -> None:
    """A horizontal bar chart of img/s, drawn with OpenCV (no plotting dependency)."""
    rows = [r for r in rows if r["img_s"]]
    h = 40 + 26 * len(rows)
    img = np.full((h, 900, 3), 255, np.uint8)
    top = max(float(r["img_s"]) for r in rows)  # type: ignore[arg-type]
    for i, r in enumerate(rows):
        y = 30 + 26 * i
        w = int(480 * float(r["img_s"]) / top)  # type: ignore[arg-type]
        color = (60, 60, 200) if r["config"] == SEED else (200, 140, 60)
        cv2.rectangle(img, (380, y - 14), (380 + w, y + 6), color, -1)
        cv2.putText(img, f"{r['set']} | {r['config']}"[:52], (8, y), 0, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, f"{float(r['img_s']):.1f}", (385 + w, y), 0, 0.42, (0, 0, 0), 1, cv2.LINE_AA)  # type: ignore
    cv2.putText(img, "img/s, whole process (median); red: seed-style loop", (8, 16), 0, 0.45, (0, 0, 0), 1)
    cv2.imwrite(str(path), img)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", help="the .pt checkpoint (required)")
    ap.add_argument("--images", help="folder of source JPEGs, e.g. coco128 (required)")
    ap.add_argument("--out", default="bench_out/seed")
    ap.add_argument("--counts", default="200", help="numbers of 1920x1080 images, e.g. 2,100,200")
    ap.add_argument("--huge", default="", help="numbers of 13400x9528 images, e.g. 2,20")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modes", default="seq,thread,process,auto")
    ap.add_argument("--artifacts", default="onnx,int8", help="besides the .pt: onnx (FP32) and/or int8 (OpenVINO)")
    args = ap.parse_args()
    if not args.weights or not args.images:
        ap.error("--weights and --images are required")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cores = cpu_count()
    from toolkit.jobs.export import ExportOptions

    models = {"torch fp32": args.weights}
    if "onnx" in args.artifacts:
        models["onnx fp32"] = str(exported(args.weights, "onnx", out / "yolov5n.onnx", ExportOptions(dynamic=True)))
    if "int8" in args.artifacts:
        models["openvino int8"] = str(exported(args.weights, "openvino", out / "yolov5n_int8_openvino",
                                               ExportOptions(dynamic=True, int8=True, calib_data=args.images)))

    sets: list[tuple[str, Path, tuple[int, int]]] = []
    for counts, (w, h), shape in ((args.counts, (1920, 1080), (384, 640)), (args.huge, (13400, 9528), (480, 640))):
        ns = [int(c) for c in counts.split(",") if c]
        if ns:
            made = photo_set(args.images, out / f"gen_{w}x{h}", max(ns), (w, h))
            sets += [(f"{n} x {w}x{h}", list_file(made[:n], out / f"gen_{w}x{h}_{n}.txt"), shape) for n in ns]

    modes = {"seq": ["--mode", "thread", "--workers", "1", "--batch", "1"],
             "thread": ["--mode", "thread", "--workers", str(cores)],
             "process": ["--mode", "process", "--workers", str(cores)],
             "auto": ["--mode", "auto"]}
    rows: list[dict[str, object]] = []
    for label, lst, shape in sets:
        n = len(lst.read_text().split())
        commands = {SEED: seed_command(args.weights, lst)}
        commands.update({f"{mname} {mode}": yolokit_command(
            "run", str(lst), "--weights", model, "--nosave", "--project", str(out / "runs"), "--name", "r",
            "--exist-ok", *modes[mode]) for mname, model in models.items() for mode in args.modes.split(",")})
        times = interleaved({k: partial(timed_command, cmd) for k, cmd in commands.items()}, args.repeats)
        for config, ts in times.items():
            t = statistics.median(ts)
            rows.append({"set": label, "config": config, "wall_s": t, "img_s": n / t})
            print(rows[-1], flush=True)
        for mname, model in models.items():
            rate = raw_model_rate(model, shape, cores)
            rows.append({"set": label, "config": f"{mname} raw model @{shape[0]}x{shape[1]}, {cores} threads",
                         "wall_s": None, "img_s": rate})
            print(rows[-1], flush=True)
    machine = f"{platform.processor() or platform.machine()}, {cores} cores, Python {platform.python_version()}"
    lines = [f"Machine: {machine}. Whole-process wall time, median of {args.repeats}.", "",
             "| images | configuration | wall s | img/s | vs seed loop |", "| --- | --- | ---: | ---: | ---: |"]
    for r in rows:
        base = next(x for x in rows if x["set"] == r["set"] and x["config"] == SEED)
        ratio = float(r["img_s"]) / float(base["img_s"])  # type: ignore[arg-type]
        wall = f"{float(r['wall_s']):.2f}" if r["wall_s"] is not None else "-"  # type: ignore[arg-type]
        lines.append(f"| {r['set']} | {r['config']} | {wall} | {float(r['img_s']):.1f} | {ratio:.2f}x |")  # type: ignore
    (out / "seed_experiment.md").write_text("\n".join(lines) + "\n")
    (out / "seed_experiment.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    chart(rows, out / "seed_experiment.png")
    print("\n".join(lines))
    os.sync()


if __name__ == "__main__":
    main()
