"""Boxes of the ISO base media file format, the structure of MP4, MOV, 3GP, HEIF and JPEG 2000 files: a 32-bit
big-endian size (1: a 64-bit size follows the type; 0: the box runs to the end of what holds it), a four-character
type, then the content."""

from __future__ import annotations

import struct


def box_at(buf: bytes | memoryview, pos: int, end: int | None = None) -> tuple[bytes, int, int] | None:
    """(type, content start, box end) of the box whose header is at ``pos`` in ``buf``, among boxes that end at
    ``end`` (default: the end of ``buf``; a box of size 0 runs to it). None where the header does not fit in ``buf``
    before ``end`` or declares a size smaller than itself. The box end is as declared, which may lie past ``end``."""
    end = len(buf) if end is None else end
    fits = min(end, len(buf))
    if pos + 8 > fits:
        return None
    size, kind = struct.unpack_from(">I4s", buf, pos)
    content = pos + 8
    if size == 1:
        if pos + 16 > fits:
            return None
        size, content = struct.unpack_from(">Q", buf, pos + 8)[0], pos + 16
    elif size == 0:
        size = end - pos
    if size < content - pos:
        return None
    return kind, content, pos + size
