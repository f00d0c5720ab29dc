"""The bench's outputs: ``results.csv``, ``report.md`` (ranked, with speed-up and accuracy) and PNG charts, and the
accuracy measures they show (mAP on labelled images, else agreement with the baseline's boxes)."""

from __future__ import annotations

import contextlib
import csv
from pathlib import Path
from typing import Any

import numpy as np

PARITY_IOU, PARITY_CONF = 0.98, 0.01  # a box "the same" as the baseline's: IoU >= 0.98, confidence within 0.01


def agreement(base: list[Any], got: list[Any]) -> dict[str, float]:
    """Precision, recall and F1 of ``got``'s boxes against ``base``'s (IoU 0.5, same class, one-to-one), and
    ``parity``: the share of the baseline's boxes that ``got`` has too, at IoU >= 0.98 with a confidence within
    0.01 (what "the same detections" means for a precision that moves boxes, such as bf16)."""
    from toolkit.ops import match_greedy

    tp = fp = fn = same = total = 0
    for b, g in zip(base, got, strict=True):
        if b is None or g is None:
            continue
        bx, gx = np.array(b[0], np.float32).reshape(-1, 4), np.array(g[0], np.float32).reshape(-1, 4)
        gconf, bconf = np.array(g[1], np.float32), np.array(b[1], np.float32)
        hits = int((match_greedy(gx, gconf, np.array(g[2]), bx, np.array(b[2]), 0.5) >= 0).sum())
        tp += hits
        fp += len(gx) - hits
        fn += len(bx) - hits
        close = match_greedy(gx, gconf, np.array(g[2]), bx, np.array(b[2]), PARITY_IOU)
        matched = close >= 0
        same += int((np.abs(gconf[matched] - bconf[close[matched]]) <= PARITY_CONF).sum())
        total += len(bx)
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
            "parity": same / total if total else 1.0}


def map50_95(paths: list[str], dets: list[Any]) -> float:
    """mAP50-95 of a configuration's detections on labelled images, by pycocotools as ``yolokit val --protocol coco``
    scores them; an image without a label file is a background image (no objects), as YOLO datasets keep them."""
    from toolkit.detections import Detections
    from toolkit.jobs.val import ValOptions, coco_map
    from toolkit.jobs.valdata import Sample, load_labels

    samples, ds = [], []
    for p, d in zip(paths, dets, strict=True):
        if d is None:
            continue
        shape = (int(d[3][0]), int(d[3][1]))
        cls, xyxy = load_labels(Path(p), shape)
        samples.append(Sample(p, shape, cls, xyxy))
        ds.append(Detections(np.array(d[0], np.float32).reshape(-1, 4), d[1], d[2], shape=shape))
    return coco_map(samples, ds, ValOptions().max_det)["map50_95"]


# ------------------------------------------------------------------------------------------- parent side
def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    import backends

    packages = [p for b in backends.REGISTRY.values() for p in b.PACKAGES] + ["numpy", "opencv-python-headless"]
    for pkg in packages:
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


COLUMNS = ["config", "backend", "precision", "nms", "batch", "mode", "workers", "img_s", "img_s_min", "img_s_max",
           "steady_img_s", "raw_img_s", "p50_ms", "p95_ms", "startup_s", "peak_rss_mb", "gpu_peak_mb", "speedup",
           "map50_95", "map_delta", "agree_precision", "agree_recall", "agree_f1", "agree_parity", "shapes",
           "first_calls_s", "ceiling_img_s", "ceiling_share", "pareto", "plan", "error"]


def accuracy(row: dict[str, Any]) -> tuple[float | None, str]:
    """A configuration's accuracy and its name: mAP50-95 on labelled images, else F1 against the baseline."""
    if row.get("map50_95") is not None:
        return float(row["map50_95"]), "mAP50-95"
    f1 = row.get("agree_f1")
    return (None if f1 is None else float(f1)), "F1 vs baseline"


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: none is at least as fast and as accurate and better in one."""
    return [i for i, (x, y) in enumerate(points)
            if not any(x2 >= x and y2 >= y and (x2 > x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i)]


def mark_pareto(rows: list[dict[str, Any]]) -> None:
    """Set ``row["pareto"]`` (True on the front of img/s against accuracy) on every measured row."""
    ok = [r for r in rows if "error" not in r and accuracy(r)[0] is not None]
    front = set(pareto_front([(r["img_s"], accuracy(r)[0] or 0.0) for r in ok]))
    for i, r in enumerate(ok):
        r["pareto"] = i in front


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in COLUMNS})


def _fmt(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None or v == "" else format(v, spec)


def _measured(what: dict[str, Any] | None, images: int) -> list[str]:
    """The report's lines on what it measured (``results.json``'s ``measured``): the images, the accuracy measure and
    its protocol, and the NMS settings."""
    if not what:
        return []
    if what.get("data"):
        where = f"the dataset --data {what['data']} (its val split, in val.py's order)"
        if what.get("source"):
            where += (f"; --source {what['source']} is not benchmarked with --data (only INT8 exports are calibrated "
                      f"on it)")
    else:
        where = f"--source {what['source']}"
    label, whose = ("multi-label", "yolokit val's settings") if what["multi_label"] else \
        ("single-label", "detect.py's conf and IoU")
    inside = "; the +nms configurations were exported with them, single-label" if what.get("end_to_end") else ""
    nms = (f"conf {what['conf']:g}, NMS IoU {what['iou']:g}, at most {what['max_det']} boxes an image, {label} "
           f"({whose}{inside})")
    return [f"Images: {images} from {where}.", "",
            f"Accuracy: {what['accuracy']}, by {what['protocol']}. Detections: {nms}.", ""]


def report(result: dict[str, Any]) -> str:
    rows = [r for r in result["rows"] if "error" not in r]
    rows.sort(key=lambda r: -r["img_s"])
    m = result["machine"]
    left_out = result.get("left_out") or []
    lines = [f"# yolokit bench: {result['images']} images", "",
             *([f"{len(left_out)} image(s) could not be read and are left out of every figure: "
                + "; ".join(f"{b['path']}: {b['reason']}" for b in left_out[:5])
                + (" ..." if len(left_out) > 5 else ""), ""] if left_out else []),
             *_measured(result.get("measured"), result["images"]),
             f"Machine: {m['processor']}, {m['cores']} cores, device {m['device']}; {m['platform']}; "
             f"versions {m['versions']}. Median of {result['options']['repeat']} fresh-process runs.", "",
             "| rank | configuration | img/s (min-max) | steady | raw model | p50 ms | p95 ms | start-up s | "
             "peak RSS MB | vs baseline | accuracy | parity | ceiling img/s (share) |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for i, r in enumerate(rows, 1):
        ceiling = f"{r['ceiling_img_s']:.1f} ({r['ceiling_share']:.0%})" if r.get("ceiling_img_s") else "-"
        if r.get("map50_95") is not None:
            acc = f"mAP50-95 {r['map50_95']:.3f} ({r.get('map_delta', 0):+.3f})"
        else:
            acc = f"F1 {_fmt(r.get('agree_f1'), '.3f')} vs baseline"
        lines.append(f"| {i} | {r['config']} | {r['img_s']:.1f} ({r['img_s_min']:.1f}-{r['img_s_max']:.1f}) | "
                     f"{r['steady_img_s']:.1f} | {r['raw_img_s']:.1f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
                     f"{r['startup_s']:.2f} | {r['peak_rss_mb']:.0f} | {_fmt(r.get('speedup'), '.2f')}x | {acc} | "
                     f"{_fmt(r.get('agree_parity'), '.1%')} | {ceiling} |")
    front = [r for r in rows if r.get("pareto")]
    if front:
        what = accuracy(front[0])[1]
        lines += ["", f"Pareto front of img/s against {what} (no other configuration is both faster and more "
                      f"accurate; chart: speed_vs_accuracy.png):",
                  *[f"- {r['config']}: {r['img_s']:.1f} img/s, {what} {accuracy(r)[0]:.3f}" for r in front]]
    def shape_share(r: dict[str, Any]) -> float:  # the share of a run its first calls at new shapes took
        return float(r.get("first_calls_s") or 0.0) * float(r["img_s"]) / max(1, int(result["images"]))

    costly = [r for r in rows if shape_share(r) >= 0.05]
    if costly:
        lines += ["", "New input shapes (why a model can be slower in a whole run than alone): the first inference "
                      "at each new input shape compiles kernels for it.",
                  *[f"- {r['config']}: {r['shapes']} shapes (batch x height x width) met, their first calls took "
                    f"{r['first_calls_s']:.2f} s beyond a repeat's, {shape_share(r):.0%} of the run" for r in costly]]
    failed = [r for r in result["rows"] if "error" in r]
    if failed:
        lines += ["", "Failed configurations:", *[f"- {r['config']}: {r['error']}" for r in failed]]
    lines += ["", f"Baseline: {result['rows'][0]['config']}. img/s is whole-run throughput including start-up; "
              "steady excludes the first 5 images (with 5 or fewer, it is the whole run's rate); raw model is the "
              "runner alone on a letterboxed batch. Parity: "
              f"the share of the baseline's boxes found again at IoU >= {PARITY_IOU} with a confidence within "
              f"{PARITY_CONF} (bf16 moves boxes; FP32 exports keep them). Ceiling: the fastest this machine could "
              "run the model over these images, start-up + images x (decode + letterbox + model + NMS core-ms) / "
              "cores, and the configuration's share of it (docs/guide/performance.md)."]
    drawn = result.get("charts")
    if drawn:
        lines += ["", "Charts: " + ", ".join(f"![{name}]({name})" for name in drawn)]
    elif drawn is not None:
        from toolkit.jobs.bench.plots import CHARTS_HINT, available

        lines += ["", "No charts: no configuration ran." if available()  # it blamed a missing matplotlib
                  else f"No charts: they are drawn with matplotlib ({CHARTS_HINT})."]
    return "\n".join(lines) + "\n"


def charts(rows: list[dict[str, Any]], out: Path, images: int | None = None) -> list[str]:
    """The charts (:mod:`toolkit.jobs.bench.plots`, matplotlib) into ``out``: their names, none without it."""
    from toolkit.jobs.bench.plots import draw

    return draw(rows, out, accuracy, images)
