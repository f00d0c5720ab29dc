"""One bench configuration, measured once in a fresh process (``python -c ... child(spec)``): start-up, whole-run
and steady img/s, latency percentiles, the raw model's img/s, peak memory, and the detections for accuracy."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

MODE_ARGS = {"seq": ("thread", 1), "thread": ("thread", 0), "process": ("process", 0), "auto": ("auto", 0)}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration once in this process and measure it (called in a fresh subprocess)."""
    import resource

    from toolkit.devices import is_gpu
    from toolkit.engine.detector import Detector
    from toolkit.io.decode import read_image
    from toolkit.ops import letterbox, to_chw_rgb

    t0 = time.perf_counter()
    det = Detector(spec["model"], device=spec["device"], imgsz=spec["imgsz"], conf=spec["conf"],
                   iou=spec["iou"], max_det=spec["max_det"], multi_label=spec["multi_label"],
                   fast_decode=bool(spec.get("fast_decode", False)), precision=spec.get("precision", "auto"))
    paths: list[str] = spec["paths"]
    routine = det.routine  # the raw model's rate is measured on the routine's own inference step
    warm = to_chw_rgb(letterbox(read_image(paths[0]), det.imgsz, det.meta.stride, auto=routine.auto)[0])[None]
    routine.infer(warm)
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
    shapes, first_calls = det.times.first_call_cost()  # what new input shapes cost (a dynamic-shape runtime)
    gaps = np.diff([t1, *stamps])
    steady = len(stamps) - 5
    steady_rate = steady / (stamps[-1] - stamps[4]) if steady > 0 and stamps[-1] > stamps[4] else len(paths) / run_s
    raw_batch = np.repeat(warm, spec["batch"], axis=0) if det.meta.batch is None else np.repeat(warm, det.meta.batch, 0)
    n, t2 = 0, time.perf_counter()
    while time.perf_counter() - t2 < 2.0 or n < 3:
        routine.infer(raw_batch)
        n += len(raw_batch)
    raw = n / (time.perf_counter() - t2)
    gpu_peak = None
    if is_gpu(spec["device"]):
        import torch

        gpu_peak = torch.cuda.max_memory_allocated() / 2**20
    return {"startup_s": startup, "run_s": run_s, "img_s": len(paths) / (run_s + startup),
            "steady_img_s": steady_rate, "p50_ms": float(np.percentile(gaps, 50) * 1000),
            "p95_ms": float(np.percentile(gaps, 95) * 1000), "raw_img_s": raw,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "gpu_peak_mb": gpu_peak,
            "plan": det.last_plan.describe() if det.last_plan else "", "shapes": shapes,
            "first_calls_s": first_calls, "detections": dets}
