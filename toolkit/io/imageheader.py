"""Inspect encoded image bytes before any decoder sees them.

Why this exists: decoders are the wrong place to learn that a file is unusable. A header that claims
60000x60000 pixels makes OpenCV raise an assertion full of library internals (or, under a raised limit,
allocate gigabytes first); a truncated or damaged file fails with no reason at all, or with a warning
printed to stderr that nobody sees. Reading the few header and structure bytes ourselves is cheap, gives
the user one plain sentence with the fix, and keeps the pixel limit ours rather than the decoder's.

Everything here is a pure function of the bytes: no decoding, no I/O, no state. Input is ``bytes`` (or any
bytes-like object) or a uint8 numpy array, viewed once through a ``memoryview`` so that a 40 MB file is
never copied. Garbage input never raises: every read is bounds-checked and an unreadable header gives
``None``. The one loop that could be long (the search through a JPEG's entropy-coded data) is a single
vectorised numpy pass; the Python loops only visit markers and chunks, and those are capped.

The central entry point is :func:`check_encoded`; the other functions are exposed for callers that want the
details (tests, ``inspect``-style reports).
"""

from __future__ import annotations

import re
import struct

from toolkit.io.integrity import (
    JPEG_BROKEN,
    JPEG_NO_SCAN,
    JPEG_NOT,
    JPEG_TRUNCATED,
    JPEG_UNDETERMINED,
    PNG_BROKEN,
    PNG_NO_DATA,
    PNG_NO_HEADER,
    PNG_NOT,
    PNG_SIGNATURE,
    PNG_TRUNCATED,
    PNG_UNDETERMINED,
    Encoded,
    JpegCheck,
    PngCheck,
    as_view,
    head_bytes,
    jpeg_completeness,
    png_check,
    walk_jpeg,
)
from toolkit.io.isobmff import box_at

_REFETCH = "re-copy or re-export the file"
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_J2K_CODESTREAM = b"\xff\x4f\xff\x51"
_EXR_MAGIC = b"\x76\x2f\x31\x01"
_BMP_DIB_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
_PNM_SEP = rb"(?:\s|#[^\r\n]*[\r\n])+"
_PNM_HEADER = re.compile(rb"P[1-6fF]" + _PNM_SEP + rb"(\d{1,20})" + _PNM_SEP + rb"(\d{1,20})")
_PAM_FIELD = re.compile(rb"^[ \t]*(WIDTH|HEIGHT)[ \t]+(\d{1,20})", re.MULTILINE)
_HDR_RESOLUTION = re.compile(rb"\n([-+][XY])[ \t]+(\d{1,20})[ \t]+([-+][XY])[ \t]+(\d{1,20})")
_HEADER_SCAN = 65536  # text headers (PNM comments, Radiance lines) longer than this are not worth reading
# OpenCV refuses any side over 2**20 pixels (CV_IO_MAX_IMAGE_WIDTH/HEIGHT), whatever the pixel limit; libpng
# already stops at 1,000,000. A header claiming more is almost always damage, and raising --max-pixels would
# not help, so it gets its own sentence.
MAX_SIDE = 1 << 20


# -- format --------------------------------------------------------------------------------------------------


def image_format(data: Encoded) -> str | None:
    """The format named by the leading magic bytes ("jpeg", "png", "bmp", "gif", "webp", "tiff", "pnm", "jp2",
    "exr", "hdr"), or None. Magic bytes, not the file suffix, decide which decoder will actually run."""
    return _format(as_view(data))


def _format(mv: memoryview) -> str | None:
    head = head_bytes(mv, 32)
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "tiff"
    if head.startswith(b"BM") and len(head) >= 18 and struct.unpack_from("<I", head, 14)[0] in _BMP_DIB_SIZES:
        return "bmp"
    if len(head) >= 3 and head[0:1] == b"P" and head[1:2] in b"1234567fF" and head[2:3] in b" \t\r\n":
        return "pnm"
    if head.startswith((_JP2_SIGNATURE, _J2K_CODESTREAM)):
        return "jp2"
    if head.startswith(_EXR_MAGIC):
        return "exr"
    if head.startswith((b"#?RADIANCE", b"#?RGBE")):
        return "hdr"
    return None


def is_jpeg(data: Encoded) -> bool:
    """True when the bytes start like a JPEG (SOI followed by a marker)."""
    return head_bytes(as_view(data), 3) == b"\xff\xd8\xff"


# -- size ----------------------------------------------------------------------------------------------------


def header_size(data: Encoded) -> tuple[int, int] | None:
    """(height, width) as the header states it, without decoding; None for an unknown format or an unreadable
    header. This is what a pixel limit must be checked against *before* a decoder allocates the image.

    Values are as stored: a damaged header can give 0 (or, for BMP, a negative width); a JPEG's size ignores
    EXIF orientation; a BMP's negative (top-down) height is returned as its absolute value.
    """
    mv = as_view(data)
    fmt = _format(mv)
    return None if fmt is None else _size(mv, fmt)


def _size(mv: memoryview, fmt: str) -> tuple[int, int] | None:
    readers = {
        "jpeg": _jpeg_size,
        "png": _png_size,
        "bmp": _bmp_size,
        "gif": _gif_size,
        "webp": _webp_size,
        "tiff": _tiff_size,
        "pnm": _pnm_size,
        "jp2": _jp2_size,
        "exr": _exr_size,
        "hdr": _hdr_size,
    }
    return readers[fmt](mv)


def _jpeg_size(mv: memoryview) -> tuple[int, int] | None:
    return walk_jpeg(mv, stop_at_frame=True).size


def _png_size(mv: memoryview) -> tuple[int, int] | None:
    if len(mv) < 24 or mv[12:16] != b"IHDR":
        return None
    width, height = struct.unpack_from(">II", mv, 16)
    return height, width


def _bmp_size(mv: memoryview) -> tuple[int, int] | None:
    if len(mv) < 18:
        return None
    dib = struct.unpack_from("<I", mv, 14)[0]
    if dib == 12:  # BITMAPCOREHEADER: unsigned 16-bit
        if len(mv) < 22:
            return None
        width, height = struct.unpack_from("<HH", mv, 18)
        return height, width
    if dib in _BMP_DIB_SIZES:  # BITMAPINFOHEADER and successors: signed 32-bit, negative height = top-down
        if len(mv) < 26:
            return None
        width, height = struct.unpack_from("<ii", mv, 18)
        return abs(height), width
    return None


def _gif_size(mv: memoryview) -> tuple[int, int] | None:
    if len(mv) < 10:
        return None
    width, height = struct.unpack_from("<HH", mv, 6)
    return height, width


def _webp_size(mv: memoryview) -> tuple[int, int] | None:
    if len(mv) < 30:
        return None
    chunk = mv[12:16].tobytes()
    if chunk == b"VP8 ":  # lossy: 3-byte frame tag, start code, 14-bit sizes (top 2 bits are scaling)
        if mv[23:26] != b"\x9d\x01\x2a":
            return None
        width, height = struct.unpack_from("<HH", mv, 26)
        return height & 0x3FFF, width & 0x3FFF
    if chunk == b"VP8L":  # lossless: signature byte, then 14-bit (size - 1) fields
        if mv[20] != 0x2F:
            return None
        bits = struct.unpack_from("<I", mv, 21)[0]
        return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: 24-bit (canvas size - 1) fields
        width = int.from_bytes(mv[24:27], "little") + 1
        height = int.from_bytes(mv[27:30], "little") + 1
        return height, width
    return None


def _tiff_size(mv: memoryview) -> tuple[int, int] | None:
    """ImageWidth (256) and ImageLength (257) from the first IFD, classic or BigTIFF, either byte order."""
    found = _tiff_tags(mv, (256, 257))
    return (found[257], found[256]) if len(found) == 2 else None


def _tiff_tags(mv: memoryview, wanted: tuple[int, ...]) -> dict[int, int]:
    """The ``wanted`` tags of a TIFF structure's first IFD that hold one inline SHORT, LONG or LONG8 (classic TIFF
    or BigTIFF, either byte order; also the body of a JPEG's Exif segment); those it lacks are left out."""
    n = len(mv)
    if n < 8:
        return {}
    order = "<" if mv[0:2] == b"II" else ">"
    version = struct.unpack_from(order + "H", mv, 2)[0]
    if version == 42:
        ifd = struct.unpack_from(order + "I", mv, 4)[0]
        count_fmt, entry_fmt, entry_size, value_at = "H", "HHI", 12, 8
    elif version == 43:
        if n < 16 or struct.unpack_from(order + "HH", mv, 4) != (8, 0):
            return {}
        ifd = struct.unpack_from(order + "Q", mv, 8)[0]
        count_fmt, entry_fmt, entry_size, value_at = "Q", "HHQ", 20, 12
    else:
        return {}
    count_size = struct.calcsize(count_fmt)
    if ifd + count_size > n:
        return {}
    count = struct.unpack_from(order + count_fmt, mv, ifd)[0]
    first = ifd + count_size
    # A damaged count can send us neither past the data nor into a long loop (real IFDs have < 100 entries).
    count = min(count, (n - first) // entry_size, 4096)
    found: dict[int, int] = {}
    value_formats = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8 (BigTIFF)
    for k in range(count):
        at = first + k * entry_size
        tag, kind, _ = struct.unpack_from(order + entry_fmt, mv, at)
        if tag in wanted and kind in value_formats and tag not in found:
            fmt = value_formats[kind]
            if struct.calcsize(fmt) <= entry_size - value_at:  # the value is stored inline
                found[tag] = struct.unpack_from(order + fmt, mv, at + value_at)[0]
        if len(found) == len(wanted):
            break
    return found


EXIF_ORIENTATION = 0x0112
_SOF_CODES = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def jpeg_orientation(data: Encoded) -> int:
    """A JPEG's EXIF orientation (1-8; 1, as stored, where it has none or the data is not a JPEG): the first Exif
    APP1 segment before the frame header, as decoders read it. 5-8 turn the image a quarter, so the decoded image
    (``cv2.imdecode`` applies the orientation) has the header's height and width swapped."""
    mv = as_view(data)
    n = len(mv)
    if head_bytes(mv, 3) != b"\xff\xd8\xff":
        return 1
    pos = 2
    for _ in range(64):  # the segments before the frame: a few APPn, DQT, DHT
        if pos + 4 > n or mv[pos] != 0xFF:
            return 1
        code = mv[pos + 1]
        if code in _SOF_CODES or code in (0xDA, 0xD9):
            return 1
        end = pos + 2 + ((mv[pos + 2] << 8) | mv[pos + 3])
        if code == 0xE1 and bytes(mv[pos + 4:pos + 10]) == b"Exif\x00\x00":
            value = _tiff_tags(mv[pos + 10:min(end, n)], (EXIF_ORIENTATION,)).get(EXIF_ORIENTATION, 1)
            return value if 1 <= value <= 8 else 1
        pos = end
    return 1


def oriented_size(data: Encoded) -> tuple[int, int] | None:
    """(height, width) of the image as decoded: :func:`header_size`, swapped for a JPEG whose EXIF orientation
    turns it a quarter. A hint (a header can be damaged), not a check."""
    size = header_size(data)
    if size is not None and jpeg_orientation(data) >= 5:
        return size[1], size[0]
    return size


def _pnm_size(mv: memoryview) -> tuple[int, int] | None:
    head = head_bytes(mv, _HEADER_SCAN)
    if head[1:2] == b"7":  # PAM: "WIDTH w" / "HEIGHT h" lines before ENDHDR
        end = head.find(b"ENDHDR")
        fields = {key: int(val) for key, val in _PAM_FIELD.findall(head[: end if end >= 0 else None])}
        if b"WIDTH" in fields and b"HEIGHT" in fields:
            return fields[b"HEIGHT"], fields[b"WIDTH"]
        return None
    m = _PNM_HEADER.match(head)
    return (int(m.group(2)), int(m.group(1))) if m else None


def _jp2_size(mv: memoryview) -> tuple[int, int] | None:
    n = len(mv)
    if mv[0:4] == _J2K_CODESTREAM:  # raw codestream: SIZ marker segment follows SOC
        return _siz_size(mv, 4)
    pos = 0
    for _ in range(64):  # top-level boxes: signature, ftyp, jp2h (holds ihdr), ..., jp2c
        box = box_at(mv, pos)
        if box is None:
            return None
        kind, data_at, box_end = box
        if kind == b"jp2h":
            sub = box_at(mv, data_at)
            if sub is not None and sub[0] == b"ihdr" and sub[1] + 8 <= n:
                height, width = struct.unpack_from(">II", mv, sub[1])
                return height, width
            return None
        if kind == b"jp2c":
            return _siz_size(mv, data_at + 4) if mv[data_at : data_at + 4] == _J2K_CODESTREAM else None
        pos = box_end
    return None


def _siz_size(mv: memoryview, at: int) -> tuple[int, int] | None:
    """Size from a J2K SIZ segment at ``at`` (just past its FF 51): Xsiz - XOsiz by Ysiz - YOsiz."""
    if at + 20 > len(mv):
        return None
    xsiz, ysiz, xo, yo = struct.unpack_from(">IIII", mv, at + 4)
    return ysiz - yo, xsiz - xo


def _exr_size(mv: memoryview) -> tuple[int, int] | None:
    """The ``dataWindow`` box2i attribute of the (first) header: (yMax - yMin + 1, xMax - xMin + 1)."""
    n = len(mv)
    pos = 8  # magic + version/flags
    for _ in range(1024):
        name_end = _find_nul(mv, pos)
        if name_end is None or name_end == pos:  # the empty name ends the header
            return None
        type_end = _find_nul(mv, name_end + 1)
        if type_end is None or type_end + 5 > n:
            return None
        name = mv[pos:name_end].tobytes()
        size = struct.unpack_from("<i", mv, type_end + 1)[0]
        value_at = type_end + 5
        if size < 0 or value_at + size > n:
            return None
        if name == b"dataWindow" and mv[name_end + 1 : type_end] == b"box2i" and size == 16:
            x0, y0, x1, y1 = struct.unpack_from("<iiii", mv, value_at)
            return y1 - y0 + 1, x1 - x0 + 1
        pos = value_at + size
    return None


def _find_nul(mv: memoryview, pos: int) -> int | None:
    """Offset of the NUL ending an EXR attribute name/type starting at ``pos`` (names are < 256 bytes)."""
    k = mv[pos : pos + 256].tobytes().find(b"\x00")
    return None if k < 0 else pos + k


def _hdr_size(mv: memoryview) -> tuple[int, int] | None:
    """Radiance: header lines, a blank line, then a resolution line such as ``-Y 480 +X 640``."""
    head = head_bytes(mv, _HEADER_SCAN)
    blank = head.find(b"\n\n")
    if blank < 0:
        return None
    m = _HDR_RESOLUTION.match(head, blank + 1)
    if m is None or m.group(1)[1:] == m.group(3)[1:]:
        return None
    dims = {m.group(1)[1:]: int(m.group(2)), m.group(3)[1:]: int(m.group(4))}
    return dims[b"Y"], dims[b"X"]


# -- the reader's entry point --------------------------------------------------------------------------------


def _megapixels(pixels: int) -> str:
    mp = pixels / 1e6
    return f"{mp:.0f}" if mp >= 100 else f"{mp:.3g}"


def _limit_message(width: int, height: int, max_pixels: int) -> str:
    image, limit = _megapixels(width * height), _megapixels(max_pixels)
    if image == limit:  # just over the limit: show enough digits that the two differ
        image, limit = f"{width * height / 1e6:.6f}", f"{max_pixels / 1e6:.6f}"
    return (
        f"the header says {width}x{height} pixels ({image} megapixels), over the {limit}-megapixel limit; "
        "raise it with --max-pixels if this image is real"
    )


_JPEG_MESSAGES = {
    JPEG_TRUNCATED: f"truncated JPEG: the image data stops before its end; {_REFETCH}",
    JPEG_NO_SCAN: f"damaged JPEG: no image data; {_REFETCH}",
    JPEG_BROKEN: f"damaged JPEG: its internal structure is broken; {_REFETCH}",
}
_PNG_MESSAGES = {
    PNG_TRUNCATED: f"truncated PNG: the file stops before its end; {_REFETCH}",
    PNG_NO_HEADER: f"damaged PNG: it does not start with its header chunk; {_REFETCH}",
    PNG_BROKEN: f"damaged PNG: its chunk structure is broken; {_REFETCH}",
    PNG_NO_DATA: f"damaged PNG: no image data; {_REFETCH}",
}


def check_encoded(data: Encoded, max_pixels: int) -> str | None:
    """None when the bytes look acceptable to hand to a decoder, else one plain sentence saying what is wrong
    and what to do (the caller prefixes the file name).

    Checked: zero or negative header dimensions, a side over :data:`MAX_SIDE` (OpenCV's own hard limit), the
    header's pixel count against ``max_pixels`` (0 or less disables this limit), and the structure of JPEGs
    and PNGs (see :func:`jpeg_completeness`, :func:`png_check`). Unknown formats, and files too odd to judge
    cheaply, return None: the decoder decides. The size checks come first: a cut-off file that is also too
    big is reported as too big, since that is the first thing the user must decide about.
    """
    mv = as_view(data)
    fmt = _format(mv)
    if fmt is None:
        return None
    size = _size(mv, fmt)
    if size is not None:
        height, width = size
        if height <= 0 or width <= 0:
            return f"the header says the image is {width}x{height} pixels; the file is damaged"
        if max(height, width) > MAX_SIDE:
            return (
                f"the header says the image is {width}x{height} pixels, a side longer than the decoder's limit of "
                f"{MAX_SIDE} pixels; the file is most likely damaged"
            )
        if max_pixels > 0 and width * height > max_pixels:
            return _limit_message(width, height, max_pixels)
    if fmt == "jpeg":
        jpeg = jpeg_completeness(mv)
        return None if jpeg.complete else _JPEG_MESSAGES.get(jpeg.reason)
    if fmt == "png":
        png = png_check(mv)
        if png.complete:
            return None
        if png.bad_crc_critical and png.reason.startswith("damaged PNG: checksum"):
            return f"{png.reason}; {_REFETCH}"
        return _PNG_MESSAGES.get(png.reason)
    return None


__all__ = [  # the structure checks live in toolkit.io.integrity; re-exported as one interface
    "JPEG_BROKEN", "JPEG_NOT", "JPEG_NO_SCAN", "JPEG_TRUNCATED", "JPEG_UNDETERMINED", "MAX_SIDE", "PNG_BROKEN",
    "PNG_NOT", "PNG_NO_DATA", "PNG_NO_HEADER", "PNG_TRUNCATED", "PNG_UNDETERMINED", "Encoded", "JpegCheck",
    "PngCheck", "check_encoded", "header_size", "image_format", "is_jpeg", "jpeg_completeness", "png_check",
]
