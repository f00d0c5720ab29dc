"""Metadata that travels with every model artifact, so ``Detector(path)`` needs nothing else."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from toolkit.options import CONF, IOU, MAX_DET, whole_number

YOLOKIT_VERSION = "0.1.0"
META_KEY = "yolokit"  # key under which artifacts store the JSON (ONNX metadata_props, OpenVINO rt_info, ...)


@dataclass(frozen=True)
class BakedNMS:
    """NMS inside the model (``yolokit export --nms``): the settings it was exported with.

    YOLOv5's semantics: objectness > ``conf``, score = objectness x class score > ``conf``, the best class per box,
    the ``max_nms`` highest scores into NMS (``None``: every candidate), boxes offset by class unless ``agnostic``,
    a box suppressed when its IoU with a kept box is greater than ``iou``, at most ``max_det`` kept per image.
    """

    conf: float = CONF.default
    iou: float = IOU.default
    max_det: int = MAX_DET.default
    agnostic: bool = False
    max_nms: int | None = 30000


@dataclass
class ModelMeta:
    """What a runner needs to know about its model.

    ``imgsz`` is the fixed input ``(h, w)`` of a static artifact, or ``None`` when any multiple of ``stride``
    is accepted (up to ``max_imgsz`` when that is set, e.g. a TensorRT profile's largest shape). ``batch`` is the
    static batch size, or ``None`` for a dynamic batch up to ``max_batch`` (``None``: unbounded).
    """

    names: dict[int, str]
    stride: int = 32
    imgsz: tuple[int, int] | None = None
    batch: int | None = None
    max_batch: int | None = None
    max_imgsz: tuple[int, int] | None = None
    precision: str = "fp32"
    format: str = "pt"
    source_sha256: str | None = None
    yolokit_version: str = YOLOKIT_VERSION
    runtime_versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    # set when the model returns final detections (NMS inside): its runner returns (B, max_det, 6) rows
    # x1 y1 x2 y2 score class in letterboxed-input pixels, best first, class -1 in the rows past its detections
    nms: BakedNMS | None = None

    @property
    def nc(self) -> int:
        return len(self.names)

    def to_json(self) -> str:
        d = asdict(self)
        d["names"] = {str(k): v for k, v in self.names.items()}
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelMeta:
        d = json.loads(text)
        if not isinstance(d, dict) or "names" not in d:
            raise ValueError("not yolokit metadata (no 'names')")
        known = {f for f in cls.__dataclass_fields__}
        d = {k: v for k, v in d.items() if k in known}
        names = d["names"]
        if isinstance(names, list):  # YOLOv5's own form
            names = dict(enumerate(names))
        if not isinstance(names, dict) or not names:
            raise ValueError("'names' is no list or map of class names")
        d["names"] = {int(k): str(v) for k, v in sorted(names.items(), key=lambda kv: int(kv[0]))}
        if list(d["names"]) != list(range(len(d["names"]))):
            raise ValueError("the class ids in 'names' are not 0 to n-1")
        if isinstance(d.get("nms"), dict):
            d["nms"] = BakedNMS(**{k: v for k, v in d["nms"].items() if k in BakedNMS.__dataclass_fields__})
        stride = d.get("stride", 32)
        if not whole_number(stride) or stride not in (8, 16, 32, 64, 128):
            raise ValueError(f"'stride' {stride!r} is no model stride (8 to 128, a power of two)")
        for key in ("imgsz", "max_imgsz"):
            if d.get(key) is not None:
                size = d[key]
                if not isinstance(size, list) or len(size) != 2 or not all(whole_number(v) and v > 0 for v in size):
                    raise ValueError(f"'{key}' {size!r} is no (height, width) in pixels")
                d[key] = tuple(int(v) for v in size)
        for key in ("batch", "max_batch"):
            if d.get(key) is not None and not (whole_number(d[key]) and d[key] > 0):
                raise ValueError(f"'{key}' {d[key]!r} is no batch size")
        return cls(**d)

