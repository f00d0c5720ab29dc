"""The result type: a small dataclass of numpy arrays."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
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
        self.xyxy = np.asarray(self.xyxy, dtype=np.float32).reshape(-1, 4)
        self.confidence = np.asarray(self.confidence, dtype=np.float32).reshape(-1)
        self.class_id = np.asarray(self.class_id, dtype=np.int64).reshape(-1)
        n = len(self.xyxy)
        if len(self.confidence) != n or len(self.class_id) != n:
            raise ValueError("xyxy, confidence and class_id must have the same length")

    def __len__(self) -> int:
        return len(self.xyxy)

    @classmethod
    def empty(cls, names: dict[int, str] | None = None, path: str | None = None,
              shape: tuple[int, int] | None = None) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64),
                   names or {}, path, shape)

    @property
    def class_names(self) -> list[str]:
        return [self.names.get(int(c), str(int(c))) for c in self.class_id]

    def xywhn(self) -> np.ndarray:
        """Boxes as normalised ``xc, yc, w, h`` of the source image (YOLO label format)."""
        if self.shape is None:
            raise ValueError("Detections.shape is needed to normalise boxes")
        h, w = self.shape
        b = self.xyxy.astype(np.float64)
        out = np.empty_like(b)
        out[:, 0] = (b[:, 0] + b[:, 2]) / 2 / w
        out[:, 1] = (b[:, 1] + b[:, 3]) / 2 / h
        out[:, 2] = (b[:, 2] - b[:, 0]) / w
        out[:, 3] = (b[:, 3] - b[:, 1]) / h
        return out

    def rounded(self) -> Detections:
        """A copy with box corners rounded to whole pixels (what YOLOv5's detect.py writes)."""
        return Detections(np.round(self.xyxy), self.confidence, self.class_id, self.names, self.path, self.shape)

    def __getitem__(self, index: slice | np.ndarray) -> Detections:
        return Detections(self.xyxy[index], self.confidence[index], self.class_id[index],
                          self.names, self.path, self.shape)
