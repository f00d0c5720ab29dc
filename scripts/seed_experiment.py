"""The experiment that motivated yolokit, with yolokit: sequential vs threads vs processes vs auto.

Whole-process wall time (`python -m toolkit.cli run ...` in a fresh process, model load included), median of
--repeats, over JPEGs of 1920x1080 (and 13400x9528) generated from the coco128 images into --out (never commit
them). The baseline is a seed-style loop: PyTorch FP32, one image at a time, cv2.imread in the loop, same
process, same images. Also measured: the raw-model img/s of each artifact at the same input shape and thread
budget (the model alone on pre-letterboxed arrays). Writes seed_experiment.md, .json and a .png chart.

    python scripts/seed_experiment.py --weights ../shared/weights/yolov5n.pt \\
        --images ../shared/datasets/coco128/images/train2017 --out bench_out/seed --counts 2,100,200 --huge 2,20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toolkit import Detector  # noqa: E402
from toolkit.engine.plan import cpu_count  # noqa: E402
from toolkit.jobs.bench.timing import raw_rate, timed_command  # noqa: E402


def generate(images: Path, out: Path, n: int, size: tuple[int, int]) -> Path:
    """``n`` JPEGs of ``size`` (w, h) made by resizing the source images in turn; reused when present."""
    folder = out / f"gen_{size[0]}x{size[1]}"
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted(images.glob("*.jpg"))
    for i in range(n):
        path = folder / f"{i:04d}.jpg"
        if not path.exists():
            src = cv2.imread(str(sources[i % len(sources)]))
            assert src is not None
            img = cv2.resize(src, size, interpolation=cv2.INTER_LINEAR)
            cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return folder


def subset(folder: Path, n: int) -> Path:
    lst = folder.parent / f"{folder.name}_{n}.txt"
    lst.write_text("".join(f"{p.resolve()}\n" for p in sorted(folder.glob("*.jpg"))[:n]))
    return lst


def seed_loop(weights: str, source: str) -> None:
    """The seed: PyTorch FP32, one image at a time, decode in the loop."""
    paths = [line.strip() for line in Path(source).read_text().splitlines() if line.strip()]
    det = Detector(weights, backend="torch")
    n = 0
    for p in paths:
        img = cv2.imread(p)
        assert img is not None
        n += len(det.predict(img)[0])
    print(json.dumps({"detections": n}))


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
        color = (60, 60, 200) if r["config"] == "seed loop (torch fp32)" else (200, 140, 60)
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
    ap.add_argument("--seed-loop", nargs=2, metavar=("WEIGHTS", "LIST"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.seed_loop:
        seed_loop(*args.seed_loop)
        return
    if not args.weights or not args.images:
        ap.error("--weights and --images are required")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    cores = cpu_count()
    from toolkit.jobs.export import ExportOptions, export

    models = {"torch fp32": args.weights}
    calib = str(Path(args.images))
    if "onnx" in args.artifacts:
        p = out / "yolov5n.onnx"
        if not p.exists():
            export(args.weights, "onnx", p, ExportOptions(dynamic=True))
        models["onnx fp32"] = str(p)
    if "int8" in args.artifacts:
        p = out / "yolov5n_int8_openvino"
        if not p.exists():
            export(args.weights, "openvino", p, ExportOptions(dynamic=True, int8=True, calib_data=calib))
        models["openvino int8"] = str(p)

    sets: list[tuple[str, Path, tuple[int, int]]] = []
    counts = [int(c) for c in args.counts.split(",") if c]
    if counts:
        hd = generate(Path(args.images), out, max(counts), (1920, 1080))
        sets += [(f"{n} x 1920x1080", subset(hd, n), (384, 640)) for n in counts]
    huge = [int(c) for c in args.huge.split(",") if c]
    if huge:
        big = generate(Path(args.images), out, max(huge), (13400, 9528))
        sets += [(f"{n} x 13400x9528", subset(big, n), (480, 640)) for n in huge]

    modes = {"seq": ["--mode", "thread", "--workers", "1", "--batch", "1"],
             "thread": ["--mode", "thread", "--workers", str(cores)],
             "process": ["--mode", "process", "--workers", str(cores)],
             "auto": ["--mode", "auto"]}
    rows: list[dict[str, object]] = []
    for label, lst, shape in sets:
        n = len(lst.read_text().split())
        t = statistics.median(timed_command([py, __file__, "--seed-loop", args.weights, str(lst)])
                              for _ in range(args.repeats))
        rows.append({"set": label, "config": "seed loop (torch fp32)", "wall_s": t, "img_s": n / t})
        print(rows[-1], flush=True)
        for mname, model in models.items():
            for mode in args.modes.split(","):
                cmd = [py, "-m", "toolkit.cli", "run", str(lst), "--weights", model, "--nosave", "--project",
                       str(out / "runs"), "--name", "r", "--exist-ok", *modes[mode]]
                t = statistics.median(timed_command(cmd) for _ in range(args.repeats))
                rows.append({"set": label, "config": f"{mname} {mode}", "wall_s": t, "img_s": n / t})
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
        base = next(x for x in rows if x["set"] == r["set"] and x["config"] == "seed loop (torch fp32)")
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
