"""Finding inputs: a file, a folder (recursive), a glob, a ``.txt`` list, image and video URLs, objects in a store
(``s3://bucket/prefix/`` and the other fsspec URLs: :mod:`toolkit.io.store`), a video's frames, and live streams
(``rtsp://``, ``rtmp://``, an ``http(s)://`` URL naming no media file, a webcam index, a ``.streams`` file). Every
entry becomes an input or a failure with its reason; nothing is silently skipped."""

from __future__ import annotations

import bisect
import contextlib
import errno
import fnmatch
import glob as globmod
import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np

from toolkit.errors import InputError
from toolkit.io.files import (
    DEFAULT_MAX_FILE_SIZE,
    ImageReadError,
    is_utf8,
    opencv_name,
    os_reason,
    regular_file,
    special_kind,
)
from toolkit.io.remote import (
    DEFAULT_DEADLINE,
    DEFAULT_TIMEOUT,
    fetch_video,
    is_url,
    url_name,
    url_problem,
    url_suffix,
)
from toolkit.io.store import (
    fetch_object_video,
    filesystem,
    glob_objects,
    is_store_url,
    list_objects,
    local_path,
    outside,
    read_object,
    store_name,
)
from toolkit.io.transfer import FetchContext, FetchLimits, sniff_media
from toolkit.io.videofile import counts_its_frames, cut_short, has_no_video_track, lost_frames

T = TypeVar("T")
IMAGE_SUFFIXES = frozenset({".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm"})
VIDEO_SUFFIXES = frozenset({".asf", ".avi", ".gif", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".ts",
                            ".wmv"})


STREAM_SCHEMES = ("rtsp://", "rtmp://")


@dataclass(frozen=True)
class InputRef:
    """One input: the file (or URL), its output key (relative path below the source, without suffix) and, for a
    video, the frame number (-1 for a whole video not yet expanded). A video or stream frame also names its video's
    key (``video``), the frame rate its annotated video is written at (``fps``) and whether it is live.
    ``content_id``: what identifies the content, where the source knows it (an object store's ETag, a content
    hash); :func:`fingerprint` uses it instead of a local file's size and modification time."""

    path: str
    key: str
    frame: int | None = None
    video: str = ""
    fps: float = 0.0
    live: bool = False
    content_id: str = ""
    frames: int = 0  # a video frame's: how many frames its video is to give (after --vid-stride); 0: not known

    @property
    def name(self) -> str:
        return self.path if self.frame is None or self.frame < 0 else f"{self.path}#frame{self.frame}"


@dataclass
class SourceList:
    """Everything a SOURCE names: readable candidates, and entries that already failed (with reasons)."""

    items: list[InputRef]
    failed: list[tuple[InputRef, str]]
    root: str
    streams: list[InputRef] = field(default_factory=list)  # live streams (read in their own threads)
    notes: list[str] = field(default_factory=list)  # what the run's summary says about the listing
    # each input's place in the listing, by key (items and failures alike): results come back in it
    # (:func:`in_listing_order`); a key without one comes first
    order: dict[str, float] = field(default_factory=dict)
    # folders below a walked SOURCE (a folder, a glob) that hold a yolokit run's records (:func:`holds_run`): the
    # outputs those records list are a run's, not photos, and a run sets them aside
    run_folders: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)


def _kind(path: str) -> str | None:
    suffix = url_suffix(path) if is_url(path) else os.path.splitext(path)[1].lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    return None


def _key(path: str, root: str) -> str:
    if is_url(path):
        return os.path.splitext(url_name(path))[0] or "url"
    if is_store_url(path):
        top = root.rstrip("/") + "/"
        rel = path[len(top):] if root and path.startswith(top) else path.rstrip("/").rsplit("/", 1)[-1]
        return os.path.splitext(rel)[0] or "object"
    rel = os.path.relpath(path, root) if root else os.path.basename(path.rstrip("/" + os.sep) or path)  # "inner/"
    if rel.startswith(".."):
        rel = os.path.basename(path)
    return os.path.splitext(rel)[0]


def list_sources(source: str | os.PathLike[str] | list[str]) -> SourceList:
    """Expand SOURCE into inputs: an image or video file, a folder (recursive, sorted), a glob pattern,
    or a ``.txt`` file listing one path per line. A missing SOURCE raises :class:`InputError`; missing
    or unusable entries inside a folder or list are returned as failures, not raised."""
    failed: list[tuple[InputRef, str]] = []
    runs: list[str] = []  # run folders found below a folder or a glob's fixed part
    if isinstance(source, list):  # each entry as a list file's: a video's frames, a folder or a list refused, ...
        return _from_files([local_path(str(p)) for p in source], "", failed)
    text = local_path(os.fspath(source))
    path = Path(text)
    if not text.strip():
        raise InputError("SOURCE is empty: give an image, a video, a folder, a glob, a .txt list or a stream")
    if is_live(text) and not os.path.lexists(text):  # a folder named 0 stays a folder
        return SourceList([], [], "", _streams([text]))
    if is_url(text):
        problem = url_problem(text)
        if problem is not None:
            raise InputError(f"{text}: {problem}")
        return _from_files([text], "", failed)
    if is_store_url(text):
        return _from_store(text)
    if path.suffix.lower() == ".streams" and os.path.isfile(text):
        try:
            lines = list_lines(path.read_bytes(), name=text)
        except OSError as e:
            raise InputError(f"{text}: cannot read the streams file ({os_reason(e)})") from None
        lines = [ln for ln in lines if ln and not ln.startswith("#")]
        if not lines:
            raise InputError(f"{text}: the streams file lists no stream (one URL or webcam index a line)")
        # a file's relative path from the streams file's folder, as a .txt list reads its lines (it was read from
        # the current folder)
        lines = [str(path.parent / ln) if not ("://" in ln or ln.isdigit() or os.path.isabs(ln))
                 and os.path.lexists(path.parent / ln) else ln for ln in lines]
        streams = _streams(lines)
        odd = [(ref, NOT_A_STREAM) for ref in streams if not _addressable(ref.path)]
        return SourceList([], odd, "", [ref for ref in streams if _addressable(ref.path)])
    if _magic(text) and not os.path.lexists(text):
        # every match that is not a folder: a named pipe or a device is listed and refused by the reader, not
        # silently dropped; keys are below the pattern's fixed part
        root, files = _glob(text, failed, runs)
        if not files and not failed:
            raise InputError(f"{text}: the pattern matches no files")
        found = _from_files(files, root or os.curdir, failed)  # keys below the current folder: x/a, y/a
        found.run_folders = runs
        return found
    problem = _stat_problem(text)
    if problem is not None:
        raise InputError(f"{text}: {problem}")
    if os.path.isdir(text):
        files, hidden = [], 0
        for dirpath, dirnames, filenames in walk_tree(text, text, failed):
            if dirpath != text and holds_run(filenames):
                runs.append(dirpath)
            hidden += sum(d.startswith(".") for d in dirnames)
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for f in filenames:
                full = os.path.join(dirpath, f)
                if f.startswith("."):
                    hidden += _kind(full) is not None
                elif _kind(full) is not None:
                    files.append(full)
                elif os.path.islink(full) and not os.path.exists(full):
                    failed.append((InputRef(full, _key(full, text)), _link_problem(full)))
        files.sort()
        if not files and not failed:
            skipped = f"; {hidden} hidden file(s) or folder(s) skipped, as detect.py skips them" if hidden else ""
            raise InputError(f"{text}: the folder has no images or videos (looked for "
                             f"{', '.join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))}{skipped})")
        found = _from_files(files, text, failed)
        found.run_folders = runs
        if hidden:
            found.notes.append(HIDDEN_NOTE.format(hidden))
        return found
    if path.suffix.lower() == ".txt" and os.path.isfile(text):
        base = path.parent
        try:
            lines = list_lines(path.read_bytes(), name=text)
        except OSError as e:
            raise InputError(f"{text}: cannot read the list file ({os_reason(e)})") from None
        lines = [local_path(ln) for ln in lines]
        files = [str(base / ln) if not (os.path.isabs(ln) or "://" in ln) else ln
                 for ln in lines if ln and not ln.startswith("#")]
        return _from_files(files, "", failed)
    if os.path.isfile(text):
        return _from_files([text], str(path.parent), failed)
    if os.path.exists(text):  # neither a folder nor a regular file: a named pipe, a socket, a device
        if _kind(text) is not None:  # named like an image or video: one input, refused (with the reason) when read
            return _from_files([text], str(path.parent), failed)
        raise InputError(f"{text}: is {special_kind(os.stat(text).st_mode)}, not an image, video, folder or list "
                         f"file")
    if os.path.islink(text):
        raise InputError(f"{text}: {_link_problem(text)}")
    raise InputError(f"{text}: no such file or folder (give an image, a video, a folder, a glob or a .txt list)")


# the records every yolokit run folder holds (toolkit.jobs.manifest writes them)
RUN_RECORDS = ("run.json", "manifest.jsonl")


def holds_run(filenames: Iterable[str]) -> bool:
    """Whether a folder whose files are ``filenames`` is a yolokit run folder (it holds a run's records)."""
    names = set(filenames)
    return all(name in names for name in RUN_RECORDS)


# a folder SOURCE's hidden entries (names starting with '.': macOS's ._photo.jpg companions, .thumbnails/) are not
# inputs, as detect.py's glob and a glob SOURCE leave them out; the summary says how many were skipped
HIDDEN_NOTE = ("{} hidden file(s) or folder(s) in the folder (names starting with '.', such as macOS's ._ files) "
               "were not read, as detect.py skips them; list them in a .txt file to run them")


def _magic(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _stat_problem(path: str) -> str | None:
    """Why ``path`` cannot even be looked at, beyond its absence (which the caller words): None when it can, or
    when it does not exist."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            return "the name is longer than the file system allows (255 bytes a name); check the path"
        if e.errno in (errno.EACCES, errno.EPERM):
            return "permission denied (a folder on the way cannot be searched); check its permissions"
    except ValueError:  # a NUL byte in it
        return "the name holds a NUL byte, which no file name can"
    return None


def _link_problem(path: str) -> str:
    """What is wrong with a symbolic link that leads nowhere."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symbolic link loop (the link leads back to itself); point it at a file or folder"
    return "broken symbolic link (what it points to is gone); fix or remove the link"


def walk_tree(top: str, source: str, failed: list[tuple[InputRef, str]], once: bool = True
          ) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk`` of ``top`` following links to folders, sorted, each folder once (by device and inode: a link
    back up, or two links to one folder, is walked once; with ``once`` False only a link back up is cut, so that
    two names of one folder are both walked, as a glob sees them); a folder below ``top`` that cannot be listed is
    a failure of ``source`` (its images were not read), ``top`` itself an :class:`InputError`."""
    def unlistable(e: OSError) -> None:
        # os.walk skips a folder it cannot list; record it so its images are not silently lost
        where = e.filename if isinstance(e.filename, str) else top
        if os.path.normpath(where) == os.path.normpath(top):
            named = "" if top == source else f" {top}"
            raise InputError(f"{source}: cannot list the folder{named} ({os_reason(e)})")
        key = os.path.relpath(where, top) + os.sep  # a folder's key cannot equal a file's key
        failed.append((InputRef(where, key), f"{os_reason(e)} (cannot list the folder; its images were not read)"))

    seen: set[tuple[int, int]] = set()
    above: dict[str, frozenset[tuple[int, int]]] = {}  # each folder's own and its parents' device and inode
    for dirpath, dirnames, filenames in os.walk(top, onerror=unlistable, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            continue
        me = (st.st_dev, st.st_ino)
        chain = above.get(os.path.dirname(dirpath), frozenset())
        if me in (seen if once else chain):  # a link back up (a loop), or to a folder walked already
            dirnames[:] = []
            continue
        seen.add(me)
        above[dirpath] = chain | {me}
        dirnames.sort()
        yield dirpath, dirnames, sorted(filenames)


def _glob(pattern: str, failed: list[tuple[InputRef, str]], runs: list[str] | None = None) -> tuple[str, list[str]]:
    """The pattern's fixed part (the folders before its first wildcard; "" for none), and the paths that glob's
    recursive form matches with ``pattern`` (``**``: any folders; a name starting with '.' only where the pattern's
    part starts with '.'), but folders apart, found by walking from its fixed part as a folder SOURCE is walked
    (:func:`walk_tree`): glob followed a link loop until the path grew too long, listing an image once per turn (or for
    minutes), and skipped a folder it could not list without a word."""
    parts = pattern.split(os.sep)
    fixed = next(i for i, part in enumerate(parts) if _magic(part))
    base = os.sep.join(parts[:fixed]) if fixed else ""
    base = base or (os.sep if pattern.startswith(os.sep) else "")
    rest = parts[fixed:]
    if any(part in (os.curdir, os.pardir) for part in rest):  # "photos/*/../*.jpg": glob's own reading, rare
        return base, sorted(p for p in globmod.glob(pattern, recursive=True) if not os.path.isdir(p))
    top = base or os.curdir
    if not os.path.isdir(top):
        return base, []
    out = []
    for dirpath, dirnames, filenames in walk_tree(top, pattern, failed, once=False):
        rel = [] if dirpath == top else os.path.relpath(dirpath, top).split(os.sep)
        if runs is not None and rel and holds_run(filenames):  # ``runs``: the run folders below the fixed part
            runs.append(dirpath)
        # only folders a match can be in: no hidden one under **, no sibling the pattern does not name, and so no
        # failure for a folder the pattern never reaches
        dirnames[:] = [d for d in dirnames if _fits([*rel, d], rest, whole=False)]
        for f in filenames:
            if _fits([*rel, f], rest, whole=True):
                out.append(os.path.join(dirpath, f) if base else os.path.join(*rel, f))
    return base, sorted(out)


def _fits(names: list[str], parts: list[str], whole: bool) -> bool:
    """Whether a path's ``names`` match a glob's ``parts`` (``whole``; ``**`` matching any number of names), or,
    for folders, can begin a path that matches them with a file still to come."""
    if not names:
        return all(part == "**" for part in parts) if whole else bool(parts)
    if not parts:
        return False
    if parts[0] == "**":
        return _fits(names, parts[1:], whole) or (not names[0].startswith(".") and _fits(names[1:], parts, whole))
    return (not names[0].startswith(".") or parts[0].startswith(".")) and \
        fnmatch.fnmatchcase(names[0], parts[0]) and _fits(names[1:], parts[1:], whole)


class _Taken(set[str]):
    """The keys given so far, and for each numbered series (``photo.png_2``, ``photo.png_3`` ...) the next number:
    20,000 inputs of one name counted up from 2 for each, minutes before the first result."""

    def __init__(self, keys: Iterable[str] = ()) -> None:
        super().__init__(keys)
        self.next: dict[str, int] = {}


def _unique_key(key: str, path: str, taken: _Taken) -> str:
    """``key``, or when another input already has it (``photo.jpg`` beside ``photo.png``, or a list naming one file
    twice) ``photo.png`` then ``photo.png_2`` ...: each input gets its own outputs and manifest line. The key is
    first spelt as the run folder will name its outputs (a store's ``a//b`` and ``./c``, a file named ``a\\b``: the
    outputs of ``a/b`` and ``c``, which two inputs wrote over each other, both recorded)."""
    key = store_name(key)
    out = key
    if out in taken:
        base = key + os.path.splitext(path)[1]
        out, n = base, taken.next.get(base, 2)
        while out in taken:
            out = f"{base}_{n}"
            n += 1
        taken.next[base] = n
    taken.add(out)
    return out


# a store object's key with a ".." part: its outputs would be named outside the run folder (an annotated video was
# written there; an image's output stopped the whole run)
ESCAPING_KEY = ("its key has a '..' part, which would name its outputs outside the run folder; rename the object "
                "(or copy it to a key without '..')")


def _from_files(files: list[str], root: str, failed: list[tuple[InputRef, str]]) -> SourceList:
    """The inputs ``files`` name (keys below ``root``; "": file names), with ``failed``, the entries listing found
    unusable before (a folder walk's or a glob's: placed among ``files``, which are sorted there, by path)."""
    items: list[InputRef] = []
    taken = _Taken(ref.key for ref, _ in failed)
    order = {ref.key: bisect.bisect_left(files, ref.path) - 0.5 for ref, _ in failed}
    at: list[int] = []  # each item's place in files
    for i, f in enumerate(files):
        ref = InputRef(f, _unique_key(_key(f, root), f, taken))
        order[ref.key] = i
        if outside(ref.key):
            failed.append((ref, ESCAPING_KEY))
        elif is_url(f) and (problem := url_problem(f)) is not None:
            failed.append((ref, problem))
        elif is_live(f) and not (f.isdigit() and os.path.lexists(f)):  # a file named 7 is a file
            failed.append((ref, "a live stream: give it as SOURCE, or list streams in a .streams file"))
        elif "://" in f and not is_url(f) and not is_store_url(f):
            failed.append((ref, f"not a URL yolokit reads ({f.split('://')[0]}://); use http(s), rtsp, rtmp, a "
                                f"store's URL (s3://...) or the file's path"))
        elif "://" not in f and os.path.isdir(f):
            failed.append((ref, "a folder, named in a list: give the folder as SOURCE, or list its images"))
        elif "://" not in f and os.path.islink(f) and not os.path.exists(f):  # a loop read "Too many levels of ..."
            failed.append((ref, _link_problem(f)))
        elif _kind(f) is None and os.path.splitext(f)[1].lower() in (".txt", ".streams"):
            failed.append((ref, "a list named in a list is not read: give it as SOURCE, or copy its lines in"))
        elif _kind(f) is None:
            failed.append((ref, f"not an image or video file type ({os.path.splitext(f)[1] or 'no suffix'})"))
        elif _kind(f) == "video":
            items.append(InputRef(f, ref.key, frame=-1))  # expanded to frames when read
            at.append(i)
        else:
            items.append(ref)
            at.append(i)
    items = _apart_from_frames(items, taken)  # may give an image another key: its place goes with it
    order.update((r.key, i) for r, i in zip(items, at, strict=True))
    return SourceList(items, failed, root, order=order)


def in_listing_order(sources: SourceList, produced: Iterable[T], key_of: Callable[[T], str],
                     failure: Callable[[InputRef, str], T]) -> Iterator[T]:
    """``produced`` (what the run made of ``sources.items``, in their order) with each entry that failed while
    listing (``sources.failed``, made into one by ``failure``) in its place: a list's third line that names a folder
    comes third, not first. ``key_of``: the key of the input a product is of (a video frame's: its video's)."""
    if not sources.failed:
        yield from produced
        return
    order = sources.order
    pending = deque(sorted(sources.failed, key=lambda f: order.get(f[0].key, -1.0)))
    for item in produced:
        at = order.get(key_of(item))
        while pending and at is not None and order.get(pending[0][0].key, -1.0) < at:
            yield failure(*pending.popleft())
        yield item
    for ref, reason in pending:
        yield failure(ref, reason)


def _apart_from_frames(items: list[InputRef], taken: _Taken) -> list[InputRef]:
    """``items`` with an image keyed as a video's frame would be (``a_1.jpg`` beside ``a.avi``, whose first frame is
    ``a_1``, as detect.py names it) keyed apart (``a_1.jpg``): the two wrote one label file, one's boxes lost."""
    videos = {r.key for r in items if r.frame == -1}
    if not videos:
        return items
    out = []
    for r in items:
        stem, sep, number = r.key.rpartition("_")
        if r.frame is None and sep and number.isdigit() and stem in videos:
            r = replace(r, key=_unique_key(r.key, r.path, taken))
        out.append(r)
    return out


UNDECODABLE = "cannot decode this frame"
MAX_MISSES = 10  # failed grabs in a row before a video is taken to have ended
# a frame the demuxer skips (toolkit.io.videofile); "re-copy or re-export the file" marks it as lasting for --resume
LOST_FRAME = "this frame's chunk in the AVI file is damaged and cannot be read; re-copy or re-export the file"
# a frame past the end of a file cut short (toolkit.io.videofile.cut_short); lasting too
CUT_SHORT = ("the video file ends before this frame (cut short, as by an interrupted copy or download); re-copy or "
             "re-export the file")
# ... and where the reader ends at the cut without a count of what is missing (a GIF): the frames from there on
CUT_SHORT_REST = ("the video file ends here, before its container's end (cut short, as by an interrupted copy or "
                  "download): this frame and any after it are lost; re-copy or re-export the file")
# ... and a video that cannot be opened at all for it (an MP4 or MOV whose index came last)
CUT_SHORT_VIDEO = ("cannot open the video: the file ends before its declared end (cut short, as by an interrupted "
                   "copy or download); re-copy or re-export the file")
LIST_LIMIT = 64 << 20  # bytes a .txt list in a store may have


def list_lines(data: bytes, encoding: str | None = None, name: str = "the list", any_break: bool = False) -> list[str]:
    """The lines of a list file (``.txt``, ``.streams``), stripped of spaces, tabs and a Windows line end: decoded
    as this system decodes file names (``encoding=None``: UTF-8 on Linux and macOS, any other byte kept as it is, so
    every name the list holds is found again), or in ``encoding`` (object keys: UTF-8) with bad bytes replaced. A
    UTF-8 byte-order mark, which Windows editors write first, is dropped; a UTF-16 one (Notepad's "Unicode") decodes
    the list as UTF-16. Only a line feed ends a line: the other characters ``str.splitlines`` breaks at (form feed,
    U+2028, ...) can be part of a file's name. An image or video, or data of which NUL bytes make a tenth, is not a
    text list: an :class:`InputError` naming ``name``. ``any_break``: every line break ``str.splitlines`` knows
    ends a line (a carriage return alone too), as val.py reads label files and a dataset's image lists."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            data = os.fsencode(data.decode("utf-16"))
        except UnicodeDecodeError:
            raise InputError(f"{name}: starts as a UTF-16 text but is not one; save it as UTF-8 text, one path a "
                             f"line") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    head = data[:4096]
    binary = any(b < 32 and b not in b"\t\n\r\f\v" for b in head)  # a list of GOPR0001.JPG lines read as MPEG-TS
    kind = sniff_media(head) if binary else None
    if kind in ("image", "video") or data.count(b"\0") * 10 > len(data):  # a NUL in one name: that entry fails
        what = f"it is {'an image' if kind == 'image' else 'a video'}" if kind else "it holds NUL bytes: binary data"
        raise InputError(f"{name}: not a text list ({what}); give a text file, one path a line, saved as UTF-8")
    text = os.fsdecode(data) if encoding is None else data.decode(encoding, errors="replace")
    return [ln.strip(" \t\r") for ln in (text.splitlines() if any_break else text.split("\n"))]


def _from_store(url: str) -> SourceList:
    """The inputs a store URL names: an object; every image and video object below a prefix (recursively, in key
    order, from the store's listing as it streams; other objects are ignored, as other files in a folder); the
    objects a pattern matches; or the entries of a ``.txt`` list object (relative ones below the list's prefix).
    Each object found by listing carries its ETag (``content_id``), the fingerprint a resume compares."""
    failed: list[tuple[InputRef, str]] = []
    if not url.split("://", 1)[1].strip("/"):
        raise InputError(f"{url}: names no bucket or folder; give {url.split('://', 1)[0]}://BUCKET/PREFIX")
    if any(ch in url.split("://", 1)[1] for ch in "*?[") and not _object_named(url):  # photo[1].jpg is a name
        objects = glob_objects(url)
        if not objects:
            raise InputError(f"{url}: the pattern matches no objects")
        root = url.split("*")[0].split("?")[0].split("[")[0].rsplit("/", 1)[0]
        found = _from_files([o.url for o in objects], root, failed)
        etags = {o.url: o.content_id for o in objects}  # a resume's fingerprints, as a prefix's listing gives them
        found.items = [replace(r, content_id=etags.get(r.path, "")) for r in found.items]
        return found
    if url.lower().endswith(".txt"):
        base = url.rsplit("/", 1)[0]
        lines = list_lines(read_object(url, LIST_LIMIT), encoding="utf-8", name=url)
        # a line is an object below the list's prefix, a URL, or a file:// URL: the local path it names, as in a
        # list on disk (it was refused as "not a URL yolokit reads")
        return _from_files([local_path(ln) if ln.lower().startswith("file://") else ln if "://" in ln
                            else f"{base}/{ln.lstrip('/')}" for ln in lines if ln and not ln.startswith("#")], "",
                           failed)
    root = url.rstrip("/")
    items: list[InputRef] = []
    taken = _Taken()
    order: dict[str, float] = {}
    objects = list(list_objects(url))
    runs = _store_runs(root, [o.url for o in objects])
    aside = 0
    for obj in objects:
        kind = _kind(obj.url)
        if kind is None:
            continue
        if runs and any(obj.url.startswith(r + "/") for r in runs):
            aside += 1
            continue
        key = _unique_key(_key(obj.url, root), obj.url, taken)
        order[key] = len(order)
        if outside(key):
            failed.append((InputRef(obj.url, key), ESCAPING_KEY))
            continue
        items.append(InputRef(obj.url, key, -1 if kind == "video" else None, content_id=obj.content_id))
    if not items and not failed and aside:
        raise InputError(f"{url}: its {aside} image(s) are all below yolokit run folders ({runs[0]}, ...): a run's "
                         f"outputs; give a run folder itself as SOURCE to read them")
    if not items and not failed:
        raise InputError(f"{url}: no images or videos there (looked for "
                         f"{', '.join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))}; is the bucket and prefix right?)")
    places = [order[r.key] for r in items]
    items = _apart_from_frames(items, taken)
    order.update((r.key, i) for r, i in zip(items, places, strict=True))
    found = SourceList(items, failed, root, order=order)
    if aside:
        found.notes.append(f"{aside} object(s) below {len(runs)} yolokit run folder(s) in SOURCE ({runs[0]}, ...) "
                           f"were not read: a run's outputs, not photos; give a run folder itself as SOURCE to read "
                           f"them")
    return found


def _object_named(url: str) -> bool:
    """Whether ``url`` names an object as it is spelt (a key holding ``[``, ``*`` or ``?``), as a local path with
    such characters is a file before it is a pattern."""
    try:
        fs, path = filesystem(url)
        return bool(fs.isfile(path))
    except Exception:  # noqa: BLE001 - any failure: read as a pattern, whose own errors are worded
        return False


def _store_runs(root: str, urls: list[str]) -> list[str]:
    """The run folders below ``root`` in a store's listing ``urls``: prefixes holding a run's ``run.json`` and its
    records (``.yolokit/``, the store's journal; or ``manifest.jsonl``). ``--project s3://b/photos/runs`` run twice
    read the first run's annotated images and crops as photos (4 inputs for 2, outputs of outputs below)."""
    present = set(urls)
    runs = []
    for u in urls:
        if u.endswith("/run.json") and u.startswith(root + "/") and u != root + "/run.json":  # SOURCE's own: whole
            prefix = u[: -len("/run.json")]
            if prefix + "/manifest.jsonl" in present or any(v.startswith(prefix + "/.yolokit/") for v in urls):
                runs.append(prefix)
    return runs


def fingerprint(ref: InputRef) -> str:
    """What tells a resumed run whether an input changed since it was recorded: the ``content_id`` its source gave
    (an object's ETag), else a local file's size and modification time (``SIZE:MTIME_NS``, the link's target for a
    symbolic link). Empty when nothing can be known: a URL or an object named in a list, or a path that cannot be
    reached now."""
    if ref.content_id:
        return ref.content_id
    if is_url(ref.path) or is_store_url(ref.path):
        return ""
    try:
        st = os.stat(ref.path)
    except (OSError, ValueError):
        return ""
    return f"{st.st_size}:{st.st_mtime_ns}"


def is_live(text: str) -> bool:
    """A live stream: ``rtsp://``, ``rtmp://``, an ``http(s)://`` URL naming no image or video file (as YOLOv5's
    detect.py decides), or a webcam index (``0``)."""
    low = text.lower()
    return text.isdigit() or low.startswith(STREAM_SCHEMES) or (is_url(text) and _kind(text) is None)


NOT_A_STREAM = ("not a stream address (a URL such as rtsp://host/path, or a webcam index such as 0) nor a file; "
                "fix the line")


def _addressable(line: str) -> bool:
    """Whether a ``.streams`` line can name a stream: a webcam index, a URL, or a file that exists."""
    return line.isdigit() or "://" in line or os.path.exists(line)


def _streams(lines: list[str]) -> list[InputRef]:
    taken = _Taken()
    refs = []
    for ln in lines:
        if not is_utf8(ln):  # bytes no address holds (OpenCV's reader crashed the process on them)
            raise InputError(f"{repr(os.fsencode(ln))[2:-1]}: not a stream address (it holds bytes that are not "
                             f"UTF-8 text); fix the line")
        base = f"webcam{ln}" if ln.isdigit() else os.path.splitext(url_name(ln) if "://" in ln
                                                                   else os.path.basename(ln))[0]
        refs.append(InputRef(ln, _unique_key(base or "stream", ln, taken), live=True))
    return refs


def iter_video(ref: InputRef, stride: int = 1, max_bytes: int = DEFAULT_MAX_FILE_SIZE,
               timeout: float = DEFAULT_TIMEOUT, deadline: float = DEFAULT_DEADLINE
               ) -> Iterator[tuple[InputRef, np.ndarray | None, str | None]]:
    """Every ``stride``-th frame of a video as (ref, frame, None), or (ref, None, reason) for an unreadable
    stretch or file (see :func:`video_frames`). Only a regular file is opened (a named pipe named .mp4 would block
    the decoder); a URL is downloaded first, here (within ``max_bytes``, ``timeout`` s of silence and ``deadline``
    s in all; a run downloads its videos ahead, in its download pool: :mod:`toolkit.io.downloads`)."""
    if is_url(ref.path) or is_store_url(ref.path):
        fetch = fetch_video if is_url(ref.path) else fetch_object_video
        try:
            got = fetch(ref.path, FetchContext(FetchLimits(max_bytes, timeout, deadline)))
        except ImageReadError as e:
            yield ref, None, e.reason
            return
        try:
            yield from video_frames(ref, str(got.path), stride)
        finally:
            got.close()
        return
    try:
        regular_file(ref.path)
    except ImageReadError as e:
        yield ref, None, e.reason.replace("not an image file", "not a video file")
        return
    yield from video_frames(ref, ref.path, stride)


def video_frames(ref: InputRef, path: str, stride: int) -> Iterator[tuple[InputRef, np.ndarray | None, str | None]]:
    """The frames of the video file at ``path`` (``ref``'s own file, or its download). Frames are numbered as
    YOLOv5's detect.py numbers them with ``--vid-stride``: it reads ``stride`` frames and keeps the last, counting
    kept frames from 1 (keys ``<video>_1``, ``<video>_2``...); a frame's ``frame`` is its index in the video.

    A frame that cannot be read fails as itself, and the frames after it keep their numbers, also where OpenCV's
    reader passes over frames without a word and hands on a later one in their place: an AVI frame whose chunk
    header is damaged (found from the file's index: :func:`toolkit.io.videofile.lost_frames`), and the frames a
    decoder drops after a damaged one (an H.264 frame whose references are gone), told by the next frame's
    timestamp where the video's timestamps kept to its frame rate until then (a variable-frame-rate video is
    numbered as the reader hands its frames on, as detect.py numbers them). Frames the reader cannot give after
    the last one it gave fail, every one up to the count, where the file ends before its container's declared end
    (:func:`toolkit.io.videofile.cut_short`: an interrupted copy) or the container records its frame count
    (:func:`toolkit.io.videofile.counts_its_frames`); elsewhere the count is OpenCV's estimate from the duration,
    and the video ends with its last frame. A video that opens but gives no frame at all fails as a whole
    (:data:`NO_FRAMES`)."""
    with opencv_name(path) as name:
        given = 0
        for item in _video_frames(ref, path, name, stride):
            given += 1
            yield item
    if not given:  # it gave frames, fewer than the stride: the video was in no list at all
        yield ref, None, (f"the video has fewer frames than --vid-stride {stride}, so no frame of it is kept; lower "
                          f"--vid-stride")


NO_FRAMES = ("the video gives no frame that can be decoded (damaged, or frames larger than the decoder takes); "
             "re-copy or re-export the file")


def _video_frames(ref: InputRef, path: str, name: str, stride: int
                  ) -> Iterator[tuple[InputRef, np.ndarray | None, str | None]]:
    """:func:`video_frames` of the file at ``path``, opened by OpenCV as ``name``."""
    with contextlib.suppress(OSError):
        if os.path.getsize(path) == 0:
            yield ref, None, "empty file (0 bytes)"
            return
    cap = cv2.VideoCapture(name)
    if not cap.isOpened():
        yield ref, None, (CUT_SHORT_VIDEO if cut_short(path) else NO_VIDEO_TRACK if has_no_video_track(path)
                          else "cannot open the video (corrupt or unsupported codec)")
        return
    try:
        native = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        native = native if native > 0 and native == native else 0.0
        fps = native / stride
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or 0
        lost = lost_frames(path, total)  # an AVI's frames the demuxer skips unseen (their chunk header damaged)
        # the file's number of the n-th frame the demuxer hands on (timestamps count those, in an AVI)
        handed = [k for k in range(total) if k not in lost] if lost else None
        n = 0  # the number of the next frame
        pending: list[int] = []  # the numbers of the grabs that failed since the last frame read
        timed = native > 0  # every frame so far had the timestamp its number gives at the frame rate
        grabbed = False

        def frame_ref(index: int) -> InputRef:
            return InputRef(ref.path, f"{ref.key}_{(index + 1) // stride}", index, ref.key, fps, frames=total // stride)

        def failed(numbers: Iterable[int], reason: str = UNDECODABLE) -> Iterator[tuple[InputRef, None, str]]:
            return ((frame_ref(k), None, reason) for k in numbers if (k + 1) % stride == 0)

        while True:
            if n in lost:  # the reader hands on the next frame in its place: this one is reported as itself
                yield from failed(pending)
                pending = []
                yield from failed([n], LOST_FRAME)
            elif cap.grab():
                grabbed = True
                at = _frame_number(cap, native, handed) if timed else None
                if pending:  # a corrupt stretch: its frames fail, the one read now keeps its number
                    if at is not None and at >= pending[0]:  # the frames the failed grabs stood for, and any the
                        yield from failed(range(pending[0], at))  # decoder dropped after them
                        n = at
                    else:
                        timed = False
                        yield from failed(pending)
                    pending = []
                elif timed and at != n:
                    timed = False  # timestamps that leave the frame rate: frames counted as they come
                if (n + 1) % stride == 0:
                    ok, frame = cap.retrieve()
                    yield (frame_ref(n), frame, None) if ok else (frame_ref(n), None, UNDECODABLE)
            elif total and n < total and len(pending) < MAX_MISSES:  # a corrupt stretch, or the video's end
                pending.append(n)
            else:
                break
            n += 1
        if not grabbed and not lost:  # it opened, and not one frame came out of it
            yield ref, None, CUT_SHORT_VIDEO if cut_short(path) else NO_FRAMES
        elif pending:  # the reader gave up before the count: where the frames are missing, every one fails
            short = cut_short(path)
            if short or counts_its_frames(path):
                gone = list(failed(range(pending[0], total), CUT_SHORT if short else UNDECODABLE))
                yield from gone
                if short and not gone:  # the count ends at the cut (a GIF's): the first frame kept from there on
                    yield frame_ref(_kept(pending[0], stride)), None, CUT_SHORT_REST
        elif cut_short(path):  # it ended where the file does, short of the container's end (a cut GIF): the
            yield frame_ref(_kept(n, stride)), None, CUT_SHORT_REST  # frames past it are unknown
    finally:
        cap.release()


NO_VIDEO_TRACK = "the file has no video track (audio only, or no tracks at all); give a video with pictures"


def _kept(n: int, stride: int) -> int:
    """The first frame from number ``n`` on that ``--vid-stride`` keeps (detect.py keeps every stride-th)."""
    return n + (stride - (n + 1) % stride) % stride


def _frame_number(cap: cv2.VideoCapture, fps: float, handed: list[int] | None) -> int | None:
    """The number of the frame ``cap`` just grabbed, from its timestamp at ``fps`` (mapped through ``handed`` in an
    AVI with frames its demuxer skips); None without a usable timestamp."""
    ms = float(cap.get(cv2.CAP_PROP_POS_MSEC))
    if math.isnan(ms) or ms < 0:
        return None
    n = round(ms * fps / 1000)
    if handed is not None:
        return handed[n] if n < len(handed) else None
    return n
