"""Side-by-side timing of `yolokit run` modes: interleaved repeats, whole-process wall time, median.

Each repeat runs every (image list, weights, mode) once before the next repeat starts, so the noise of a shared
machine falls on every configuration alike. ``--baseline DIR`` also runs process mode from another checkout
(for example ``git worktree add /tmp/before <commit>``), to compare a change with what came before it.

    python scripts/compare_modes.py --lists bench_out/seed/gen_1920x1080_2.txt,bench_out/seed/gen_1920x1080_100.txt \\
        --weights ../shared/weights/yolov5n.pt --baseline /tmp/before --out bench_out/compare_modes.md
"""

from __future__ import annotations

import argparse
import statistics
from functools import partial
from pathlib import Path

from toolkit.jobs.bench.timing import interleaved, timed_command, yolokit_command

MODES = {"seq": ["--mode", "thread", "--workers", "1", "--batch", "1"],
         "thread": ["--mode", "thread", "--workers", "2"],
         "process": ["--mode", "process", "--workers", "2"],
         "auto": ["--mode", "auto"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lists", required=True, help="comma-separated image lists (or folders)")
    ap.add_argument("--weights", required=True, help="comma-separated models")
    ap.add_argument("--modes", default="seq,process,auto", help=f"comma-separated, from {', '.join(MODES)}")
    ap.add_argument("--baseline", help="another checkout whose process mode runs beside this one's")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="bench_out/compare_modes.md")
    args = ap.parse_args()
    # this checkout's modes run the yolokit installed here; the baseline's run its checkout's code (its folder first)
    configs: list[tuple[str, Path | None, list[str]]] = [(m, None, MODES[m]) for m in args.modes.split(",")]
    if args.baseline:
        configs.append(("process (baseline)", Path(args.baseline).resolve(), MODES["process"]))
    lists = [str(Path(x).resolve()) for x in args.lists.split(",")]
    weights = [str(Path(w).resolve()) if Path(w).exists() else w for w in args.weights.split(",")]
    project = str(Path("bench_out/compare_runs").resolve())
    times = interleaved({(lst, w, name): partial(timed_command, yolokit_command(
        "run", lst, "--weights", w, "--nosave", "--project", project, "--name", "r", "--exist-ok", *flags), cwd)
        for lst in lists for w in weights for name, cwd, flags in configs}, args.repeats)
    lines = ["| images | weights | mode | median s | runs | sequential / this |",
             "| --- | --- | --- | ---: | --- | ---: |"]
    for (lst, w, name), ts in times.items():
        seq = times.get((lst, w, "seq"))
        ratio = f"{statistics.median(seq) / statistics.median(ts):.2f}x" if seq else "-"
        lines.append(f"| {Path(lst).name} | {Path(w).name} | {name} | {statistics.median(ts):.2f} | "
                     f"{', '.join(f'{t:.2f}' for t in ts)} | {ratio} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
