"""A folder of odd but real-world inputs, built on the spot (never committed): good images, special files that
would block or never end, JPEGs with trailers, truncated JPEGs and PNGs, damaged PNG chunks and pixel bombs.

``build(folder)`` returns what each input must come to: ``None`` for processed, else a fragment of the reason.
"""

from __future__ import annotations

import io
import os
import socket
import stat
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

# leaks of library internals a failure reason must never contain (regular expressions)
LEAKS = (r"cv::", r"\.cpp", r"Assertion", r"error: \(", r"Traceback", r"CV_IO", r"OpenCV\(", r"libpng",
         r"\b0x[0-9a-fA-F]{2,}", r'File "', r"Errno", r"site-packages", r"/io/opencv", r"\.py\b", r"\w+Error\b")


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    return cv2.GaussianBlur(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR), (3, 3), 0)


def jpeg(img: np.ndarray, progressive: bool = False) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img[:, :, ::-1]).save(buf, "JPEG", quality=90, progressive=progressive)
    return buf.getvalue()


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        out.append((data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]))
        pos += 12 + n
    return out


def png_from(chunks: list[tuple[bytes, bytes]], bad_crc: bytes | None = None) -> bytes:
    body = b"\x89PNG\r\n\x1a\n"
    for kind, data in chunks:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        if kind == bad_crc:
            crc ^= 0xDEADBEEF
        body += struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)
    return body


def _scan_start(data: bytes) -> int:
    """Offset of the entropy-coded data of a JPEG's first scan."""
    sos = data.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")


def build(d: Path) -> dict[str, str | None]:
    """Write the corpus into ``d`` (created); the expected outcome per file name."""
    d.mkdir(parents=True, exist_ok=True)
    expect: dict[str, str | None] = {}
    good = jpeg(photo(120, 160))
    (d / "good.jpg").write_bytes(good)
    expect["good.jpg"] = None
    # bytes after the end-of-image marker are fine: a motion photo's video, zero padding, a camera trailer
    (d / "motion_photo.jpg").write_bytes(good + b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" +
                                         os.urandom(3000) + b"\xff\xd8\xff\xd9")
    expect["motion_photo.jpg"] = None
    (d / "zero_padded.jpg").write_bytes(good + bytes(4096))
    expect["zero_padded.jpg"] = None
    # real truncation: cut inside the entropy-coded data, of a baseline and of a progressive JPEG
    start = _scan_start(good)
    (d / "cut_mid_scan.jpg").write_bytes(good[: start + (len(good) - start) // 2])
    expect["cut_mid_scan.jpg"] = "truncated JPEG"
    prog = jpeg(photo(120, 160, seed=3), progressive=True)
    last_sos = prog.rindex(b"\xff\xda")
    (d / "progressive_cut.jpg").write_bytes(prog[: last_sos + (len(prog) - last_sos) // 2])
    expect["progressive_cut.jpg"] = "truncated JPEG"
    (d / "cut_before_eoi.jpg").write_bytes(good[:-2])
    expect["cut_before_eoi.jpg"] = "truncated JPEG"
    # PNGs: intact with a damaged text chunk (processed, as libpng does), damaged image data, cut short, a bomb
    img = Image.fromarray(photo(40, 60, seed=4)[:, :, ::-1])
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "made for yolokit's tests")
    buf = io.BytesIO()
    img.save(buf, "PNG", pnginfo=info)
    chunks = png_chunks(buf.getvalue())
    (d / "bad_text_crc.png").write_bytes(png_from(chunks, bad_crc=b"tEXt"))
    expect["bad_text_crc.png"] = None
    (d / "bad_idat_crc.png").write_bytes(png_from(chunks, bad_crc=b"IDAT"))
    expect["bad_idat_crc.png"] = "checksum"
    whole = png_from(chunks)
    (d / "cut.png").write_bytes(whole[: len(whole) - 30])
    expect["cut.png"] = "truncated PNG"
    ihdr = struct.pack(">II", 60000, 60000) + chunks[0][1][8:]
    (d / "bomb_60000x60000.png").write_bytes(png_from([(b"IHDR", ihdr), *chunks[1:]]))
    expect["bomb_60000x60000.png"] = "60000x60000"
    sof = good.index(b"\xff\xc0")
    bomb = bytearray(good)
    bomb[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)
    (d / "bomb_60000x60000.jpg").write_bytes(bytes(bomb))
    expect["bomb_60000x60000.jpg"] = "60000x60000"
    # special files, directly and behind symbolic links: never opened, never block
    os.mkfifo(d / "pipe.jpg")
    expect["pipe.jpg"] = "named pipe"
    os.mkfifo(d / "pipe_target")
    (d / "link_to_pipe.png").symlink_to(d / "pipe_target")
    expect["link_to_pipe.png"] = "named pipe"
    os.mkfifo(d / "pipe_video.mp4")
    expect["pipe_video.mp4"] = "named pipe"
    (d / "endless.jpg").symlink_to("/dev/zero")
    expect["endless.jpg"] = "character device"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(d / "socket.jpg"))
        expect["socket.jpg"] = "socket"
    except OSError:  # a path too long for a UNIX socket: the case is covered by the others
        pass
    finally:
        sock.close()
    block = next((p for p in ("/dev/loop0", "/dev/vda", "/dev/sda", "/dev/nvme0n1")
                  if os.path.exists(p) and stat.S_ISBLK(os.stat(p).st_mode)), None)
    if block is not None:
        (d / "disk.png").symlink_to(block)
        expect["disk.png"] = "block device"
    return expect
