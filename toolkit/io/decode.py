"""Decoding images as YOLOv5's ``detect.py`` reads them (``cv2.imdecode``: BGR, EXIF orientation applied), after
the header and structure checks of :mod:`toolkit.io.imageheader`; failures are one plain sentence."""

from __future__ import annotations

import os

import cv2
import numpy as np

from toolkit.io.files import DEFAULT_MAX_PIXELS, ImageReadError, ReadLimits, read_bytes
from toolkit.io.imageheader import check_encoded, header_size, is_jpeg


def read_image(path: str, reduce: int = 1, limits: ReadLimits | None = None) -> np.ndarray:
    """Read an image as BGR uint8 (EXIF orientation applied, alpha dropped, 16 bits scaled to 8, grey to 3
    channels). ``reduce`` in (1, 2, 4, 8) decodes JPEGs at reduced size. Raises :class:`ImageReadError`."""
    limits = limits or ReadLimits()
    return decode_image(read_bytes(path, limits.max_file_size), path, reduce, limits.max_pixels)


_REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
_UNDECODABLE = "cannot decode: not an image, or a damaged or unsupported one; re-copy or re-export the file"


def quiet_decoders() -> None:
    """Silence OpenCV's own log lines (for example ``[ERROR:0@0.2] global grfmt_tiff.cpp:117 TIFF_Error ...`` on a
    damaged TIFF): yolokit reports every unreadable input itself, in one plain line. It changes OpenCV's
    process-wide log level (and FFmpeg's, through ``OPENCV_FFMPEG_LOGLEVEL`` unless it is set), so only the processes
    yolokit owns call it: the CLI, process-mode workers, Ray actors."""
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is not None:
        logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    # FFmpeg's own lines inside OpenCV's video reader ("Connection refused", "Stream timeout"): its level is read
    # when the reader is first used (0: panics only)
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "0")


def decode_image(data: np.ndarray, path: str = "<bytes>", reduce: int = 1,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes; see :func:`read_image`. The header and structure are checked first
    (:func:`toolkit.io.imageheader.check_encoded`): a pixel bomb, a truncated JPEG or PNG, or a PNG with a damaged
    critical chunk is refused with one plain sentence before the decoder allocates anything. Data after a JPEG's
    end-of-image marker (motion photos, camera trailers) is fine."""
    if data.size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    problem = check_encoded(data, max_pixels)
    if problem is not None:
        raise ImageReadError(path, problem)
    flags = _REDUCED.get(reduce, cv2.IMREAD_COLOR) if is_jpeg(data) else cv2.IMREAD_COLOR
    try:
        img = cv2.imdecode(data, flags)
    except cv2.error:  # OpenCV's text names its own source files and assertions: not a reason a user can act on
        raise ImageReadError(path, _undecodable(data)) from None
    if img is None or img.size == 0:
        raise ImageReadError(path, _undecodable(data))
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return img


def _undecodable(data: np.ndarray) -> str:
    """Why bytes named as an image did not decode: what they are where their first bytes say (a video named .jpg
    was told to re-copy the file; a URL's or an object's was told what it is), else the plain reason."""
    from toolkit.io.transfer import sniff_media

    kind = sniff_media(data[:1024].tobytes())
    if kind == "video":
        return "a video, not an image; name it with a video suffix (.mp4) to run its frames"
    if kind in ("html", "text"):
        return f"{'an HTML page' if kind == 'html' else 'text'}, not an image; re-copy the image itself"
    return _UNDECODABLE


def jpeg_size(data: np.ndarray) -> tuple[int, int] | None:
    """(height, width) of a JPEG as stored (EXIF orientation not applied), from its frame header; None otherwise."""
    return header_size(data) if is_jpeg(data) else None
