"""toolkit.io.imageheader: header sizes, JPEG/PNG structure checks and the reader's pre-decode verdict.

Every test file is built here (OpenCV / Pillow, then byte surgery); no media is committed. Sizes are compared
with what ``cv2.imdecode`` actually produces, and every file the checks accept is also decoded, so the checks
never refuse what the decoder reads nor wave through what it cannot.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from collections.abc import Callable

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from toolkit.io import imageheader as ih

# -- building test files -------------------------------------------------------------------------------------

H, W = 45, 70  # not square, so a swapped (height, width) shows


def photo(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    """A noisy, photo-like BGR image: its JPEG entropy data is dense enough to contain FF 00 stuffing."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return cv2.GaussianBlur(img, (3, 3), 0)


def cv_encode(img: np.ndarray, ext: str, params: tuple[int, ...] = ()) -> bytes:
    ok, buf = cv2.imencode(ext, img, list(params))
    assert ok, ext
    return buf.tobytes()


def pil_encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    bio = io.BytesIO()
    img.save(bio, fmt, **kwargs)
    return bio.getvalue()


def pil_rgb(h: int = H, w: int = W, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(photo(h, w, seed)[..., ::-1]))


def decoded_hw(data: bytes) -> tuple[int, int] | None:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    return None if img is None else (img.shape[0], img.shape[1])


def jpeg_header_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each length-prefixed segment from SOI up to and including the first SOS.

    Deliberately naive (no fill bytes, no garbage): only used on encoder output, to do byte surgery.
    """
    out = []
    pos = 2
    while True:
        assert data[pos] == 0xFF
        code = data[pos + 1]
        end = pos + 2 + struct.unpack_from(">H", data, pos + 2)[0]
        out.append((code, pos, end))
        if code == 0xDA:
            return out
        pos = end


def sos_offsets(data: bytes) -> list[int]:
    """Offsets of FF DA. Entropy-coded data cannot contain it (an FF there is stuffed as FF 00)."""
    return [m.start() for m in re.finditer(b"\xff\xda", data)]


def png_chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    """(type, start, end) of every chunk of an intact PNG."""
    out = []
    pos = 8
    while pos < len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        out.append((kind, pos, pos + 12 + length))
        pos += 12 + length
    return out


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_with_size(width: int, height: int) -> bytes:
    """A real PNG whose IHDR is rewritten to claim another size, with a valid CRC: only the size is wrong."""
    data = bytearray(cv_encode(photo(), ".png"))
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def jpeg_with_size(width: int, height: int) -> bytes:
    data = bytearray(cv_encode(photo(), ".jpg"))
    sof = next(start for code, start, _ in jpeg_header_segments(bytes(data)) if code == 0xC0)
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def flip(data: bytes, offset: int) -> bytes:
    out = bytearray(data)
    out[offset] ^= 0x5A
    return bytes(out)


def mp4_tail(seed: int = 1) -> bytes:
    """Bytes like a motion photo's appended video, including stray SOI/EOI pairs."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()
    return b"\x00\x00\x00\x18ftypmp42" + noise[:2000] + b"\xff\xd8\xff\xe0\x00\x10" + noise[2000:] + b"\xff\xd9\x00"


@pytest.fixture(scope="module")
def baseline() -> bytes:
    data = cv_encode(photo(240, 320), ".jpg", (cv2.IMWRITE_JPEG_QUALITY, 95))
    assert b"\xff\x00" in data  # byte stuffing is exercised
    return data


@pytest.fixture(scope="module")
def progressive() -> bytes:
    data = pil_encode(pil_rgb(240, 320), "JPEG", progressive=True, quality=90)
    assert len(sos_offsets(data)) > 3
    return data


@pytest.fixture(scope="module")
def png() -> bytes:
    data = cv_encode(photo(240, 320), ".png")
    assert sum(kind == b"IDAT" for kind, _, _ in png_chunks(data)) > 1
    return data


# -- image_format and header_size ----------------------------------------------------------------------------


def _bmp_top_down() -> bytes:
    data = bytearray(cv_encode(photo(), ".bmp"))
    height = struct.unpack_from("<i", data, 22)[0]
    struct.pack_into("<i", data, 22, -height)
    return bytes(data)


def _bmp_core() -> bytes:
    """A BITMAPCOREHEADER (OS/2) 24-bit BMP, written by hand: 12-byte DIB header, 16-bit sizes."""
    img = photo()
    row = (W * 3 + 3) // 4 * 4
    pixels = b"".join(img[y].tobytes().ljust(row, b"\x00") for y in range(H - 1, -1, -1))
    header = struct.pack("<IHHHH", 12, W, H, 1, 24)
    return b"BM" + struct.pack("<IHHI", 26 + len(pixels), 0, 0, 26) + header + pixels


def _pnm_with_comments() -> bytes:
    grey = photo()[..., 0]
    return b"P5\n# a comment\n" + f"{W}".encode() + b" # width\n#another\n" + f"{H}\n255\n".encode() + grey.tobytes()


def _tiff_big_endian() -> bytes:
    data = pil_encode(Image.fromarray(photo()[..., 0].astype(np.uint16) * 257).convert("I;16B"), "TIFF")
    assert data[:4] == b"MM\x00*"
    return data


def _webp(lossless: bool) -> bytes:
    mode = cv2.IMWRITE_WEBP_LOSSLESS_ON if lossless else cv2.IMWRITE_WEBP_LOSSLESS_OFF
    data = cv_encode(photo(), ".webp", (cv2.IMWRITE_WEBP_LOSSLESS_MODE, mode, cv2.IMWRITE_WEBP_QUALITY, 90))
    assert data[12:16] == (b"VP8L" if lossless else b"VP8 ")
    return data


def _webp_extended() -> bytes:
    rgba = pil_rgb().convert("RGBA")
    data = pil_encode(rgba, "WEBP", quality=80, exif=b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x00\x00")
    assert data[12:16] == b"VP8X"
    return data


def _jpeg_tables_before_frame() -> bytes:
    """Huffman tables (C4, inside the SOF range) moved before the frame header: must not be taken for it."""
    data = cv_encode(photo(), ".jpg")
    segments = jpeg_header_segments(data)
    dht = b"".join(data[s:e] for code, s, e in segments if code == 0xC4)
    rest = b"".join(data[s:e] for code, s, e in segments if code not in (0xC4, 0xDA))
    sos_start = segments[-1][1]
    return b"\xff\xd8" + dht + b"\xff\xcc\x00\x02" + rest + b"\xff\xff\xff" + data[sos_start:]


def _jpeg_exif_thumbnail() -> bytes:
    """An APP1 segment holding a whole small JPEG (SOI..EOI): skipped by its length, not searched."""
    thumb = cv_encode(photo(16, 16, seed=3), ".jpg")
    payload = b"Exif\x00\x00" + thumb
    main = cv_encode(photo(), ".jpg")
    return main[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + main[2:]


SIZED: dict[str, tuple[str, Callable[[], bytes]]] = {
    "jpeg baseline": ("jpeg", lambda: cv_encode(photo(), ".jpg")),
    "jpeg progressive (PIL)": ("jpeg", lambda: pil_encode(pil_rgb(), "JPEG", progressive=True)),
    "jpeg progressive (cv2)": ("jpeg", lambda: cv_encode(photo(), ".jpg", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1))),
    "jpeg greyscale": ("jpeg", lambda: cv_encode(photo()[..., 0], ".jpg")),
    "jpeg tables before frame, fill bytes": ("jpeg", _jpeg_tables_before_frame),
    "jpeg with exif thumbnail": ("jpeg", _jpeg_exif_thumbnail),
    "png": ("png", lambda: cv_encode(photo(), ".png")),
    "png 16-bit grey": ("png", lambda: cv_encode(photo()[..., 0].astype(np.uint16) * 257, ".png")),
    "bmp": ("bmp", lambda: cv_encode(photo(), ".bmp")),
    "bmp top-down": ("bmp", _bmp_top_down),
    "bmp core header": ("bmp", _bmp_core),
    "gif (cv2)": ("gif", lambda: cv_encode(photo(), ".gif")),
    "gif (PIL)": ("gif", lambda: pil_encode(pil_rgb(), "GIF")),
    "webp lossy": ("webp", lambda: _webp(lossless=False)),
    "webp lossless": ("webp", lambda: _webp(lossless=True)),
    "webp extended": ("webp", _webp_extended),
    "tiff little-endian": ("tiff", lambda: pil_encode(pil_rgb(), "TIFF")),
    "tiff big-endian": ("tiff", _tiff_big_endian),
    "tiff (cv2)": ("tiff", lambda: cv_encode(photo(), ".tiff")),
    "bigtiff": ("tiff", lambda: pil_encode(pil_rgb(), "TIFF", big_tiff=True)),
    "ppm": ("pnm", lambda: cv_encode(photo(), ".ppm")),
    "pgm with comments": ("pnm", _pnm_with_comments),
    "pfm": ("pnm", lambda: cv_encode(photo().astype(np.float32) / 255, ".pfm")),
    "pam": ("pnm", lambda: cv_encode(photo(), ".pam")),
    "jp2": ("jp2", lambda: cv_encode(photo(), ".jp2")),
    "hdr": ("hdr", lambda: cv_encode(photo().astype(np.float32) / 255, ".hdr")),
}


@pytest.mark.parametrize("name", list(SIZED))
def test_header_size_matches_the_decoded_size(name: str) -> None:
    fmt, build = SIZED[name]
    data = build()
    assert ih.image_format(data) == fmt
    assert ih.header_size(data) == (H, W)
    assert decoded_hw(data) == (H, W)
    assert ih.check_encoded(data, max_pixels=10_000_000) is None


def tiff_entry(order: str, big: bool, tag: int, kind: int, value: int) -> bytes:
    """One IFD entry with a single inline SHORT (3) or LONG (4) value, left-justified in its value field."""
    packed = struct.pack(order + {3: "H", 4: "I"}[kind], value)
    if big:
        return struct.pack(order + "HHQ", tag, kind, 1) + packed.ljust(8, b"\x00")
    return struct.pack(order + "HHI", tag, kind, 1) + packed.ljust(4, b"\x00")


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("big", [False, True], ids=["classic", "bigtiff"])
@pytest.mark.parametrize("kinds", [(3, 3), (4, 4), (3, 4)], ids=["short", "long", "mixed"])
def test_tiff_ifd_by_hand(order: str, big: bool, kinds: tuple[int, int]) -> None:
    """Minimal first IFDs (no pixel data; header_size only): both byte orders, SHORT/LONG values, BigTIFF."""
    prefix = b"II" if order == "<" else b"MM"
    if big:
        head = prefix + struct.pack(order + "HHHQ", 43, 8, 0, 16) + struct.pack(order + "Q", 3)
    else:
        head = prefix + struct.pack(order + "HI", 42, 8) + struct.pack(order + "H", 3)
    entries = [(254, 4, 0), (256, kinds[0], 1234), (257, kinds[1], 567)]
    data = head + b"".join(tiff_entry(order, big, *e) for e in entries) + bytes(8)
    assert ih.image_format(data) == "tiff"
    assert ih.header_size(data) == (567, 1234)
    assert ih.header_size(data[: -8 - (20 if big else 12)]) is None  # the IFD is cut before ImageLength


def test_header_size_accepts_every_input_type() -> None:
    data = cv_encode(photo(), ".png")
    arr = np.frombuffer(data, np.uint8)
    strided = np.repeat(arr, 2)[::2]  # not contiguous: copied once, then read
    assert not strided.flags.c_contiguous
    for value in (data, bytearray(data), memoryview(data), arr, arr.copy(), strided):
        assert ih.header_size(value) == (H, W)
        assert ih.png_check(value).complete


def test_image_format_of_non_images() -> None:
    for data in (b"", b"\xff", b"\xff\xd8", b"hello world", b"BM", b"P7", b"PK\x03\x04" + bytes(40), bytes(100)):
        assert ih.image_format(data) is None
        assert ih.header_size(data) is None
        assert ih.check_encoded(data, 1000) is None
    exr = b"\x76\x2f\x31\x01\x02\x00\x00\x00" + b"dataWindow\x00box2i\x00" + struct.pack("<i4i", 16, 0, 0, W - 1, H - 1)
    assert ih.image_format(exr) == "exr"
    assert ih.header_size(exr + b"\x00") == (H, W)


def test_jpeg_size_is_the_first_frame_not_a_table_or_thumbnail() -> None:
    assert ih.header_size(_jpeg_tables_before_frame()) == (H, W)
    assert ih.header_size(_jpeg_exif_thumbnail()) == (H, W)  # the thumbnail is 16x16


# -- JPEG completeness ---------------------------------------------------------------------------------------


def test_intact_jpegs_are_complete(baseline: bytes, progressive: bytes) -> None:
    for data, scans in ((baseline, 1), (progressive, len(sos_offsets(progressive)))):
        check = ih.jpeg_completeness(data)
        assert check == ih.JpegCheck(True, len(data), 0, "", scans)
        assert ih.is_jpeg(data)
        assert ih.check_encoded(data, 10**9) is None


@pytest.mark.parametrize(
    "tail",
    [mp4_tail(), bytes(4096), b"\xff\xd8\xff\xd9" * 10, b"\xff" * 7, b"\r\n"],
    ids=["motion photo video", "zero padding", "stray SOI/EOI pairs", "fill bytes", "newline"],
)
def test_data_after_eoi_is_trailing_not_damage(baseline: bytes, progressive: bytes, tail: bytes) -> None:
    for data in (baseline, progressive):
        check = ih.jpeg_completeness(data + tail)
        assert check.complete and check.end == len(data) and check.trailing == len(tail), check
        assert ih.check_encoded(data + tail, 10**9) is None
        assert decoded_hw(data + tail) == (240, 320)


def test_second_jpeg_appended_is_trailing(baseline: bytes) -> None:
    second = cv_encode(photo(seed=5), ".jpg")
    check = ih.jpeg_completeness(baseline + second)
    assert check.complete and check.end == len(baseline) and check.trailing == len(second)


TRUNCATED_SENTENCE = "truncated JPEG: the image data stops before its end; re-copy or re-export the file"


def _assert_truncated(data: bytes, scans: int | None = None) -> None:
    check = ih.jpeg_completeness(data)
    assert not check.complete and check.end is None and check.trailing == 0, check
    assert check.reason == ih.JPEG_TRUNCATED
    if scans is not None:
        assert check.scans == scans
    assert ih.check_encoded(data, 10**9) == TRUNCATED_SENTENCE


def test_baseline_cut_mid_scan(baseline: bytes) -> None:
    sos = sos_offsets(baseline)[0]
    for cut in (sos + 20, (sos + len(baseline)) // 2, len(baseline) - 3):
        _assert_truncated(baseline[:cut], scans=1)
    stuffed = baseline.index(b"\xff\x00", sos)
    _assert_truncated(baseline[: stuffed + 1])  # cut between FF and its stuffed 00


def test_cut_after_the_last_scan_before_eoi(baseline: bytes, progressive: bytes) -> None:
    _assert_truncated(baseline[:-2], scans=1)
    _assert_truncated(progressive[:-2], scans=len(sos_offsets(progressive)))
    _assert_truncated(baseline[:-1])  # a lone FF at the end


def test_progressive_cut_between_and_inside_later_scans(progressive: bytes) -> None:
    sos = sos_offsets(progressive)
    _assert_truncated(progressive[: sos[2]], scans=2)  # between scans (tables of scan 3 may be present)
    _assert_truncated(progressive[: sos[2] + 2], scans=2)  # inside the SOS header
    _assert_truncated(progressive[: sos[-1] + 60], scans=len(sos))  # inside the last scan
    _assert_truncated(progressive[: (sos[1] + sos[2]) // 2], scans=2)  # inside a middle scan


def test_truncated_jpeg_followed_by_other_data_is_still_truncated(baseline: bytes) -> None:
    cut = baseline[: len(baseline) // 2]
    _assert_truncated(cut + baseline)  # re-saved over a cut-off copy: the second SOI ends the first image
    _assert_truncated(cut + mp4_tail()[:2000])  # a cut-off motion photo


@pytest.mark.parametrize(
    "marker",
    [b"\xff\x38", b"\xff\xe5\xf0\x00", b"\xff\xc0\x00\x11", b"\xff\xdb\x00\x01"],
    ids=["unknown", "APP5 running past the end", "second SOF", "impossible length"],
)
def test_corrupt_scan_data_is_stepped_over(baseline: bytes, marker: bytes) -> None:
    """A flipped byte in the scan data can look like a marker. libjpeg stops the scan there, fills the rest grey
    with a warning, and OpenCV still returns the image: such a file is not incomplete, only counted."""
    sos = sos_offsets(baseline)[0]
    middle = (sos + len(baseline)) // 2
    data = baseline[:middle] + marker + baseline[middle:]
    check = ih.jpeg_completeness(data)
    assert check.complete and check.end == len(data) and check.stray_markers == 1, check
    assert ih.check_encoded(data, 10**9) is None
    assert decoded_hw(data) == (240, 320)
    _assert_truncated(data[:-2])  # and a cut after it is still seen


def test_unknown_marker_before_the_first_scan_is_damage(baseline: bytes) -> None:
    """libjpeg refuses unknown markers among the headers (OpenCV returns None): a plain sentence instead."""
    data = baseline[:2] + b"\xff\x38\x00\x04ab" + baseline[2:]
    check = ih.jpeg_completeness(data)
    assert not check.complete and check.reason == ih.JPEG_BROKEN
    assert (
        ih.check_encoded(data, 10**9) == "damaged JPEG: its internal structure is broken; re-copy or re-export the file"
    )
    assert decoded_hw(data) is None


def test_truncated_inside_the_header(baseline: bytes) -> None:
    for cut in (3, 4, 10, sos_offsets(baseline)[0] + 3):
        _assert_truncated(baseline[:cut], scans=0)


def test_exif_thumbnail_does_not_hide_a_truncated_image() -> None:
    data = _jpeg_exif_thumbnail()
    assert ih.jpeg_completeness(data).complete
    _assert_truncated(data[:-40])


def test_restart_markers_are_not_the_end_of_a_scan() -> None:
    data = cv_encode(photo(240, 320), ".jpg", (cv2.IMWRITE_JPEG_RST_INTERVAL, 2))
    rst = [m.start() for m in re.finditer(rb"\xff[\xd0-\xd7]", data)]
    assert len(rst) > 10
    assert ih.jpeg_completeness(data) == ih.JpegCheck(True, len(data), 0, "", 1)
    assert ih.check_encoded(data, 10**9) is None
    _assert_truncated(data[: rst[5] + 2], scans=1)  # cut just after a restart marker
    _assert_truncated(data[: rst[-1] + 10], scans=1)


def test_fill_bytes_before_markers(baseline: bytes) -> None:
    filled = baseline[:-2] + b"\xff\xff\xff\xd9"
    check = ih.jpeg_completeness(filled)
    assert check.complete and check.end == len(filled)
    assert decoded_hw(filled) == (240, 320)


def test_jpeg_without_image_data(baseline: bytes) -> None:
    headers = baseline[: sos_offsets(baseline)[0]]
    for data in (headers + b"\xff\xd9", b"\xff\xd8\xff\xd9", b"\xff\xd8\xff\xfe\x00\x04hi\xff\xd9"):
        check = ih.jpeg_completeness(data)
        assert not check.complete and check.reason == ih.JPEG_NO_SCAN
        assert check.end == len(data)
    assert (
        ih.check_encoded(headers + b"\xff\xd9", 10**9) == "damaged JPEG: no image data; re-copy or re-export the file"
    )


def test_jpeg_scan_before_frame_is_damage(baseline: bytes) -> None:
    segments = jpeg_header_segments(baseline)
    no_sof = b"\xff\xd8" + b"".join(baseline[s:e] for code, s, e in segments[:-1] if code != 0xC0)
    data = no_sof + baseline[segments[-1][1] :]
    check = ih.jpeg_completeness(data)
    assert not check.complete and check.reason == ih.JPEG_BROKEN
    assert ih.header_size(data) is None
    assert (
        ih.check_encoded(data, 10**9) == "damaged JPEG: its internal structure is broken; re-copy or re-export the file"
    )


def test_not_a_jpeg(png: bytes) -> None:
    assert not ih.is_jpeg(png)
    assert ih.jpeg_completeness(png) == ih.JpegCheck(False, None, 0, ih.JPEG_NOT, 0)
    assert not ih.is_jpeg(b"\xff\xd8")


def test_large_jpeg_is_walked_correctly() -> None:
    """A 24 MB JPEG-like file: real headers, then one huge scan of random bytes with every FF stuffed as FF 00
    and a restart marker now and then. Walked from the start, not judged by its last bytes."""
    rng = np.random.default_rng(7)
    header = cv_encode(photo(), ".jpg")
    header = header[: jpeg_header_segments(header)[-1][2]]
    body = rng.integers(0, 255, 24 * 1024 * 1024, dtype=np.uint8)  # 0..254: no FF yet
    stuffed = rng.choice(len(body) // 2 - 1, 100_000, replace=False) * 2
    body[stuffed] = 0xFF
    body[stuffed + 1] = 0x00
    restarts = rng.choice(len(body) // 2 - 1, 1000, replace=False) * 2
    body[restarts] = 0xFF
    body[restarts + 1] = 0xD0 + (np.arange(len(restarts)) % 8)
    scan = body.tobytes()
    whole = header + scan + b"\xff\xd9"
    assert ih.jpeg_completeness(whole) == ih.JpegCheck(True, len(whole), 0, "", 1)
    assert ih.jpeg_completeness(np.frombuffer(whole + bytes(1000), np.uint8)).trailing == 1000
    _assert_truncated(header + scan)
    _assert_truncated(header + scan[: len(scan) // 2] + bytes(4096))


# -- PNG structure -------------------------------------------------------------------------------------------


def test_intact_png(png: bytes) -> None:
    check = ih.png_check(png)
    assert check == ih.PngCheck(True, "", False, (), len(png), 0, len(png_chunks(png)))
    assert ih.check_encoded(png, 10**9) is None


def test_png_truncated(png: bytes) -> None:
    chunks = png_chunks(png)
    idat = next(start for kind, start, _ in chunks if kind == b"IDAT")
    iend = chunks[-1][1]
    for cut in (idat + 100, len(png) // 2, iend, len(png) - 1, 20):
        check = ih.png_check(png[:cut])
        assert not check.complete and check.reason == ih.PNG_TRUNCATED and check.end is None, cut
        assert (
            ih.check_encoded(png[:cut], 10**9)
            == "truncated PNG: the file stops before its end; re-copy or re-export the file"
        )


def test_png_bad_crc_in_idat_is_refused(png: bytes) -> None:
    _, start, end = next(c for c in png_chunks(png) if c[0] == b"IDAT")
    for offset in (start + 100, end - 1):  # damaged data, or a damaged stored CRC
        data = flip(png, offset)
        check = ih.png_check(data)
        assert not check.complete and check.bad_crc_critical
        assert check.reason == "damaged PNG: checksum mismatch in its IDAT chunk"
        assert check.end == len(png)  # the walk still finds IEND
        message = ih.check_encoded(data, 10**9)
        assert message == "damaged PNG: checksum mismatch in its IDAT chunk; re-copy or re-export the file"
        assert decoded_hw(data) is None  # libpng refuses it too


def test_png_bad_crc_in_ancillary_chunk_is_accepted() -> None:
    info = PngInfo()
    info.add_text("Comment", "made by a test")
    data = pil_encode(pil_rgb(), "PNG", pnginfo=info)
    _, start, _ = next(c for c in png_chunks(data) if c[0] == b"tEXt")
    data = flip(data, start + 10)
    check = ih.png_check(data)
    assert check.complete and not check.bad_crc_critical and check.bad_crc_ancillary == ("tEXt",)
    assert ih.check_encoded(data, 10**9) is None
    assert decoded_hw(data) == (H, W)  # libpng warns and skips the chunk


def test_png_data_after_iend_is_accepted(png: bytes) -> None:
    tail = mp4_tail() + png
    check = ih.png_check(png + tail)
    assert check.complete and check.end == len(png) and check.trailing == len(tail)
    assert ih.check_encoded(png + tail, 10**9) is None
    assert decoded_hw(png + tail) == (240, 320)


def test_png_structure_damage(png: bytes) -> None:
    chunks = png_chunks(png)
    ihdr = png[8:33]
    text = png_chunk(b"tEXt", b"k\x00v")
    body = b"".join(png[s:e] for kind, s, e in chunks[1:] if kind != b"IDAT")
    cases = {
        png[:8] + text + png[8:]: (ih.PNG_NO_HEADER, "damaged PNG: it does not start with its header chunk"),
        png[:8] + ihdr + body: (ih.PNG_NO_DATA, "damaged PNG: no image data"),
        png[:33] + b"\x00\x00\x00\x04ID!T" + png[41:]: (ih.PNG_BROKEN, "damaged PNG: its chunk structure is broken"),
        png[:33] + b"\xff\xff\xff\xffIDAT" + png[41:]: (ih.PNG_BROKEN, "damaged PNG: its chunk structure is broken"),
    }
    for data, (reason, sentence) in cases.items():
        check = ih.png_check(data)
        assert not check.complete and check.reason == reason
        assert ih.check_encoded(data, 10**9) == f"{sentence}; re-copy or re-export the file"
    assert ih.png_check(cv_encode(photo(), ".jpg")).reason == ih.PNG_NOT


def test_png_ihdr_of_the_wrong_length_is_damage(png: bytes) -> None:
    data = png[:8] + png_chunk(b"IHDR", png[16:29] + b"\x00") + png[33:]
    assert ih.png_check(data).reason == ih.PNG_BROKEN


def test_adversarial_structures_are_left_to_the_decoder(png: bytes, baseline: bytes) -> None:
    """Hundreds of thousands of empty chunks/segments: the walk stops at its cap instead of taking seconds,
    and check_encoded does not pretend to know (None: the decoder decides)."""
    spam = png[:33] + png_chunk(b"tEXt", b"") * 300_000
    assert ih.png_check(spam).reason == ih.PNG_UNDETERMINED
    assert ih.check_encoded(spam, 10**9) is None
    comments = baseline[:2] + b"\xff\xfe\x00\x02" * 200_000 + baseline[2:]
    assert ih.jpeg_completeness(comments).reason == ih.JPEG_UNDETERMINED
    assert ih.check_encoded(comments, 10**9) is None


# -- pixel limits and dimensions -----------------------------------------------------------------------------

BOMB = (
    "the header says 60000x60000 pixels (3600 megapixels), over the 500-megapixel limit; "
    "raise it with --max-pixels if this image is real"
)


@pytest.mark.parametrize("build", [png_with_size, jpeg_with_size], ids=["png", "jpeg"])
def test_pixel_bomb_is_refused_before_decoding(build: Callable[[int, int], bytes]) -> None:
    data = build(60000, 60000)
    assert ih.header_size(data) == (60000, 60000)
    assert ih.check_encoded(data, 500_000_000) == BOMB
    assert ih.check_encoded(data, 0) is None  # 0 disables the limit (then the structure checks run)
    big = build(13400, 9528)
    assert ih.header_size(big) == (9528, 13400)
    assert ih.check_encoded(big, 500_000_000) is None
    message = ih.check_encoded(big, 100_000_000)
    assert message is not None and "13400x9528 pixels (128 megapixels), over the 100-megapixel limit" in message


def test_png_bomb_has_a_valid_crc() -> None:
    check = ih.png_check(png_with_size(60000, 60000))
    assert check.complete, check


def test_just_over_the_limit_shows_distinct_numbers() -> None:
    message = ih.check_encoded(png_with_size(20001, 25000), 500_000_000)
    assert message is not None and "500.025000 megapixels), over the 500.000000-megapixel limit" in message


@pytest.mark.parametrize(
    ("data", "shown"),
    [
        (png_with_size(0, 0), "0x0"),
        (png_with_size(W, 0), f"{W}x0"),
        (jpeg_with_size(W, 0), f"{W}x0"),
        (pil_encode(pil_rgb(), "GIF")[:6] + struct.pack("<HH", 0, 0) + pil_encode(pil_rgb(), "GIF")[10:], "0x0"),
    ],
    ids=["png 0x0", "png zero height", "jpeg zero height", "gif 0x0"],
)
def test_zero_dimensions_are_damage(data: bytes, shown: str) -> None:
    assert ih.check_encoded(data, 10**9) == f"the header says the image is {shown} pixels; the file is damaged"


def test_bmp_negative_width_is_damage() -> None:
    data = bytearray(cv_encode(photo(), ".bmp"))
    struct.pack_into("<i", data, 18, -W)
    assert ih.check_encoded(bytes(data), 10**9) == f"the header says the image is -{W}x{H} pixels; the file is damaged"


def test_a_side_over_the_decoder_limit_is_damage() -> None:
    data = bytearray(cv_encode(photo(), ".bmp"))
    struct.pack_into("<ii", data, 18, ih.MAX_SIDE + 1, 1)
    expected = (
        "the header says the image is 1048577x1 pixels, a side longer than the decoder's limit of 1048576 pixels; "
        "the file is most likely damaged"
    )
    assert ih.check_encoded(bytes(data), 10**12) == expected
    assert ih.check_encoded(png_with_size(1, ih.MAX_SIDE), 10**12) is None


# -- messages ------------------------------------------------------------------------------------------------


def test_every_message_is_one_plain_line(baseline: bytes, progressive: bytes, png: bytes) -> None:
    _, idat, _ = next(c for c in png_chunks(png) if c[0] == b"IDAT")
    corpus = [
        baseline[: len(baseline) // 2],
        progressive[:-2],
        baseline[: sos_offsets(baseline)[0]] + b"\xff\xd9",
        baseline[:2] + b"\xff\xda\x00\x08" + bytes(100),
        png[: len(png) // 2],
        flip(png, idat + 50),
        png[:8] + png_chunk(b"tEXt", b"k\x00v") + png[8:],
        png_with_size(60000, 60000),
        jpeg_with_size(60000, 60000),
        png_with_size(0, 0),
        png_with_size(2_000_000, 1),
    ]
    messages = [ih.check_encoded(data, 500_000_000) for data in corpus]
    assert all(messages), messages
    for message in messages:
        assert message is not None
        assert "\n" not in message and message == message.strip()
        for bad in ("cv::", ".cpp", "Assertion", "error: (", "Traceback", "\\x", "libpng", "libjpeg"):
            assert bad not in message, (bad, message)
        assert "0x" not in re.sub(r"-?\d+x-?\d+ pixels", "", message), message


# -- robustness ----------------------------------------------------------------------------------------------

PUBLIC: list[Callable[[ih.Encoded], object]] = [
    ih.image_format,
    ih.header_size,
    ih.jpeg_completeness,
    ih.png_check,
    ih.is_jpeg,
    lambda data: ih.check_encoded(data, 1_000_000),
]

_SEEDS = {
    "jpeg": cv_encode(photo(24, 32), ".jpg"),
    "progressive": pil_encode(pil_rgb(24, 32), "JPEG", progressive=True),
    "png": cv_encode(photo(24, 32), ".png"),
}
_MAGICS = [
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR",
    b"BM\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x28\x00\x00\x00",
    b"GIF89a",
    b"RIFF\x00\x00\x00\x00WEBPVP8X",
    b"RIFF\x00\x00\x00\x00WEBPVP8L",
    b"II*\x00",
    b"MM\x00+\x00\x08\x00\x00",
    b"P6\n",
    b"P7\nWIDTH ",
    b"\x00\x00\x00\x0cjP  \r\n\x87\n",
    b"\xff\x4f\xff\x51",
    b"\x76\x2f\x31\x01",
    b"#?RADIANCE\n\n",
]


def _all_public(data: bytes) -> None:
    for value in (data, np.frombuffer(data, np.uint8)):
        for fn in PUBLIC:
            fn(value)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.sampled_from(_MAGICS), st.binary(max_size=300))
def test_garbage_after_a_magic_never_raises(magic: bytes, tail: bytes) -> None:
    _all_public(magic + tail)
    _all_public(tail)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    st.sampled_from(sorted(_SEEDS)),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
    st.integers(0, 10**6),
)
def test_mutated_images_never_raise(seed: str, edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(_SEEDS[seed])
    for offset, value in edits:
        data[offset % len(data)] = value
    _all_public(bytes(data))
    _all_public(bytes(data[: cut % (len(data) + 1)]))


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("order", ["<", ">"])  # PIL writes little-endian EXIF; the big-endian one by hand below
def test_oriented_size_is_the_decoded_size(orientation: int, order: str) -> None:
    """A JPEG's EXIF orientation, read from its Exif segment without decoding: 5-8 turn the photo a quarter, and
    OpenCV's decode (detect.py's) applies it, so the size a run will decode is the header's, swapped."""
    rng = np.random.default_rng(orientation)
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[ih.EXIF_ORIENTATION] = orientation
    Image.fromarray(rng.integers(0, 255, (48, 80, 3), np.uint8)).save(buf, "JPEG", exif=exif.tobytes())
    data = buf.getvalue()
    if order == ">":  # the same EXIF written big-endian (as many cameras do)
        at = data.index(b"Exif\x00\x00") + 6
        tiff = b"MM" + struct.pack(">HI", 42, 8) + struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1,
                                                                                   orientation, 0) + b"\0\0\0\0"
        seg_len = struct.unpack_from(">H", data, at - 8)[0]
        seg_end = at - 10 + 2 + seg_len
        body = b"Exif\x00\x00" + tiff
        data = data[:at - 8] + struct.pack(">H", len(body) + 2) + body + data[seg_end:]
    assert ih.jpeg_orientation(data) == orientation
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert ih.oriented_size(data) == decoded.shape[:2]
    assert ih.header_size(data) == (48, 80)


def test_orientation_of_what_has_none() -> None:
    rng = np.random.default_rng(0)
    plain = cv2.imencode(".jpg", rng.integers(0, 255, (30, 50, 3), np.uint8))[1].tobytes()
    png = cv2.imencode(".png", rng.integers(0, 255, (30, 50, 3), np.uint8))[1].tobytes()
    for data in (plain, png, b"", b"\xff\xd8\xff", plain[:40]):
        assert ih.jpeg_orientation(data) == 1
    assert ih.oriented_size(plain) == (30, 50) and ih.oriented_size(png) == (30, 50)
