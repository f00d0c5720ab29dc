"""The device half of the GPU pipeline's letterbox, written for CUDA and tested on the CPU device.

* :func:`pad_normalise` (the default, exact): an image OpenCV has already resized on the CPU goes into its slot of
  the batch as RGB divided by 255, padded grey: the CPU path's model input, bit for bit.
* :func:`letterbox_torch` (``gpu_resize``): the whole letterbox on the device (bilinear resize, grey padding split
  as in :func:`toolkit.ops.letterbox`), straight to normalised RGB CHW in the model dtype.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from toolkit.errors import InputError
from toolkit.ops import PAD_VALUE, LetterboxInfo, letterbox_shape
from toolkit.options import IMGSZ

__all__ = ["letterbox_torch", "pad_normalise"]

PAD_FLOAT = float(np.float32(PAD_VALUE / 255))  # the float32 grey of the padding, whatever the output dtype


def letterbox_torch(img_u8: torch.Tensor, new_shape: int | tuple[int, int] = IMGSZ.default, stride: int = 32,
                    auto: bool = True, scaleup: bool = True, dtype: torch.dtype = torch.float32,
                    quantize: bool = False, out: torch.Tensor | None = None) -> tuple[torch.Tensor, LetterboxInfo]:
    """Letterbox BGR uint8 ``(H, W, 3)`` (or a same-shape batch ``(B, H, W, 3)``) on its own device.

    Returns RGB ``(3, h, w)`` (or ``(B, 3, h, w)``) in ``dtype`` scaled to [0, 1], and the
    :class:`LetterboxInfo` (shared by the whole batch). Shapes and padding are exactly those of
    :func:`toolkit.ops.letterbox`; the resize is ``interpolate(bilinear, align_corners=False)`` without
    antialiasing, which samples like cv2's ``INTER_LINEAR`` (cv2 uses fixed-point weights and rounds to
    uint8, so values differ by a fraction of a grey level). ``quantize`` rounds the resized values to whole
    grey levels as a uint8 image would be (then they differ from cv2's by at most one level).
    ``out``: write into this ``(3, h, w)`` (``(B, 3, h, w)``) tensor, e.g. one slot of a batch, and return it.
    """
    if img_u8.dtype != torch.uint8 or img_u8.ndim not in (3, 4) or img_u8.shape[-1] != 3:
        raise InputError(f"letterbox_torch takes BGR uint8 (H, W, 3) or (B, H, W, 3), got {img_u8.dtype} "
                         f"{tuple(img_u8.shape)}")
    batched = img_u8.ndim == 4
    x = img_u8 if batched else img_u8[None]
    h0, w0 = int(x.shape[1]), int(x.shape[2])
    (nh, nw), (oh, ow), r = letterbox_shape((h0, w0), new_shape, stride, auto, scaleup)
    if out is not None and tuple(out.shape) != ((int(x.shape[0]),) if batched else ()) + (3, oh, ow):
        raise InputError(f"letterbox_torch: out has shape {tuple(out.shape)}, the letterbox is (3, {oh}, {ow})")
    # BGR HWC -> RGB CHW; interpolate in float32 (half bilinear is not available everywhere), cast at the end
    x = x.flip(-1).permute(0, 3, 1, 2).float()
    if (h0, w0) != (nh, nw):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=False)
        if quantize:
            x = x.round_().clamp_(0, 255)
    x = x.div_(255)
    dw, dh = (ow - nw) / 2, (oh - nh) / 2
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    info = LetterboxInfo(r, (dw, dh), (h0, w0), (oh, ow))
    if out is not None:
        o = out if batched else out[None]
        if top or bottom or left or right:
            o.fill_(PAD_FLOAT)
        o[:, :, top:top + nh, left:left + nw].copy_(x)
        return out, info
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom), mode="constant", value=PAD_FLOAT)
    x = x.to(dtype).contiguous()
    return (x if batched else x[0]), info


def pad_normalise(img_u8: torch.Tensor, out: torch.Tensor, top: int, left: int) -> torch.Tensor:
    """The device half of the exact letterbox: a BGR uint8 ``(h, w, 3)`` image already resized (by OpenCV, as
    :func:`toolkit.ops.letterbox_resize` does on the CPU) goes into ``out`` ``(3, oh, ow)`` at (``top``, ``left``)
    as RGB divided by 255 in ``out``'s dtype, the rest grey: the CPU letterbox's pixels, divided as the model's
    runner divides them (``x.to(dtype) / 255``)."""
    h, w = int(img_u8.shape[0]), int(img_u8.shape[1])
    oh, ow = int(out.shape[-2]), int(out.shape[-1])
    if img_u8.dtype != torch.uint8 or img_u8.ndim != 3 or img_u8.shape[2] != 3 or top < 0 or left < 0 \
            or top + h > oh or left + w > ow:
        raise InputError(f"pad_normalise: a uint8 (h, w, 3) image inside {tuple(out.shape)} at ({top}, {left}), "
                         f"got {img_u8.dtype} {tuple(img_u8.shape)}")
    if (h, w) != (oh, ow):
        out.fill_(PAD_FLOAT)
    region = out[:, top:top + h, left:left + w]
    region.copy_(img_u8.flip(-1).permute(2, 0, 1))
    region.div_(255)
    return out
