"""INT8 you control: which images calibrate, which validate, and the metric that judges the INT8 model.

Calibration images: the images of ``--data`` (a folder, glob or list; or a dataset yaml, or a folder with
``images/``), sorted by path; ``min(--calib-images, ceil(--fraction x available))`` of them, evenly spaced over
the sorted list, so that every folder of a dataset is represented and the choice is the same on every run. Each is
letterboxed to the export size (a square for the default 640), as NNCF's statistics need one input per image.

Labelled data (YOLO label files found through YOLOv5's images -> labels rule): up to :data:`MAX_VAL_IMAGES` of its
images, evenly spaced, letterboxed as ``yolokit run`` does, judge the FP32 and INT8 models by mAP50-95 (pycocotools,
conf 0.001, IoU 0.6, multi-label, 300 detections per image: ``yolokit val --protocol coco``). They are held in memory
as uint8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from backends.base import ExportOptions, Int8Data
from toolkit.detections import Detections
from toolkit.errors import InputError
from toolkit.jobs.val import ValOptions, coco_map
from toolkit.jobs.valdata import Sample, dataset_images, label_path, load_labels
from toolkit.ops import LetterboxInfo, NMSOptions, final_detections, letterbox, postprocess, scale_boxes, to_chw_rgb

MAX_VAL_IMAGES = 500
_VAL = ValOptions()
VAL_NMS = NMSOptions(conf=_VAL.conf, iou=_VAL.iou, max_det=_VAL.max_det, multi_label=True)  # yolokit val's settings


@dataclass
class ValItem:
    """One labelled image, letterboxed: the model's input, how to map boxes back, and its labels."""

    chw: np.ndarray
    info: LetterboxInfo
    sample: Sample


def spread(n_available: int, n: int) -> list[int]:
    """``n`` indices evenly spaced over ``range(n_available)``, first and last included."""
    n = max(0, min(n, n_available))
    if n == 0:
        return []
    if n == 1:
        return [0]
    return sorted({int(round(i * (n_available - 1) / (n - 1))) for i in range(n)})


def _images(data: str) -> list[Path]:
    p = Path(data)
    if not p.exists() and not any(ch in data for ch in "*?["):
        raise InputError(f"{data}: the INT8 calibration data does not exist (--data)")
    if p.suffix in (".yaml", ".yml") or (p.is_dir() and (p / "images").is_dir()):
        return dataset_images(data, ("val", "test", "train"))[0]  # calibration takes any split, val first
    from toolkit.io.sources import list_sources

    return sorted(Path(r.path) for r in list_sources(data).items if r.frame is None)


def _read(path: Path) -> np.ndarray | None:
    from toolkit.io.decode import read_image
    from toolkit.io.files import ImageReadError

    try:
        return read_image(str(path))
    except ImageReadError:
        return None


def int8_data(options: ExportOptions, stride: int, nms_inside: bool) -> Int8Data:
    """The calibration and validation images and the metric, from ``options.calib_data``, ``calib_images``,
    ``fraction`` and ``max_drop``."""
    if not options.calib_data:
        raise InputError("--int8 needs calibration images: --data FOLDER (a few hundred representative images)")
    if options.calib_images < 1:
        raise InputError(f"--calib-images {options.calib_images}: must be at least 1")
    if not 0 < options.fraction <= 1:
        raise InputError(f"--fraction {options.fraction}: must be in (0, 1]")
    images = _images(options.calib_data)
    if not images:
        raise InputError(f"{options.calib_data}: no images for INT8 calibration (--data)")
    n = min(options.calib_images, math.ceil(options.fraction * len(images)))
    labelled = [p for p in images if label_path(p).is_file()]
    if options.max_drop is not None and not labelled:
        raise InputError(f"{options.calib_data}: --max-drop needs labelled images (YOLO label files under labels/ "
                         f"beside images/, or a dataset yaml); none found")
    validation = _validation_items([labelled[i] for i in spread(len(labelled), MAX_VAL_IMAGES)], options, stride)
    size, square = options.imgsz, (options.imgsz[0], options.imgsz[1])

    def to_input(item: Any) -> np.ndarray:
        if isinstance(item, ValItem):
            return (item.chw[None].astype(np.float32) / 255).astype(np.float32)
        img = _read(item)
        if img is None:  # unreadable calibration images are left out before NNCF sees them
            raise InputError(f"{item}: unreadable calibration image")
        lb, _ = letterbox(img, square, stride, auto=False)
        return (to_chw_rgb(lb)[None].astype(np.float32) / 255).astype(np.float32)

    # an unreadable image (a FIFO, a text file named .jpg) is left out, named, and the next readable one taken in its
    # place: it was dropped without a word, and the count fell short of --calib-images
    chosen = set(spread(len(images), n))
    calibration: list[Path] = []
    unreadable: list[Path] = []
    for i in [*sorted(chosen), *(i for i in range(len(images)) if i not in chosen)]:
        if len(calibration) == n:
            break
        (calibration if _read(images[i]) is not None else unreadable).append(images[i])
    if not calibration:
        raise InputError(f"{options.calib_data}: no readable images for INT8 calibration (--data)")

    def metric(items: list[Any], outputs: list[np.ndarray]) -> float:
        samples, dets = [], []
        for item, out in zip(items, outputs, strict=True):
            pred = np.asarray(out)[0]
            xyxy, conf, cls = final_detections(pred, VAL_NMS) if nms_inside else postprocess(pred, VAL_NMS)
            samples.append(item.sample)
            dets.append(Detections(scale_boxes(xyxy, item.info), conf, cls, shape=item.sample.shape))
        return coco_map(samples, dets, VAL_NMS.max_det)["map50_95"]

    record = {"calib_images": len(calibration), "calib_available": len(images), "fraction": options.fraction,
              "calib_data": str(options.calib_data), "selection": "evenly spaced over the sorted image list",
              "calib_letterbox": f"{size[0]}x{size[1]} (square padding)"}
    if unreadable:
        record["unreadable"] = [str(p) for p in unreadable]
    return Int8Data(calibration=calibration, to_input=to_input, validation=validation,
                    metric=metric if validation else None, max_drop=options.max_drop,
                    max_iterations=options.max_drop_iterations, record=record)


def _validation_items(paths: list[Path], options: ExportOptions, stride: int) -> list[ValItem]:
    """Labelled images letterboxed as the artifact letterboxes them (a rectangle for a dynamic export)."""
    items = []
    for p in paths:
        img = _read(p)
        if img is None:
            continue
        lb, info = letterbox(img, options.imgsz, stride, auto=options.dynamic)
        shape = (img.shape[0], img.shape[1])
        cls, xyxy = load_labels(p, shape)
        items.append(ValItem(to_chw_rgb(lb), info, Sample(str(p), shape, cls, xyxy)))
    return items


def describe(record: dict[str, Any]) -> str:
    """One line for the export report and ``yolokit info``."""
    text = (f"{record.get('calib_images')} calibration images of {record.get('calib_available')} "
            f"(fraction {record.get('fraction')}, {record.get('selection')})")
    if record.get("unreadable"):
        bad = record["unreadable"]
        text += f"; {len(bad)} unreadable image(s) left out ({bad[0]}{', ...' if len(bad) > 1 else ''})"
    if "fp32_map50_95" in record:
        text += (f"; mAP50-95 FP32 {record['fp32_map50_95']:.4f} -> INT8 {record['int8_map50_95']:.4f}, drop "
                 f"{record['drop']:.4f}" + (f" (max {record['max_drop']:g})" if "max_drop" in record else "")
                 + f" on {record.get('val_images')} labelled images")
    return text
