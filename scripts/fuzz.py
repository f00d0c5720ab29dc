"""Fuzz the checkpoint loader and the image reader with hypothesis for a set time.

Mutated checkpoints (zip and legacy torch files, raw pickles) and mutated images must give yolokit's own errors
(ModelFileError, UnsafeCheckpointError, ImageReadError) or a result: never another exception, a crash, or a hang
(each example runs under a per-example deadline). Images are mutated byte by byte, and by structure: JPEG marker
codes and segment lengths, trailers after the end-of-image marker, cuts at marker boundaries; PNG header fields
(size, bit depth, colour type, with the checksum fixed or not), chunk lengths, dropped and repeated chunks, trailers.

    python scripts/fuzz.py --seconds 300
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolkit.errors import ModelFileError
from toolkit.io.decode import decode_image
from toolkit.io.files import ImageReadError
from toolkit.io.imageheader import check_encoded
from toolkit.model.checkpoint import read_pickled_object


def seed_checkpoints() -> list[bytes]:
    import torch

    obj = {"epoch": 3, "model": None, "w": torch.arange(12, dtype=torch.float16).reshape(3, 4),
           "opt": {"lr": 0.01, "names": ["a", "b"]}}
    out = []
    for zipped in (True, False):
        buf = io.BytesIO()
        torch.save(obj, buf, _use_new_zipfile_serialization=zipped)
        out.append(buf.getvalue())
    return out


def seed_images() -> list[bytes]:
    img = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8), (3, 3), 0)
    out = [cv2.imencode(ext, img)[1].tobytes() for ext in (".jpg", ".png", ".bmp", ".webp", ".tiff")]
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", progressive=True)  # several scans with tables between them
    return [*out, buf.getvalue()]


def jpeg_markers(data: bytes) -> list[int]:
    """Offsets of the JPEG segment markers before the first scan's data, and of the end marker."""
    out, i = [], 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        out.append(i)
        if data[i + 1] == 0xDA:
            break
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    end = data.rfind(b"\xff\xd9")
    return out + ([end] if end > 0 else [])


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos + 8 <= len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        out.append((data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]))
        pos += 12 + n
    return out


def png_build(chunks: list[tuple[bytes, bytes]], fix_crc: bool) -> bytes:
    body = b"\x89PNG\r\n\x1a\n"
    for kind, payload in chunks:
        crc = zlib.crc32(kind + payload) if fix_crc else 0x12345678
        body += len(payload).to_bytes(4, "big") + kind + payload + (crc & 0xFFFFFFFF).to_bytes(4, "big")
    return body


def mutate_jpeg(data: bytes, which: int, code: int, length: int, trailer: bytes, cut: bool) -> bytes:
    """Change one marker's code or its segment length, or cut the file at it; append ``trailer``."""
    marks = jpeg_markers(data)
    b = bytearray(data)
    at = marks[which % len(marks)] if marks else 2
    if cut:
        b = b[:at + (which % 5)]
    elif which % 2:
        b[at + 1:at + 2] = bytes([code])
    elif at + 4 <= len(b):
        b[at + 2:at + 4] = (length & 0xFFFF).to_bytes(2, "big")
    return bytes(b) + trailer


def mutate_png(data: bytes, field: int, value: int, op: int, fix_crc: bool, trailer: bytes) -> bytes:
    """Change an IHDR field (width, height, bit depth, colour type, interlace), or drop, repeat or resize a chunk."""
    chunks = png_chunks(data)
    ihdr = bytearray(chunks[0][1])
    if op == 0:
        offsets = {0: (0, 4), 1: (4, 4), 2: (8, 1), 3: (9, 1), 4: (12, 1)}
        start, size = offsets[field % 5]
        ihdr[start:start + size] = (value % (1 << (8 * size))).to_bytes(size, "big")
        chunks[0] = (b"IHDR", bytes(ihdr))
    elif op == 1 and len(chunks) > 1:
        del chunks[field % len(chunks)]
    elif op == 2:
        chunks.insert(field % len(chunks), chunks[field % len(chunks)])
    else:
        kind, payload = chunks[field % len(chunks)]
        chunks[field % len(chunks)] = (kind, payload[: value % (len(payload) + 1)])
    return png_build(chunks, fix_crc) + trailer


def mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    b = bytearray(data)
    for pos, val in edits:
        b[pos % len(b)] = val
    return bytes(b[: cut % len(b)] if cut is not None else b)


_edits = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=12)
_cut = st.none() | st.integers(0, 1 << 20)


def check_checkpoint(data: bytes, folder: Path) -> None:
    path = folder / "fuzz.pt"
    path.write_bytes(data)
    with contextlib.suppress(ModelFileError):  # UnsafeCheckpointError included
        read_pickled_object(path)


def check_image(data: bytes) -> None:
    problem = check_encoded(data, 500_000_000)  # never raises; a reason is one line
    assert problem is None or (problem and "\n" not in problem)
    try:
        img = decode_image(np.frombuffer(data, np.uint8), "fuzz")
    except ImageReadError:
        return
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3


def run(examples: int, seed: int | None = None) -> None:
    ckpts, images = seed_checkpoints(), seed_images()
    folder = Path(tempfile.mkdtemp(prefix="yolokit-fuzz-"))
    opts = settings(max_examples=examples, deadline=2000, derandomize=seed is None,
                    suppress_health_check=list(HealthCheck), database=None)

    @opts
    @given(st.sampled_from(ckpts), _edits, _cut)
    def fuzz_checkpoint(base: bytes, edits: list[tuple[int, int]], cut: int | None) -> None:
        check_checkpoint(mutate(base, edits, cut), folder)

    @opts
    @given(st.binary(max_size=4096))
    def fuzz_raw_pickle(data: bytes) -> None:
        check_checkpoint(b"\x80\x02" + data, folder)

    @opts
    @given(st.sampled_from(images), _edits, _cut)
    def fuzz_image(base: bytes, edits: list[tuple[int, int]], cut: int | None) -> None:
        check_image(mutate(base, edits, cut))

    jpegs = [d for d in images if d[:2] == b"\xff\xd8"]
    pngs = [d for d in images if d[:4] == b"\x89PNG"]

    @opts
    @given(st.sampled_from(jpegs), st.integers(0, 63), st.integers(0, 255), st.integers(0, 1 << 16),
           st.binary(max_size=64) | st.sampled_from([b"", bytes(512), b"\xff\xd8\xff\xd9", b"ftypmp42" * 8]),
           st.booleans())
    def fuzz_jpeg_structure(base: bytes, which: int, code: int, length: int, trailer: bytes, cut: bool) -> None:
        check_image(mutate_jpeg(base, which, code, length, trailer, cut))

    @opts
    @given(st.sampled_from(pngs), st.integers(0, 31), st.integers(0, 1 << 32), st.integers(0, 3), st.booleans(),
           st.binary(max_size=32))
    def fuzz_png_structure(base: bytes, field: int, value: int, op: int, fix_crc: bool, trailer: bytes) -> None:
        check_image(mutate_png(base, field, value, op, fix_crc, trailer))

    fuzz_checkpoint()
    fuzz_raw_pickle()
    fuzz_image()
    fuzz_jpeg_structure()
    fuzz_png_structure()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60)
    args = ap.parse_args()
    t0, rounds = time.monotonic(), 0
    while time.monotonic() - t0 < args.seconds:
        run(200, seed=rounds)
        rounds += 1
    print(f"fuzzed for {time.monotonic() - t0:.0f} s: {rounds} rounds x 5 targets x 200 examples, no crash")


if __name__ == "__main__":
    main()
