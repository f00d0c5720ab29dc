"""What a video file's own structure says, read before a decoder sees it.

OpenCV's reader (FFmpeg) hands frames on one after another and says nothing of the frames it passes over, and its
frame count is, for some containers, a guess. Three facts read from the file fill the gaps:

* :func:`lost_frames`: the frames of an AVI file that its demuxer will skip without a word. FFmpeg's AVI demuxer
  reads the chunks of the ``movi`` list one after another; a chunk whose header is damaged (its four-character tag
  or its size) is passed over as it resynchronises on the next valid header, and the next frame is handed on in its
  place, its timestamp counting the frames handed on, not the file's. Counted as they come, every later frame would
  be numbered one too low. The file's ``idx1`` index lists every chunk, its tag, offset and size: a video chunk the
  index lists whose header in the file does not say the same is one the demuxer skips (checked on OpenCV 4.11 and 5.1:
  a tag or a size zeroed, or both, each skip exactly that frame). Only the RIFF headers, the stream headers, the
  index and eight bytes at each indexed offset (through a memory map) are read, so a long video costs a few
  milliseconds. An index that cannot be trusted gives no answer (an empty set) rather than a wrong one: no ``idx1``
  (OpenDML files past 1 GB index themselves otherwise), offsets that match the file nowhere, or an index that does
  not list as many video frames as the reader counts.
* :func:`counts_its_frames`: whether the container records how many frames the video has (an MP4 or MOV sample
  table, an AVI), so that frames the reader cannot give at the end are missing. Elsewhere (Matroska and WebM, ASF,
  MPEG transport streams, fragmented MP4) OpenCV estimates the count from the file's duration, which is the longest
  stream's: a clip whose sound runs a second past its pictures is "missing" ten frames at 10 fps that it never had.
* :func:`cut_short`: whether the file ends before the end its container declares (a copy or download cut off): an
  AVI's RIFF chunks, an MP4 or MOV's top-level boxes, a Matroska or WebM file's Segment. Then the frames after the
  last one the reader gives are missing, whatever the container says of their count; MPEG-TS and a live recording's
  Matroska Segment of unknown size declare no end, so a cut there is not seen.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from toolkit.io.isobmff import box_at

MAX_BOXES = 4096  # ISO BMFF boxes walked before giving up
MAX_TOP_CHUNKS = 4096  # top-level chunks walked before giving up (a real AVI has a handful)
MAX_HEADER_BYTES = 1 << 20  # the hdrl list (stream headers) read at most
MAX_INDEX_BYTES = 256 << 20  # the idx1 index read at most (16 bytes an entry: 16 million chunks)
VIDEO_TYPES = (b"dc", b"db")  # compressed and uncompressed video chunks
EBML = b"\x1aE\xdf\xa3"  # the first element of a Matroska or WebM file
SEGMENT = b"\x18\x53\x80\x67"  # the Matroska element that holds everything else


def lost_frames(path: str | Path, frames: int = 0) -> frozenset[int]:
    """The 0-based numbers of the first video stream's frames in the AVI file at ``path`` that its index lists but
    whose chunk header in the file is damaged (so that the demuxer skips them). ``frames``: how many frames the
    reader says the video has (0: unknown); an index listing another number is not used. Empty for a file that is
    not an AVI, has no usable index, or has no damaged chunk; never raises for the file's content."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if not is_avi(head):
                return frozenset()
            size = f.seek(0, 2)
            layout = _layout(f, size)
            if layout is None:
                return frozenset()
            movi, index_at, index_size, stream = layout
            f.seek(index_at)
            index = f.read(min(index_size, MAX_INDEX_BYTES))
        return _damaged(path, size, movi, index, stream, frames)
    except (OSError, ValueError, struct.error):
        return frozenset()


def _layout(f: BinaryIO, size: int) -> tuple[int, int, int, int] | None:
    """(the ``movi`` list's four-character code's offset, the index's data offset, its size, the video stream's
    number) of the first RIFF list, or None when one of them is missing."""
    read, seek = f.read, f.seek
    movi = index_at = index_size = stream = -1
    i = 12
    for _ in range(MAX_TOP_CHUNKS):
        if i + 8 > size:
            break
        seek(i)
        tag, n = struct.unpack("<4sI", read(8))
        if tag == b"LIST":
            kind = read(4)
            if kind == b"movi" and movi < 0:
                movi = i + 8
            elif kind == b"hdrl" and stream < 0:
                stream = _video_stream(read(min(max(0, n - 4), MAX_HEADER_BYTES)))
        elif tag == b"idx1":
            index_at, index_size = i + 8, n
        i += _riff_span(n)
    if min(movi, index_at, stream) < 0:
        return None
    return movi, index_at, index_size, stream


def _video_stream(hdrl: bytes) -> int:
    """The number of the first video stream (``strh`` type ``vids``) of an ``hdrl`` list's content; -1 for none."""
    i, number = 0, 0
    while i + 12 <= len(hdrl):
        tag, n = struct.unpack_from("<4sI", hdrl, i)
        if tag == b"LIST" and hdrl[i + 8:i + 12] == b"strl":
            if hdrl[i + 12:i + 16] == b"strh" and hdrl[i + 20:i + 24] == b"vids":
                return number
            number += 1
        i += _riff_span(n)
    return -1


def _damaged(path: str | Path, size: int, movi: int, index: bytes, stream: int, frames: int) -> frozenset[int]:
    entries = np.frombuffer(index, dtype="<u4", count=len(index) // 16 * 4).reshape(-1, 4)  # tag, flags, offset, size
    tags = [int.from_bytes(f"{stream:02d}".encode() + t, "little") for t in VIDEO_TYPES]
    video = entries[np.isin(entries[:, 0], tags)]
    if not len(video) or (frames and len(video) != frames):
        return frozenset()
    data = np.memmap(path, dtype=np.uint8, mode="r", shape=(size,))
    # offsets count from the 'movi' code (as most writers put them) or from the file's start: the one under which
    # the first frames' headers match
    first = video[:16]
    base = max((movi, 0), key=lambda b: int(_matching(data, first, b).sum()))
    ok = _matching(data, video, base)
    if not ok[:len(first)].any():
        return frozenset()  # the offsets match the file nowhere: not an index to go by
    return frozenset(int(k) for k in np.flatnonzero(~ok))


def _matching(data: np.ndarray, video: np.ndarray, base: int) -> np.ndarray:
    """Whether each indexed chunk's header in ``data`` (offsets from ``base``) carries the index's tag and size."""
    at = video[:, 2].astype(np.int64) + base
    inside = (at >= 0) & (at + 8 <= len(data))
    heads = np.zeros((len(video), 8), np.uint8)
    heads[inside] = data[at[inside, None] + np.arange(8)]
    expected = np.ascontiguousarray(video[:, [0, 3]].astype("<u4")).view(np.uint8)  # the tag, then the size
    return inside & (heads == expected).all(axis=1)


def counts_its_frames(path: str | Path) -> bool:
    """Whether the video file at ``path`` records its frame count: an AVI, or an ISO BMFF file (MP4, MOV, M4V,
    3GP) whose ``moov`` box holds the sample tables (not a fragmented MP4, whose samples are listed in fragments).
    False for every other container and for anything unreadable."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if is_avi(head):
                return True
            if head[4:8] != b"ftyp":
                return False
            size = f.seek(0, 2)
            moov = _box(f, 0, size, b"moov")
            return moov is not None and _box(f, moov[0], moov[1], b"mvex") is None
    except (OSError, ValueError, struct.error):
        return False


def cut_short(path: str | Path) -> bool:
    """Whether the video file at ``path`` ends before the end its container declares: an AVI whose RIFF chunks (the
    first and any OpenDML extension) run past the file's end, an ISO BMFF file (MP4, MOV) whose top-level boxes do,
    a Matroska or WebM file shorter than its Segment's declared size, a GIF without its trailer. False for a
    container that declares no end (MPEG-TS, FLV, a Matroska Segment of unknown size) and for anything unreadable."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
            size = f.seek(0, 2)
            if is_avi(head):
                return _declared_end(f, size, _riff_length, MAX_TOP_CHUNKS) > size
            if head[4:8] == b"ftyp":
                return _declared_end(f, size, _box_length, MAX_BOXES) > size
            if head[:4] == EBML:
                end = _segment_end(head)
                return end is not None and end > size
            if head[:6] in (b"GIF87a", b"GIF89a"):  # a GIF ends with its trailer byte, ';' (zero bytes may follow)
                f.seek(max(0, size - 256))
                return not f.read().rstrip(b"\0").endswith(b";")
    except (OSError, ValueError, struct.error):
        pass
    return False


def _declared_end(f: BinaryIO, size: int, length: Callable[[bytes, int], int | None], most: int) -> int:
    """Where the file's top-level elements declare they end, walked one after another (at most ``most``) until one
    runs to or past the file's end or is not one: ``length(its first 16 bytes, the bytes left)``."""
    pos = 0
    for _ in range(most):
        f.seek(pos)
        n = length(f.read(16), size - pos)
        if n is None:
            break
        pos += n
        if pos >= size:
            break
    return pos


def _riff_length(head: bytes, left: int) -> int | None:
    """The length of the RIFF chunk (the first one, or an OpenDML extension) ``head`` starts."""
    if len(head) < 8 or head[:4] != b"RIFF":
        return None
    n = struct.unpack_from("<I", head, 4)[0]
    return _riff_span(n)


def _riff_span(n: int) -> int:
    """The bytes a RIFF chunk with ``n`` bytes of content takes: its 8-byte header, the content, and a pad byte
    after content of odd size."""
    return 8 + n + (n & 1)


def _box_length(head: bytes, left: int) -> int | None:
    """The length of the ISO BMFF box ``head`` starts."""
    box = box_at(head, 0, left)
    return None if box is None else box[2]


def _segment_end(head: bytes) -> int | None:
    """Where a Matroska file's Segment ends, from its first bytes (the EBML header, then the Segment's ID and size);
    None where the size is unknown (a live recording's) or the bytes are not such a header."""
    header = _vint(head, 4)
    if header is None:
        return None
    at = 4 + header[1] + header[0]
    if head[at:at + 4] != SEGMENT:
        return None
    seg = _vint(head, at + 4)
    if seg is None or seg[0] < 0:
        return None
    return at + 4 + seg[1] + seg[0]


def _vint(buf: bytes, pos: int) -> tuple[int, int] | None:
    """(value, length) of the EBML variable-size integer at ``pos`` (value -1: all its bits set, "unknown size");
    None where it does not fit or is longer than eight bytes."""
    if pos >= len(buf) or buf[pos] == 0:
        return None
    length = 9 - buf[pos].bit_length()
    if pos + length > len(buf):
        return None
    bits = 7 * length
    value = int.from_bytes(buf[pos:pos + length], "big") & ((1 << bits) - 1)
    return (-1 if value == (1 << bits) - 1 else value), length


def _box(f: BinaryIO, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    """(content start, content end) of the first box of type ``kind`` among the boxes in ``[start, end)``."""
    i = start
    for _ in range(MAX_BOXES):
        f.seek(i)
        box = box_at(f.read(16), 0, end - i)
        if box is None:
            return None
        tag, content, box_end = box
        if tag == kind:
            return i + content, min(i + box_end, end)
        i += box_end
    return None


MAX_MOOV_BYTES = 64 << 20  # the moov box read at most, to look at its tracks


def has_no_video_track(path: str | Path) -> bool:
    """Whether the file at ``path`` is an MP4 or MOV whose movie holds no video track (an audio-only .mp4, or one
    with no tracks at all): OpenCV's "cannot open" said "corrupt or unsupported codec" of it. False where it has one,
    is another container, or cannot be read."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            size = f.seek(0, 2)
            if head[4:8] != b"ftyp":
                return False
            moov = _box(f, 0, size, b"moov")
            if moov is None or moov[1] - moov[0] > MAX_MOOV_BYTES:
                return False
            f.seek(moov[0])
            data = f.read(moov[1] - moov[0])
    except OSError:
        return False
    pos = 0
    for _ in range(MAX_BOXES):
        box = box_at(data, pos)
        if box is None:
            return True
        kind, content, end = box
        if kind == b"trak" and b"hdlr" in data[content:end]:
            at = data.index(b"hdlr", content, end)  # hdlr: size, type, version+flags, pre_defined, handler_type
            if data[at + 12:at + 16] == b"vide":
                return False
        pos = end
        if pos >= len(data):
            return True
    return False


def is_avi(head: bytes) -> bool:
    """Whether a file's first 12 bytes are an AVI file's (a RIFF file of form ``AVI ``)."""
    return head[:4] == b"RIFF" and head[8:12] == b"AVI "
