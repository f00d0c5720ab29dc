"""What saving annotated images costs: whole-process wall time of `yolokit run` with annotated images saved (the
default) against `--nosave`, on N 1920x1080 JPEGs, with each model format's default export.

Not a test (timings belong in benchmarks). Each configuration runs as a fresh `python -m toolkit.cli run` process,
save and nosave interleaved, `--repeat` times; the median is reported. Writes report.md and results.json under
--out.

Full run (the README's numbers):
    python scripts/save_bench.py --images 200 --repeat 3
Quick check that it works:
    python scripts/save_bench.py --images 4 --repeat 1 --formats pt
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def make_images(source: Path, n: int, folder: Path) -> Path:
    """``n`` 1920x1080 JPEGs (quality 92) made from the photos in ``source``, reused when already there."""
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.jpg"))) == n:
        return folder
    for old in folder.glob("*.jpg"):
        old.unlink()
    photos = sorted(source.glob("*.jpg"))
    if not photos:
        sys.exit(f"{source}: no JPEGs to make the benchmark images from")
    for i in range(n):
        img = cv2.imread(str(photos[i % len(photos)]))
        img = cv2.resize(img, (1920, 1080), interpolation=cv2.INTER_AREA)
        if i >= len(photos):  # a different image each time, not a cached decode of the same bytes
            img = cv2.flip(img, 1) if (i // len(photos)) % 2 else img
        cv2.imwrite(str(folder / f"{i:04d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
    return folder


def export(weights: Path, fmt: str, folder: Path) -> Path:
    """The format's default export (dynamic input), made once."""
    if fmt == "pt":
        return weights
    target = folder / {"onnx": "yolov5n.onnx", "openvino": "yolov5n_openvino"}[fmt]
    if not target.exists():
        subprocess.run([sys.executable, "-m", "toolkit.cli", "export", str(weights), "--to", fmt, "-o", str(target)],
                       check=True, cwd=REPO)
    return target


def timed_run(images: Path, model: Path, out: Path, name: str, save: bool) -> tuple[float, dict[str, object]]:
    cmd = [sys.executable, "-m", "toolkit.cli", "run", str(images), "--weights", str(model), "--project", str(out),
           "--name", name, "--exist-ok", "--json", *([] if save else ["--nosave"])]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return wall, json.loads(done.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=SHARED / "datasets" / "coco128-large" / "images")
    ap.add_argument("--weights", type=Path, default=SHARED / "weights" / "yolov5n.pt")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--formats", default="pt,onnx,openvino")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "bench_out" / "save_bench")
    a = ap.parse_args()
    images = make_images(a.source, a.images, a.out / f"images_{a.images}")
    rows = []
    for fmt in a.formats.split(","):
        model = export(a.weights, fmt, a.out / "models")
        walls: dict[bool, list[float]] = {True: [], False: []}
        last: dict[bool, dict[str, object]] = {}
        for _ in range(a.repeat):
            for save in (False, True):
                wall, summary = timed_run(images, model, a.out / "runs", f"{fmt}_{'save' if save else 'nosave'}",
                                          save)
                walls[save].append(wall)
                last[save] = summary
        save_s, nosave_s = statistics.median(walls[True]), statistics.median(walls[False])
        rows.append({"format": fmt, "model": str(model), "images": a.images, "nosave_s": round(nosave_s, 2),
                     "save_s": round(save_s, 2), "ratio": round(save_s / nosave_s, 3),
                     "plan_save": last[True].get("plan"), "plan_nosave": last[False].get("plan"),
                     "walls_save": [round(w, 2) for w in walls[True]],
                     "walls_nosave": [round(w, 2) for w in walls[False]]})
        print(f"{fmt}: nosave {nosave_s:.2f} s, save {save_s:.2f} s, ratio {save_s / nosave_s:.3f}", flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps(rows, indent=1))
    lines = [f"# save vs --nosave: {a.images} 1920x1080 JPEGs, whole-process wall time, median of {a.repeat}", "",
             "| format | --nosave s | saved (default) s | ratio |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['format']} | {r['nosave_s']} | {r['save_s']} | {r['ratio']} |" for r in rows]
    lines += ["", "command: `python scripts/save_bench.py " + " ".join(sys.argv[1:]) + "`"]
    (a.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
