"""Finding inputs (file, folder, glob, list file, video) and reading images robustly."""

from __future__ import annotations

import glob as globmod
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from toolkit.errors import InputError
from toolkit.imageheader import check_encoded

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
        return self.path if self.frame is None or self.frame < 0 else f"{self.path}#frame{self.frame}"


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
        # every match that is not a folder: a named pipe or a device is listed and refused by the reader, not
        # silently dropped
        files = sorted(p for p in globmod.glob(text, recursive=True) if not os.path.isdir(p))
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
    if os.path.exists(text):  # neither a folder nor a regular file: a named pipe, a socket, a device
        if _kind(text) is not None:  # named like an image or video: one input, refused (with the reason) when read
            return _from_files([text], str(path.parent), failed)
        raise InputError(f"{text}: is {special_kind(os.stat(text).st_mode)}, not an image, video, folder or list "
                         f"file")
    if os.path.islink(text):
        raise InputError(f"{text}: broken symbolic link")
    raise InputError(f"{text}: no such file or folder (give an image, a video, a folder, a glob or a .txt list)")


def _unique_key(key: str, path: str, taken: set[str]) -> str:
    """``key``, or when another input already has it (``photo.jpg`` beside ``photo.png``, or a list naming one file
    twice) ``photo.png`` then ``photo.png_2`` ...: each input gets its own outputs and manifest line."""
    out = key
    if out in taken:
        out = key + os.path.splitext(path)[1]
        n = 2
        while out in taken:
            out = f"{key}{os.path.splitext(path)[1]}_{n}"
            n += 1
    taken.add(out)
    return out


def _os_reason(e: OSError) -> str:
    if isinstance(e, PermissionError):
        return "permission denied"
    return str(e.strerror or e)


def _from_files(files: list[str], root: str, failed: list[tuple[InputRef, str]]) -> SourceList:
    items: list[InputRef] = []
    taken = {ref.key for ref, _ in failed}
    for f in files:
        ref = InputRef(f, _unique_key(_key(f, root), f, taken))
        if _kind(f) is None:
            failed.append((ref, f"not an image or video file type ({os.path.splitext(f)[1] or 'no suffix'})"))
        elif _kind(f) == "video":
            items.append(InputRef(f, ref.key, frame=-1))  # expanded to frames when read
        else:
            items.append(ref)
    return SourceList(items, failed, root)


DEFAULT_MAX_FILE_SIZE = 1 << 30  # 1 GiB: an image file is read whole into memory
DEFAULT_MAX_PIXELS = 500_000_000  # 4x a 13400x9528 survey photo; 1.5 GB decoded
OPENCV_MAX_PIXELS = 1 << 30  # OpenCV refuses larger images whatever yolokit allows


@dataclass(frozen=True)
class ReadLimits:
    """What an input may be before yolokit reads or decodes it: its file size (bytes) and the pixel count its
    header claims (a "pixel bomb" is refused before any large allocation)."""

    max_file_size: int = DEFAULT_MAX_FILE_SIZE
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.max_file_size < 1:
            raise InputError(f"--max-file-size must be at least 1 byte, got {self.max_file_size}")
        if not 1 <= self.max_pixels <= OPENCV_MAX_PIXELS:
            raise InputError(f"--max-pixels must be between 1 and {OPENCV_MAX_PIXELS} (OpenCV's own limit), got "
                             f"{self.max_pixels}")


def read_image(path: str, reduce: int = 1, limits: ReadLimits | None = None) -> np.ndarray:
    """Read an image as BGR uint8 (EXIF orientation applied, alpha dropped, 16 bits scaled to 8, grey to 3
    channels). ``reduce`` in (1, 2, 4, 8) decodes JPEGs at reduced size. Raises :class:`ImageReadError`."""
    limits = limits or ReadLimits()
    return decode_image(read_bytes(path, limits.max_file_size), path, reduce, limits.max_pixels)


_SPECIAL = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
            (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))


def special_kind(mode: int) -> str | None:
    """What a file of this ``st_mode`` is when it is not a regular file ("a named pipe (FIFO)", ...), else None."""
    if stat.S_ISREG(mode):
        return None
    return next((what for test, what in _SPECIAL if test(mode)), "not a regular file")


def _size_text(n: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


def _not_regular(path: str, kind: str) -> ImageReadError:
    return ImageReadError(path, f"is {kind}, not an image file; it was not read")


def regular_file(path: str) -> os.stat_result:
    """``os.stat`` of an input that is a regular file (symbolic links followed), or :class:`ImageReadError` saying
    what it is instead (missing, a broken link, unreachable, a named pipe, a device, ...). Nothing is opened."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ImageReadError(path, "broken symbolic link" if os.path.islink(path) else "file not found") from None
    except PermissionError:
        raise ImageReadError(path, "permission denied (cannot reach the file)") from None
    except OSError as e:
        raise ImageReadError(path, f"cannot read: {_os_reason(e)}") from None
    kind = special_kind(st.st_mode)
    if kind is not None:
        raise _not_regular(path, kind)
    return st


def read_bytes(path: str, max_file_size: int = DEFAULT_MAX_FILE_SIZE) -> np.ndarray:
    """A regular file's raw bytes (uint8), or :class:`ImageReadError` with the precise reason it cannot be read.

    Only regular files are read: a named pipe, socket or device (directly or behind a symbolic link) is refused
    from its ``stat`` alone and never opened, so no input can block a run or stream forever; the file is then
    opened without blocking and checked again (it may have been replaced meanwhile). A file larger than
    ``max_file_size`` is refused before it is read."""
    st = regular_file(path)
    if st.st_size > max_file_size:
        raise ImageReadError(path, f"the file is {_size_text(st.st_size)}, over the {_size_text(max_file_size)} "
                                   f"limit; raise it with --max-file-size if this is a real image")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ImageReadError(path, "file not found (removed while the run was reading it)") from None
    except PermissionError:
        raise ImageReadError(path, "permission denied (cannot read the file)") from None
    except OSError as e:
        raise ImageReadError(path, f"cannot read: {_os_reason(e)}") from None
    with os.fdopen(fd, "rb", buffering=0) as f:
        st = os.fstat(f.fileno())
        kind = special_kind(st.st_mode)
        if kind is not None:
            raise _not_regular(path, kind)
        size = min(st.st_size, max_file_size)
        data = np.empty(size, dtype=np.uint8)
        view, got = memoryview(data.data), 0
        try:
            while got < size:
                n = f.readinto(view[got:])
                if not n:
                    break  # the file shrank while being read: decode what is there (checked below)
                got += n
        except OSError as e:
            raise ImageReadError(path, f"cannot read: {_os_reason(e)}") from None
    return data[:got]


_REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
_UNDECODABLE = "cannot decode: not an image, or a damaged or unsupported one; re-copy or re-export the file"


def quiet_decoders() -> None:
    """Silence OpenCV's own log lines (for example ``[ERROR:0@0.2] global grfmt_tiff.cpp:117 TIFF_Error ...`` on a
    damaged TIFF): yolokit reports every unreadable input itself, in one plain line. It changes OpenCV's
    process-wide log level, so only the processes yolokit owns call it: the CLI, process-mode workers, Ray actors."""
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is not None:
        logging.setLogLevel(logging.LOG_LEVEL_SILENT)


def _is_jpeg(data: np.ndarray) -> bool:
    return len(data) > 3 and data[0] == 0xFF and data[1] == 0xD8


def decode_image(data: np.ndarray, path: str = "<bytes>", reduce: int = 1,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes; see :func:`read_image`. The header and structure are checked first
    (:func:`toolkit.imageheader.check_encoded`): a pixel bomb, a truncated JPEG or PNG, or a PNG with a damaged
    critical chunk is refused with one plain sentence before the decoder allocates anything. Data after a JPEG's
    end-of-image marker (motion photos, camera trailers) is fine."""
    if data.size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    problem = check_encoded(data, max_pixels)
    if problem is not None:
        raise ImageReadError(path, problem)
    flags = _REDUCED.get(reduce, cv2.IMREAD_COLOR) if _is_jpeg(data) else cv2.IMREAD_COLOR
    try:
        img = cv2.imdecode(data, flags)
    except cv2.error:  # OpenCV's text names its own source files and assertions: not a reason a user can act on
        raise ImageReadError(path, _UNDECODABLE) from None
    if img is None or img.size == 0:
        raise ImageReadError(path, _UNDECODABLE)
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
    """Frames of a video as (ref, frame, None), or (ref, None, reason) for an unreadable stretch/file. Only a
    regular file is opened (a named pipe named .mp4 would block the decoder)."""
    try:
        regular_file(ref.path)
    except ImageReadError as e:
        yield ref, None, e.reason.replace("not an image file", "not a video file")
        return
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
