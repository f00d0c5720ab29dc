"""Side-by-side timing of `yolokit run` modes: interleaved repeats, whole-process wall time and CPU time, median.

Each repeat runs every (image list, weights, mode) once before the next repeat starts, so the noise of a shared
machine falls on every configuration alike. ``--baseline DIR`` also runs process mode (with ``--variant``: the
first variant) from another checkout (for example ``git worktree add /tmp/before <commit>``), to compare a change
with what came before it.
``--variant NAME=FLAGS`` (repeatable) compares any ``yolokit run`` flags instead of the modes, for example
``--variant "2 workers=--workers 2" --variant "4 workers=--workers 4"``; ``--save`` keeps the annotated images
(the default run) instead of ``--nosave``. Idle core-seconds = cores x wall - CPU seconds: the time a core had
nothing to run.

    python scripts/compare_modes.py --lists bench_out/seed/gen_1920x1080_2.txt,bench_out/seed/gen_1920x1080_100.txt \\
        --weights ../shared/weights/yolov5n.pt --baseline /tmp/before --out bench_out/compare_modes.md
"""

from __future__ import annotations

import argparse
import os
import statistics
from functools import partial
from pathlib import Path

from toolkit.jobs.bench.ceiling import timed
from toolkit.jobs.bench.timing import interleaved, yolokit_command

MODES = {"seq": ["--mode", "thread", "--workers", "1", "--batch", "1"],
         "thread": ["--mode", "thread", "--workers", "2"],
         "process": ["--mode", "process", "--workers", "2"],
         "auto": ["--mode", "auto"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lists", required=True, help="comma-separated image lists (or folders)")
    ap.add_argument("--weights", required=True, help="comma-separated models")
    ap.add_argument("--modes", default="seq,process,auto", help=f"comma-separated, from {', '.join(MODES)}")
    ap.add_argument("--baseline", help="another checkout whose process mode (or first variant) runs beside this one's")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS",
                    help="yolokit run flags to compare instead of --modes (repeatable)")
    ap.add_argument("--save", action="store_true", help="save the annotated images (the default run)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="bench_out/compare_modes.md")
    args = ap.parse_args()
    # this checkout's modes run the yolokit installed here; the baseline's run its checkout's code (its folder first)
    configs: list[tuple[str, Path | None, list[str]]] = [(m, None, MODES[m]) for m in args.modes.split(",")]
    if args.variant:
        configs = [(v.split("=", 1)[0], None, v.split("=", 1)[1].split() if "=" in v else v.split())
                   for v in args.variant]
    if args.baseline:
        name, _, flags = configs[0] if args.variant else ("process", None, MODES["process"])
        configs.append((f"{name} (baseline)", Path(args.baseline).resolve(), flags))
    lists = [str(Path(x).resolve()) for x in args.lists.split(",")]
    weights = [str(Path(w).resolve()) if Path(w).exists() else w for w in args.weights.split(",")]
    project = str(Path("bench_out/compare_runs").resolve())
    save = [] if args.save else ["--nosave"]
    samples = interleaved({(lst, w, name): partial(timed, yolokit_command(
        "run", lst, "--weights", w, *save, "--project", project, "--name", "r", "--exist-ok", *flags),
        str(cwd) if cwd else None) for lst in lists for w in weights for name, cwd, flags in configs}, args.repeats)
    cores = os.cpu_count() or 1
    lines = ["| images | weights | run | median s | runs | CPU s | idle core-s | first / this |",
             "| --- | --- | --- | ---: | --- | ---: | ---: | ---: |"]
    first = configs[0][0]
    for (lst, w, name), got in samples.items():
        ts = [t for t, _ in got]
        ref = [t for t, _ in samples[(lst, w, first)]]
        lines.append(f"| {Path(lst).name} | {Path(w).name} | {name} | {statistics.median(ts):.2f} | "
                     f"{', '.join(f'{t:.2f}' for t in ts)} | {statistics.median(c for _, c in got):.2f} | "
                     f"{statistics.median(cores * t - c for t, c in got):.2f} | "
                     f"{statistics.median(ref) / statistics.median(ts):.2f}x |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
