"""Local engine vs ``--engine ray`` on this machine: img/s of the same ``yolokit run`` job, side by side.

Starts a one-machine Ray cluster (``ray start --head``), then runs each job in a fresh process, alternating
engines, ``--repeats`` times, over the source's images once (N) and twice (2N, a list file naming each image
twice), and reports medians:

- ``img/s``: images / the run's wall time (listing, model loading in every worker, inference, outputs);
- ``first result s``: from the run's start to its first finished image (Ray: connect, start the actors);
- ``marginal img/s``: N / (wall(2N) - wall(N)), the rate once started; ``fixed s``: wall(N) - N / marginal.

The cluster's own start-up is reported separately (a cluster is started once and serves many jobs).

    python scripts/bench_ray.py --source ../shared/datasets/coco128/images/train2017 \\
        --weights ../shared/weights/yolov5n.pt --out bench_out/ray
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from toolkit.jobs.bench.timing import interleaved, medians


def one(args: argparse.Namespace) -> None:
    """Child mode: run one job and print its timings as JSON."""
    from toolkit.jobs.run import RunOptions, run

    t0 = time.perf_counter()
    marks: list[tuple[int, float]] = []

    def progress(done: int, total: int, _: object) -> None:
        marks.append((done, time.perf_counter() - t0))

    with tempfile.TemporaryDirectory() as tmp:
        s = run(RunOptions.of(source=args.source, weights=args.weights, save_txt=True, nosave=True, project=tmp,
                           name="b", engine=args.engine, address=args.address, workers=args.workers,
                           batch=args.batch), progress=progress)
    wall = time.perf_counter() - t0
    print(json.dumps({"engine": args.engine, "images": s.processed, "failed": len(s.failed), "wall_s": wall,
                      "run_img_s": s.processed / wall, "first_s": marks[0][1], "plan": s.plan}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--out", default="bench_out/ray")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--batch", type=int, default=0)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--engine", default="local", help=argparse.SUPPRESS)
    ap.add_argument("--address", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        one(args)
        return

    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    t0 = time.perf_counter()
    subprocess.run([ray, "start", "--head", f"--port={port}", f"--num-cpus={args.cpus}",
                    "--include-dashboard=false", "--disable-usage-stats"], env=env, check=True, capture_output=True)
    cluster_start = time.perf_counter() - t0
    from toolkit.io.sources import list_sources

    paths = [os.path.abspath(r.path) for r in list_sources(args.source).items]
    lists = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    (lists / "x1.txt").write_text("\n".join(paths) + "\n")
    (lists / "x2.txt").write_text("\n".join(paths + paths) + "\n")

    def job(size: str, engine: str) -> dict[str, Any]:
        cmd = [sys.executable, __file__, "--one", "--source", str(lists / f"{size}.txt"), "--weights", args.weights,
               "--engine", engine, "--workers", str(args.workers), "--batch", str(args.batch)]
        if engine == "ray":
            cmd += ["--address", f"127.0.0.1:{port}"]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        row: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        row["size"] = size
        print(json.dumps(row), file=sys.stderr)
        return row

    try:
        runs = interleaved({(size, engine): partial(job, size, engine) for size in ("x1", "x2")
                            for engine in ("local", "ray")}, args.repeats)
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True)
        shutil.rmtree(lists, ignore_errors=True)
    rows = [dict(row, repeat=r) for rs in runs.values() for r, row in enumerate(rs)]
    timings = {key: medians({k: v for k, v in row.items() if k in ("wall_s", "first_s")} for row in rs)
               for key, rs in runs.items()}

    def med(engine: str, size: str, key: str) -> float:
        return timings[(size, engine)][key]

    n = len(paths)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"cluster_start_s": cluster_start, "runs": rows}, indent=1))
    lines = [f"# Local engine vs --engine ray ({n} images, {Path(args.weights).name}, {args.cpus} CPUs, "
             f"median of {args.repeats})", "",
             f"`python scripts/bench_ray.py --source {args.source} --weights {args.weights} --cpus {args.cpus}`", "",
             f"| engine | img/s, {n} images | img/s, {2 * n} images | first result s | marginal img/s | fixed s "
             f"| plan |", "|---|---|---|---|---|---|---|"]
    marginal = {}
    for engine in ("local", "ray"):
        plan = next(str(x["plan"]) for x in rows if x["engine"] == engine)
        w1, w2 = med(engine, "x1", "wall_s"), med(engine, "x2", "wall_s")
        marginal[engine] = n / (w2 - w1) if w2 > w1 else float("nan")
        lines.append(f"| {engine} | {n / w1:.1f} | {2 * n / w2:.1f} | {med(engine, 'x1', 'first_s'):.1f} | "
                     f"{marginal[engine]:.1f} | {w1 - n / marginal[engine]:.1f} | {plan} |")
    lines += ["", f"Ray / local: img/s at {n} images {med('local', 'x1', 'wall_s') / med('ray', 'x1', 'wall_s'):.2f}, "
              f"at {2 * n} images {med('local', 'x2', 'wall_s') / med('ray', 'x2', 'wall_s'):.2f}, "
              f"marginal {marginal['ray'] / marginal['local']:.2f}. "
              f"Starting the cluster (`ray start --head`, once per cluster, not in the runs): {cluster_start:.1f} s."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
