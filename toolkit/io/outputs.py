"""Output formats: YOLO label files, COCO results JSON, CSV rows, annotated images, crops. Each output is written
whole into the run folder's store (:mod:`toolkit.io.store`): a local folder through a temporary file and a rename,
object storage in one put."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from toolkit.detections import Detections
from toolkit.errors import OutputError
from toolkit.io.store import RUN_HINT, Store, atomic_write_bytes
from toolkit.options import DRAWING, check, option

__all__ = ["CSV_HEADER", "AnnotateStyle", "annotate", "atomic_write_bytes", "coco_image_id", "coco_results",
           "crop_box", "csv_rows", "encode_crops", "encode_image", "image_suffix", "is_coco_names", "json_bytes",
           "label_lines", "write_encoded", "write_image", "write_json", "write_labels"]

# COCO's 80 detection classes in YOLO order mapped to the 91-id category numbering of COCO json files
COCO80_TO_91 = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
                31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
                56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
                85, 86, 87, 88, 89, 90)


def is_coco_names(names: dict[int, str]) -> bool:
    return len(names) == 80 and names.get(0) == "person" and names.get(79) == "toothbrush"


def label_lines(det: Detections, save_conf: bool = False) -> str:
    """YOLO label text: ``class xc yc w h [conf]`` per box, normalised to the original image, ``%g``, in detect.py's
    order: its NMS output reversed (``for *xyxy, conf, cls in reversed(det)``), the lowest confidence first."""
    lines = []
    for (xc, yc, w, h), c, cls in zip(det.xywhn(), det.confidence, det.class_id, strict=True):
        vals: tuple[float, ...] = (float(cls), xc, yc, w, h) + ((float(c),) if save_conf else ())
        lines.append(" ".join(f"{v:g}" for v in vals))
    return "".join(line + "\n" for line in reversed(lines))


def write_labels(store: Store, name: str, det: Detections, save_conf: bool = False) -> None:
    store.put(name, label_lines(det, save_conf).encode())


def coco_image_id(key: str, stem: str | None = None) -> int | str:
    """An image's id in COCO results, as val.py gives it: the image file's stem (``stem``, else the last part of
    ``key``) as a number where it is one (COCO's ids, ``000000000009.jpg`` -> 9), else ``key`` (unique in a run).
    The stem, not the run's output key: an image listed twice has the key ``000000000009.jpg`` the second time."""
    name = Path(key).name if stem is None else stem
    return int(name) if name.isascii() and name.isdigit() else key


def coco_results(det: Detections, image_id: int | str) -> list[dict[str, Any]]:
    """COCO results entries (``bbox`` as top-left x, y, width, height in pixels)."""
    coco = is_coco_names(det.names)
    out = []
    for (x1, y1, x2, y2), c, cls in zip(det.xyxy.tolist(), det.confidence.tolist(), det.class_id.tolist(),
                                        strict=True):
        out.append({"image_id": image_id, "category_id": COCO80_TO_91[cls] if coco else int(cls),
                    "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                    "score": round(c, 5)})
    return out


def _color(cls: int) -> tuple[int, int, int]:
    # a fixed, well-spread palette from the golden-ratio hue sequence
    hue = int((cls * 0.618033988749895 % 1.0) * 180)
    hsv = np.array([[[hue, 200, 230]]], dtype=np.uint8)
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


@dataclass(frozen=True)
class AnnotateStyle:
    """How boxes are drawn (YOLOv5's ``--line-thickness``, ``--hide-labels``, ``--hide-conf``), each declared once
    (:mod:`toolkit.options`)."""

    line_width: int | None = option(0, "Box line width in pixels (0: from the image size).",
                                    cli_name="line_thickness", panel=DRAWING, affects_output=True, lo=0)
    hide_labels: bool = option(False, "Draw boxes without labels.", panel=DRAWING, affects_output=True)
    hide_conf: bool = option(False, "Draw labels without confidences.", panel=DRAWING, affects_output=True)

    def __post_init__(self) -> None:
        check(self)


def annotate(image: np.ndarray, det: Detections, style: AnnotateStyle | None = None, *, copy: bool = True
             ) -> np.ndarray:
    """A copy of ``image`` with boxes and ``name conf`` labels drawn; with ``copy=False``, ``image`` itself where it
    can be written (a caller done with the picture: a 1080p copy is 0.7 of the 1.1 core-ms drawing takes)."""
    style = style or AnnotateStyle()
    out = image if not copy and image.flags.writeable and image.flags.c_contiguous else image.copy()
    lw = style.line_width or max(round(sum(out.shape[:2]) / 2 * 0.003), 2)
    font_scale = lw / 3
    # detect.py draws reversed(det), the least confident first: the most confident box and label end on top
    for (x1, y1, x2, y2), c, cls in zip(det.xyxy[::-1], det.confidence[::-1], det.class_id[::-1], strict=True):
        color = _color(int(cls))
        p1, p2 = (int(x1), int(y1)), (int(x2), int(y2))
        cv2.rectangle(out, p1, p2, color, lw, cv2.LINE_AA)
        if style.hide_labels:
            continue
        name = det.names.get(int(cls), str(int(cls)))
        label = name if style.hide_conf else f"{name} {c:.2f}"
        tf = max(lw - 1, 1)
        w, h = cv2.getTextSize(label, 0, font_scale, tf)[0]
        outside = p1[1] - h >= 3
        q = (p1[0] + w, p1[1] - h - 3 if outside else p1[1] + h + 3)
        cv2.rectangle(out, p1, q, color, -1, cv2.LINE_AA)
        cv2.putText(out, label, (p1[0], p1[1] - 2 if outside else p1[1] + h + 2), 0, font_scale,
                    (255, 255, 255), tf, cv2.LINE_AA)
    return out


def crop_box(image: np.ndarray, xyxy: np.ndarray, gain: float = 1.02, pad: int = 10) -> np.ndarray:
    """The part of ``image`` around one box as YOLOv5's ``save_one_box`` cuts it: width and height times ``gain``
    plus ``pad`` pixels, about the same centre, truncated to whole pixels and clipped to the image (a view)."""
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    xc, yc = (x1 + x2) / 2, (y1 + y2) / 2
    w, h = (x2 - x1) * gain + pad, (y2 - y1) * gain + pad
    ih, iw = image.shape[:2]
    # torch's .long() truncates toward zero, then clip_boxes clamps to the image
    a, b = min(max(int(xc - w / 2), 0), iw), min(max(int(yc - h / 2), 0), ih)
    c, d = min(max(int(xc + w / 2), 0), iw), min(max(int(yc + h / 2), 0), ih)
    return image[b:d, a:c]


_CROP_PARAMS = [cv2.IMWRITE_JPEG_QUALITY, 95]  # save_one_box: quality 95, no chroma subsampling
if hasattr(cv2, "IMWRITE_JPEG_SAMPLING_FACTOR"):
    _CROP_PARAMS += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]


def encode_crops(image: np.ndarray, det: Detections) -> list[bytes | None]:
    """Each box's crop (see :func:`crop_box`) as JPEG bytes, in box order; None for a box with no pixels."""
    out: list[bytes | None] = []
    for box in det.xyxy:
        crop = crop_box(image, box)
        ok, buf = cv2.imencode(".jpg", crop, _CROP_PARAMS) if crop.size else (False, None)
        out.append(bytes(buf.tobytes()) if ok and buf is not None else None)
    return out


CSV_HEADER = ("path", "frame", "class_id", "class_name", "confidence", "x1", "y1", "x2", "y2")


def csv_rows(det: Detections, path: str, frame: int | None) -> list[list[Any]]:
    """``predictions.csv`` rows of one image: path, frame (empty for an image), class id and name, confidence,
    box corners in source pixels."""
    fr = "" if frame is None else int(frame)
    return [[path, fr, int(cls), det.names.get(int(cls), str(int(cls))), round(float(c), 5),
             *(round(float(v), 2) for v in box)]
            for box, c, cls in zip(det.xyxy, det.confidence, det.class_id, strict=True)]


def image_suffix(path: Path) -> str:
    """The suffix an annotated image is written with: the source's, as it is spelled (``IMG_0001.JPG`` keeps ``.JPG``,
    as detect.py names it) for JPEG, PNG, BMP and WebP, else ``.jpg`` (a TIFF or a camera's raw file)."""
    return path.suffix if path.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".webp") else ".jpg"


def annotated_suffix(path: str, frame: int | None) -> str:
    """The suffix of an input's annotated image: its image's (:func:`image_suffix`), ``.jpg`` for a video frame."""
    return image_suffix(Path(path)) if frame is None else ".jpg"


def encode_image(image: np.ndarray, suffix: str, name: str = "image") -> bytes:
    ok, buf = cv2.imencode(suffix, image)
    if not ok:
        raise OutputError(f"{name}: cannot encode the annotated image")
    return bytes(buf.tobytes())


def write_image(store: Store, name: str, image: np.ndarray) -> str:
    """Encode ``image`` by the suffix of ``name`` (``.jpg`` when OpenCV does not write that one) and write it; the
    name it got."""
    ext = image_suffix(Path(name))
    name = str(Path(name).with_suffix(ext))
    write_encoded(store, name, encode_image(image, ext, store.url(name)))
    return name


def write_encoded(store: Store, name: str, data: bytes) -> None:
    """Write an already encoded image (process-mode workers annotate and encode their own images)."""
    store.put(name, data)


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=1).encode()


def write_json(path: Path, obj: Any) -> None:
    """A JSON file on this machine, written atomically."""
    atomic_write_bytes(path, json_bytes(obj), RUN_HINT)
