"""Where each video frame lies in an AVI file (to tell the frames a damaged byte range touches from the others)."""

from __future__ import annotations


def frame_spans(data: bytes) -> list[tuple[int, int]]:
    """The byte range ``[start, end)`` of every video frame chunk (``##dc``/``##db``) of the AVI file ``data``, in
    order: the RIFF tree walked chunk by chunk (lists entered, the index and padding skipped)."""
    spans: list[tuple[int, int]] = []

    def walk(start: int, end: int) -> None:
        i = start
        while i + 8 <= end:
            tag, size = data[i:i + 4], int.from_bytes(data[i + 4:i + 8], "little")
            if tag in (b"RIFF", b"LIST"):
                walk(i + 12, min(i + 8 + size, end))
            elif tag[2:] in (b"dc", b"db"):
                spans.append((i, i + 8 + size))
            i += 8 + size + (size & 1)

    walk(0, len(data))
    return spans


def frames_touched(data: bytes, start: int, end: int) -> set[int]:
    """The 0-based numbers of the frames whose chunk overlaps bytes ``[start, end)``."""
    return {k for k, (a, b) in enumerate(frame_spans(data)) if a < end and b > start}
