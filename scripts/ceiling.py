"""The machine's ceiling for `yolokit run`, and how close the default run gets to it.

For each model and image count, each round measures the parts of the necessary work in a fresh process (decode,
letterbox, the model at the run's plan, NMS, and for the default run annotate + encode + write; core-ms per image,
see toolkit/jobs/bench/ceiling.py) and the start-up no run can avoid (a fresh process importing numpy, OpenCV and
the runtime and loading the model), then times the whole `yolokit run` command with its defaults, `--nosave` and
the default run (annotated images saved). The ceiling is start-up + images x per-image core-ms / cores; a run's share
is the ceiling's seconds over the run's. Rounds interleave everything (parts, start-up, runs), so a share is the
ratio of two numbers taken side by side; the report gives the median share and its range over the rounds, the
1-minute load average during each round and the CPU's flags.

The images are the shared 1080p JPEG set made from real photos (toolkit.jobs.bench.inputs.photo_set); the models
are the default ONNX and OpenVINO exports of --weights, made once (or --models). Against other code, in the same
rounds: `--baseline-checkout DIR` runs the same commands from another yolokit checkout (before/after);
`--yolov5 DIR --yolov5-python PY` times the official YOLOv5 detect.py (a checkout outside this repository, run with
its own Python; `--torchvision-stand-in` where no torchvision wheel fits its torch) on the same images and .pt, on
both runs; without it, the seed loop (python -m toolkit.jobs.bench.seed, PyTorch
FP32, one image at a time) stands in for it, on `--nosave` rows.

    PYTHONPATH=. python scripts/ceiling.py --counts 100,1000 --repeats 3 --out bench_out/ceiling
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from toolkit.jobs.bench.ceiling import Parts, cpu_flags, load_average, parts_in_fresh_process, startup_seconds, timed
from toolkit.jobs.bench.detectpy import detect_py_command, detect_py_env, write_torchvision_stand_in
from toolkit.jobs.bench.inputs import exported, list_file, photo_set
from toolkit.jobs.bench.seed import seed_command
from toolkit.jobs.bench.timing import yolokit_command

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
RUNS = {"nosave": ["--nosave"], "default": []}


def yolokit_cmd(listing: Path, model: str, run: str, tmp: Path) -> list[str]:
    return yolokit_command("run", str(listing), "--weights", model, *RUNS[run], "--project", str(tmp), "--name", "r",
                           "--exist-ok")


def timed_run(cmd: list[str], tmp: Path, env: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall, CPU) seconds of ``cmd`` in ``tmp``, with ``env`` over this process's environment; its run folder
    removed after."""
    try:
        return timed(cmd, cwd=str(tmp), env=env)
    finally:
        shutil.rmtree(tmp / "r", ignore_errors=True)


def linked_folder(images: list[Path], folder: Path) -> Path:
    """A folder of symbolic links to ``images`` (detect.py takes a folder, not a list file)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for p in images:
        (folder / p.name).symlink_to(p.resolve())
    return folder


def against(args: argparse.Namespace) -> str:
    if not args.yolov5:
        return "seed loop (stand-in for detect.py)"
    return "detect.py (torchvision stand-in)" if args.torchvision_stand_in else "detect.py"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=str(SHARED / "weights" / "yolov5n.pt"), help="the .pt the models come from")
    ap.add_argument("--models", default="", help="comma-separated models instead of the default ONNX and OpenVINO "
                    "exports of --weights")
    ap.add_argument("--photos", default=str(SHARED / "datasets" / "coco128" / "images" / "train2017"))
    ap.add_argument("--counts", default="100,1000")
    ap.add_argument("--runs", default="nosave,default", help=f"from {', '.join(RUNS)}")
    ap.add_argument("--repeats", type=int, default=3, help="rounds (medians and ranges over them)")
    ap.add_argument("--out", default="bench_out/ceiling")
    ap.add_argument("--baseline-checkout", help="also run the same commands from this yolokit checkout")
    ap.add_argument("--yolov5", help="a YOLOv5 checkout (outside this repository) whose detect.py is timed")
    ap.add_argument("--yolov5-python", default=sys.executable, help="the Python that runs detect.py")
    ap.add_argument("--torchvision-stand-in", action="store_true",
                    help="put a stand-in for torchvision on detect.py's path (its NMS in plain torch), for a Python "
                         "whose torch has no matching torchvision wheel (toolkit/jobs/bench/detectpy.py)")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    counts = [int(c) for c in args.counts.split(",") if c]
    images = photo_set(args.photos, out / "hd", max(counts))
    listings = {n: list_file(images[:n], out / f"images_{n}.txt") for n in counts}
    models = [str(Path(m).resolve()) for m in args.models.split(",") if m] or [
        str(exported(args.weights, "onnx", out / "yolov5n.onnx")),
        str(exported(args.weights, "openvino", out / "yolov5n_openvino"))]
    runs = [r for r in args.runs.split(",") if r]
    tmp = Path(tempfile.mkdtemp(prefix="yolokit_ceiling_runs_"))
    samples: list[dict[str, Any]] = []
    # None: this checkout; then the baseline's, when given (its PYTHONPATH)
    checkouts = [None, *([str(Path(args.baseline_checkout))] if args.baseline_checkout else [])]
    folders = {n: linked_folder(images[:n], out / f"images_{n}") for n in counts} if args.yolov5 else {}
    detect_env = detect_py_env(write_torchvision_stand_in(out / "torchvision_stand_in")
                               if args.torchvision_stand_in else None)
    for rnd in range(args.repeats):
        for model in models:
            for n in counts:
                p = parts_in_fresh_process(model, [str(q) for q in images[:n]], n)
                p.startup, startup_cpu = startup_seconds(model, 0)
                for run in runs:
                    row: dict[str, Any] = {"round": rnd, "model": model, "images": n, "run": run,
                                           "parts": p.to_dict(), "load": load_average(), "startup_cpu": startup_cpu}
                    row["ceiling_s"] = p.ceiling_seconds(n, run == "default")
                    # this checkout and the baseline take turns at going first: neither always runs right after the
                    # parts' measurement
                    for checkout in checkouts if rnd % 2 == 0 else checkouts[::-1]:
                        prefix = "base_" if checkout else ""
                        env = {"PYTHONPATH": checkout} if checkout else None
                        row[prefix + "wall_s"], row[prefix + "cpu_s"] = timed_run(
                            yolokit_cmd(listings[n], model, run, tmp), tmp, env)
                    if model == models[0] and (args.yolov5 or run == "nosave"):  # detect.py, or the seed loop
                        if args.yolov5:
                            cmd = detect_py_command(args.yolov5_python, Path(args.yolov5), args.weights, folders[n],
                                                    tmp, run == "nosave")
                            row["detect_wall_s"], _ = timed_run(cmd, tmp, detect_env)
                        else:
                            row["detect_wall_s"], _ = timed_run(seed_command(args.weights, listings[n]), tmp)
                    samples.append(row)
                    print(json.dumps({k: v for k, v in row.items() if k != "parts"}), flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    detect = {(r["images"], r["run"]): r["detect_wall_s"] for r in samples if "detect_wall_s" in r}
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cores": os.cpu_count(), "cpu_flags": cpu_flags(), "python": platform.python_version()}
    result = {"machine": machine, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "samples": samples,
              "rows": summarise(samples, detect), "against": against(args)}
    (out / "ceiling.json").write_text(json.dumps(result, indent=1))
    (out / "ceiling.md").write_text(report(result))
    print(report(result))


def _med(vals: list[float]) -> tuple[float, float, float]:
    return statistics.median(vals), min(vals), max(vals)


def summarise(samples: list[dict[str, Any]], detect: dict[tuple[int, str], float]) -> list[dict[str, Any]]:
    rows = []
    keys = sorted({(s["model"], s["images"], s["run"]) for s in samples}, key=lambda k: (k[0], k[1], k[2] != "nosave"))
    for model, n, run in keys:
        mine = [s for s in samples if (s["model"], s["images"], s["run"]) == (model, n, run)]
        save = run == "default"
        need = [Parts(**s["parts"]).per_image(save) for s in mine]
        # the run's CPU beyond the unavoidable start-up's, per image, against the necessary work's
        efficiency = [n * need[i] / 1000 / max(1e-9, s["cpu_s"] - s["startup_cpu"]) for i, s in enumerate(mine)]
        row = {"model": model, "images": n, "run": run,
               "ceiling_s": _med([s["ceiling_s"] for s in mine]), "wall_s": _med([s["wall_s"] for s in mine]),
               "share": _med([s["ceiling_s"] / s["wall_s"] for s in mine]), "cpu_efficiency": _med(efficiency),
               "need_ms": _med(need), "loads": [s["load"] for s in mine],
               "parts": {k: _med([s["parts"][k] for s in mine])[0]
                         for k in ("decode", "letterbox", "model", "post", "save", "startup", "model_at_plan")},
               "plan": mine[-1]["parts"]["plan"], "model_options": mine[-1]["parts"]["model_options"]}
        if all("base_wall_s" in s for s in mine):
            row["base_share"] = _med([s["ceiling_s"] / s["base_wall_s"] for s in mine])
        if (n, run) in detect:
            d = [s for s in samples if (s["images"], s["run"]) == (n, run) and "detect_wall_s" in s]
            row["vs_detect"] = statistics.median(x["detect_wall_s"] for x in d) / row["wall_s"][0]
        rows.append(row)
    return rows


def report(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"Machine: {m['processor']}, {m['cores']} cores, CPU flags {', '.join(m['cpu_flags']) or 'none known'}; "
             f"{m['platform']}, Python {m['python']}.", f"Command: `{result['command']}`.", "",
             "| model | images | run | ceiling img/s | yolokit img/s | share of ceiling (min-max) | CPU efficiency | "
             + ("before (share) | " if any("base_share" in r for r in result["rows"]) else "")
             + (f"vs {result.get('against', 'detect.py')} | " if any("vs_detect" in r for r in result["rows"]) else "")
             + "load (1 min) |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | "
             + ("---: | " if any("base_share" in r for r in result["rows"]) else "")
             + ("---: | " if any("vs_detect" in r for r in result["rows"]) else "") + "--- |"]
    for r in result["rows"]:
        n = r["images"]
        share, lo, hi = r["share"]
        cells = [Path(r["model"]).name, str(n), "`--nosave`" if r["run"] == "nosave" else "default (images saved)",
                 f"{n / r['ceiling_s'][0]:.1f}", f"{n / r['wall_s'][0]:.1f}", f"{share:.0%} ({lo:.0%}-{hi:.0%})",
                 f"{r['cpu_efficiency'][0]:.0%}"]
        if "base_share" in r:
            cells.append(f"{r['base_share'][0]:.0%}")
        if any("vs_detect" in x for x in result["rows"]):
            cells.append(f"{r['vs_detect']:.2f}x" if "vs_detect" in r else "-")
        cells.append(", ".join(r["loads"]))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Parts (medians; core-ms per image, start-up in s):", "",
              "| model | images | plan | decode | letterbox | model (best) | model at the plan | NMS | "
              "annotate+encode+write | start-up s |",
              "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["rows"]:
        if r["run"] != "nosave" and any(x["run"] == "nosave" and x["model"] == r["model"] and x["images"] ==
                                        r["images"] for x in result["rows"]):
            continue
        p = r["parts"]
        lines.append(f"| {Path(r['model']).name} | {r['images']} | {r['plan']} | {p['decode']:.1f} | "
                     f"{p['letterbox']:.1f} | {p['model']:.1f} | {p['model_at_plan']:.1f} | {p['post']:.2f} | "
                     f"{p['save']:.1f} | {p['startup']:.2f} |")
    lines += ["", "Ceiling = start-up + images x (per-image core-ms) / cores. Share = ceiling seconds / run seconds "
              "(whole `yolokit run` process, fresh). CPU efficiency = the necessary core-seconds / the run's CPU "
              "seconds beyond the start-up's (holds on a busy machine, where wall-clock shares do not)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
