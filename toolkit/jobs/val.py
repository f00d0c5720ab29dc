"""``yolokit val``: COCO-style mAP on a YOLO-labelled dataset, computed with pycocotools."""

from __future__ import annotations

import contextlib
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.detections import Detections
from toolkit.engine.core import DetectorConfig
from toolkit.errors import InputError
from toolkit.io.sources import IMAGE_SUFFIXES
from toolkit.ops import match_greedy
from toolkit.options import check, declared, option


def _like(name: str, **changes: Any) -> Any:
    """A field declared as ``DetectorConfig``'s option ``name`` is (``changes``: val's own default or help)."""
    return declared(DetectorConfig, name).field(**changes)


@dataclass
class ValOptions:
    """``yolokit val``'s options: the detector's own declarations, with val's defaults for the NMS (YOLOv5's val.py:
    a low threshold, so that mAP integrates over every confidence)."""

    weights: str = _like("weights", help="Model to evaluate (any format yolokit runs).")
    data: str = option("", "A YOLO dataset yaml, or a folder with images/ and labels/.")
    backend: str | None = _like("backend")
    device: str | None = _like("device")
    imgsz: int = _like("imgsz")
    conf: float = _like("conf", default=0.001, help="Confidence threshold for evaluation (YOLOv5's val.py: low, so "
                        "that mAP integrates over every confidence).")
    iou: float = _like("iou", default=0.6)
    max_det: int = _like("max_det", default=300)
    batch: int = option(1, "Images per inference batch.", lo=1)
    fast_decode: bool = _like("fast_decode", cli=False)  # to measure what it costs in mAP
    augment: bool = _like("augment")

    def __post_init__(self) -> None:
        check(self)


@dataclass
class Sample:
    image: str
    shape: tuple[int, int]  # (h, w)
    cls: np.ndarray  # (M,)
    xyxy: np.ndarray  # (M, 4) pixels


def _label_path(image: Path) -> Path:
    parts = list(image.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def dataset_images(data: str) -> tuple[list[Path], dict[int, str] | None]:
    """Image paths of a dataset: a YOLO dataset yaml (its ``val`` split), a folder with ``images/`` (and
    ``labels/`` beside it), or a folder of images whose labels follow YOLOv5's images->labels rule."""
    p = Path(data)
    names: dict[int, str] | None = None
    if p.suffix in (".yaml", ".yml") and p.is_file():
        import yaml

        d = yaml.safe_load(p.read_text()) or {}
        root = Path(d.get("path") or p.parent)
        if not root.is_absolute():
            root = (p.parent / root).resolve()
        split = d.get("val") or d.get("test") or d.get("train")
        if not split:
            raise InputError(f"{p}: the dataset yaml has no val/train split")
        folders = [root / s for s in (split if isinstance(split, list) else [split])]
        raw = d.get("names")
        if isinstance(raw, dict):
            names = {int(k): str(v) for k, v in raw.items()}
        elif isinstance(raw, list):
            names = dict(enumerate(map(str, raw)))
    elif p.is_dir():
        folders = [p / "images"] if (p / "images").is_dir() else [p]
    else:
        raise InputError(f"{data}: not a dataset yaml or folder (give a YOLO dataset .yaml, or a folder with "
                         f"images/ and labels/)")
    images: list[Path] = []
    for folder in folders:
        if folder.is_file() and folder.suffix == ".txt":
            images += [Path(line.strip()) for line in folder.read_text().splitlines() if line.strip()]
            continue
        if not folder.is_dir():
            raise InputError(f"{folder}: dataset split folder not found")
        for dirpath, _, files in os.walk(folder):
            images += [Path(dirpath) / f for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise InputError(f"{data}: no images found")
    return sorted(images), names


def load_labels(image: Path, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(class ids, xyxy pixel boxes) of an image's YOLO label file; no file means no objects."""
    lp = _label_path(image)
    if not lp.is_file():
        return np.zeros(0, np.int64), np.zeros((0, 4), np.float32)
    rows = [line.split() for line in lp.read_text().splitlines() if line.strip()]
    if not rows:
        return np.zeros(0, np.int64), np.zeros((0, 4), np.float32)
    try:
        arr = np.array([[float(v) for v in r[:5]] for r in rows], dtype=np.float64)
    except ValueError:
        raise InputError(f"{lp}: malformed label line (expected: class xc yc w h, normalised)") from None
    h, w = shape
    xc, yc, bw, bh = arr[:, 1] * w, arr[:, 2] * h, arr[:, 3] * w, arr[:, 4] * h
    xyxy = np.stack([xc - bw / 2, yc - bh / 2, xc + bw / 2, yc + bh / 2], 1).astype(np.float32)
    return arr[:, 0].astype(np.int64), xyxy


def coco_map(samples: list[Sample], dets: list[Detections], max_det: int) -> dict[str, float]:
    """mAP50-95 and mAP50 with pycocotools' COCOeval (area 'all', up to ``max_det`` detections per image)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    cats = sorted({int(c) for s in samples for c in s.cls} | {int(c) for d in dets for c in d.class_id})
    ann_id = 1
    for i, (s, d) in enumerate(zip(samples, dets, strict=True)):
        images.append({"id": i, "height": s.shape[0], "width": s.shape[1], "file_name": s.image})
        for c, (x1, y1, x2, y2) in zip(s.cls.tolist(), s.xyxy.tolist(), strict=True):
            annotations.append({"id": ann_id, "image_id": i, "category_id": int(c), "iscrowd": 0,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
            ann_id += 1
        for c, score, (x1, y1, x2, y2) in zip(d.class_id.tolist(), d.confidence.tolist(), d.xyxy.tolist(),
                                              strict=True):
            results.append({"image_id": i, "category_id": int(c), "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": float(score)})
    if not results or not annotations:
        return {"map50_95": 0.0, "map50": 0.0}
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations, "categories": [{"id": c} for c in cats]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.maxDets = [1, 10, max_det]
        ev.evaluate()
        ev.accumulate()
    # read AP at maxDets=max_det directly (summarize() hard-wires 100 for its first figure)
    prec = ev.eval["precision"][:, :, :, 0, -1]  # [iou thresholds, recall points, classes], area 'all'
    valid = prec > -1

    def _mean(p: np.ndarray, v: np.ndarray) -> float:
        return float(p[v].mean()) if v.any() else 0.0

    return {"map50_95": _mean(prec, valid), "map50": _mean(prec[0], valid[0])}


def precision_recall(samples: list[Sample], dets: list[Detections], iou_thres: float = 0.5) -> dict[str, float]:
    """Mean precision and recall over classes at the confidence that maximises mean F1 (IoU 0.5)."""
    tp_all, conf_all, cls_all = [], [], []
    for s, d in zip(samples, dets, strict=True):
        tp_all.append(match_greedy(d.xyxy, d.confidence, d.class_id, s.xyxy, s.cls, iou_thres) >= 0)
        conf_all.append(d.confidence)
        cls_all.append(d.class_id)
    tp, conf, pcls = np.concatenate(tp_all), np.concatenate(conf_all), np.concatenate(cls_all)
    gt_cls = np.concatenate([s.cls for s in samples])
    classes = np.unique(gt_cls)
    grid = np.linspace(0, 1, 1000)
    p = np.zeros((len(classes), len(grid)))
    r = np.zeros((len(classes), len(grid)))
    for ci, c in enumerate(classes):
        m = pcls == c
        order = np.argsort(-conf[m])
        tpc, confc = tp[m][order].cumsum(), conf[m][order]
        fpc = (~tp[m][order]).cumsum()
        n_gt = int((gt_cls == c).sum())
        if not len(confc):
            continue
        recall = tpc / max(n_gt, 1)
        precision = tpc / (tpc + fpc)
        r[ci] = np.interp(-grid, -confc, recall, left=0)
        p[ci] = np.interp(-grid, -confc, precision, left=1)
    f1 = 2 * p * r / np.maximum(p + r, 1e-16)
    i = int(f1.mean(0).argmax())
    return {"precision": float(p[:, i].mean()), "recall": float(r[:, i].mean())}


def validate(opts: ValOptions) -> dict[str, Any]:
    """Run the model over the dataset and return the metrics and per-stage ms per image."""
    from toolkit.engine.detector import Detector

    images, _ = dataset_images(opts.data)
    t0 = time.perf_counter()
    with Detector(opts.weights, backend=opts.backend, device=opts.device, imgsz=opts.imgsz, conf=opts.conf,
                  iou=opts.iou, max_det=opts.max_det, multi_label=True, fast_decode=opts.fast_decode,
                  augment=opts.augment) as det:
        samples: list[Sample] = []
        dets: list[Detections] = []
        failed = []
        for res in det.predict_iter([str(p) for p in images], batch=opts.batch):
            if res.detections is None:
                failed.append({"path": res.ref.path, "reason": res.error or ""})
                continue
            shape = res.detections.shape
            assert shape is not None
            cls, xyxy = load_labels(Path(res.ref.path), shape)
            samples.append(Sample(res.ref.path, shape, cls, xyxy))
            dets.append(res.detections)
        times = det.times.ms_per_image()
        backend, precision, inside = det.backend_name, det.meta.precision, det.meta.nms
    metrics: dict[str, Any] = {
        "weights": str(opts.weights), "backend": backend, "model_precision": precision, "data": opts.data,
        "augment": opts.augment,
        "images": len(samples), "instances": int(sum(len(s.cls) for s in samples)),
        **coco_map(samples, dets, opts.max_det), **precision_recall(samples, dets),
        "ms_per_image": {k: round(v, 2) for k, v in times.items()},
        "wall_s": round(time.perf_counter() - t0, 2), "failed": failed,
        "metric": f"pycocotools COCOeval bbox, IoU 0.50:0.95, area all, maxDets {opts.max_det}; "
                  f"conf {opts.conf}, NMS IoU {opts.iou}, "
                  + ("multi-label" if inside is None else
                     f"NMS inside the model (exported conf {inside.conf:g}, max_det {inside.max_det}), single-label"),
    }
    return metrics


def format_metrics(m: dict[str, Any]) -> str:
    ms = ", ".join(f"{k} {v:.1f}" for k, v in m["ms_per_image"].items())
    aug = ", test-time augmentation" if m.get("augment") else ""
    lines = [f"{m['images']} images, {m['instances']} instances ({m['backend']} {m['model_precision']}{aug})",
             f"  mAP50-95 {m['map50_95']:.3f}  mAP50 {m['map50']:.3f}  P {m['precision']:.3f}  "
             f"R {m['recall']:.3f}",
             f"  ms/image: {ms}", f"  metric: {m['metric']}"]
    if m["failed"]:
        lines.append(f"  {len(m['failed'])} images failed: " + "; ".join(
            f"{f['path']}: {f['reason']}" for f in m["failed"][:5]))
    return "\n".join(lines)
