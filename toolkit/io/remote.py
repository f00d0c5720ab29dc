"""Inputs behind ``http(s)://`` URLs: downloaded within a size limit and a timeout, their content sniffed (an HTML
error page is not decoded as an image), every failure one plain sentence. Only the standard library's urllib."""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from toolkit.io.files import DEFAULT_MAX_FILE_SIZE, ImageReadError, read_bytes, size_text
from toolkit.io.imageheader import image_format
from toolkit.meta import YOLOKIT_VERSION

DEFAULT_TIMEOUT = 30.0  # seconds a server may stay silent (connecting, or between two reads)
_CHUNK = 1 << 16


def is_url(text: str) -> bool:
    """An ``http://`` or ``https://`` URL (a file to download, or a live stream when it names no media file)."""
    return text[:8].lower().startswith(("http://", "https://"))


def url_name(url: str) -> str:
    """The file name a URL ends with (``https://host/a/b.jpg?x=1`` -> ``b.jpg``); the host when it has none."""
    parts = urllib.parse.urlsplit(url)
    name = os.path.basename(urllib.parse.unquote(parts.path.rstrip("/")))
    return name or parts.hostname or "url"


def url_suffix(url: str) -> str:
    return os.path.splitext(url_name(url))[1].lower()


def sniff_media(head: bytes) -> str | None:
    """What downloaded bytes are, from their first bytes: ``image``, ``video``, ``html``, ``text``, or None."""
    if image_format(np.frombuffer(head, np.uint8)) is not None:
        return "image"
    if (head[4:8] == b"ftyp" or (head[:4] == b"RIFF" and head[8:12] == b"AVI ") or head[:4] == b"\x1aE\xdf\xa3"
            or head[:3] == b"FLV" or head[:4] in (b"\x00\x00\x01\xba", b"0&\xb2u")
            or (len(head) > 188 and head[0] == 0x47 and head[188] == 0x47)):
        return "video"
    text = head[:512].lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "html"
    if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head[:512]):
        return "text"
    return None


def _what(kind: str | None) -> str:
    return {"html": "an HTML page", "text": "text", "video": "a video", "image": "an image"}.get(kind or "",
                                                                                              "unknown data")


def _open(url: str, timeout: float) -> object:
    request = urllib.request.Request(url, headers={"User-Agent": f"yolokit/{YOLOKIT_VERSION}"})
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s) only, checked by the caller
    except urllib.error.HTTPError as e:
        raise ImageReadError(url, f"the server answered HTTP {e.code} {e.reason}".rstrip()) from None
    except urllib.error.URLError as e:
        raise ImageReadError(url, f"cannot connect ({_reason(e.reason, timeout)})") from None
    except TimeoutError:
        raise ImageReadError(url, f"no answer within {timeout:g} s (--stream-timeout)") from None
    except (OSError, ValueError) as e:
        raise ImageReadError(url, f"cannot download ({_reason(e, timeout)})") from None


def _reason(e: object, timeout: float) -> str:
    if isinstance(e, (TimeoutError, socket.timeout)):
        return f"no answer within {timeout:g} s"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, socket.gaierror):
        return "unknown host"
    if isinstance(e, OSError) and e.strerror:
        return str(e.strerror)
    return str(e) or type(e).__name__


def iter_download(url: str, max_bytes: int, timeout: float = DEFAULT_TIMEOUT) -> Iterator[bytes]:
    """The body of ``url`` in chunks. Raises :class:`ImageReadError` with a plain reason: an HTTP error, no
    connection, the server silent for ``timeout`` s (or the whole transfer over 20 times that), more than
    ``max_bytes``."""
    response = _open(url, timeout)
    deadline = time.monotonic() + 20 * timeout
    with contextlib.closing(response):  # type: ignore[type-var]
        length = response.headers.get("Content-Length")  # type: ignore[attr-defined]
        if length and length.isdigit() and int(length) > max_bytes:
            raise ImageReadError(url, f"the server sends {size_text(int(length))}, over the "
                                      f"{size_text(max_bytes)} limit; raise it with --max-file-size")
        got = 0
        while True:
            try:
                chunk = response.read(_CHUNK)  # type: ignore[attr-defined]
            except TimeoutError:
                raise ImageReadError(url, f"the server stopped sending for {timeout:g} s (--stream-timeout)") \
                    from None
            except OSError as e:
                raise ImageReadError(url, f"the download broke off ({_reason(e, timeout)})") from None
            if not chunk:
                return
            got += len(chunk)
            if got > max_bytes:
                raise ImageReadError(url, f"the download passed the {size_text(max_bytes)} limit; raise it with "
                                          f"--max-file-size")
            if time.monotonic() > deadline:
                raise ImageReadError(url, f"the download took over {20 * timeout:g} s; raise --stream-timeout")
            yield chunk


def fetch_image_bytes(url: str, max_bytes: int, timeout: float = DEFAULT_TIMEOUT) -> np.ndarray:
    """An image URL's bytes, refused with the reason when the server sends something else."""
    data = b"".join(iter_download(url, max_bytes, timeout))
    if not data:
        raise ImageReadError(url, "the server sent an empty body")
    kind = sniff_media(data[:4096])
    if kind != "image":
        hint = "; name it with a video suffix (.mp4) to run its frames" if kind == "video" else ""
        raise ImageReadError(url, f"the server sent {_what(kind)}, not an image{hint}")
    return np.frombuffer(data, np.uint8)


def read_source(path: str, max_file_size: int = DEFAULT_MAX_FILE_SIZE,
                timeout: float = DEFAULT_TIMEOUT) -> np.ndarray:
    """An input's encoded bytes: a local file (see :func:`toolkit.io.files.read_bytes`) or an image URL."""
    if is_url(path):
        return fetch_image_bytes(path, max_file_size, timeout)
    return read_bytes(path, max_file_size)


@contextlib.contextmanager
def downloaded_video(url: str, max_bytes: int, timeout: float = DEFAULT_TIMEOUT) -> Iterator[str]:
    """A video URL downloaded to a temporary file (removed afterwards), refused when it is not a video."""
    fd, tmp = tempfile.mkstemp(prefix="yolokit-", suffix=url_suffix(url) or ".mp4")
    try:
        with os.fdopen(fd, "wb") as f:
            head = b""
            for chunk in iter_download(url, max_bytes, timeout):
                if len(head) < 4096:
                    head += chunk[:4096 - len(head)]
                f.write(chunk)
        kind = sniff_media(head)
        if kind != "video" and head[:3] != b"GIF":  # OpenCV reads an animated GIF as a video
            raise ImageReadError(url, f"the server sent {_what(kind)}, not a video" if head
                                 else "the server sent an empty body")
        yield tmp
    finally:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
