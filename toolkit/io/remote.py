"""Inputs behind ``http(s)://`` URLs: downloaded within a size limit, a silence timeout and a wall-clock deadline
(:mod:`toolkit.io.transfer`), their content sniffed (an HTML error page is not decoded as an image), every failure
one plain sentence. Only the standard library's urllib and http.client.

Redirects are followed here, not by urllib: every hop is checked as the first URL is (http or https only, at most
:data:`MAX_REDIRECTS` hops, no loop), and every connection a download opens is cut at its deadline, so a server
trickling its headers, its chunk sizes or its body cannot hold a download past it."""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from toolkit.io.files import DEFAULT_MAX_FILE_SIZE, read_bytes
from toolkit.io.transfer import (
    DEFAULT_DEADLINE,
    DEFAULT_TIMEOUT,
    Deadline,
    Download,
    FetchContext,
    FetchError,
    FetchLimits,
    expect_image,
    expect_video,
    os_reason,
    receive,
    sniff_media,
)
from toolkit.meta import YOLOKIT_VERSION

if TYPE_CHECKING:
    import http.client
    import socket
    import urllib.request

__all__ = ["DEFAULT_DEADLINE", "DEFAULT_TIMEOUT", "MAX_REDIRECTS", "HttpStream", "fetch", "fetch_image",
           "fetch_image_bytes", "fetch_video", "is_url", "open_http", "read_source", "sniff_media", "url_name",
           "url_suffix"]

MAX_REDIRECTS = 10
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def is_url(text: str) -> bool:
    """An ``http://`` or ``https://`` URL (a file to download, or a live stream when it names no media file)."""
    return text[:8].lower().startswith(("http://", "https://"))


def url_name(url: str) -> str:
    """The file name a URL ends with (``https://host/a/b.jpg?x=1`` -> ``b.jpg``); the host when it has none; for
    an address that is no valid URL (:func:`url_problem`), the text after its last ``/``."""
    try:
        parts = urllib.parse.urlsplit(url)
        name = os.path.basename(urllib.parse.unquote(parts.path.rstrip("/")))
        return name or parts.hostname or "url"
    except ValueError:
        return url.split("?", 1)[0].split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "url"


def url_problem(url: str) -> str | None:
    """Why ``url`` is no URL a request can be made to (a bracketed IPv6 host left open, a port that is not a
    number, no host, a character a URL cannot hold), in a phrase ending with the fix; None for a valid one."""
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port
        host = parts.hostname
    except ValueError as e:
        return f"not a valid URL ({_short(str(e), 80)}); fix the address"
    if not host:
        return "not a valid URL (no host name); fix the address"
    if any(not c.isprintable() or c.isspace() for c in url):
        return "not a valid URL (it holds a space or a control character; write a space as %20); fix the address"
    return None


def url_suffix(url: str) -> str:
    return os.path.splitext(url_name(url))[1].lower()


def _short(text: str, limit: int = 160) -> str:
    """A server-chosen string (a URL, a reason phrase) fit for a one-line message."""
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ------------------------------------------------------------------------------------------- connections


class _Sockets:
    """The sockets of one download's connections (each redirect opens one), cut together at its deadline. Each is
    held as a duplicate, which stays valid when TLS takes the original over; shutting it down wakes a read blocked
    on the connection."""

    def __init__(self) -> None:
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._cut = False

    def add(self, sock: socket.socket) -> None:
        import socket

        with self._lock:
            self._socks.append(sock.dup())
            if self._cut:  # opened as the deadline passed
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        import socket

        with self._lock:
            self._cut = True
            for s in self._socks:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self._lock:
            for s in self._socks:
                s.close()
            self._socks.clear()


class _Watched:
    """An HTTP connection whose socket is handed to its download's :class:`_Sockets` the moment it exists."""

    def __init__(self, *args: Any, sockets: _Sockets, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sockets = sockets
        self._create_connection = self._watched_connection

    def _watched_connection(self, address: tuple[str, int], timeout: float | None,
                            source_address: tuple[str, int] | None = None) -> socket.socket:
        import socket

        sock = socket.create_connection(address, timeout, source_address)
        self._sockets.add(sock)
        return sock


@functools.cache
def _handlers() -> tuple[type, type]:
    """The http and https handlers whose connections are :class:`_Watched`, made on the first download (http.client,
    ssl and urllib.request cost a run that reads no URL about 20 ms of start-up)."""
    import http.client
    import ssl
    import urllib.request

    class Connection(_Watched, http.client.HTTPConnection):
        pass

    class TLSConnection(_Watched, http.client.HTTPSConnection):
        pass

    class HTTPHandler(urllib.request.HTTPHandler):
        def __init__(self, sockets: _Sockets) -> None:
            super().__init__()
            self.sockets = sockets

        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(functools.partial(Connection, sockets=self.sockets), req)  # type: ignore[arg-type]

    class HTTPSHandler(urllib.request.HTTPSHandler):
        def __init__(self, sockets: _Sockets) -> None:
            super().__init__()
            self.sockets = sockets

        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(functools.partial(TLSConnection, sockets=self.sockets), req,  # type: ignore[arg-type]
                                context=ssl.create_default_context())

    return HTTPHandler, HTTPSHandler


def _opener(sockets: _Sockets) -> urllib.request.OpenerDirector:
    """http and https only (proxies from the environment apply); a redirect comes back as an HTTPError, for
    :func:`open_http` to check and follow."""
    import urllib.request

    plain, tls = _handlers()
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), plain(sockets), tls(sockets),
                    urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


class HttpStream:
    """An HTTP response as a :class:`toolkit.io.transfer.Stream`: ``status``, ``headers``, ``url`` (after
    redirects), ``length`` (None when not declared), ``read1`` (what has arrived), ``abort`` (cuts the
    connection), ``close``."""

    def __init__(self, response: http.client.HTTPResponse, sockets: _Sockets) -> None:
        self.response, self.sockets = response, sockets
        self.status: int = response.status
        self.headers = response.headers
        self.url: str = getattr(response, "url", "")
        self.length: int | None = response.length

    def read1(self, n: int) -> bytes:
        import http.client

        try:
            return self.response.read1(n)
        except http.client.IncompleteRead:
            raise ConnectionError("the connection closed early") from None
        except http.client.HTTPException:
            raise ConnectionError("the server sent a malformed response") from None

    def abort(self) -> None:
        self.sockets.cut()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.response.close()
        self.sockets.close()


def _connect_reason(e: object, timeout: float) -> str:
    if isinstance(e, TimeoutError):
        return f"no answer within {timeout:g} s"
    import socket
    import ssl

    if isinstance(e, socket.gaierror):
        return "unknown host"
    if isinstance(e, ssl.SSLCertVerificationError):  # OpenSSL's words: "[SSL: CERTIFICATE_VERIFY_FAILED] ... (_ssl.c)"
        why = str(getattr(e, "verify_message", "") or "not trusted")
        return f"the server's TLS certificate is not trusted ({why}); fix the server's certificate"
    if isinstance(e, ssl.SSLError):
        if "WRONG_VERSION_NUMBER" in str(e) or "record layer failure" in str(e):
            return "the server does not speak TLS on this port (a plain http:// server?); check the URL's scheme"
        return "the TLS handshake failed; check the URL and the server's TLS set-up"
    if isinstance(e, BaseException):
        return os_reason(e)
    return _short(str(e), 80)


def _ascii_url(url: str) -> str:
    """``url`` with the characters of its path and query a request line cannot hold percent-encoded (UTF-8), as a
    browser sends ``.../ü.jpg``; it was "not a valid URL ('ascii' codec can't encode ...)"."""
    if url.isascii():
        return url
    parts = urllib.parse.urlsplit(url)
    keep = "/%:@!$&'()*+,;=-._~?"
    host = parts.netloc.encode("idna").decode("ascii") if not parts.netloc.isascii() else parts.netloc
    return urllib.parse.urlunsplit((parts.scheme, host, urllib.parse.quote(parts.path, safe=keep),
                                    urllib.parse.quote(parts.query, safe=keep), ""))


def open_http(url: str, timeout: float, deadline: Deadline, headers: Mapping[str, str] | None = None) -> HttpStream:
    """``GET url``, following redirects: each hop must be http or https, new (no loop), and at most
    :data:`MAX_REDIRECTS` of them. Raises :class:`FetchError` in one sentence of yolokit's own; the connections are
    cut at ``deadline``."""
    import http.client
    import urllib.error
    import urllib.request

    if not is_url(url):
        raise FetchError(url, "not an http or https URL", "refused")
    sockets = _Sockets()
    deadline.watch(sockets.cut)
    opener = _opener(sockets)
    sent = {"User-Agent": f"yolokit/{YOLOKIT_VERSION}", "Accept-Encoding": "identity", **(headers or {})}
    current, seen = url, {url}
    try:
        for _ in range(MAX_REDIRECTS + 1):
            if deadline.passed:
                raise deadline.refusal(url, 0)
            wait = max(0.05, min(timeout, deadline.remaining()))
            try:
                response = opener.open(urllib.request.Request(_ascii_url(current), headers=sent), timeout=wait)
                return HttpStream(response, sockets)
            except urllib.error.HTTPError as e:
                location = e.headers.get("Location") if e.code in _REDIRECTS and e.headers else None
                e.close()
                if e.code not in _REDIRECTS:
                    raise FetchError(url, f"the server answered HTTP {e.code} {_short(str(e.reason), 60)}".rstrip(),
                                     "http", e.code) from None
                if not location:
                    raise FetchError(url, f"the server answered HTTP {e.code} (a redirect) without saying where to",
                                     "redirect") from None
                target = urllib.parse.urljoin(current, location.strip())
                if urllib.parse.urlsplit(target).scheme.lower() not in ("http", "https"):
                    raise FetchError(url, f"redirected to {_short(target)}, which yolokit does not follow (only http "
                                          f"and https)", "redirect") from None
                if target in seen:
                    raise FetchError(url, f"the server redirects in a loop (back to {_short(target)})",
                                     "redirect") from None
                seen.add(target)
                current = target
            except urllib.error.URLError as e:
                if deadline.passed:
                    raise deadline.refusal(url, 0) from None
                raise FetchError(url, f"cannot connect ({_connect_reason(e.reason, wait)})") from None
            except TimeoutError:
                if deadline.passed:
                    raise deadline.refusal(url, 0) from None
                raise FetchError(url, f"no answer within {wait:g} s (--stream-timeout)", "silence") from None
            except (OSError, http.client.HTTPException, ValueError) as e:
                if deadline.passed:
                    raise deadline.refusal(url, 0) from None
                if isinstance(e, ValueError) and not isinstance(e, http.client.HTTPException):
                    raise FetchError(url, f"not a valid URL ({_short(str(e), 80)})", "refused") from None
                what = "the server sent a malformed answer" if isinstance(e, http.client.HTTPException) \
                    else f"cannot download ({os_reason(e)})"
                raise FetchError(url, what) from None
        raise FetchError(url, f"the server redirected more than {MAX_REDIRECTS} times (last to {_short(current)}); "
                              f"yolokit follows at most {MAX_REDIRECTS}", "redirect")
    except BaseException:
        sockets.close()
        raise


# ------------------------------------------------------------------------------------------- downloads


def fetch(url: str, ctx: FetchContext, to_file: bool = False, suffix: str = "") -> Download:
    """The body of ``url`` within ``ctx`` (limits, memory budget, temporary folder): see
    :func:`toolkit.io.transfer.receive`."""
    with ctx.deadline() as deadline:
        stream = open_http(url, ctx.limits.timeout, deadline)
        try:
            return receive(stream, url, ctx, deadline, to_file, suffix)
        finally:
            stream.close()


def fetch_image(url: str, ctx: FetchContext) -> Download:
    """An image URL's bytes, refused with the reason when the server sends something else."""
    return expect_image(fetch(url, ctx), url)


def fetch_video(url: str, ctx: FetchContext) -> Download:
    """A video URL downloaded to a temporary file (``path``), refused when it is not a video."""
    return expect_video(fetch(url, ctx, to_file=True, suffix=url_suffix(url) or ".mp4"), url)


def fetch_image_bytes(url: str, max_bytes: int, timeout: float = DEFAULT_TIMEOUT,
                      deadline: float = DEFAULT_DEADLINE) -> np.ndarray:
    """An image URL's encoded bytes (see :func:`fetch_image`), downloaded here."""
    got = fetch_image(url, FetchContext(FetchLimits(max_bytes, timeout, deadline)))
    try:
        return got.array()
    finally:
        got.close()


def read_source(path: str, max_file_size: int = DEFAULT_MAX_FILE_SIZE, timeout: float = DEFAULT_TIMEOUT,
                deadline: float = DEFAULT_DEADLINE) -> np.ndarray:
    """An input's encoded bytes: a local file (see :func:`toolkit.io.files.read_bytes`) or an image URL."""
    if is_url(path):
        return fetch_image_bytes(path, max_file_size, timeout, deadline)
    return read_bytes(path, max_file_size)
