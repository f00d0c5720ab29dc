"""yolokit: run YOLOv5 over many images, with any backend.

The public face: :class:`Detector`, :class:`Detections`, :class:`Result` and the errors. They are imported on first
use (PEP 562), so ``import toolkit.errors`` loads neither numpy nor OpenCV.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from toolkit.errors import YolokitError
from toolkit.meta import YOLOKIT_VERSION as __version__

if TYPE_CHECKING:
    from toolkit.detections import Detections
    from toolkit.engine.core import DetectorConfig, Result
    from toolkit.engine.detector import Detector

_LAZY = {"Detector": "toolkit.engine.detector", "Detections": "toolkit.detections", "Result": "toolkit.engine.core",
         "DetectorConfig": "toolkit.engine.core"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'toolkit' has no attribute {name!r}")


__all__ = ["Detections", "Detector", "DetectorConfig", "Result", "YolokitError", "__version__"]
