"""``yolokit val``: mAP on a YOLO-labelled dataset, by one of two protocols.

* ``yolov5`` (the default): what YOLOv5 v7.0's ``val.py`` does, so the figures are the ones it prints. Images are
  read whole, resized so the long side is the input size (INTER_AREA when shrinking), sorted by aspect ratio into
  rectangular batches (``--batch``, default 32, as ``val.py``'s ``--batch-size``) and letterboxed to their batch's
  shape; NMS keeps every class above ``--conf`` (multi-label); detections are matched at IoU 0.50:0.05:0.95 and
  scored by ``ap_per_class`` (:mod:`toolkit.metrics`). A model that cannot take rectangular batches (a fixed input
  shape, or a largest shape below a batch's) gets square inputs, which is what ``val.py`` does with ``rect`` off.
* ``coco``: pycocotools' COCOeval (101 recall points, area 'all', ``--max-det`` detections) on the detections
  ``yolokit run`` gives (each image letterboxed alone, as ``detect.py`` does).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from toolkit.detections import Detections
from toolkit.engine.core import DetectorConfig, refuse_unreachable, unasked_from_export
from toolkit.errors import InputError, OutputError
from toolkit.io.sources import InputRef
from toolkit.jobs.valdata import (
    Sample,
    dataset_images,
    label_path,
    left_out,
    load_labels,
    load_resized,
    native_labels,
    read_labels,
    rect_batches,
    resized_shape,
    to_native,
)
from toolkit.metrics import IOU_LEVELS, ap_per_class, match_levels
from toolkit.ops import LetterboxInfo, NMSOptions, letterbox, match_greedy, to_chw_rgb
from toolkit.options import check, declared, option

if TYPE_CHECKING:
    from toolkit.engine.detector import Detector

PROTOCOLS = ("yolov5", "coco")
RECT_PAD = 0.5  # val.py's padding of the rectangular batch shapes, in strides
CACHE_BYTES = 1 << 30  # resized images kept from the first pass (which reads every image's size) for the second


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
    batch: int = option(32, "Images per batch (val.py's --batch-size): the rectangular batches, and so the figures, "
                        "depend on it.", lo=1)
    fast_decode: bool = _like("fast_decode", cli=False)  # to measure what it costs in mAP
    augment: bool = _like("augment", help="Test-time augmentation (val.py --augment): also run at 0.83 flipped and "
                          "0.67, joined before NMS.")
    protocol: str = option("yolov5", "yolov5: val.py's loader, rectangular batches, matching and 101-point AP (the "
                           "figures YOLOv5's val.py prints); coco: pycocotools on detect.py's inputs.",
                           choices=PROTOCOLS)
    half: bool = option(False, "FP16 PyTorch on a CUDA device (val.py --half); artifacts keep their own precision.")
    verbose: bool = option(False, "Also print the figures of every class.")
    save_json: str | None = option(None, "Write the predictions in COCO results format (val.py --save-json) to this "
                                   "file.")

    def __post_init__(self) -> None:
        check(self)


def _check(opts: ValOptions) -> None:
    if not opts.data:
        raise InputError("--data is required: a dataset yaml or a folder with images/ and labels/")


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


def _coco_protocol(det: Detector, images: list[Path], opts: ValOptions) -> tuple[dict[str, Any], list[Detections]]:
    """Each image letterboxed alone (as ``yolokit run`` and ``detect.py`` do), scored by pycocotools."""
    samples: list[Sample] = []
    dets: list[Detections] = []
    failed: list[dict[str, str]] = []
    for res in det.predict_iter([str(p) for p in images], batch=opts.batch):
        if res.detections is None or res.detections.shape is None:
            failed.append({"path": res.ref.path, "reason": res.error or ""})
            continue
        why = left_out(res.ref.path, res.detections.shape)
        if why is not None:
            failed.append({"path": res.ref.path, "reason": why})
            continue
        try:
            cls, xyxy = load_labels(Path(res.ref.path), res.detections.shape)
        except InputError as e:
            failed.append({"path": res.ref.path, "reason": str(e)})
            continue
        samples.append(Sample(res.ref.path, res.detections.shape, cls, xyxy))
        dets.append(res.detections)
    return {"images": len(samples), "instances": int(sum(len(s.cls) for s in samples)),
            **coco_map(samples, dets, opts.max_det), **precision_recall(samples, dets), "failed": failed,
            "letterbox": "each image letterboxed alone, as detect.py does",
            "metric": f"pycocotools COCOeval bbox, IoU 0.50:0.95, area all, maxDets {opts.max_det}"}, dets


@dataclass
class _Image:
    """One readable image of the dataset: its size as read, its labels and (while kept) ``load_image``'s result."""

    path: str
    shape: tuple[int, int]
    labels: np.ndarray
    resized: np.ndarray | None = field(default=None, repr=False)


Batch = tuple[np.ndarray, tuple[int, int]]  # image indices and the letterbox shape (h, w) of one batch


def _batches(det: Detector, shapes: np.ndarray, size: int, batch: int) -> tuple[list[Batch], bool, str]:
    """val.py's rectangular batches where the model takes them, else square inputs in file order (val.py without
    ``rect``); whether they are rectangular, and a line saying which."""
    meta, n = det.meta, len(shapes)
    if det.routine.auto:
        order, bshapes = rect_batches(shapes, batch, size, meta.stride, RECT_PAD)
        top = (int(bshapes[:, 0].max()), int(bshapes[:, 1].max())) if n else (0, 0)
        limit = meta.max_imgsz
        if limit is None or (top[0] <= limit[0] and top[1] <= limit[1]):
            plan = [(order[k * batch:(k + 1) * batch], (int(h), int(w))) for k, (h, w) in enumerate(bshapes)]
            return plan, True, (f"rectangular batches of {batch} sorted by aspect ratio (pad {RECT_PAD}, stride "
                                f"{meta.stride}), as val.py")
        reason = (f"this {meta.format} model takes inputs up to {limit[0]}x{limit[1]}, and a rectangular batch "
                  f"needs {top[0]}x{top[1]}")
    else:
        reason = f"this {meta.format} model has a fixed input shape"
    h, w = det.imgsz
    order = np.arange(n)
    plan = [(order[k:k + batch], (int(h), int(w))) for k in range(0, n, batch)]
    return plan, False, f"square {h}x{w} inputs, as val.py without rect ({reason})"


def _first_pass(det: Detector, images: list[Path], size: int, pool: ThreadPoolExecutor,
                window: int) -> tuple[list[_Image], list[dict[str, str]]]:
    """Every image read once for its size (the batches depend on all of them) and its labels; ``load_image``'s
    results are kept up to :data:`CACHE_BYTES`, the rest read again in the second pass."""
    from toolkit.engine.core import ordered_map

    def load(p: Path) -> _Image | dict[str, str]:
        try:
            labels = read_labels(p)
        except InputError as e:
            return {"path": str(p), "reason": str(e)}
        got = det.routine.load_input(InputRef(str(p), p.stem))
        if isinstance(got, str):
            return {"path": str(p), "reason": got}
        img, shape = got
        why = left_out(str(p), shape)
        if why is not None:
            return {"path": str(p), "reason": why}
        with det.times.timed("pre"):
            return _Image(str(p), shape, labels, load_resized(img, shape, size))

    kept, out, failed = 0, [], []
    for r in ordered_map(pool, load, images, window):
        if isinstance(r, dict):
            failed.append(r)
            continue
        if r.resized is not None:
            kept += r.resized.nbytes
            if kept > CACHE_BYTES:
                r.resized = None
        out.append(r)
    return out, failed


def _prepare(det: Detector, im: _Image, shape: tuple[int, int], size: int) \
        -> tuple[np.ndarray, LetterboxInfo, tuple[int, int]] | str:
    """One image letterboxed to its batch's shape (``auto=False``, never enlarged): (CHW RGB, letterbox info, the
    size ``load_image`` gave it), or the reason it cannot be read."""
    resized, im.resized = im.resized, None
    if resized is None:
        got = det.routine.load_input(InputRef(im.path, Path(im.path).stem))
        if isinstance(got, str):
            return got
        with det.times.timed("pre"):
            resized = load_resized(got[0], im.shape, size)
    with det.times.timed("pre"):
        lb, info = letterbox(resized, shape, det.meta.stride, auto=False, scaleup=False)
        return to_chw_rgb(lb), info, resized_shape(im.shape, size)


def _prepared_batches(det: Detector, items: list[_Image], plan: list[Batch], size: int,
                      pool: ThreadPoolExecutor) -> Iterator[list[tuple[_Image, Any]]]:
    """The batches of ``plan`` prepared in ``pool``, the next one while the caller runs this one."""
    from collections import deque

    pending: deque[list[tuple[_Image, Any]]] = deque()
    steps = iter(plan)

    def submit() -> None:
        step = next(steps, None)
        if step is not None:
            pending.append([(items[i], pool.submit(_prepare, det, items[i], step[1], size)) for i in step[0]])

    submit()
    while pending:
        submit()
        yield [(im, f.result()) for im, f in pending.popleft()]


def _yolov5_protocol(det: Detector, images: list[Path], opts: ValOptions) -> tuple[dict[str, Any], list[Detections]]:
    """val.py's loader, rectangular batches, multi-label NMS, matching and ``ap_per_class``."""
    from toolkit.errors import first_line

    size = max(det.imgsz)
    stats: list[tuple[np.ndarray, ...]] = []
    dets: list[Detections] = []
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        items, failed = _first_pass(det, images, size, pool, 4 * workers)
        plan, rect, how = _batches(det, np.array([im.shape for im in items]).reshape(-1, 2), size, opts.batch)
        for group in _prepared_batches(det, items, plan, size, pool):
            failed += [{"path": im.path, "reason": r} for im, r in group if isinstance(r, str)]
            ready = [(im, r) for im, r in group if not isinstance(r, str)]
            if not ready:
                continue
            t0 = time.perf_counter()
            try:
                preds = det.routine.infer(np.stack([r[0] for _, r in ready]))
            except Exception as e:
                failed += [{"path": im.path, "reason": f"inference failed: {first_line(e)}"} for im, _ in ready]
                continue
            t1 = time.perf_counter()
            for (im, (_, info, hw)), pred in zip(ready, preds, strict=True):
                xyxy, conf, cls = det.routine.detect(pred)
                gain = hw[0] / im.shape[0] * info.ratio  # val.py's ratio: resized over original height
                predn = to_native(xyxy, info, gain, im.shape)
                tcls, tbox = native_labels(im.labels, hw, info, gain, im.shape)
                stats.append((match_levels(predn, cls, tbox, tcls), conf.astype(np.float32),
                              cls.astype(np.float32), tcls))
                if opts.save_json:
                    dets.append(Detections(predn, conf, cls, path=im.path, shape=im.shape))
            det.times.add("infer", t1 - t0)
            det.times.add("post", time.perf_counter() - t1, images=len(ready))
    metrics = _scores(stats, det.names, opts.verbose)
    metrics.update({"images": len(stats), "failed": failed, "rect": rect, "letterbox": how,
                    "metric": f"YOLOv5 val.py: ap_per_class, 101-point interpolated AP at IoU "
                              f"{IOU_LEVELS[0]:.2f}:0.05:{IOU_LEVELS[-1]:.2f}, maxDets {opts.max_det}"})
    return metrics, dets


def _scores(stats: list[tuple[np.ndarray, ...]], names: dict[int, str], verbose: bool) -> dict[str, Any]:
    """P, R, mAP50 and mAP50-95 over all classes (and per class with ``verbose`` or under 50 classes, as val.py
    prints them) from the per-image (correct, conf, class, label classes)."""
    if not stats:
        return {"instances": 0, "precision": 0.0, "recall": 0.0, "map50": 0.0, "map50_95": 0.0}
    tp, conf, pcls, tcls = (np.concatenate(x, 0) for x in zip(*stats, strict=True))
    out: dict[str, Any] = {"instances": len(tcls), "precision": 0.0, "recall": 0.0, "map50": 0.0, "map50_95": 0.0}
    if not tp.any():
        return out
    cm = ap_per_class(tp, conf, pcls, tcls)
    out.update(precision=cm.mp, recall=cm.mr, map50=cm.map50, map50_95=cm.map50_95)
    if (verbose or len(names) < 50) and len(names) > 1:
        out["classes"] = [{"class": int(c), "name": names.get(int(c), str(c)), "instances": int(cm.nt[i]),
                           "precision": float(cm.p[i]), "recall": float(cm.r[i]), "map50": float(cm.ap50[i]),
                           "map50_95": float(cm.ap[i].mean())} for i, c in enumerate(cm.classes)]
    return out


def _nms_settings(opts: ValOptions) -> tuple[float, float, int]:
    """``conf``, ``iou`` and ``max_det`` to validate at: the options', except for a model with NMS inside, where
    one left at val's default (0.001, 0.6, 300: not asked for) and out of the export's reach takes the export's
    value (a plain ``--nms`` export, made at 0.25 and 0.45, was refused)."""
    import backends
    from toolkit.errors import YolokitError
    from toolkit.model.configs import resolve_model

    conf, iou, max_det = opts.conf, opts.iou, opts.max_det
    try:
        path = resolve_model(opts.weights)
        baked = None if path.suffix == ".pt" else \
            backends.get_backend(opts.backend or backends.backend_for(path)).read_meta(path).nms
    except YolokitError:  # the detector's load says what is wrong with the model
        return conf, iou, max_det
    if baked is None:
        return conf, iou, max_det
    unset = NMSOptions(**{k: declared(ValOptions, k).default for k in ("conf", "iou", "max_det")})
    got = unasked_from_export(NMSOptions(conf=conf, iou=iou, max_det=max_det), baked, unset)
    # asked for and out of reach: refused here, against val's own defaults (the detector's load compares with the
    # run's: --iou 0.45 there is the default, taken for not asked, and val reported 0.45 where the export's 0.6 ran)
    refuse_unreachable(got, baked, path)
    return got.conf, got.iou, got.max_det


def validate(opts: ValOptions) -> dict[str, Any]:
    """Run the model over the dataset and return the metrics (``map50_95``, ``map50``, ``precision``, ``recall``),
    the protocol, counts, failures and per-stage ms per image."""
    from toolkit.engine.detector import Detector

    _check(opts)
    images, names = dataset_images(opts.data)
    if not any(p.exists() for p in images):  # a list's lines read from another folder than its own
        raise InputError(f"{opts.data}: none of the {len(images)} images its list names exists (first: "
                         f"{images[0]}); a list's relative lines are read from the current folder, as val.py reads "
                         f"them, and ./ lines from the list's own folder: run from the folder they start from")
    if not any(label_path(p).is_file() for p in images):  # val.py warns, and reports zeros
        raise InputError(f"{opts.data}: none of its {len(images)} images has a label file (labels/NAME.txt beside "
                         f"images/NAME.jpg, as YOLO datasets keep them), so there is nothing to score; check the "
                         f"dataset's layout")
    t0 = time.perf_counter()
    conf, iou, max_det = _nms_settings(opts)
    with Detector(opts.weights, backend=opts.backend, device=opts.device, half=opts.half, imgsz=opts.imgsz,
                  conf=conf, iou=iou, max_det=max_det, multi_label=True,
                  fast_decode=opts.fast_decode, augment=opts.augment) as det:
        if names is not None and len(names) != len(det.names):
            raise InputError(f"{opts.data}: the dataset has {len(names)} classes, the model {len(det.names)}; "
                             f"give the dataset the model was trained on")
        if opts.protocol == "coco":
            metrics, dets = _coco_protocol(det, images, opts)
        else:
            metrics, dets = _yolov5_protocol(det, images, opts)
        inside = det.meta.nms
        metrics = {"protocol": opts.protocol, "weights": str(det.weights), "backend": det.backend_name,
                   "model_precision": det.meta.precision, "data": opts.data, "augment": opts.augment, **metrics,
                   "ms_per_image": {k: round(v, 2) for k, v in det.times.ms_per_image().items()}}
        nms = ("multi-label" if inside is None else
               f"NMS inside the model (exported conf {inside.conf:g}, max_det {inside.max_det}), single-label")
        metrics["metric"] += f"; conf {conf:g}, NMS IoU {iou:g}, {nms}"
        if opts.save_json:
            metrics["save_json"] = _save_json(opts.save_json, dets, det.names)
    metrics["wall_s"] = round(time.perf_counter() - t0, 2)
    return metrics


def _save_json(path: str, dets: list[Detections], names: dict[int, str]) -> str:
    """COCO results of every image, as ``val.py --save-json`` writes them: ``image_id`` the file stem (a number
    when it is one), ``bbox`` top-left x, y, width, height in pixels (3 decimals), ``score`` (5 decimals); the
    category id is COCO's (1-90) when the model has the 80 COCO classes, else the class id."""
    from toolkit.io.outputs import coco_image_id, coco_results

    rows: list[dict[str, Any]] = []
    for d in dets:
        d.names = names
        rows += coco_results(d, coco_image_id(Path(d.path or "").stem))
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows))
    except OSError as e:
        raise OutputError(f"{out}: cannot write the predictions ({e.strerror or e}); give a writable path to "
                          f"--save-json") from None
    return str(out)


def format_metrics(m: dict[str, Any]) -> str:
    ms = ", ".join(f"{k} {v:.1f}" for k, v in m["ms_per_image"].items())
    aug = ", test-time augmentation" if m.get("augment") else ""
    if m["protocol"] == "yolov5":
        row = "%22s" + "%11i" * 2 + "%11.3g" * 4
        lines = [("%22s" + "%11s" * 6) % ("Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95"),
                 row % ("all", m["images"], m["instances"], m["precision"], m["recall"], m["map50"],
                        m["map50_95"])]
        lines += [row % (c["name"], m["images"], c["instances"], c["precision"], c["recall"], c["map50"],
                         c["map50_95"]) for c in m.get("classes", [])]
        lines.append(f"  {m['backend']} {m['model_precision']}{aug}; {m['letterbox']}")
    else:
        lines = [f"{m['images']} images, {m['instances']} instances ({m['backend']} {m['model_precision']}{aug})",
                 f"  mAP50-95 {m['map50_95']:.3f}  mAP50 {m['map50']:.3f}  P {m['precision']:.3f}  "
                 f"R {m['recall']:.3f}"]
    lines += [f"  ms/image: {ms}", f"  protocol {m['protocol']}: {m['metric']}"]
    if m.get("save_json"):
        lines.append(f"  predictions: {m['save_json']}")
    if m["failed"]:
        n = len(m["failed"])
        lines.append(f"  {n} image{'s' if n != 1 else ''} failed: " + "; ".join(
            f"{f['path']}: {f['reason']}" for f in m["failed"][:5]))
    return "\n".join(lines)
