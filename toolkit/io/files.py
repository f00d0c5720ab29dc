"""Reading input files safely: only regular files, within a size limit, never blocking.

No OpenCV here (and numpy only for the bytes read): what a path *is* is decided from ``stat`` before anything opens
it, so a named pipe, a socket or a device can never block a run or stream forever.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from toolkit.errors import InputError


class ImageReadError(InputError):
    """One input could not be read; the run records it and goes on."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


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


_SPECIAL = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
            (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))


def special_kind(mode: int) -> str | None:
    """What a file of this ``st_mode`` is when it is not a regular file ("a named pipe (FIFO)", ...), else None."""
    if stat.S_ISREG(mode):
        return None
    return next((what for test, what in _SPECIAL if test(mode)), "not a regular file")


def size_text(n: int) -> str:
    """A byte count for messages: 1.5 GB, 200 KB, 12 bytes."""
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


def check_size(path: str, size: int, max_file_size: int) -> None:
    """:class:`ImageReadError` for an input of ``size`` bytes over ``max_file_size`` (a file before it is read, an
    image a server received)."""
    if size > max_file_size:
        raise ImageReadError(path, f"the file is {size_text(size)}, over the {size_text(max_file_size)} limit; raise "
                                   f"it with --max-file-size if this is a real image")


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
        raise ImageReadError(path, f"cannot read: {os_reason(e)}") from None
    except (UnicodeError, ValueError):  # a NUL byte, or a character this system's file names cannot hold
        raise ImageReadError(path, f"{unusable_name(path)}; check the list or the name") from None
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
    check_size(path, st.st_size, max_file_size)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ImageReadError(path, "file not found (removed while the run was reading it)") from None
    except PermissionError:
        raise ImageReadError(path, "permission denied (cannot read the file)") from None
    except OSError as e:
        raise ImageReadError(path, f"cannot read: {os_reason(e)}") from None
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
            raise ImageReadError(path, f"cannot read: {os_reason(e)}") from None
    return data[:got]


@contextlib.contextmanager
def opencv_name(path: str) -> Iterator[str]:
    """``path`` as a name OpenCV's video reader and writer can be given: itself where it is UTF-8 text; otherwise
    (OpenCV crashed the process on a name of other bytes) a name in a temporary folder of its own, linked to the
    file where the file's own name is not UTF-8, else to the file's folder (so a file not yet written, a video
    being encoded, gets created under its real name). The links go when the block ends."""
    if is_utf8(path):
        yield path
        return
    import tempfile

    alias = tempfile.mkdtemp(prefix="yolokit-name-")
    try:
        parent, base = os.path.split(os.path.abspath(path))
        if is_utf8(base):
            os.symlink(parent, os.path.join(alias, "folder"))
            yield os.path.join(alias, "folder", base)
        else:
            suffix = os.path.splitext(base)[1]
            link = os.path.join(alias, "file" + (suffix if suffix.isascii() and suffix.isprintable() else ""))
            os.symlink(os.path.abspath(path), link)
            yield link
    finally:
        shutil.rmtree(alias, ignore_errors=True)


def is_utf8(text: str) -> bool:
    """Whether ``text`` is UTF-8 text (no surrogates: bytes of a name that is not UTF-8, kept as the file system
    decodes them)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def unusable_name(path: str) -> str:
    """Why ``path`` cannot name a file on this system: a NUL byte, or characters its file-name encoding lacks."""
    if "\0" in path:
        return "the name holds a NUL byte, which no file name can"
    import sys

    return (f"the name has characters this system's file names cannot hold (encoding "
            f"{sys.getfilesystemencoding()}; set a UTF-8 locale, such as LANG=C.UTF-8)")


def os_reason(e: OSError) -> str:
    if isinstance(e, PermissionError):
        return "permission denied"
    return str(e.strerror or e)




def read_head(path: str, size: int = 4096) -> bytes:
    """The first ``size`` bytes of a regular file (model sniffing); :class:`ImageReadError` for anything else."""
    regular_file(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        if special_kind(os.fstat(fd).st_mode) is not None:
            raise ImageReadError(path, "not a regular file")
        return os.read(fd, size)
    finally:
        os.close(fd)


def content_fingerprint(path: str) -> str | None:
    """What identifies the content of a local model file, or of a model folder (an OpenVINO export: every file in
    it): each file's name, size and CRC-32 (zlib's, at about a gigabyte a second); an ``.xml`` file's ``.bin`` is
    part of it. None for a path that is not a local file or folder, or that cannot be read."""
    if "://" in path or not os.path.exists(path):
        return None
    files = sorted(os.path.join(path, n) for n in os.listdir(path)) if os.path.isdir(path) else [path]
    if path.endswith(".xml") and os.path.isfile(path[:-4] + ".bin"):
        files.append(path[:-4] + ".bin")
    parts = []
    try:
        for f in files:
            if not os.path.isfile(f):
                continue
            crc = 0
            with open(f, "rb") as fh:
                while chunk := fh.read(1 << 22):
                    crc = zlib.crc32(chunk, crc)
            parts.append(f"{os.path.basename(f)}:{os.path.getsize(f)}:{crc:08x}")
    except OSError:
        return None
    return ";".join(parts)
