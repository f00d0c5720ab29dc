"""How a deployer runs an end-to-end model without yolokit: OpenCV to read and letterbox (as YOLOv5 does), the
runtime's own API, and the four outputs mapped back to the image. Nothing here imports yolokit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

OUTPUTS = ("num_dets", "det_boxes", "det_scores", "det_classes")


def letterbox(img: np.ndarray, size: int = 640, stride: int = 32) -> tuple[np.ndarray, float, tuple[float, float]]:
    """YOLOv5's rectangular letterbox (``auto=True``): the long side to ``size``, the short side padded with grey
    114 up to a multiple of ``stride``. Returns the float32 (1, 3, H, W) RGB input in [0, 1], and the gain and
    (left, top) padding that map boxes back as YOLOv5's ``scale_boxes`` does: recomputed from the two shapes."""
    h0, w0 = img.shape[:2]
    r = min(size / h0, size / w0)
    nw, nh = int(round(w0 * r)), int(round(h0 * r))
    dw, dh = ((size - nw) % stride) / 2, ((size - nh) % stride) / 2
    if (w0, h0) != (nw, nh):
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    x = np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))[None].astype(np.float32) / 255
    h1, w1 = img.shape[:2]
    gain = min(h1 / h0, w1 / w0)
    return x, gain, ((w1 - w0 * gain) / 2, (h1 - h0 * gain) / 2)


def to_image(boxes: np.ndarray, gain: float, pad: tuple[float, float], shape: tuple[int, int]) -> np.ndarray:
    """Letterboxed-input xyxy boxes -> the original image's pixels, clipped."""
    out = boxes.astype(np.float64).copy()
    out[:, [0, 2]] = ((out[:, [0, 2]] - pad[0]) / gain).clip(0, shape[1])
    out[:, [1, 3]] = ((out[:, [1, 3]] - pad[1]) / gain).clip(0, shape[0])
    return out


def detections(outputs: dict[str, np.ndarray], gain: float, pad: tuple[float, float],
               shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first image's (xyxy in image pixels, scores, classes) from the four outputs of a batch."""
    n = int(outputs["num_dets"][0, 0])
    return (to_image(outputs["det_boxes"][0, :n], gain, pad, shape), outputs["det_scores"][0, :n],
            outputs["det_classes"][0, :n].astype(np.int64))


class OrtModel:
    """An end-to-end ONNX file through plain onnxruntime."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(OUTPUTS, self.session.run(list(OUTPUTS), {"images": x}), strict=True))


class OpenVinoModel:
    """An end-to-end OpenVINO IR through plain OpenVINO, at FP32 as its FP32 IR asks for."""

    def __init__(self, xml: Path) -> None:
        import openvino as ov

        self.compiled: Any = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        res = self.compiled(x)
        return {n: np.asarray(res[self.compiled.output(n)]) for n in OUTPUTS}
