"""Finding inputs: a file, a folder (recursive), a glob, a ``.txt`` list, a video's frames. Every entry becomes an
input or a failure with its reason; nothing is silently skipped."""

from __future__ import annotations

import glob as globmod
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from toolkit.errors import InputError
from toolkit.io.files import ImageReadError, os_reason, regular_file, special_kind

IMAGE_SUFFIXES = frozenset({".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm"})
VIDEO_SUFFIXES = frozenset({".asf", ".avi", ".gif", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".ts",
                            ".wmv"})


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
                raise InputError(f"{text}: cannot list the folder ({os_reason(e)})")
            key = os.path.relpath(where, text) + os.sep  # a folder's key cannot equal a file's key
            failed.append((InputRef(where, key), f"{os_reason(e)} (cannot list the folder; its images were "
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
            raise InputError(f"{text}: cannot read the list file ({os_reason(e)})") from None
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
