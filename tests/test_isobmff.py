"""ISO base media boxes: the one header reader that MP4/MOV checks and JPEG 2000 sizes share."""

from __future__ import annotations

import struct

import pytest

from toolkit.io.isobmff import box_at


def box(kind: bytes, content: bytes, size: int | None = None, wide: bool = False) -> bytes:
    if wide:
        return struct.pack(">I4sQ", 1, kind, 16 + len(content) if size is None else size) + content
    return struct.pack(">I4s", 8 + len(content) if size is None else size, kind) + content


def test_boxes_one_after_another() -> None:
    data = box(b"ftyp", b"isom") + box(b"moov", b"x" * 20) + box(b"mdat", b"")
    first = box_at(data, 0)
    assert first == (b"ftyp", 8, 12)
    second = box_at(data, first[2])
    assert second == (b"moov", 20, 40)
    assert box_at(data, second[2]) == (b"mdat", 48, 48)
    assert box_at(data, 48) is None  # nothing after the last


def test_a_64_bit_size_and_a_box_to_the_end() -> None:
    data = box(b"mdat", b"abcd", wide=True)
    assert box_at(data, 0) == (b"mdat", 16, 20)
    to_end = struct.pack(">I4s", 0, b"mdat") + b"z" * 10
    assert box_at(to_end, 0) == (b"mdat", 8, 18)
    assert box_at(to_end, 0, end=14) == (b"mdat", 8, 14)  # runs to the end of what holds it


@pytest.mark.parametrize("data", [
    b"\x00\x00\x00",  # not even a size
    struct.pack(">I4s", 4, b"moov"),  # a size smaller than the header
    struct.pack(">I4s", 1, b"moov") + b"\x00\x00",  # a 64-bit size cut short
    struct.pack(">I4sQ", 1, b"moov", 12),  # a 64-bit size smaller than its header
])
def test_a_header_that_cannot_be_one_is_none(data: bytes) -> None:
    assert box_at(data, 0) is None


def test_the_declared_end_may_lie_past_the_data_and_the_header_must_fit_before_end() -> None:
    data = box(b"moov", b"", size=1000)
    assert box_at(data, 0) == (b"moov", 8, 1000)  # as declared: the caller bounds it
    assert box_at(data, 0, end=6) is None
    assert box_at(memoryview(data), 0) == (b"moov", 8, 1000)
