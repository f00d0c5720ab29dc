"""The GPU checks of yolokit in one command: correctness and throughput on one CUDA GPU, in under 8 minutes.

Needs only torch (with CUDA), numpy, opencv-python-headless, typer and pyyaml, and yolokit importable: installed, or
the checkout on PYTHONPATH (``PYTHONPATH=.`` from the checkout, as below). No network, no pip install, and none of
onnxruntime, openvino, pycocotools, rich or tensorrt. The processes it starts inherit its environment.

1. Correctness on coco128 (``--coco``): yolov5n (``--weights``) through ``Detector`` on CUDA, as ``yolokit run``
   runs it (the GPU pipeline), FP16 and FP32, against yolokit's own CPU FP32 run. A reference box counts as matched
   by a box of the same class at IoU >= 0.9 with |conf difference| <= 0.02 (FP16) or 0.002 (FP32). Also FP32 with
   the host pipeline on the GPU (CPU letterbox and NMS), FP32 at --conf 0.001 (the NMS fallback path), the device
   letterbox against OpenCV's, and the batched NMS against NumPy's on real outputs.
2. Throughput on ``--images`` (1,000) 1920x1080 JPEGs made from the coco128 photos
   (``toolkit.jobs.bench.inputs.photo_set``), each run in a fresh process (whole-process img/s includes start-up),
   for yolov5s (built-in config, random weights: speed only) and yolov5n: the seed loop
   (``toolkit.jobs.bench.seed``: PyTorch FP16, one image at a time, cv2.imread in the loop), ``yolokit run --device
   cuda --nosave``, and the default run (annotated images saved); for yolov5s also ``--nosave --gpu-resize``.
   Per-stage times and peak GPU memory come from inside each process.
3. Serving (issue 24): ``yolokit serve --weights --device`` (dynamic batching) against the per-request server (one
   Detector call per request under a lock, as YOLOv5's Flask example works, done properly:
   ``toolkit.jobs.bench.serving``), both on the GPU, each sent ``POST`` requests with the raw 1080p JPEGs by 16
   clients in a closed loop for ``--serve-s`` seconds after a warm-up (the client runs here, on the same machine).
   Target: yolokit serve answers >= 2x the per-request server's requests per second. Needs the ``serve`` extra (the
   load generator is the standard library's); without it this part is reported as not run, with the reason. Where
   nothing can be installed, bring it in a folder (``pip install --target serve_deps starlette 'uvicorn[standard]'
   python-multipart grpcio protobuf prometheus-client`` on a machine with the same Python) and put that folder on
   ``PYTHONPATH`` after the checkout.

4. Host decoding (what bounds the pipeline's readers): the JPEGs read and decoded as a reader does it
   (``read_bytes`` + ``decode_image``), then also letterboxed (OpenCV's resize and pad), by 1, 2, 4, ... threads up to
   the CPU count, each thread count over the same images: images per second and each image's milliseconds per
   thread. Where these do not scale with the threads, the readers cannot either.

``--parts`` runs some of the four (``correctness,throughput,serving,decoding``, the default all); the others are
reported as not run. Writes ``report.json`` and ``report.md`` under ``--out`` and prints the markdown. Exit 0 when
every verdict passes: the GPU pipeline matches >= 99.5 % of the reference boxes in FP32 and >= 95 % in FP16
(``TARGETS``), and the throughput and serving targets hold; 1 when a verdict fails or a run errs, 2 when there is
no CUDA GPU (nothing is measured).

    PYTHONPATH=. python scripts/gpu_check.py --weights ../shared/weights/yolov5n.pt \\
        --coco ../shared/datasets/coco128/images/train2017 --out bench_out/gpu_check

``PYTHONPATH=. python scripts/gpu_check.py --dry-run`` runs the whole script on the CPU with 4 small images (FP32
only: the device pipeline on the CPU against the CPU path), to prove the script itself works where there is no GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from toolkit.devices import parse_device
from toolkit.errors import YolokitError
from toolkit.jobs.bench.inputs import photo_set
from toolkit.jobs.bench.seed import peak_gpu_memory, seed_command
from toolkit.jobs.bench.timing import run_timed

REPO = Path(__file__).resolve().parents[1]  # the default --weights and --coco are in ../shared beside the checkout

# shares of reference boxes matched (same class, IoU >= MIN_IOU, |conf difference| <= CONF_TOL), and speed targets
TARGETS = {"fp32_match": 0.995, "fp16_match": 0.95, "yolov5s_nosave_img_s": 1000.0, "speedup_vs_seed": 10.0,
           "save_vs_nosave": 0.85, "serve_vs_per_request": 2.0}
SERVE_CONCURRENCY = 16
PARTS = ("correctness", "throughput", "serving", "decoding")
SERVE_NEEDS = ("starlette", "uvicorn", "multipart", "grpc", "google.protobuf", "prometheus_client")  # the serve extra
MIN_IOU = 0.9
CONF_TOL = {"fp32": 0.002, "fp16": 0.02}


# ---------------------------------------------------------------------------------------------- correctness

def _read(path: Path) -> np.ndarray:
    img = cv2.imread(str(path))
    if img is None:
        raise SystemExit(f"{path}: not a readable image")
    return img

def _detect(paths: list[Path], weights: str, device: str, **kw: Any) -> tuple[dict[str, Any], str]:
    from toolkit import Detector

    out: dict[str, Any] = {}
    with Detector(weights, device=device, **kw) as det:
        for r in det.predict_iter([str(p) for p in paths], mode="auto"):
            if r.detections is None:
                raise SystemExit(f"gpu_check: {r.ref.path} failed: {r.error}")
            d = r.detections
            out[r.ref.path] = (d.xyxy.copy(), d.confidence.copy(), d.class_id.copy())
        plan = det.last_plan.describe() if det.last_plan else ""
    return out, plan


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def compare(ref: dict[str, Any], got: dict[str, Any], min_iou: float, conf_tol: float) -> dict[str, Any]:
    """Reference boxes matched one-to-one (highest conf first) by a box of the same class, IoU >= ``min_iou``,
    |conf difference| <= ``conf_tol``; and boxes of ``got`` left unmatched."""
    total = matched = extra = 0
    for key, (rb, rc, rk) in ref.items():
        gb, gc, gk = got.get(key, (np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)))
        total += len(rb)
        if len(rb) and len(gb):
            close = np.abs(rc[:, None] - gc[None, :]) <= conf_tol
            ok = (rk[:, None] == gk[None, :]) & (_iou(rb, gb) >= min_iou) & close
            used = np.zeros(len(gb), bool)
            for i in np.argsort(-rc, kind="stable"):
                cand = np.where(ok[i] & ~used)[0]
                if len(cand):
                    used[cand[0]] = True
                    matched += 1
            extra += int((~used).sum())
        else:
            extra += len(gb)
    return {"reference_boxes": total, "matched": matched, "share": matched / total if total else 1.0,
            "extra": extra, "min_iou": min_iou, "conf_tol": conf_tol}


def unit_checks(paths: list[Path], weights: str, device: str) -> dict[str, Any]:
    """The device letterbox against OpenCV's, and the batched NMS against NumPy's on real model outputs (read back as
    the GPU pipeline reads them: one copy per batch, flagged images answered by the exact fallback)."""
    from toolkit.engine.gpu.letterbox import letterbox_torch
    from toolkit.engine.gpu.nms import BatchedNMS
    from toolkit.model.load import load_model
    from toolkit.ops import NMSOptions, letterbox, postprocess

    dev = torch.device(parse_device(device).torch)
    diffs, exact_1080 = [], True
    for p in paths[:16]:
        img = _read(p)
        # coco128 photos resized to 416 (a real resize; at 640 most are only padded), 1920x1080 to 640 (exact)
        for src, size in ((img, 416), (cv2.resize(img, (1920, 1080), interpolation=cv2.INTER_LINEAR), 640)):
            ref, _ = letterbox(src, size, 32)
            got, _ = letterbox_torch(torch.from_numpy(src).to(dev), size, 32, quantize=True)
            d = got.cpu().numpy() * 255 - ref[:, :, ::-1].transpose(2, 0, 1).astype(np.float32)
            if size == 640:
                exact_1080 &= float(np.abs(d).max()) < 1e-3
            else:
                diffs.append((float(np.abs(d).mean()), float(np.abs(d).max())))
    model = load_model(weights).model.to(dev).float().eval()
    same = total = 0
    for opts in (NMSOptions(), NMSOptions(conf=0.001, iou=0.6, max_det=300)):
        batch = np.stack([letterbox(_read(p), (480, 640), 32, auto=False)[0][:, :, ::-1].transpose(2, 0, 1)
                          for p in paths[:8]])
        with torch.inference_mode():
            preds = model(torch.from_numpy(np.ascontiguousarray(batch)).to(dev).float() / 255)
        nms = BatchedNMS(opts)
        cand, out, info = nms(preds)
        out_h, info_h = out.cpu().numpy(), info.cpu().numpy()
        for i, pred in enumerate(preds.cpu().numpy()):
            rows = nms.rows(cand, out_h, info_h, i)
            rb, rc, rk = postprocess(pred, opts)
            total += 1
            same += bool(np.array_equal(rows[:, :4], rb) and np.array_equal(rows[:, 4], rc)
                         and np.array_equal(rows[:, 5].astype(np.int64), rk))
    worst = [round(max(d[0] for d in diffs), 4), round(max(d[1] for d in diffs), 3)]
    return {"letterbox_416_grey_levels_mean_max": worst,
            "letterbox_1080p_to_640_exact": bool(exact_1080),
            "batched_nms_images_identical_to_numpy": f"{same}/{total}"}


def correctness(args: argparse.Namespace, coco: list[Path]) -> dict[str, Any]:
    dev = args.device
    kw = {"imgsz": args.imgsz}
    t0 = time.perf_counter()
    ref, ref_plan = _detect(coco, args.weights, "cpu", half=False, **kw)
    out: dict[str, Any] = {"reference": {"device": "cpu", "precision": "fp32", "plan": ref_plan,
                                         "seconds": round(time.perf_counter() - t0, 2)}}
    runs = [("fp32_gpu_pipeline", {"half": False, "pipeline": "device"}, CONF_TOL["fp32"]),
            ("fp32_host_pipeline", {"half": False, "pipeline": "host"}, CONF_TOL["fp32"])]
    if parse_device(dev).is_gpu:
        runs.insert(0, ("fp16_gpu_pipeline", {"half": True}, CONF_TOL["fp16"]))
    for name, extra, tol in runs:
        t0 = time.perf_counter()
        got, plan = _detect(coco, args.weights, dev, **kw, **extra)
        out[name] = {**compare(ref, got, MIN_IOU, tol), "plan": plan, "seconds": round(time.perf_counter() - t0, 2)}
    low = {"conf": 0.001, "iou": 0.6, "max_det": 300}
    ref_low, _ = _detect(coco, args.weights, "cpu", half=False, **kw, **low)
    got_low, plan = _detect(coco, args.weights, dev, half=False, pipeline="device", **kw, **low)
    out["fp32_gpu_pipeline_conf0.001"] = {**compare(ref_low, got_low, MIN_IOU, CONF_TOL["fp32"]), "plan": plan}
    out["unit"] = unit_checks(coco, args.weights, dev)
    return out


# ----------------------------------------------------------------------------------------------- throughput
def child_main(args: argparse.Namespace) -> int:
    """One ``yolokit run`` in this process (through the CLI entry point, so that the peak GPU memory is this run's):
    its JSON summary and the peak GPU memory, printed as one JSON line."""
    from toolkit.cli import main as cli

    argv = ["run", args.images_dir, "--weights", args.model, "--device", args.device, "--imgsz", str(args.imgsz),
            "--project", args.project, "--name", args.name, "--exist-ok", "--json"]
    argv += [] if args.child == "save" else ["--nosave"]
    argv += ["--gpu-resize"] if args.child == "gpuresize" else []
    argv += ["--half"] if parse_device(args.device).is_gpu else []  # FP16, as the seed loop runs on a GPU
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli(argv)
    if rc != 0:
        print(f"gpu_check child: yolokit run exited {rc}", file=sys.stderr)
        return 1
    s = json.loads(buf.getvalue())
    spec = parse_device(args.device)
    print(json.dumps({"images": s["processed"], "run_s": s["wall_s"], "detections": s["detections"],
                      "ms_per_image": s["ms_per_image"], "plan": s["plan"],
                      "gpu_memory": peak_gpu_memory(spec.torch) if spec.is_gpu else None}))
    return 0


def throughput(args: argparse.Namespace, folder: Path, out: Path) -> list[dict[str, Any]]:
    """Each model and run once, in a fresh process of this interpreter and environment, timed from start to exit."""
    rows: list[dict[str, Any]] = []
    models = [("yolov5s", "yolov5s.yaml"), ("yolov5n", args.weights)]
    runs = {"seed": "seed loop", "nosave": "yolokit --nosave", "save": "yolokit (saves images)",
            "gpuresize": "yolokit --nosave --gpu-resize"}
    for label, model in models:
        for kind in ("seed", "nosave", "save") + (("gpuresize",) if label == "yolov5s" else ()):
            if kind == "seed":
                cmd = seed_command(model, folder, args.device, args.imgsz)
            else:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--model", model,
                       "--images-dir", str(folder), "--device", args.device, "--imgsz", str(args.imgsz),
                       "--project", str(out / "runs"), "--name", f"{label}_{kind}"]
            try:
                whole, stdout = run_timed(cmd, timeout=args.child_timeout)
            except YolokitError as e:
                rows.append({"model": label, "run": runs[kind], "kind": kind,
                             "error": " | ".join(str(e).strip().splitlines()[-5:])})
                continue
            r = json.loads(stdout.strip().splitlines()[-1])
            stages = r["ms_per_image"]
            busy = sum(stages.values()) or 1.0
            rows.append({"model": label, "run": runs[kind],
                         "kind": kind, "images": r["images"], "whole_s": round(whole, 2),
                         "whole_img_s": round(r["images"] / whole, 1), "run_s": round(r["run_s"], 2),
                         "run_img_s": round(r["images"] / r["run_s"], 1), "startup_s": round(whole - r["run_s"], 2),
                         "ms_per_image": {k: round(v, 2) for k, v in stages.items()},
                         "stage_share": {k: round(v / busy, 3) for k, v in stages.items()},
                         "gpu_memory": r.get("gpu_memory"), "plan": r.get("plan", "sequential"),
                         "detections": r["detections"]})
    return rows


def serving(args: argparse.Namespace, folder: Path, out: Path) -> dict[str, Any]:
    """yolokit serve against the per-request server on ``args.device`` (see the module's docstring, point 3): a row
    for each, or ``{"not_run": why}``."""
    import importlib.util

    missing = [m for m in SERVE_NEEDS if importlib.util.find_spec(m) is None]
    if missing:
        return {"not_run": f"{', '.join(missing)} not installed: pip install 'yolokit[serve]'"}
    from toolkit.jobs.bench import serving as sv
    from toolkit.jobs.bench.timing import yolokit_command

    bodies = [sv.raw_body(p.read_bytes()) for p in sorted(folder.glob("*.jpg"))[:300]]
    common = ["--device", args.device, "--imgsz", str(args.imgsz)]
    ports = {"yolokit serve": sv.free_port(), sv.PER_REQUEST: sv.free_port()}
    commands = {"yolokit serve": (yolokit_command("serve", args.weights, "--port", str(ports["yolokit serve"]),
                                                  "--grpc-port", "0", *common), "/v1/detect", "/v2/health/ready"),
                sv.PER_REQUEST: (sv.server_command(sv.PER_REQUEST, args.weights, ports[sv.PER_REQUEST], *common),
                                 "/detect", "/health")}
    started: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    try:
        for name, (cmd, _, health) in commands.items():
            started[name] = sv.start_server(cmd, f"http://127.0.0.1:{ports[name]}", health,
                                            out / f"serve_{name.replace(' ', '_')}.log")
        for name, (_, route, _) in commands.items():  # warm-up, not recorded
            sv.closed_loop(started[name].url + route, bodies, SERVE_CONCURRENCY, args.serve_s / 4)
        for name, (_, route, _) in commands.items():
            with sv.ProcessWatch(started[name].proc.pid) as watch:
                samples = sv.closed_loop(started[name].url + route, bodies, SERVE_CONCURRENCY, args.serve_s)
            rows.append({"server": name, "concurrency": SERVE_CONCURRENCY, "ready_s": round(started[name].ready_s, 1),
                         **sv.summary(samples, args.serve_s), **watch.report()})
    except YolokitError as e:
        return {"not_run": f"a server failed: {' | '.join(str(e).strip().splitlines()[-5:])}", "rows": rows}
    finally:
        for server in started.values():
            server.stop()
    return {"rows": rows, "images": len(bodies), "seconds": args.serve_s}


# ----------------------------------------------------------------------------------------------- reporting
def decoding(folder: Path, most: int = 200) -> dict[str, Any]:
    """The readers' work on this host (the module's docstring, point 4): per thread count, img/s decoding and
    decoding + letterboxing ``most`` of the JPEGs in ``folder`` once each (after a warm-up of 8)."""
    from concurrent.futures import ThreadPoolExecutor

    from toolkit.io.decode import decode_image
    from toolkit.io.files import read_bytes
    from toolkit.ops import letterbox

    paths = [str(p) for p in sorted(folder.glob("*.jpg"))[:most]]
    if not paths:
        return {"not_run": f"no JPEGs in {folder}"}

    def decode(path: str) -> np.ndarray:
        return decode_image(read_bytes(path, 1 << 30), path)

    def prepare(path: str) -> np.ndarray:
        return letterbox(decode(path), 640, 32, auto=True)[0]

    cpus = os.cpu_count() or 1
    counts = sorted({1, cpus, *(n for n in (2, 4, 8, 16, 32) if n < cpus)})
    rows = []
    for n in counts:
        row: dict[str, Any] = {"threads": n}
        for name, work in (("decode", decode), ("decode_letterbox", prepare)):
            with ThreadPoolExecutor(n) as pool:
                list(pool.map(work, paths[:8]))
                t0 = time.perf_counter()
                list(pool.map(work, paths))
                wall = time.perf_counter() - t0
            row[f"{name}_img_s"] = round(len(paths) / wall, 1)
            row[f"{name}_ms_per_thread"] = round(1000 * wall * n / len(paths), 2)
        rows.append(row)
    return {"images": len(paths), "opencv_threads": cv2.getNumThreads(), "rows": rows}


def _matched(corr: dict[str, Any], run: str, target: str) -> bool:
    """Whether ``run`` matched at least its target share of the reference boxes (a run that is missing did not)."""
    share = corr.get(run, {}).get("share")
    return share is not None and share >= TARGETS[target]


def verdicts(corr: dict[str, Any], rows: list[dict[str, Any]], gpu: bool,
             serve: dict[str, Any] | None = None) -> dict[str, Any]:
    """PASS/FAIL of each target: the GPU pipeline's FP32 matching (on the CPU device in a dry run) and, on a GPU, its
    FP16 matching (the default precision there), the throughput targets and, when the serving comparison ran, its
    target (one that did not run is reported as not run, not judged; nor are the parts --parts left out)."""
    judged = any(k != "unit" for k in corr)  # correctness ran (not left out by --parts)
    v: dict[str, Any] = {"fp32_match": _matched(corr, "fp32_gpu_pipeline", "fp32_match")} if judged else {}
    served = {r["server"]: r for r in (serve or {}).get("rows", [])}
    if gpu and "yolokit serve" in served and "per-request" in served:
        v[f"serve_c{SERVE_CONCURRENCY}_at_least_2x_per_request"] = served["yolokit serve"]["throughput"] >= \
            TARGETS["serve_vs_per_request"] * served["per-request"]["throughput"]
    if gpu and judged:
        v["fp16_match"] = _matched(corr, "fp16_gpu_pipeline", "fp16_match")
    if gpu:
        by = {(r["model"], r.get("kind")): r for r in rows if "error" not in r}
        s_seed, s_nosave, s_save = (by.get(("yolov5s", k)) for k in ("seed", "nosave", "save"))
        if s_nosave:
            v["yolov5s_nosave_run_img_s_at_least_1000"] = s_nosave["run_img_s"] >= TARGETS["yolov5s_nosave_img_s"]
            if s_seed:
                v["yolov5s_speedup_vs_seed_at_least_10x_whole_process"] = \
                    s_nosave["whole_img_s"] >= TARGETS["speedup_vs_seed"] * s_seed["whole_img_s"]
            if s_save:
                v["default_run_within_15pct_of_nosave"] = s_save["run_img_s"] >= TARGETS["save_vs_nosave"] * \
                    s_nosave["run_img_s"]
        runs = [r for r in rows if r.get("kind") in ("nosave", "save", "gpuresize") and "error" not in r]
        if runs:  # not judged where the throughput part did not run
            v["gpu_pipeline_used"] = all("GPU pipeline" in r.get("plan", "") for r in runs)
    return v


def markdown(rep: dict[str, Any]) -> str:
    m = rep["machine"]
    lines = [f"# gpu_check: {m['device_name']}", "",
             f"torch {m['torch']} (CUDA {m['cuda']}), OpenCV {m['opencv']}, {m['cpus']} CPUs, {m['platform']}; "
             f"{rep['images']} images of {rep['image_size']}; imgsz {rep['imgsz']}", "",
             "## Correctness (coco128, against yolokit's CPU FP32 run)", "",
             "| run | reference boxes | matched | share | extra boxes | IoU >= | abs(d conf) <= |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, c in rep["correctness"].items():
        if isinstance(c, dict) and "share" in c:
            lines.append(f"| {name} | {c['reference_boxes']} | {c['matched']} | {100 * c['share']:.2f} % | "
                         f"{c['extra']} | {c['min_iou']} | {c['conf_tol']} |")
    lines += ["", f"Unit checks: `{json.dumps(rep['correctness']['unit'])}`", "",
              "## Throughput (each run a fresh process; whole = from process start to exit)", "",
              "| model | run | whole img/s | run img/s | whole s | start-up s | ms/img read / pre / infer / post "
              "(thread-s) | peak GPU MiB (alloc / reserved) |",
              "| --- | --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in rep["throughput"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['run']} | error: {r['error']} | | | | | |")
            continue
        st = r["ms_per_image"]
        mem = r["gpu_memory"] or {}
        lines.append(f"| {r['model']} | {r['run']} | {r['whole_img_s']} | {r['run_img_s']} | {r['whole_s']} | "
                     f"{r['startup_s']} | {' / '.join(f'{st.get(k, 0):.2f}' for k in ('read', 'pre', 'infer', 'post'))}"
                     f" | {mem.get('peak_allocated_mib', '-')} / {mem.get('peak_reserved_mib', '-')} |")
    serve = rep.get("serving", {})
    lines += ["", f"## Serving ({SERVE_CONCURRENCY} clients, closed loop, raw 1080p JPEGs; client on this machine)", ""]
    if serve.get("not_run"):
        lines.append(f"Not run: {serve['not_run']}")
    if serve.get("rows"):
        lines += ["| server | req/s | p50 ms | p90 ms | p99 ms | 503 | errors | server CPU cores | server RSS MiB | "
                  "client CPU cores |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {r['server']} | {r['throughput']} | {r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | "
                  f"{r['share_503']:.1%} | {r['share_errors']:.1%} +{r['connection_errors']} conn | "
                  f"{r['server_cpu_cores']} | {r['server_rss_mib_max']} | {r['client_cpu_cores']} |"
                  for r in serve["rows"]]
    dec = rep.get("decoding", {})
    lines += ["", "## Host decoding (the readers' work: read + decode, then also letterbox, each thread count over the "
              "same JPEGs)", ""]
    if dec.get("not_run"):
        lines.append(f"Not run: {dec['not_run']}")
    if dec.get("rows"):
        lines += [f"{dec['images']} images; OpenCV's own threads: {dec['opencv_threads']}", "",
                  "| threads | decode img/s | ms/img per thread | decode + letterbox img/s | ms/img per thread |",
                  "| ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {r['threads']} | {r['decode_img_s']} | {r['decode_ms_per_thread']} | "
                  f"{r['decode_letterbox_img_s']} | {r['decode_letterbox_ms_per_thread']} |" for r in dec["rows"]]
    lines += ["", "Plans: " + "; ".join(sorted({f"{r['run']}: {r['plan']}" for r in rep['throughput']
                                               if r.get('plan')})), "",
              "## Verdicts", "", *(f"- {k}: {'PASS' if ok else 'FAIL'}" for k, ok in rep["verdicts"].items()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=str(REPO.parent / "shared" / "weights" / "yolov5n.pt"))
    ap.add_argument("--coco", default=str(REPO.parent / "shared" / "datasets" / "coco128" / "images" / "train2017"),
                    help="coco128 images (correctness, and the sources of the generated JPEGs)")
    ap.add_argument("--out", default="bench_out/gpu_check")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--size", default="1920x1080", help="generated JPEGs, WxH")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--coco-images", type=int, default=128)
    ap.add_argument("--child-timeout", type=int, default=240)
    ap.add_argument("--serve-s", type=float, default=20.0, help="seconds of load on each server (serving)")
    ap.add_argument("--dry-run", action="store_true", help="the whole script on the CPU, tiny: proves it runs")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"which checks run, of {', '.join(PARTS)}")
    ap.add_argument("--child", choices=("nosave", "save", "gpuresize"), help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--images-dir", help=argparse.SUPPRESS)
    ap.add_argument("--project", help=argparse.SUPPRESS)
    ap.add_argument("--name", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child_main(args)
    if args.dry_run:
        args.device, args.images, args.size, args.imgsz, args.coco_images = "cpu", 4, "320x180", 160, 4
        args.serve_s = 2.0
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        print(f"gpu_check.py: --parts takes some of {', '.join(PARTS)}, got {args.parts!r}", file=sys.stderr)
        return 2
    spec = parse_device(args.device)
    if spec.is_gpu and not torch.cuda.is_available() and parts != ["decoding"]:  # decoding: the host's alone
        print(f"gpu_check.py needs a CUDA GPU, but PyTorch {torch.__version__} (CUDA build: {torch.version.cuda}) "
              f"sees none; nothing was measured. To check the script itself on a CPU: --dry-run", file=sys.stderr)
        return 2
    weights, coco_dir = Path(args.weights), Path(args.coco)
    for path, what in ((weights, "--weights (yolov5n.pt)"), (coco_dir, "--coco (coco128 images)")):
        if not path.exists():
            print(f"gpu_check.py: {what} not found at {path}", file=sys.stderr)
            return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    w, h = (int(v) for v in args.size.lower().split("x"))
    t_all = time.perf_counter()
    coco = sorted(coco_dir.glob("*.jpg"))[: args.coco_images]
    folder = out / f"images_{w}x{h}"
    try:
        photo_set(coco_dir, folder, args.images, (w, h))
        skipped = {"not_run": "not in --parts"}
        corr = correctness(args, coco) if "correctness" in parts else {"unit": skipped}
        rows = throughput(args, folder, out) if "throughput" in parts else []
        serve = serving(args, folder, out) if "serving" in parts else skipped
        decode = decoding(folder) if "decoding" in parts else skipped
    except YolokitError as e:
        print(f"gpu_check.py: {e}", file=sys.stderr)
        return 1
    gpu = spec.is_gpu and torch.cuda.is_available()  # not on a host without one (--parts decoding)
    host = "CPU (dry run)" if args.dry_run else "no CUDA GPU (the host's decoding alone)"
    rep = {"machine": {"device_name": torch.cuda.get_device_name(spec.index) if gpu else host,
                       "torch": torch.__version__, "cuda": torch.version.cuda, "opencv": cv2.__version__,
                       "cpus": os.cpu_count(), "platform": platform.platform()},
           "device": args.device, "images": args.images, "image_size": f"{w}x{h}", "imgsz": args.imgsz,
           "correctness": corr, "throughput": rows, "serving": serve, "decoding": decode, "parts": parts}
    rep["verdicts"] = verdicts(corr, rows, gpu, serve)
    rep["seconds"] = round(time.perf_counter() - t_all, 1)
    (out / "report.json").write_text(json.dumps(rep, indent=1, default=str))
    md = markdown(rep) + f"\nTotal: {rep['seconds']} s\n"
    (out / "report.md").write_text(md)
    print(md)
    failed = [k for k, ok in rep["verdicts"].items() if not ok] + [r["model"] + " " + r["run"] for r in rows
                                                                    if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
