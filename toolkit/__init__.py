"""yolokit: run YOLOv5 over many images, with any backend."""

from toolkit.detections import Detections
from toolkit.detector import Detector, Result
from toolkit.errors import YolokitError
from toolkit.meta import YOLOKIT_VERSION as __version__

__all__ = ["Detections", "Detector", "Result", "YolokitError", "__version__"]
