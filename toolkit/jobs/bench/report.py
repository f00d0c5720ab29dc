"""The bench's outputs: ``results.csv``, ``report.md`` (ranked, with speed-up and accuracy) and PNG charts, and the
accuracy measures they show (mAP on labelled images, else agreement with the baseline's boxes)."""

from __future__ import annotations

import contextlib
import csv
from pathlib import Path
from typing import Any

import numpy as np


def agreement(base: list[Any], got: list[Any]) -> dict[str, float]:
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


def map50_95(paths: list[str], dets: list[Any]) -> float | None:
    from toolkit.detections import Detections
    from toolkit.jobs.val import ValOptions, coco_map
    from toolkit.jobs.valdata import Sample, label_path, load_labels

    if not all(label_path(Path(p)).is_file() for p in paths[:5]):
        return None
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
           "map50_95", "map_delta", "agree_precision", "agree_recall", "agree_f1", "pareto", "plan", "error"]


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
    front = [r for r in rows if r.get("pareto")]
    if front:
        what = accuracy(front[0])[1]
        lines += ["", f"Pareto front of img/s against {what} (no other configuration is both faster and more "
                      f"accurate; chart: speed_vs_accuracy.png):",
                  *[f"- {r['config']}: {r['img_s']:.1f} img/s, {what} {accuracy(r)[0]:.3f}" for r in front]]
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


def _scatter_chart(rows: list[dict[str, Any]], path: Path) -> None:
    """img/s (x) against accuracy (y) for every configuration, the Pareto front in red and joined."""
    import cv2

    pts = [(float(r["img_s"]), float(accuracy(r)[0] or 0.0), r) for r in rows
           if "error" not in r and accuracy(r)[0] is not None]
    if not pts:
        return
    what = accuracy(pts[0][2])[1]
    w, h, left, right, top, bottom = 960, 640, 70, 30, 40, 50
    img = np.full((h, w, 3), 255, np.uint8)
    xmax = max(p[0] for p in pts) * 1.1 or 1.0
    ys = [p[1] for p in pts]
    pad = max((max(ys) - min(ys)) * 0.1, 0.005)
    ylo, yhi = min(ys) - pad, max(ys) + pad

    def at(x: float, y: float) -> tuple[int, int]:
        return (int(left + (w - left - right) * x / xmax),
                int(h - bottom - (h - top - bottom) * (y - ylo) / (yhi - ylo)))

    black, grey, red = (0, 0, 0), (150, 150, 150), (40, 40, 220)
    cv2.line(img, (left, h - bottom), (w - right, h - bottom), black, 1)
    cv2.line(img, (left, top), (left, h - bottom), black, 1)
    for k in range(6):
        x, y = xmax * k / 5, ylo + (yhi - ylo) * k / 5
        cv2.putText(img, f"{x:.0f}", (at(x, ylo)[0] - 10, h - bottom + 18), 0, 0.4, black, 1, cv2.LINE_AA)
        cv2.putText(img, f"{y:.3f}", (8, at(0, y)[1] + 4), 0, 0.4, black, 1, cv2.LINE_AA)
    cv2.putText(img, f"img/s (x) against {what} (y); red: Pareto front", (left, 22), 0, 0.5, black, 1, cv2.LINE_AA)
    front = sorted((p for p in pts if p[2].get("pareto")), key=lambda p: p[0])
    for a, b in zip(front, front[1:], strict=False):
        cv2.line(img, at(a[0], a[1]), at(b[0], b[1]), red, 1, cv2.LINE_AA)
    for x, y, r in pts:
        on = bool(r.get("pareto"))
        cv2.circle(img, at(x, y), 5 if on else 4, red if on else grey, -1, cv2.LINE_AA)
        if on:
            cv2.putText(img, r["config"][:40], (at(x, y)[0] + 7, at(x, y)[1] - 6), 0, 0.38, red, 1, cv2.LINE_AA)
    cv2.imwrite(str(path), img)


def charts(rows: list[dict[str, Any]], out: Path) -> None:
    _scatter_chart(rows, out / "speed_vs_accuracy.png")
    ok = [r for r in rows if "error" not in r]
    ranked = sorted(ok, key=lambda r: -r["img_s"])
    _bar_chart([(r["config"], r["img_s"], r is rows[0]) for r in ranked],
               "img/s by configuration (red: baseline)", out / "throughput.png")
    by_workers = sorted((r for r in ok if r["mode"] in ("thread", "process")), key=lambda r: (r["config"]))
    _bar_chart([(r["config"], r["img_s"], False) for r in by_workers], "img/s vs workers",
               out / "throughput_vs_workers.png")
