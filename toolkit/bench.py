"""``yolokit bench``: every backend, precision, batch and concurrency mode side by side, with accuracy.

Each configuration runs in a fresh subprocess (clean start-up time and peak memory), over the same images,
``repeat`` times; the median is reported with min-max. The baseline is PyTorch FP32 sequential on a CPU (FP16
on a GPU). Accuracy: mAP50-95 when the images have YOLO labels, else agreement with the baseline's boxes
(precision / recall / F1 at IoU 0.5, same class). Exported artifacts are cached by checkpoint hash and options.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.errors import InputError

MODE_ARGS = {"seq": ("thread", 1), "thread": ("thread", 0), "process": ("process", 0), "auto": ("auto", 0)}


@dataclass
class BenchOptions:
    weights: str
    source: str
    data: str | None = None
    backends: list[str] | None = None  # default: every installed CPU/GPU backend
    precisions: list[str] | None = None  # default: what each backend supports on this device
    batches: list[int] = field(default_factory=lambda: [1])
    modes: list[str] = field(default_factory=lambda: ["seq", "auto"])
    workers: list[int] = field(default_factory=lambda: [0])
    images: int = 100
    repeat: int = 3
    out: str = "runs/bench"
    imgsz: int = 640
    device: str = "cpu"
    fast_decode: bool = False  # opt-in reduced-size JPEG decoding (changes detections; see Detector)


@dataclass
class Config:
    backend: str
    precision: str
    batch: int
    mode: str
    workers: int

    @property
    def name(self) -> str:
        w = f" w{self.workers}" if self.workers else ""
        return f"{self.backend} {self.precision} b{self.batch} {self.mode}{w}"


def _available(device: str) -> list[str]:
    import backends

    gpu = device.startswith("cuda")
    names = [n for n, b in backends.REGISTRY.items() if b.is_available()]
    return [n for n in names if n != "trt" or gpu]


def grid(opts: BenchOptions) -> list[Config]:
    gpu = opts.device.startswith("cuda")
    supported = {"torch": ["fp16" if gpu else "fp32"], "onnx": ["fp32"], "openvino": ["fp32", "fp16", "int8"],
                 "trt": ["fp16"]}
    names = opts.backends or _available(opts.device)
    out = []
    for b in names:
        for p in opts.precisions or supported.get(b, ["fp32"]):
            for batch in opts.batches:
                for mode in opts.modes:
                    if mode not in MODE_ARGS:
                        raise InputError(f"unknown mode {mode!r}; choose from {', '.join(MODE_ARGS)}")
                    for w in opts.workers if mode in ("thread", "process") else [0]:
                        out.append(Config(b, p, batch, mode, w))
    baseline = Config("torch", "fp16" if gpu else "fp32", 1, "seq", 0)
    if not any(asdict(c) == asdict(baseline) for c in out):
        out.insert(0, baseline)
    else:
        out.sort(key=lambda c: asdict(c) != asdict(baseline))
    return out


def _sha(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        return hashlib.sha256(path.encode()).hexdigest()[:12]
    h = hashlib.sha256()
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def artifact(opts: BenchOptions, cfg: Config, cache: Path, calib: str) -> str:
    """The model file for a configuration, exported once and cached by checkpoint hash and options."""
    import backends

    backends.get_backend(cfg.backend)  # an unknown name is a clear InputError
    if cfg.backend == "torch":
        return opts.weights
    from backends.base import ExportOptions
    from toolkit.export import export

    suffix = {"onnx": ".onnx", "openvino": "_openvino", "trt": ".engine"}[cfg.backend]
    name = f"{_sha(opts.weights)}_{cfg.precision}_{opts.imgsz}_dyn{suffix}"
    path = cache / name
    if not path.exists():
        eo = ExportOptions(imgsz=(opts.imgsz, opts.imgsz), dynamic=True, half=cfg.precision == "fp16",
                           int8=cfg.precision == "int8", calib_data=calib if cfg.precision == "int8" else None,
                           device=opts.device)
        export(opts.weights, "openvino" if cfg.backend == "openvino" else cfg.backend, path, eo)
    return str(path)


# ------------------------------------------------------------------------------------------- child side
def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration once in this process and measure it (called in a fresh subprocess)."""
    import resource

    from toolkit.detector import Detector
    from toolkit.ops import letterbox, to_chw_rgb
    from toolkit.sources import read_image

    t0 = time.perf_counter()
    det = Detector(spec["model"], device=spec["device"], imgsz=spec["imgsz"], conf=spec["conf"],
                   iou=spec["iou"], max_det=300, multi_label=spec["multi_label"],
                   fast_decode=bool(spec.get("fast_decode", False)))
    paths: list[str] = spec["paths"]
    warm = to_chw_rgb(letterbox(read_image(paths[0]), det.imgsz, det.meta.stride, auto=det.auto)[0])[None]
    det.infer(warm)
    startup = time.perf_counter() - t0
    mode, workers = MODE_ARGS[spec["mode"]]
    stamps = []
    dets = []
    t1 = time.perf_counter()
    for r in det.predict_iter(paths, batch=spec["batch"], mode=mode, workers=spec["workers"] or workers):
        stamps.append(time.perf_counter())
        d = r.detections
        dets.append(None if d is None else [d.xyxy.round(2).tolist(), d.confidence.round(5).tolist(),
                                             d.class_id.tolist(), list(d.shape or (0, 0))])
    run_s = time.perf_counter() - t1
    gaps = np.diff([t1, *stamps])
    steady = len(stamps) - 5
    steady_rate = steady / (stamps[-1] - stamps[4]) if steady > 0 and stamps[-1] > stamps[4] else len(paths) / run_s
    raw_batch = np.repeat(warm, spec["batch"], axis=0) if det.meta.batch is None else np.repeat(warm, det.meta.batch, 0)
    n, t2 = 0, time.perf_counter()
    while time.perf_counter() - t2 < 2.0 or n < 3:
        det.infer(raw_batch)
        n += len(raw_batch)
    raw = n / (time.perf_counter() - t2)
    gpu_peak = None
    if spec["device"].startswith("cuda"):
        import torch

        gpu_peak = torch.cuda.max_memory_allocated() / 2**20
    return {"startup_s": startup, "run_s": run_s, "img_s": len(paths) / (run_s + startup),
            "steady_img_s": steady_rate, "p50_ms": float(np.percentile(gaps, 50) * 1000),
            "p95_ms": float(np.percentile(gaps, 95) * 1000), "raw_img_s": raw,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "gpu_peak_mb": gpu_peak,
            "plan": det.last_plan.describe() if det.last_plan else "", "detections": dets}


# ------------------------------------------------------------------------------------------- accuracy
def _agreement(base: list[Any], got: list[Any]) -> dict[str, float]:
    """Precision, recall and F1 of ``got``'s boxes against ``base``'s (IoU 0.5, same class, one-to-one)."""
    from toolkit.ops import match_greedy

    tp = fp = fn = 0
    for b, g in zip(base, got, strict=True):
        if b is None or g is None:
            continue
        bx, gx = np.array(b[0], np.float32).reshape(-1, 4), np.array(g[0], np.float32).reshape(-1, 4)
        hits = int((match_greedy(gx, np.array(g[1]), np.array(g[2]), bx, np.array(b[2]), 0.5) >= 0).sum())
        tp += hits
        fp += len(gx) - hits
        fn += len(bx) - hits
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def _map(paths: list[str], dets: list[Any]) -> float | None:
    from toolkit.detections import Detections
    from toolkit.val import Sample, _label_path, coco_map, load_labels

    if not all(_label_path(Path(p)).is_file() for p in paths[:5]):
        return None
    samples, ds = [], []
    for p, d in zip(paths, dets, strict=True):
        if d is None:
            continue
        shape = (int(d[3][0]), int(d[3][1]))
        cls, xyxy = load_labels(Path(p), shape)
        samples.append(Sample(p, shape, cls, xyxy))
        ds.append(Detections(np.array(d[0], np.float32).reshape(-1, 4), d[1], d[2], shape=shape))
    return coco_map(samples, ds)["map50_95"]


# ------------------------------------------------------------------------------------------- parent side
def bench(opts: BenchOptions, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the grid and write results.json, results.csv, report.md and charts into ``opts.out``."""
    from toolkit.sources import list_sources

    say = progress or (lambda _msg: None)
    if opts.data:  # a labelled dataset: its images, so accuracy is mAP
        from toolkit.val import dataset_images

        paths = [str(p.resolve()) for p in dataset_images(opts.data)[0][: opts.images]]
    else:
        refs = [r for r in list_sources(opts.source).items if r.frame is None][: opts.images]
        paths = [str(Path(r.path).resolve()) for r in refs]
    if not paths:
        raise InputError(f"{opts.source}: no images to benchmark")
    out = Path(opts.out)
    (out / "artifacts").mkdir(parents=True, exist_ok=True)
    from toolkit.val import _label_path

    labelled = all(_label_path(Path(p)).is_file() for p in paths[:5])
    rows: list[dict[str, Any]] = []
    configs = grid(opts)
    for i, cfg in enumerate(configs, 1):
        say(f"[{i}/{len(configs)}] {cfg.name}")
        row: dict[str, Any] = {"config": cfg.name, **asdict(cfg)}
        try:
            model = artifact(opts, cfg, out / "artifacts", opts.source)
            spec = {"model": model, "device": opts.device, "imgsz": opts.imgsz, "paths": paths,
                    "batch": cfg.batch, "mode": cfg.mode, "workers": cfg.workers,
                    "conf": 0.001 if labelled else 0.25, "iou": 0.6 if labelled else 0.45, "multi_label": labelled,
                    "fast_decode": opts.fast_decode}
            runs = [_spawn(spec) for _ in range(opts.repeat)]
        except Exception as e:  # recorded; the bench goes on
            row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            rows.append(row)
            say(f"    failed: {row['error']}")
            continue
        for k in ("img_s", "steady_img_s", "p50_ms", "p95_ms", "startup_s", "raw_img_s", "peak_rss_mb"):
            vals = [float(r[k]) for r in runs]
            row[k] = statistics.median(vals)
            row[f"{k}_min"], row[f"{k}_max"] = min(vals), max(vals)
        row["gpu_peak_mb"] = runs[-1]["gpu_peak_mb"]
        row["plan"] = runs[-1]["plan"]
        row["_dets"] = runs[-1]["detections"]
        rows.append(row)
        say(f"    {row['img_s']:.1f} img/s (steady {row['steady_img_s']:.1f}, raw model {row['raw_img_s']:.1f})")
    base = rows[0] if "error" not in rows[0] else None
    for row in rows:
        if "_dets" not in row:
            continue
        row["speedup"] = row["img_s"] / base["img_s"] if base else None
        if labelled:
            row["map50_95"] = _map(paths, row["_dets"])
        if base is not None:
            row.update({f"agree_{k}": v for k, v in _agreement(base["_dets"], row["_dets"]).items()})
    for row in rows:
        row.pop("_dets", None)
    if labelled and base is not None:
        for row in rows:
            if row.get("map50_95") is not None:
                row["map_delta"] = row["map50_95"] - base["map50_95"]
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cores": os.cpu_count(), "python": platform.python_version(), "device": opts.device,
               "versions": _versions()}
    result = {"machine": machine, "options": asdict(opts), "images": len(paths), "rows": rows}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    _write_csv(out / "results.csv", rows)
    (out / "report.md").write_text(report(result))
    _charts(rows, out)
    return result


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "onnxruntime", "openvino", "tensorrt", "nncf", "numpy", "opencv-python-headless"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def _spawn(spec: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, "-c", "import json,sys; from toolkit.bench import child; "
           "print('@@' + json.dumps(child(json.loads(sys.stdin.read()))))"]
    proc = subprocess.run(cmd, input=json.dumps(spec), capture_output=True, text=True, timeout=3600)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("@@")), None)
    if proc.returncode != 0 or line is None:
        err = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise RuntimeError(err[-1] if err else f"exit code {proc.returncode}")
    result: dict[str, Any] = json.loads(line[2:])
    return result


COLUMNS = ["config", "backend", "precision", "batch", "mode", "workers", "img_s", "img_s_min", "img_s_max",
           "steady_img_s", "raw_img_s", "p50_ms", "p95_ms", "startup_s", "peak_rss_mb", "gpu_peak_mb", "speedup",
           "map50_95", "map_delta", "agree_precision", "agree_recall", "agree_f1", "plan", "error"]


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in COLUMNS})


def _fmt(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None or v == "" else format(v, spec)


def report(result: dict[str, Any]) -> str:
    rows = [r for r in result["rows"] if "error" not in r]
    rows.sort(key=lambda r: -r["img_s"])
    m = result["machine"]
    lines = [f"# yolokit bench: {result['images']} images", "",
             f"Machine: {m['processor']}, {m['cores']} cores, device {m['device']}; {m['platform']}; "
             f"versions {m['versions']}. Median of {result['options']['repeat']} fresh-process runs.", "",
             "| rank | configuration | img/s (min-max) | steady | raw model | p50 ms | p95 ms | start-up s | "
             "peak RSS MB | vs baseline | accuracy |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for i, r in enumerate(rows, 1):
        if r.get("map50_95") is not None:
            acc = f"mAP50-95 {r['map50_95']:.3f} ({r.get('map_delta', 0):+.3f})"
        else:
            acc = f"F1 {_fmt(r.get('agree_f1'), '.3f')} vs baseline"
        lines.append(f"| {i} | {r['config']} | {r['img_s']:.1f} ({r['img_s_min']:.1f}-{r['img_s_max']:.1f}) | "
                     f"{r['steady_img_s']:.1f} | {r['raw_img_s']:.1f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
                     f"{r['startup_s']:.2f} | {r['peak_rss_mb']:.0f} | {_fmt(r.get('speedup'), '.2f')}x | {acc} |")
    failed = [r for r in result["rows"] if "error" in r]
    if failed:
        lines += ["", "Failed configurations:", *[f"- {r['config']}: {r['error']}" for r in failed]]
    lines += ["", f"Baseline: {result['rows'][0]['config']}. img/s is whole-run throughput including start-up; "
              "steady excludes the first 5 images; raw model is the runner alone on a letterboxed batch."]
    return "\n".join(lines) + "\n"


def _bar_chart(items: list[tuple[str, float, bool]], title: str, path: Path) -> None:
    import cv2

    if not items:
        return
    h = 50 + 26 * len(items)
    img = np.full((h, 960, 3), 255, np.uint8)
    top = max(v for _, v, _ in items) or 1.0
    cv2.putText(img, title, (8, 20), 0, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for i, (label, v, mark) in enumerate(items):
        y = 44 + 26 * i
        w = int(520 * v / top)
        cv2.rectangle(img, (360, y - 14), (360 + w, y + 6), (60, 60, 200) if mark else (200, 140, 60), -1)
        cv2.putText(img, label[:48], (8, y), 0, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, f"{v:.1f}", (366 + w, y), 0, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.imwrite(str(path), img)


def _charts(rows: list[dict[str, Any]], out: Path) -> None:
    ok = [r for r in rows if "error" not in r]
    ranked = sorted(ok, key=lambda r: -r["img_s"])
    _bar_chart([(r["config"], r["img_s"], r is rows[0]) for r in ranked],
               "img/s by configuration (red: baseline)", out / "throughput.png")
    by_workers = sorted((r for r in ok if r["mode"] in ("thread", "process")), key=lambda r: (r["config"]))
    _bar_chart([(r["config"], r["img_s"], False) for r in by_workers], "img/s vs workers",
               out / "throughput_vs_workers.png")
