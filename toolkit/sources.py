"""Finding inputs (file, folder, glob, list file, video) and reading images robustly."""

from __future__ import annotations

import glob as globmod
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from toolkit.errors import InputError

IMAGE_SUFFIXES = frozenset({".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm"})
VIDEO_SUFFIXES = frozenset({".asf", ".avi", ".gif", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".ts",
                            ".wmv"})


class ImageReadError(InputError):
    """One input could not be read; the run records it and goes on."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class InputRef:
    """One input: the file, its output key (relative path below the source, without suffix) and, for
    a video, the frame number."""

    path: str
    key: str
    frame: int | None = None

    @property
    def name(self) -> str:
        return self.path if self.frame is None else f"{self.path}#frame{self.frame}"


@dataclass
class SourceList:
    """Everything a SOURCE names: readable candidates, and entries that already failed (with reasons)."""

    items: list[InputRef]
    failed: list[tuple[InputRef, str]]
    root: str

    def __len__(self) -> int:
        return len(self.items)


def _kind(path: str) -> str | None:
    suffix = os.path.splitext(path)[1].lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    return None


def _key(path: str, root: str) -> str:
    rel = os.path.relpath(path, root) if root else os.path.basename(path)
    if rel.startswith(".."):
        rel = os.path.basename(path)
    return os.path.splitext(rel)[0]


def list_sources(source: str | os.PathLike[str] | list[str]) -> SourceList:
    """Expand SOURCE into inputs: an image or video file, a folder (recursive, sorted), a glob pattern,
    or a ``.txt`` file listing one path per line. A missing SOURCE raises :class:`InputError`; missing
    or unusable entries inside a folder or list are returned as failures, not raised."""
    if isinstance(source, list):
        items = [InputRef(str(p), _key(str(p), "")) for p in source]
        return SourceList(items, [], "")
    text = os.fspath(source)
    path = Path(text)
    failed: list[tuple[InputRef, str]] = []
    if any(ch in text for ch in "*?[") and not path.exists():
        root = text.split("*")[0].split("?")[0].split("[")[0]
        root = root if root.endswith(os.sep) else os.path.dirname(root)
        files = sorted(p for p in globmod.glob(text, recursive=True) if os.path.isfile(p))
        if not files:
            raise InputError(f"{text}: the pattern matches no files")
        return _from_files(files, root, failed)
    if path.is_dir():
        files = []

        def unlistable(e: OSError) -> None:
            # os.walk skips a folder it cannot list; record it so its images are not silently lost
            where = e.filename if isinstance(e.filename, str) else text
            if os.path.normpath(where) == os.path.normpath(text):
                raise InputError(f"{text}: cannot list the folder ({_os_reason(e)})")
            key = os.path.relpath(where, text) + os.sep  # a folder's key cannot equal a file's key
            failed.append((InputRef(where, key), f"{_os_reason(e)} (cannot list the folder; its images were "
                                                  f"not read)"))

        for dirpath, dirnames, filenames in os.walk(text, onerror=unlistable, followlinks=False):
            dirnames.sort()
            for f in filenames:
                full = os.path.join(dirpath, f)
                if _kind(full) is not None:
                    files.append(full)
                elif os.path.islink(full) and not os.path.exists(full):
                    failed.append((InputRef(full, _key(full, text)), "broken symbolic link"))
        files.sort()
        if not files and not failed:
            raise InputError(f"{text}: the folder has no images or videos "
                             f"(looked for {', '.join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))})")
        return _from_files(files, text, failed)
    if path.suffix.lower() == ".txt" and path.is_file():
        base = path.parent
        try:
            lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines()]
        except OSError as e:
            raise InputError(f"{text}: cannot read the list file ({_os_reason(e)})") from None
        files = [str(base / ln) if not os.path.isabs(ln) else ln for ln in lines if ln and not ln.startswith("#")]
        return _from_files(files, "", failed)
    if path.is_file():
        return _from_files([text], str(path.parent), failed)
    if os.path.islink(text):
        raise InputError(f"{text}: broken symbolic link")
    raise InputError(f"{text}: no such file or folder (give an image, a video, a folder, a glob or a .txt list)")


def _os_reason(e: OSError) -> str:
    if isinstance(e, PermissionError):
        return "permission denied"
    return str(e.strerror or e)


def _from_files(files: list[str], root: str, failed: list[tuple[InputRef, str]]) -> SourceList:
    items: list[InputRef] = []
    for f in files:
        ref = InputRef(f, _key(f, root))
        if _kind(f) is None:
            failed.append((ref, f"not an image or video file type ({os.path.splitext(f)[1] or 'no suffix'})"))
        elif _kind(f) == "video":
            items.append(InputRef(f, ref.key, frame=-1))  # expanded to frames when read
        else:
            items.append(ref)
    return SourceList(items, failed, root)


def read_image(path: str, reduce: int = 1) -> np.ndarray:
    """Read an image as BGR uint8 (EXIF orientation applied, alpha dropped, 16 bits scaled to 8, grey to 3
    channels). ``reduce`` in (1, 2, 4, 8) decodes JPEGs at reduced size. Raises :class:`ImageReadError`."""
    return decode_image(read_bytes(path), path, reduce)


def read_bytes(path: str) -> np.ndarray:
    """A file's raw bytes (uint8), or :class:`ImageReadError` with the precise reason it cannot be read."""
    try:
        return np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        reason = "broken symbolic link" if os.path.islink(path) else "file not found"
        raise ImageReadError(path, reason) from None
    except PermissionError:
        raise ImageReadError(path, "permission denied (cannot read the file)") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a folder, not an image") from None
    except OSError as e:
        raise ImageReadError(path, f"cannot read: {e.strerror or e}") from None


_REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


def _is_jpeg(data: np.ndarray) -> bool:
    return len(data) > 3 and data[0] == 0xFF and data[1] == 0xD8


def decode_image(data: np.ndarray, path: str = "<bytes>", reduce: int = 1) -> np.ndarray:
    """Decode encoded image bytes; see :func:`read_image`."""
    if data.size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    if _is_jpeg(data):
        tail = data[-64:].tobytes().rstrip(b"\x00\r\n ")
        if not tail.endswith(b"\xff\xd9"):
            raise ImageReadError(path, "truncated JPEG (no end-of-image marker); re-copy or re-export the file")
    flags = _REDUCED.get(reduce, cv2.IMREAD_COLOR) if _is_jpeg(data) else cv2.IMREAD_COLOR
    try:
        img = cv2.imdecode(data, flags)
    except cv2.error as e:
        raise ImageReadError(path, f"cannot decode ({str(e).strip().splitlines()[-1]})") from None
    if img is None or img.size == 0:
        raise ImageReadError(path, "cannot decode: not an image, or a corrupt or unsupported one")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return img


def jpeg_size(data: np.ndarray) -> tuple[int, int] | None:
    """(height, width) from a JPEG's SOF marker without decoding, or None."""
    if not _is_jpeg(data):
        return None
    b = data.tobytes()
    i = 2
    n = len(b)
    while i + 9 < n:
        if b[i] != 0xFF:
            i += 1
            continue
        marker = b[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        seg = int.from_bytes(b[i + 2:i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            return int.from_bytes(b[i + 5:i + 7], "big"), int.from_bytes(b[i + 7:i + 9], "big")
        i += 2 + seg
    return None


def iter_video(ref: InputRef) -> Iterator[tuple[InputRef, np.ndarray | None, str | None]]:
    """Frames of a video as (ref, frame, None), or (ref, None, reason) for an unreadable stretch/file."""
    cap = cv2.VideoCapture(ref.path)
    if not cap.isOpened():
        yield ref, None, "cannot open the video (corrupt or unsupported codec)"
        return
    try:
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or 0
        i = 0
        misses = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                if total and i < total and misses < 10:
                    # a corrupt stretch: report this frame and try the next one
                    yield InputRef(ref.path, f"{ref.key}_{i}", i), None, "cannot decode this frame"
                    i += 1
                    misses += 1
                    continue
                break
            misses = 0
            yield InputRef(ref.path, f"{ref.key}_{i}", i), frame, None
            i += 1
    finally:
        cap.release()
