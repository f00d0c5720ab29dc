"""Test-time augmentation as YOLOv5 v7.0 runs it (``detect.py --augment``, ``val.py --augment``): pure functions.

The model runs on the letterboxed image at three scales, 1, 0.83 flipped left-right and 0.67. Each view is resized
bilinearly (half-pixel centres, no antialiasing: what ``F.interpolate(..., mode='bilinear', align_corners=False)``
computes) and padded on the right and bottom to a multiple of the model's largest stride with YOLOv5's grey
(0.447 of full scale). The views' predictions are mapped back to the letterboxed image (boxes divided by the
scale, a flipped view's x mirrored), the first view's largest-stride tail and the last view's smallest-stride head
are dropped, and all are joined before NMS (YOLOv5's ``_descale_pred`` and ``_clip_augmented``).

Views are float32 on the 0-255 scale of the uint8 input: every runner divides by 255 itself, so the resized pixels
reach the model unrounded, as in YOLOv5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

SCALES = (1.0, 0.83, 0.67)
FLIPS = (False, True, False)  # left-right
PAD = 0.447 * 255  # YOLOv5 pads scaled views with 0.447 in [0, 1] input
ANCHORS_PER_LEVEL = 3


@dataclass(frozen=True)
class View:
    """One augmented view of a batch: its pixels and how to map its predictions back."""

    batch: np.ndarray  # (B, 3, H, W): uint8 for the unscaled view, float32 on the 0-255 scale otherwise
    scale: float
    flip: bool


def scale_view(batch: np.ndarray, ratio: float, stride: int) -> np.ndarray:
    """Resize a ``(B, 3, H, W)`` batch by ``ratio`` (size ``int(H * ratio)`` x ``int(W * ratio)``, bilinear with
    half-pixel centres) and pad it right and bottom to ``ceil(H * ratio / stride) * stride`` (YOLOv5's
    ``scale_img``); float32 on the input's 0-255 scale."""
    b, c, h, w = batch.shape
    nh, nw = int(h * ratio), int(w * ratio)
    ph, pw = (math.ceil(v * ratio / stride) * stride for v in (h, w))
    out = np.full((b, c, ph, pw), PAD, np.float32)
    for i in range(b):
        hwc = np.ascontiguousarray(batch[i].transpose(1, 2, 0), dtype=np.float32)
        resized = cv2.resize(hwc, (nw, nh), interpolation=cv2.INTER_LINEAR)
        out[i, :, :nh, :nw] = resized.transpose(2, 0, 1)
    return out


def augment_views(batch: np.ndarray, stride: int) -> list[View]:
    """The three views of a letterboxed ``(B, 3, H, W)`` batch: as it is, 0.83 flipped left-right, 0.67."""
    views = []
    for s, f in zip(SCALES, FLIPS, strict=True):
        x = batch[:, :, :, ::-1] if f else batch
        views.append(View(np.ascontiguousarray(x) if s == 1 else scale_view(x, s, stride), s, f))
    return views


def descale(pred: np.ndarray, scale: float, flip: bool, width: int) -> np.ndarray:
    """Map a view's ``(B, N, 5 + nc)`` predictions (xywh first) back to the unscaled, unflipped input of ``width``
    pixels (YOLOv5's ``_descale_pred``)."""
    out = pred.astype(np.float32, copy=True)
    out[..., :4] /= scale
    if flip:
        out[..., 0] = width - out[..., 0]
    return out


def detection_levels(n: int, h: int, w: int, stride: int) -> int:
    """How many detection levels (P3-P5: 3; P3-P6: 4) give ``n`` predictions for an ``h`` x ``w`` input whose
    largest stride is ``stride``, with YOLOv5's three anchors per level. Raises ``ValueError`` if none does."""
    for levels in range(1, 7):
        strides = [stride >> (levels - 1 - k) for k in range(levels)]
        if min(strides) < 1:
            break
        if n == ANCHORS_PER_LEVEL * sum((h // s) * (w // s) for s in strides):
            return levels
    raise ValueError(f"{n} predictions for a {h}x{w} input fit no YOLOv5 detection head with stride {stride}")


def clip_augmented(preds: list[np.ndarray], levels: int) -> list[np.ndarray]:
    """Drop the first view's largest-stride (large-object) tail and the last view's smallest-stride (small-object)
    head (YOLOv5's ``_clip_augmented``, with ``e = 1`` level dropped at each end)."""
    g = sum(4**x for x in range(levels))
    out = list(preds)
    i = (out[0].shape[1] // g) * 1  # sum(4**x for x in range(1))
    out[0] = out[0][:, :-i] if i else out[0]
    i = (out[-1].shape[1] // g) * 4 ** (levels - 1)  # sum(4**(levels - 1 - x) for x in range(1))
    out[-1] = out[-1][:, i:]
    return out


def merge_views(preds: list[np.ndarray], views: list[View], input_hw: tuple[int, int], stride: int) -> np.ndarray:
    """The views' raw predictions joined as YOLOv5 joins them before NMS: ``(B, N', 5 + nc)``."""
    h, w = input_hw
    levels = detection_levels(preds[0].shape[1], h, w, stride)
    back = [descale(p, v.scale, v.flip, w) for p, v in zip(preds, views, strict=True)]
    return np.concatenate(clip_augmented(back, levels), axis=1)
