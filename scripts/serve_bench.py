"""Benchmark ``yolokit serve`` (issue 24, point 11) against what a team would otherwise run, on one machine.

Inputs: ``--images`` distinct 1920x1080 JPEGs made from the coco128 photos (``toolkit.jobs.bench.inputs.photo_set``:
no two the same, so no answer can be cached), and the default OpenVINO export of yolov5n (made once, reused).

Servers, all started at once (each its own process, on 127.0.0.1) and measured in turn, phase by phase, so that a
shared machine's slow minutes fall on all of them alike:

* ``yolokit``: ``yolokit serve MODEL`` at its defaults (dynamic batching), ``POST /v1/detect`` with the raw image;
* ``per-request``: one model call per request, as YOLOv5's Flask example works, done properly (Starlette on uvicorn,
  decode in the request's thread, one Detector under a lock; ``toolkit.jobs.bench.serving``), raw image;
* ``litserve``: LitServe with its batching (batches of 8, 5 ms) on the same Detector, the image as base64 in JSON
  (LitServe takes JSON or forms) (``toolkit.jobs.bench.litserve_api``);

and ``yolokit run --nosave`` on the same images and model (the batch ceiling), timed whole (process start to exit)
and in-run (its own wall time), before the servers start and after they stop.

Phases: a warm-up; a closed-loop sweep (``--concurrency`` clients, each sending its next request once its last is
answered, ``--phase-s`` seconds each); open-loop fixed-rate runs at ``--rates`` times yolokit serve's capacity (its
best closed-loop throughput), the same rates for every server; then, for yolokit serve, ``--overload-requests`` at 2x
capacity (503 latency, admitted latency, memory growth, connection errors). For each phase: throughput (answers 200
per second), p50/p90/p99 latency of the answers 200, the share of 503 answers (and how fast they came) and of other
errors, the mean batch size (yolokit: ``/metrics``; LitServe: the batches its worker ran; per-request: 1), the
server's CPU (cores: CPU seconds of its process tree per second) and resident memory, and the client's CPU: the load
generator runs in this process, on the same machine as the servers, so its CPU is measured and reported too.

Writes ``results.json`` and ``report.md`` under ``--out`` and prints the markdown; the targets of issue 24 ("Targets
on this machine") are checked and reported, met or not. The whole benchmark is this one command::

    PYTHONPATH=. python scripts/serve_bench.py --out bench_out/serve

``--quick`` is a shortened run (60 images, 6 s phases, 1,000 overload requests) for a busy machine.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from toolkit.errors import YolokitError
from toolkit.jobs.bench import serving as sv
from toolkit.jobs.bench.inputs import exported, list_file, photo_set
from toolkit.jobs.bench.timing import run_timed, yolokit_command

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("YOLOKIT_SHARED", REPO.parent / "shared"))
BATCH_LOG = "litserve_batches.txt"
SERVERS = ("yolokit", sv.PER_REQUEST, sv.LITSERVE)


# ----------------------------------------------------------------------------------------------- the servers
class Server:
    """One server under test: how to start it, what to send it, how to read its batch sizes."""

    def __init__(self, kind: str, model: Path, images: list[Path], out: Path, litserve_batch: int) -> None:
        self.kind, self.out = kind, out
        port = sv.free_port()
        if kind == "yolokit":
            self.cmd = yolokit_command("serve", str(model), "--port", str(port), "--grpc-port", "0")
            self.path, self.health = "/v1/detect", "/v2/health/ready"
            self.bodies = [sv.raw_body(p.read_bytes()) for p in images]
        elif kind == sv.PER_REQUEST:
            self.cmd = sv.server_command(kind, str(model), port)
            self.path, self.health = "/detect", "/health"
            self.bodies = [sv.raw_body(p.read_bytes()) for p in images]
        else:
            self.cmd = sv.server_command(kind, str(model), port, "--max-batch", str(litserve_batch),
                                         "--batch-timeout", "0.005")
            self.path, self.health = "/detect", "/health"
            self.bodies = [sv.Body(json.dumps({"image": base64.b64encode(p.read_bytes()).decode()}).encode(),
                                   {"Content-Type": "application/json"}) for p in images]
        self.url = f"http://127.0.0.1:{port}"
        self.batches = out / f"{kind}_{BATCH_LOG}"
        self.started: sv.Started | None = None

    def start(self) -> None:
        self.batches.unlink(missing_ok=True)
        self.started = sv.start_server(self.cmd, self.url, self.health, self.out / f"{self.kind}.log",
                                       env={"YOLOKIT_BENCH_BATCHES": str(self.batches)})

    @property
    def pid(self) -> int:
        assert self.started is not None
        return self.started.proc.pid

    def batch_counts(self) -> tuple[float, float]:
        """(images inferred, model executions) so far."""
        if self.kind == "yolokit":
            text = sv.get(self.url + "/metrics")[1]
            values = {}
            for line in text.splitlines():
                for name in ("nv_inference_count", "nv_inference_exec_count"):
                    if line.startswith(name + "{"):
                        values[name] = float(line.rsplit(" ", 1)[1])
            return values.get("nv_inference_count", 0.0), values.get("nv_inference_exec_count", 0.0)
        if self.kind == sv.LITSERVE:
            sizes = [int(x) for x in self.batches.read_text().split()] if self.batches.exists() else []
            return float(sum(sizes)), float(len(sizes))
        return 0.0, 0.0  # one model call per request, by construction

    def stop(self) -> int | None:
        return self.started.stop() if self.started is not None else None


def measure(servers: dict[str, Server], kind: str, phase: str, run: Any, seconds: float) -> dict[str, Any]:
    """One phase on server ``kind`` (``run(url, bodies)`` -> samples), with every server's process tree watched."""
    s = servers[kind]
    before = s.batch_counts()
    watches = {k: sv.ProcessWatch(o.pid) for k, o in servers.items()}
    for w in watches.values():
        w.__enter__()
    try:
        samples = run(s.url + s.path, s.bodies)
    finally:
        for w in watches.values():
            w.__exit__(None, None, None)
    after = s.batch_counts()
    images, runs = after[0] - before[0], after[1] - before[1]
    row = {"server": kind, "phase": phase, **sv.summary(samples, seconds), **watches[kind].report(),
           "mean_batch": round(images / runs, 2) if runs else (1.0 if kind == sv.PER_REQUEST else None),
           "others_cpu_cores": round(sum(w.report()["server_cpu_cores"] for k, w in watches.items() if k != kind), 2),
           "load_avg_1m": round(os.getloadavg()[0], 2)}
    print(f"  {kind:12s} {phase:16s} {row['throughput']:7.2f} req/s  p50 {row['p50_ms']} p99 {row['p99_ms']} ms  "
          f"503 {row['share_503']:.1%}  batch {row['mean_batch']}  server {row['server_cpu_cores']} cores  "
          f"client {row['client_cpu_cores']} cores", flush=True)
    return row


def run_nosave(model: Path, images: list[Path], out: Path, name: str) -> dict[str, Any]:
    lst = list_file(images, out / "images.txt")
    whole, stdout = run_timed(yolokit_command("run", str(lst), "--weights", str(model), "--nosave", "--json",
                                              "--project", str(out / "runs"), "--name", name, "--exist-ok"))
    s = json.loads(stdout)
    return {"images": s["processed"], "failed": len(s["failed"]), "whole_s": round(whole, 2),
            "whole_img_s": round(s["processed"] / whole, 2), "run_s": round(s["wall_s"], 2),
            "run_img_s": round(s["processed"] / s["wall_s"], 2), "plan": s.get("plan", "")}


# ----------------------------------------------------------------------------------------------- the targets
def _row(rows: list[dict[str, Any]], server: str, phase: str) -> dict[str, Any]:
    return next((r for r in rows if r["server"] == server and r["phase"] == phase), {})


def targets(rows: list[dict[str, Any]], nosave: list[dict[str, Any]], overload: dict[str, Any] | None
            ) -> list[dict[str, Any]]:
    """Issue 24's targets on this machine, each with what was measured and whether it was met."""
    y8, p8 = _row(rows, "yolokit", "closed c=8"), _row(rows, sv.PER_REQUEST, "closed c=8")
    y1, p1 = _row(rows, "yolokit", "closed c=1"), _row(rows, sv.PER_REQUEST, "closed c=1")
    run_in = sum(r["run_img_s"] for r in nosave) / len(nosave)
    run_whole = sum(r["whole_img_s"] for r in nosave) / len(nosave)
    out = []

    def add(name: str, measured: str, met: bool | None) -> None:  # None: nothing to judge it by
        out.append({"target": name, "measured": measured, "met": met})

    if y8 and p8:
        add("c=8: throughput >= 0.9 x yolokit run --nosave (in-run img/s)",
            f"{y8['throughput']} req/s vs 0.9 x {run_in:.2f} = {0.9 * run_in:.2f} (whole-process: {run_whole:.2f})",
            y8["throughput"] >= 0.9 * run_in)
        add("c=8: throughput >= the per-request server's", f"{y8['throughput']} vs {p8['throughput']} req/s",
            y8["throughput"] >= p8["throughput"])
        add("c=8: p99 <= 2 x p50", f"p99 {y8['p99_ms']} ms, p50 {y8['p50_ms']} ms",
            y8["p99_ms"] is not None and y8["p50_ms"] is not None and y8["p99_ms"] <= 2 * y8["p50_ms"])
    if y1 and p1 and y1.get("p50_ms") is not None and p1.get("p50_ms") is not None:
        add("c=1: p50 at most 3 ms above the per-request server's", f"{y1['p50_ms']} ms vs {p1['p50_ms']} ms",
            y1["p50_ms"] <= p1["p50_ms"] + 3)
    if overload:
        add("2x capacity: the excess gets 503 within 50 ms (p99)", f"p99 of the 503s {overload['p99_503_ms']} ms "
            f"({overload['share_503']:.1%} of {overload['requests']})",
            None if overload["p99_503_ms"] is None else overload["p99_503_ms"] <= 50)  # no 503: not tested
        add("2x capacity: admitted requests p99 <= 1 s", f"p99 {overload['p99_ms']} ms",
            overload["p99_ms"] is not None and overload["p99_ms"] <= 1000)
        grew = overload["server_rss_mib_end"] - overload["server_rss_mib_start"]
        add(f"2x capacity: RSS flat (<= +50 MB over {overload['requests']} requests)",
            f"{overload['server_rss_mib_start']} -> {overload['server_rss_mib_end']} MiB (max "
            f"{overload['server_rss_mib_max']})", grew * 1.048576 <= 50)
        add("2x capacity: no connection errors", f"{overload['connection_errors']}", overload["connection_errors"] == 0)
    return out


# ----------------------------------------------------------------------------------------------- the report
def markdown(rep: dict[str, Any]) -> str:
    m = rep["machine"]
    lines = [f"# yolokit serve benchmark: {rep['images']} distinct 1920x1080 JPEGs, {rep['model']}", "",
             f"{m['cpus']} CPUs, {m['platform']}, Python {m['python']}; load average {m['load_start']} at the start, "
             f"{m['load_end']} at the end (other work on the machine{'' if m['load_start'][0] < 0.5 else ': shared'})."
             f" Client and servers on the same machine: the client's CPU is in the tables.", "",
             f"Phases of {rep['phase_s']} s after a {rep['warmup_s']} s warm-up; open-loop rates are multiples of "
             f"yolokit serve's capacity, {rep['capacity']} req/s (its best closed-loop throughput).", "",
             "## yolokit run --nosave (same images and model)", "",
             "| when | images | whole img/s | in-run img/s | plan |", "| --- | ---: | ---: | ---: | --- |"]
    for r in rep["nosave"]:
        lines.append(f"| {r['when']} | {r['images']} | {r['whole_img_s']} | {r['run_img_s']} | {r['plan']} |")
    lines += ["", "## Servers", "",
              "| server | phase | req/s | p50 ms | p90 ms | p99 ms | 503 | 503 p99 ms | errors | mean batch | "
              "server CPU | server RSS MiB (start/max) | client CPU | others' CPU |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for r in rep["rows"]:
        err = f"{r['share_errors']:.1%}" + (f" +{r['connection_errors']} conn" if r["connection_errors"] else "")
        lines.append(f"| {r['server']} | {r['phase']} | {r['throughput']} | {r['p50_ms']} | {r['p90_ms']} | "
                     f"{r['p99_ms']} | {r['share_503']:.1%} | {r['p99_503_ms'] or '-'} | {err} | "
                     f"{r['mean_batch'] or '-'} | {r['server_cpu_cores']} | {r['server_rss_mib_start']}/"
                     f"{r['server_rss_mib_max']} | {r['client_cpu_cores']} | {r['others_cpu_cores']} |")
    for k, why in rep["not_run"].items():
        lines.append(f"\n{k}: not run ({why}).")
    lines += ["", "## Targets (issue 24, on this machine)", "", "| target | measured | met |", "| --- | --- | --- |"]
    for t in rep["targets"]:
        met = "n/a" if t["met"] is None else "yes" if t["met"] else "NO"
        lines.append(f"| {t['target']} | {t['measured']} | {met} |")
    lines += ["", f"Command: `{rep['command']}` ({rep['seconds']} s)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", type=Path, default=SHARED / "weights" / "yolov5n.pt")
    ap.add_argument("--photos", type=Path, default=SHARED / "datasets" / "coco128" / "images" / "train2017")
    ap.add_argument("--out", type=Path, default=Path("bench_out/serve"))
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--phase-s", type=float, default=20.0)
    ap.add_argument("--warmup-s", type=float, default=5.0)
    ap.add_argument("--concurrency", default="1,4,8,16,32")
    ap.add_argument("--rates", default="0.5,1,2", help="open-loop rates, times yolokit serve's capacity")
    ap.add_argument("--overload-requests", type=int, default=10000, help="at 2x capacity, yolokit serve (0: none)")
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--litserve-batch", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="60 images, 6 s phases, 2 s warm-up, 1,000 overload requests")
    a = ap.parse_args(argv)
    kinds = [k for k in a.servers.split(",") if k]
    unknown = [k for k in kinds if k not in SERVERS]
    if unknown or "yolokit" not in kinds:
        ap.error(f"--servers {a.servers}: give yolokit and any of {', '.join(SERVERS[1:])}, comma-separated")
    if a.quick:
        a.images, a.phase_s, a.warmup_s, a.overload_requests = 60, 6.0, 2.0, 1000
    t_all = time.perf_counter()
    a.out.mkdir(parents=True, exist_ok=True)
    load_start = [round(x, 2) for x in os.getloadavg()]
    images = photo_set(a.photos, a.out / "images_1920x1080", a.images)
    model = exported(a.weights, "openvino", a.out / "yolov5n_openvino")
    not_run: dict[str, str] = {}
    if sv.LITSERVE in kinds:
        try:
            import litserve  # noqa: F401
        except ImportError as e:
            not_run[sv.LITSERVE] = f"litserve cannot be imported ({e}); pip install 'yolokit[servebench]'"
            kinds.remove(sv.LITSERVE)
    nosave = [{"when": "before the servers", **run_nosave(model, images, a.out, "nosave_before")}]
    print(f"yolokit run --nosave: {nosave[0]}", flush=True)
    servers = {k: Server(k, model, images, a.out, a.litserve_batch) for k in kinds}
    rows: list[dict[str, Any]] = []
    overload: dict[str, Any] | None = None
    try:
        for k, s in list(servers.items()):
            try:
                s.start()
            except YolokitError as e:  # a baseline that does not start is reported, not fatal
                if k == "yolokit":
                    raise
                not_run[k] = f"did not start: {str(e).splitlines()[-1][:300]}"
                del servers[k]
                continue
            print(f"{s.kind}: ready in {s.started.ready_s if s.started else 0:.1f} s", flush=True)
        for k, why in not_run.items():
            print(f"serve_bench: {k} not run: {why}", file=sys.stderr, flush=True)
        for k in servers:  # warm-up, not recorded
            sv.closed_loop(servers[k].url + servers[k].path, servers[k].bodies, 8, a.warmup_s)
        for c in (int(x) for x in a.concurrency.split(",")):
            for k in servers:
                rows.append(measure(servers, k, f"closed c={c}",
                                    lambda url, bodies, c=c: sv.closed_loop(url, bodies, c, a.phase_s), a.phase_s))
        capacity = max((r["throughput"] for r in rows if r["server"] == "yolokit"), default=0.0) or \
            max(r["throughput"] for r in rows)
        for f in (float(x) for x in a.rates.split(",")):
            rate = f * capacity
            for k in servers:
                rows.append(measure(servers, k, f"open {f:g}x ({rate:.0f}/s)",
                                    lambda url, bodies, rate=rate: sv.open_loop(url, bodies, rate, a.phase_s),
                                    a.phase_s))
        if a.overload_requests and "yolokit" in servers:
            seconds = a.overload_requests / (2 * capacity)
            overload = measure(servers, "yolokit", f"overload 2x x{a.overload_requests}",
                               lambda url, bodies: sv.open_loop(url, bodies, 2 * capacity, seconds), seconds)
            rows.append(overload)
    finally:
        codes = {k: s.stop() for k, s in servers.items()}
    nosave.append({"when": "after the servers", **run_nosave(model, images, a.out, "nosave_after")})
    rep = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                       "load_start": load_start, "load_end": [round(x, 2) for x in os.getloadavg()]},
           "images": len(images), "model": f"{a.weights.stem} OpenVINO (default export)", "phase_s": a.phase_s,
           "warmup_s": a.warmup_s, "capacity": capacity, "nosave": nosave, "rows": rows, "exit_codes": codes,
           "not_run": not_run,
           "command": "PYTHONPATH=. python scripts/serve_bench.py " + " ".join(argv if argv is not None else
                                                                            sys.argv[1:])}
    rep["targets"] = targets(rows, nosave, overload)
    rep["seconds"] = round(time.perf_counter() - t_all, 1)
    (a.out / "results.json").write_text(json.dumps(rep, indent=1))
    md = markdown(rep)
    (a.out / "report.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
