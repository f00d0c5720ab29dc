"""The structure of JPEG and PNG files, checked from their bytes: is the image data whole, are the critical chunks
intact? Pure functions, no decoding (see :mod:`toolkit.io.imageheader` for why, and for the reader's entry point)."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

Encoded: TypeAlias = bytes | bytearray | memoryview | np.ndarray
"""Encoded image bytes as the reader holds them: ``bytes`` or a 1-D uint8 array from ``np.fromfile``."""

# -- reasons -----------------------------------------------------------------------------------------------
# Short phrases for :class:`JpegCheck` / :class:`PngCheck`; :func:`check_encoded` turns them into sentences.

JPEG_TRUNCATED = "the image data stops before its end (truncated)"
JPEG_NO_SCAN = "no image data (no start-of-scan)"
JPEG_BROKEN = "broken marker structure (damaged)"
JPEG_NOT = "not a JPEG"
JPEG_UNDETERMINED = "too many segments to check"

PNG_TRUNCATED = "the PNG stops before its end (truncated)"
PNG_NO_HEADER = "damaged PNG: it does not start with its header chunk (IHDR)"
PNG_BROKEN = "damaged PNG: its chunk structure is broken"
PNG_NO_DATA = "damaged PNG: no image data (no IDAT chunk)"
PNG_NOT = "not a PNG"
PNG_UNDETERMINED = "too many chunks to check"

_REFETCH = "re-copy or re-export the file"

# Caps on the per-marker / per-chunk Python loops. Real JPEGs have tens of segments and real PNGs at most a
# few hundred thousand chunks (8 KiB IDATs in a gigabyte file); past these the file is adversarial and the
# verdict is left to the decoder rather than spending seconds here.
_MAX_JPEG_SEGMENTS = 100_000
_MAX_PNG_CHUNKS = 200_000


# Start-of-frame markers carry the image size; C4 (DHT), C8 (JPG, reserved) and CC (DAC) share the range
# but are not frames.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers libjpeg accepts between segments; anything else (DHP, EXP, JPGn, reserved) is a fatal error there,
# so it counts as damage here. RSTn and TEM stand alone (no length).
_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01}
_KNOWN_SEGMENTS = frozenset(range(0xC0, 0xD0)) | {0xDA, 0xDB, 0xDC, 0xDD, 0xFE} | frozenset(range(0xE0, 0xF0))

# PNM/PFM header: magic, then width and height separated by whitespace and '#' comments (to end of line).
# -- results -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JpegCheck:
    """Whether a JPEG's marker structure is whole: an end-of-image marker follows its last scan.

    ``end`` is the offset just past that EOI and ``trailing`` the number of bytes after it (motion-photo
    video, padding, camera trailers: normal, not an error). ``reason`` is empty when complete.

    ``stray_markers`` counts markers after the first scan that cannot be where they are (unknown codes, a
    second frame header, impossible lengths): corrupt scan data, such as a flipped byte. libjpeg decodes such a
    file anyway, with a grey or smeared patch and a "Corrupt JPEG data" warning, so they do not make it
    incomplete; the walk steps over them and goes on looking for the EOI.
    """

    complete: bool
    end: int | None
    trailing: int
    reason: str
    scans: int = 0
    stray_markers: int = 0


@dataclass(frozen=True)
class PngCheck:
    """Whether a PNG's chunk sequence is whole and its critical chunks are intact.

    ``bad_crc_ancillary`` names ancillary chunks (``tEXt``, ``iCCP`` ...) whose checksum is wrong: libpng
    skips those with a warning, so they do not make the file unacceptable. ``end`` is the offset just past
    IEND and ``trailing`` the bytes after it (accepted).
    """

    complete: bool
    reason: str
    bad_crc_critical: bool
    bad_crc_ancillary: tuple[str, ...]
    end: int | None
    trailing: int
    chunks: int = 0


# -- input ---------------------------------------------------------------------------------------------------


def as_view(data: Encoded) -> memoryview:
    """A flat byte view of ``data`` without copying it (a copy only for a non-contiguous array)."""
    if isinstance(data, np.ndarray):
        arr = np.ascontiguousarray(data).reshape(-1)
        if arr.dtype != np.uint8:
            arr = arr.view(np.uint8)
        return arr.data
    mv = memoryview(data)
    if mv.ndim != 1 or mv.format != "B":
        mv = mv.cast("B")
    return mv


def head_bytes(mv: memoryview, size: int) -> bytes:
    """The first ``size`` bytes as ``bytes``, for prefix tests and regexes on short headers."""
    return bytes(mv[:size])


# -- JPEG structure ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _MarkerIndex:
    """Offsets of the markers that can end a scan, from ``start`` on, found in one vectorised pass.

    Such a marker is 0xFF followed by a byte that is neither 0x00 (a stuffed data byte), 0xFF (fill: the last
    FF of a run is the one that counts) nor 0xD0-0xD7 (restart markers, which live inside scans and stand
    alone between segments). Offsets only ever increase during a walk, so one index serves the whole file.
    """

    positions: np.ndarray

    @staticmethod
    def build(mv: memoryview, start: int) -> _MarkerIndex:
        arr = np.frombuffer(mv, dtype=np.uint8)[start:]
        follow = arr[1:]
        is_ff = arr[:-1] == 0xFF
        if np.count_nonzero(is_ff) <= len(is_ff) // 64:  # entropy data: FF is rare, look only at those
            ff = np.flatnonzero(is_ff)
            after = follow[ff]
            keep = (after != 0x00) & (after != 0xFF) & ((after < 0xD0) | (after > 0xD7))
            positions = ff[keep]
        else:  # FF-heavy data (fill, padding): whole-array passes, no index array as big as the file
            is_ff &= follow != 0x00
            is_ff &= follow != 0xFF
            is_ff &= (follow < 0xD0) | (follow > 0xD7)
            positions = np.flatnonzero(is_ff)
        return _MarkerIndex(positions + start)

    def next_at(self, pos: int) -> int | None:
        """The first marker at or after ``pos``, or None."""
        k = int(np.searchsorted(self.positions, pos))
        return int(self.positions[k]) if k < len(self.positions) else None


@dataclass(frozen=True)
class _JpegWalk:
    """What a walk over a JPEG's markers found."""

    size: tuple[int, int] | None
    scans: int
    end: int | None
    reason: str
    stray: int = 0


def walk_jpeg(mv: memoryview, stop_at_frame: bool) -> _JpegWalk:
    """Walk the marker segments from SOI: length-prefixed segments are skipped by their length, each scan's
    entropy-coded data by the vectorised marker index, until EOI or the end of the data.

    ``stop_at_frame`` returns at the first SOF (all :func:`header_size` needs). Garbage between segments is
    skipped to the next marker, as libjpeg does (it only warns about it). Before the first scan, a marker
    libjpeg refuses makes the file broken; after it, such a marker is corrupt scan data (see
    :class:`JpegCheck`), stepped over. A second SOI always ends the walk as truncated: it is what a cut-off
    image with another file written after it looks like.
    """
    n = len(mv)
    if head_bytes(mv, 3) != b"\xff\xd8\xff":
        return _JpegWalk(None, 0, None, JPEG_NOT)
    index: _MarkerIndex | None = None
    size: tuple[int, int] | None = None
    scans = stray = 0
    pos = 2

    def walk(reason: str, end: int | None = None) -> _JpegWalk:
        return _JpegWalk(size, scans, end, reason, stray)

    for _ in range(_MAX_JPEG_SEGMENTS):
        if not (pos + 1 < n and mv[pos] == 0xFF and mv[pos + 1] not in (0x00, 0xFF)):
            # Not at a marker: fill bytes or garbage. The index finds the next real one.
            index = index or _MarkerIndex.build(mv, pos)
            found = index.next_at(pos)
            if found is None:
                return walk(JPEG_TRUNCATED)
            pos = found
        code = mv[pos + 1]
        if code == 0xD9:  # EOI
            return walk("" if scans else JPEG_NO_SCAN, pos + 2)
        if code == 0xD8:  # a second SOI
            return walk(JPEG_TRUNCATED)
        if code in _STANDALONE:
            pos += 2
            continue
        length = (mv[pos + 2] << 8) | mv[pos + 3] if pos + 4 <= n else -1
        seg_end = pos + 2 + length
        invalid = code not in _KNOWN_SEGMENTS or (code in _SOF_MARKERS and size is not None)
        if scans and (invalid or length < 2 or seg_end > n):
            stray += 1  # corrupt scan data: keep looking for the end of the scan
            index = index or _MarkerIndex.build(mv, pos + 2)
            found = index.next_at(pos + 2)
            if found is None:
                return walk(JPEG_TRUNCATED)
            pos = found
            continue
        if length < 0 or seg_end > n:
            return walk(JPEG_TRUNCATED)
        if invalid or length < 2:
            return walk(JPEG_BROKEN)
        if code in _SOF_MARKERS:
            if length < 7:
                return walk(JPEG_BROKEN)
            height, width = struct.unpack_from(">HH", mv, pos + 5)
            size = (height, width)
            if stop_at_frame:
                return walk("")
        elif code == 0xDA:  # SOS: header, then entropy-coded data up to the next marker that is not RSTn
            if size is None or stop_at_frame:
                return walk(JPEG_BROKEN)
            scans += 1
            index = index or _MarkerIndex.build(mv, seg_end)
            found = index.next_at(seg_end)
            if found is None:
                return walk(JPEG_TRUNCATED)
            pos = found
            continue
        pos = seg_end
    return walk(JPEG_UNDETERMINED)


def jpeg_completeness(data: Encoded) -> JpegCheck:
    """Whether an end-of-image marker follows the last scan, found by walking the structure from the start.

    Why not look at the last bytes: motion photos append a video, cameras append trailers and padding, so a
    whole JPEG often does not end in FF D9; and a cut-off JPEG followed by such data can. Progressive JPEGs
    have tables and further scans between scans; all of them are walked. Data after EOI is reported as
    ``trailing``, not as an error.
    """
    mv = as_view(data)
    walk = walk_jpeg(mv, stop_at_frame=False)
    if walk.reason or walk.end is None:
        return JpegCheck(False, walk.end, 0, walk.reason or JPEG_TRUNCATED, walk.scans, walk.stray)
    return JpegCheck(True, walk.end, len(mv) - walk.end, "", walk.scans, walk.stray)


# -- PNG structure -------------------------------------------------------------------------------------------


def _is_chunk_type(kind: bytes) -> bool:
    return len(kind) == 4 and kind.isalpha() and kind.isascii()


def png_check(data: Encoded) -> PngCheck:
    """Walk a PNG's chunks (length, type, data, CRC over type + data) from the signature to IEND.

    Policy, matching what libpng does with the file: the first chunk must be IHDR; a missing IEND or a chunk
    that runs past the end is truncation; a bad checksum in a critical chunk (uppercase first letter: IHDR,
    PLTE, IDAT, IEND) makes the file unacceptable; a bad checksum in an ancillary chunk (``tEXt`` ...) is only
    recorded, since libpng skips such chunks with a warning; data after IEND is accepted as ``trailing``.
    The first problem found, in file order, gives the reason.
    """
    mv = as_view(data)
    n = len(mv)
    if head_bytes(mv, 8) != PNG_SIGNATURE:
        return PngCheck(False, PNG_NOT, False, (), None, 0)
    reason = ""
    bad_critical = False
    bad_ancillary: list[str] = []
    seen_idat = False
    pos = 8
    chunks = 0

    def result(complete: bool, why: str, end: int | None = None) -> PngCheck:
        why = reason or why
        trailing = n - end if end is not None else 0
        return PngCheck(complete and not why, why, bad_critical, tuple(bad_ancillary), end, trailing, chunks)

    while chunks < _MAX_PNG_CHUNKS:
        if pos + 8 > n:
            return result(False, PNG_TRUNCATED)
        length, kind = struct.unpack_from(">I4s", mv, pos)
        if not _is_chunk_type(kind) or length > 0x7FFFFFFF:
            return result(False, PNG_BROKEN)
        end = pos + 12 + length
        if end > n:
            return result(False, PNG_TRUNCATED)
        chunks += 1
        name = kind.decode("ascii")
        if chunks == 1 and kind != b"IHDR":
            return result(False, PNG_NO_HEADER)
        if kind == b"IHDR" and (chunks != 1 or length != 13):
            return result(False, PNG_BROKEN)
        stored = struct.unpack_from(">I", mv, pos + 8 + length)[0]
        if zlib.crc32(mv[pos + 4 : pos + 8 + length]) != stored:
            if name[0].isupper():
                reason = reason or f"damaged PNG: checksum mismatch in its {name} chunk"
                bad_critical = True
            else:
                bad_ancillary.append(name)
        seen_idat = seen_idat or kind == b"IDAT"
        if kind == b"IEND":
            return result(True, "" if seen_idat else PNG_NO_DATA, end)
        pos = end
    return result(False, PNG_UNDETERMINED)


