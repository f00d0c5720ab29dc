"""A hostile HTTP server on 127.0.0.1, for the download tests and ``scripts/remote_bench.py`` (hostile local files
are :mod:`tests.helpers.hostile`).

Routes (the last path segment is a file name, so that yolokit takes the URL for an image or a video):

* ``/file/NAME``: ``files[NAME]`` at once; ``/image/NAME``: the image at once, with a Content-Length;
  ``/image-nocl/NAME``: without one (HTTP/1.0, the body ends when the connection closes).
* ``/slow/NAME``: the image after ``slow_delay`` seconds.
* ``/trickle-cl/NAME``, ``/trickle/NAME`` (no Content-Length), ``/trickle-chunked/NAME`` (one byte per chunk),
  ``/trickle-headers/NAME`` (a header line that never ends): one byte every ``interval`` seconds, for up to
  ``max_seconds``.
* ``/endless/NAME``: the image's first bytes, then zeros as fast as they go, without end; ``/sized/N/NAME``: a body
  of exactly N bytes (the image's first bytes, then zeros) with its Content-Length.
* ``/to/TARGET``: 302 to the URL-quoted TARGET; ``/loop-a/NAME`` and ``/loop-b/NAME`` redirect to each other;
  ``/chain/N/NAME`` to ``/chain/N+1/NAME`` for ever; ``/hops/N/NAME`` N hops down to the image;
  ``/nolocation/NAME``: a 302 without a Location.

``active(route)`` and ``peak(route)`` count the requests of a route in progress now and at most at once."""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hostile: HostileServer


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's naming
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        h = self.server.hostile
        parts = self.path.split("/")
        route = parts[1] if len(parts) > 2 else ""
        with h.lock:
            h.now[route] += 1
            h.most[route] = max(h.most[route], h.now[route])
        try:
            self._serve(h, route, parts)
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass  # the client went away: what a cut download looks like from here
        finally:
            with h.lock:
                h.now[route] -= 1

    def _redirect(self, to: str) -> None:
        self.send_response(302)
        if to:
            self.send_header("Location", to)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _body(self, body: bytes, length: bool = True) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _trickle(self, h: HostileServer, write: Any) -> None:
        end = time.monotonic() + h.max_seconds
        i = 0
        while time.monotonic() < end and not h.stopping.is_set():
            write(h.image[i % len(h.image):i % len(h.image) + 1])
            i += 1
            time.sleep(h.interval)

    def _serve(self, h: HostileServer, route: str, parts: list[str]) -> None:
        name = parts[-1]
        if route == "image":
            self._body(h.image)
        elif route == "file" and name in h.files:
            self._body(h.files[name])
        elif route == "image-nocl":
            self._body(h.image, length=False)
        elif route == "slow":
            time.sleep(h.slow_delay)
            self._body(h.image)
        elif route in ("trickle-cl", "trickle"):
            self.send_response(200)
            if route == "trickle-cl":
                self.send_header("Content-Length", str(len(h.image) * 10))
            self.end_headers()
            self._trickle(h, self.wfile.write)
        elif route == "trickle-chunked":
            self.protocol_version = "HTTP/1.1"
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self._trickle(h, lambda b: self.wfile.write(b"1\r\n" + b + b"\r\n"))
        elif route == "trickle-headers":
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nX-Slow: ")
            self._trickle(h, lambda b: self.wfile.write(b"a"))
        elif route == "endless":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(h.image[:4096])
            block = bytes(1 << 16)
            while not h.stopping.is_set():
                self.wfile.write(block)
        elif route == "sized":
            size = int(parts[2])
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            self.wfile.write(h.image[:min(4096, size)])
            left, block = size - min(4096, size), bytes(1 << 16)
            while left > 0 and not h.stopping.is_set():
                self.wfile.write(block[:left])
                left -= len(block)
        elif route == "to":
            self._redirect(urllib.parse.unquote(parts[2]))
        elif route in ("loop-a", "loop-b"):
            self._redirect(f"/{'loop-b' if route == 'loop-a' else 'loop-a'}/{name}")
        elif route == "chain":
            self._redirect(f"/chain/{int(parts[2]) + 1}/{name}")
        elif route == "hops":
            n = int(parts[2])
            self._redirect(f"/hops/{n - 1}/{name}") if n > 0 else self._body(h.image)
        elif route == "nolocation":
            self._redirect("")
        else:
            self.send_error(404)


class HostileServer:
    """The server above, serving ``image``; a context manager (stopped, its trickles ended, on exit)."""

    def __init__(self, image: bytes, interval: float = 0.1, slow_delay: float = 1.0, max_seconds: float = 120.0,
                 files: dict[str, bytes] | None = None) -> None:
        self.image, self.interval, self.slow_delay, self.max_seconds = image, interval, slow_delay, max_seconds
        self.files = files or {}
        self.lock = threading.Lock()
        self.now: Counter[str] = Counter()
        self.most: Counter[str] = Counter()
        self.stopping = threading.Event()
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.hostile = self
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str) -> str:
        return self.base + path

    def active(self, route: str) -> int:
        with self.lock:
            return self.now[route]

    def peak(self, route: str) -> int:
        with self.lock:
            return self.most[route]

    def __enter__(self) -> HostileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
