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
import os
import statistics
import sys
from functools import partial
from pathlib import Path

from toolkit.jobs.bench.inputs import exported, photo_set
from toolkit.jobs.bench.timing import interleaved, run_timed, yolokit_command

SHARED = Path(os.environ.get("YOLOKIT_SHARED", "../shared"))


def export(weights: Path, fmt: str, folder: Path) -> Path:
    """The format's default export (dynamic input), made once; the checkpoint itself for ``pt``."""
    if fmt == "pt":
        return weights
    return exported(weights, fmt, folder / {"onnx": "yolov5n.onnx", "openvino": "yolov5n_openvino"}[fmt])


def timed_run(images: Path, model: Path, out: Path, name: str, save: bool) -> tuple[float, dict[str, object]]:
    wall, stdout = run_timed(yolokit_command("run", str(images), "--weights", str(model), "--project", str(out),
                                             "--name", name, "--exist-ok", "--json", *([] if save else ["--nosave"])))
    return wall, json.loads(stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=SHARED / "datasets" / "coco128-large" / "images")
    ap.add_argument("--weights", type=Path, default=SHARED / "weights" / "yolov5n.pt")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--formats", default="pt,onnx,openvino")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("bench_out/save_bench"))
    a = ap.parse_args()
    images = a.out / f"images_{a.images}"
    photo_set(a.source, images, a.images)
    rows = []
    for fmt in a.formats.split(","):
        model = export(a.weights, fmt, a.out / "models")
        runs = interleaved({save: partial(timed_run, images, model, a.out / "runs",
                                          f"{fmt}_{'save' if save else 'nosave'}", save) for save in (False, True)},
                           a.repeat)
        walls = {save: [w for w, _ in r] for save, r in runs.items()}
        last = {save: r[-1][1] for save, r in runs.items()}
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
