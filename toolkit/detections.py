"""The result type: a small dataclass of numpy arrays, convertible to a dict, a pandas DataFrame and supervision's
``Detections`` (pandas and supervision are optional and imported only when asked for)."""

from __future__ import annotations

import importlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from toolkit.errors import MissingExtraError


def _optional(module: str, extra: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"{what} needs {module.split('.')[0]}, which is not installed: "
                                f"pip install 'yolokit[{extra}]'") from None


@dataclass(repr=False, eq=False)
class Detections:
    """Detections for one image, in that image's original pixel coordinates.

    ``xyxy`` is ``(N, 4)`` float32, ``confidence`` ``(N,)`` float32, ``class_id`` ``(N,)`` int64.
    ``names`` maps class id to name; ``path`` and ``shape`` (height, width) describe the source image.
    """

    xyxy: np.ndarray
    confidence: np.ndarray
    class_id: np.ndarray
    names: dict[int, str] = field(default_factory=dict)
    path: str | None = None
    shape: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        given = np.asarray(self.xyxy, dtype=np.float32)
        if given.size and not (given.shape[-1:] == (4,) and given.ndim <= 2):  # (4, 2) was reshaped into 2 boxes
            raise ValueError(f"xyxy takes (N, 4) boxes (x1, y1, x2, y2), got an array of shape {given.shape}")
        self.xyxy = given.reshape(-1, 4)
        self.confidence = np.asarray(self.confidence, dtype=np.float32).reshape(-1)
        self.class_id = np.asarray(self.class_id, dtype=np.int64).reshape(-1)
        n = len(self.xyxy)
        if len(self.confidence) != n or len(self.class_id) != n:
            raise ValueError("xyxy, confidence and class_id must have the same length")

    def __len__(self) -> int:
        return len(self.xyxy)

    def __eq__(self, other: object) -> bool:
        """The same boxes, scores, classes, names, path and shape (the dataclass's own comparison asked numpy for
        the truth of an array and raised ValueError)."""
        if not isinstance(other, Detections):
            return NotImplemented
        return (np.array_equal(self.xyxy, other.xyxy) and np.array_equal(self.confidence, other.confidence)
                and np.array_equal(self.class_id, other.class_id) and self.names == other.names
                and self.path == other.path and self.shape == other.shape)

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __repr__(self) -> str:
        """A summary, not the arrays and every class name: ``Detections(3 boxes: 2 person, 1 dog; confidence
        0.31-0.89; image 480x640; path='a.jpg'; 80 class names)``."""
        n = len(self)
        parts = [f"{n} box{'' if n == 1 else 'es'}"]
        if n:
            counts = Counter(self.class_names).most_common()
            parts[0] += ": " + ", ".join(f"{k} {name}" for name, k in counts[:5]) + (
                f", and {len(counts) - 5} more classes" if len(counts) > 5 else "")
            parts.append(f"confidence {self.confidence.min():.2f}-{self.confidence.max():.2f}")
        if self.shape is not None:
            parts.append(f"image {self.shape[0]}x{self.shape[1]}")
        if self.path is not None:
            parts.append(f"path={self.path!r}")
        parts.append(f"{len(self.names)} class names")
        return f"Detections({'; '.join(parts)})"

    @classmethod
    def empty(cls, names: dict[int, str] | None = None, path: str | None = None,
              shape: tuple[int, int] | None = None) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64),
                   names or {}, path, shape)

    @property
    def class_names(self) -> list[str]:
        return [self.names.get(int(c), str(int(c))) for c in self.class_id]

    def xywhn(self) -> np.ndarray:
        """Boxes as normalised ``xc, yc, w, h`` of the source image (YOLO label format), computed in single
        precision as detect.py computes them (a float32 tensor over the image's size), so that label files agree
        with its digits: in double precision about one line in five differed in the sixth."""
        if self.shape is None:
            raise ValueError("Detections.shape is needed to normalise boxes")
        h, w = np.float32(self.shape[0]), np.float32(self.shape[1])
        b = self.xyxy.astype(np.float32)
        out = np.empty_like(b)
        out[:, 0] = (b[:, 0] + b[:, 2]) / np.float32(2) / w
        out[:, 1] = (b[:, 1] + b[:, 3]) / np.float32(2) / h
        out[:, 2] = (b[:, 2] - b[:, 0]) / w
        out[:, 3] = (b[:, 3] - b[:, 1]) / h
        return out.astype(np.float64)

    def rounded(self) -> Detections:
        """A copy with box corners rounded to whole pixels (what YOLOv5's detect.py writes)."""
        return Detections(np.round(self.xyxy), self.confidence, self.class_id, self.names, self.path, self.shape)

    def __getitem__(self, index: slice | np.ndarray) -> Detections:
        return Detections(self.xyxy[index], self.confidence[index], self.class_id[index],
                          self.names, self.path, self.shape)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (JSON-ready): path, shape, names and one entry per box."""
        return {"path": self.path, "shape": list(self.shape) if self.shape is not None else None,
                "names": {int(k): v for k, v in self.names.items()},
                "boxes": [{"xyxy": [float(v) for v in box], "confidence": float(c), "class_id": int(k),
                           "class_name": self.names.get(int(k), str(int(k)))}
                          for box, c, k in zip(self.xyxy, self.confidence, self.class_id, strict=True)]}

    def to_detect_json(self) -> dict[str, Any]:
        """``yolokit serve``'s ``/v1/detect`` answer for this image: its size and its boxes (image pixels, float32
        values written with the fewest digits that read back the same)."""
        h, w = self.shape or (0, 0)
        rows = [{"x1": _f32(b[0]), "y1": _f32(b[1]), "x2": _f32(b[2]), "y2": _f32(b[3]), "confidence": _f32(c),
                 "class_id": int(k), "class_name": n}
                for b, c, k, n in zip(self.xyxy, self.confidence, self.class_id, self.class_names, strict=True)]
        return {"width": int(w), "height": int(h), "detections": rows}

    def to_pandas(self) -> Any:
        """A pandas DataFrame, one row per box: x1, y1, x2, y2, confidence, class_id, class_name (needs pandas:
        ``pip install 'yolokit[pandas]'``)."""
        pd = _optional("pandas", "pandas", "Detections.to_pandas()")
        return pd.DataFrame({"x1": self.xyxy[:, 0], "y1": self.xyxy[:, 1], "x2": self.xyxy[:, 2],
                             "y2": self.xyxy[:, 3], "confidence": self.confidence, "class_id": self.class_id,
                             "class_name": pd.Series(self.class_names, dtype=object)})

    def to_supervision(self) -> Any:
        """supervision's ``Detections`` with the same arrays (class names in ``data['class_name']``; names, path and
        shape in ``metadata``), needs ``pip install 'yolokit[supervision]'``."""
        sv = _optional("supervision", "supervision", "Detections.to_supervision()")
        return sv.Detections(xyxy=self.xyxy.copy(), confidence=self.confidence.copy(), class_id=self.class_id.copy(),
                             data={"class_name": np.array(self.class_names, dtype=str)},
                             metadata={"names": dict(self.names), "path": self.path, "shape": self.shape})

    @classmethod
    def from_supervision(cls, detections: Any, names: dict[int, str] | None = None, path: str | None = None,
                         shape: tuple[int, int] | None = None) -> Detections:
        """Back from supervision's ``Detections``; names, path and shape default to what :meth:`to_supervision`
        stored in its ``metadata``. A missing confidence or class id reads as 1.0 or 0."""
        meta = getattr(detections, "metadata", None) or {}
        n = len(detections.xyxy)
        conf = detections.confidence if detections.confidence is not None else np.ones(n, np.float32)
        cls_id = detections.class_id if detections.class_id is not None else np.zeros(n, np.int64)
        names = names if names is not None else meta.get("names") or {}
        return cls(np.asarray(detections.xyxy), conf, cls_id, dict(names),
                   path if path is not None else meta.get("path"), shape if shape is not None else meta.get("shape"))


def _f32(v: Any) -> float:
    """A float32 value as the Python float its shortest decimal form reads back as."""
    return float(str(np.float32(v)))
