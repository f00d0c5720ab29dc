"""Live streams (``rtsp://``, ``rtmp://``, ``http(s)://``, a webcam index): each read in its own thread, only the
newest frame kept when inference falls behind.

A stream that cannot be opened, or sends no frame, for ``timeout`` seconds is failed with the reason while the
others go on; a stream whose source closes it has ended. :meth:`StreamSet.rounds` hands out the newest frame of
every stream that has one, so several streams are inferred as one batch, and ends when every stream has ended.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from toolkit.io.media import DEFAULT_FPS
from toolkit.io.remote import DEFAULT_TIMEOUT
from toolkit.io.sources import InputRef


@dataclass
class Frame:
    """One frame taken from a stream: its ref (key ``<stream>_<n>``, n counting processed frames from 1) and pixels."""

    ref: InputRef
    image: np.ndarray


PROBE_S = 3.0  # most seconds the reachability probe of a stream's server waits for its connection
_PORTS = {"rtsp": 554, "rtsps": 322, "rtmp": 1935, "rtmps": 443, "http": 80, "https": 443}


def unreachable(address: str, wait: float) -> str | None:
    """Why the server of a stream's ``address`` (``rtsp://host:port/...``) cannot be reached, in a phrase ending
    with the fix: a host name that does not resolve, a connection refused; None when it answers, when it is slow
    (the open's own timeout then decides), and for a webcam or a file."""
    parts = urllib.parse.urlsplit(address)
    try:
        port = parts.port or _PORTS.get(parts.scheme.lower())
    except ValueError:
        return None
    host = parts.hostname
    if not host or port is None:
        return None
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return f"the host {host} is not known (its name does not resolve); check the address"
    try:
        socket.create_connection((host, port), timeout=wait).close()
    except ConnectionRefusedError:
        return f"connection refused by {host}:{port} (nothing listens there); check the address and that the " \
               f"server is running"
    except OSError:
        return None
    if parts.scheme.lower() in ("http", "https"):  # a 404 was tried as a stream until --stream-timeout, unnamed
        return _http_refusal(parts, host, port, wait)
    return None


def _http_refusal(parts: urllib.parse.SplitResult, host: str, port: int, wait: float) -> str | None:
    """The HTTP server's refusal of a stream's address (its status 400 or more), or None."""
    import http.client

    conn_type = http.client.HTTPSConnection if parts.scheme.lower() == "https" else http.client.HTTPConnection
    conn = conn_type(host, port, timeout=wait)
    try:
        conn.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
        answer = conn.getresponse()
        if answer.status >= 400:
            return f"the server answered HTTP {answer.status} {answer.reason}; check the address"
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()
    return None


class LiveStream:
    """One stream, read in a daemon thread. The consumer :meth:`take` s the newest frame; a frame replaced before it
    was taken is counted as dropped."""

    def __init__(self, ref: InputRef, timeout: float, stride: int, wake: threading.Condition) -> None:
        self.ref, self.timeout, self.stride, self.wake = ref, timeout, max(1, stride), wake
        self.state = "opening"  # opening -> live -> ended | failed
        self.reason = ""
        self.fps = 0.0  # the source's frame rate, as it says
        self.read = self.used = self.dropped = 0
        self.started = time.monotonic()
        self.opened_at = 0.0  # when OpenCV opened it: silence is judged from here
        # OpenCV opens FFmpeg streams one at a time (a process-wide lock), so a stream may wait behind others'
        # open timeouts before its own attempt starts; StreamSet widens this to cover all of them
        self.open_grace = timeout
        self.first_t = self.last_t = 0.0
        self._frame: tuple[int, np.ndarray] | None = None
        self._seen_failure = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"yolokit-stream-{ref.key}", daemon=True)

    # ------------------------------------------------------------------------------------------- reader thread
    def _capture(self) -> Any:
        ms = int(self.timeout * 1000)
        src = self.ref.path
        if src.isdigit():
            return cv2.VideoCapture(int(src))
        return cv2.VideoCapture(src, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms,
                                                       cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])

    @property
    def what(self) -> str:
        return "webcam" if self.ref.path.isdigit() else "stream"

    def _run(self) -> None:
        cap = None
        try:
            while not self._stop.is_set():
                cap = self._capture()
                if cap.isOpened():
                    self.opened_at = time.monotonic()
                    break
                cap.release()
                cap = None
                # why, where the server cannot be reached (OpenCV says nothing of it, and trying again until the
                # timeout changes nothing); asked after the open fails, since a server that takes one client (an
                # ffmpeg -listen) would have spent its one connection on the question
                problem = unreachable(self.ref.path, min(self.timeout, PROBE_S))
                if problem is not None:
                    self._finish("failed", f"cannot open the {self.what}: {problem}")
                    return
                if time.monotonic() - self.started > self.timeout:
                    self._finish("failed", f"cannot open the {self.what} within {self.timeout:g} s "
                                           f"(--stream-timeout)")
                    return
                self._stop.wait(0.5)
            if cap is None:
                return
            fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
            self.fps = fps if 0 < fps < 1000 else 0.0
            index = -1
            while not self._stop.is_set():
                if not cap.grab():
                    break
                index += 1
                if (index + 1) % self.stride:
                    continue  # --vid-stride: only every stride-th frame is decoded
                ok, image = cap.retrieve()
                if not ok:
                    continue
                now = time.monotonic()
                with self._lock:
                    if self._frame is not None:
                        self.dropped += 1
                    self._frame = (index, image)
                    self.read += 1
                    self.first_t = self.first_t or now
                    self.last_t = now
                    self.state = "live"
                with self.wake:
                    self.wake.notify_all()
            if not self._stop.is_set():
                silent = time.monotonic() - (self.last_t or self.opened_at)
                if self.read and silent >= 0.9 * self.timeout:  # the read gave up on a source that stopped sending
                    self._finish("failed", f"no frame for {self.timeout:g} s after {self.read} frames (the "
                                           f"{self.what} died; --stream-timeout)")
                elif self.read:
                    self._finish("ended", f"the source closed the stream after {self.read} frames")
                else:
                    self._finish("failed", f"the {self.what} opened but sent no frame")
        except Exception as e:  # noqa: BLE001 - a reader thread must never die silently
            self._finish("failed", f"reading the stream failed ({type(e).__name__})")
        finally:
            if cap is not None:
                cap.release()

    def _finish(self, state: str, reason: str) -> None:
        with self._lock:
            if self.state in ("ended", "failed"):
                return
            self.state, self.reason = state, reason
        self._stop.set()
        with self.wake:
            self.wake.notify_all()

    # ------------------------------------------------------------------------------------------- consumer
    def check_timeout(self, now: float) -> None:
        """Fail the stream when it has been silent for ``timeout`` seconds (its thread is left to give up)."""
        if self.state in ("ended", "failed"):
            return
        if not self.opened_at:
            # still opening: the reader thread fails it after its own attempts; this only guards against an open
            # that never returns, after every stream's open timeout could have passed
            if now - self.started > self.open_grace:
                self._finish("failed", f"cannot open the {self.what} within {self.timeout:g} s (--stream-timeout)")
            return
        since = self.last_t or self.opened_at
        if now - since > self.timeout:
            if self.read:
                self._finish("failed", f"no frame for {self.timeout:g} s after {self.read} frames (the {self.what} "
                                       f"died; --stream-timeout)")
            else:
                self._finish("failed", f"no frame within {self.timeout:g} s (the {self.what} never answered; "
                                       f"--stream-timeout)")

    def take(self) -> Frame | None:
        with self._lock:
            got, self._frame = self._frame, None
            if got is None:
                return None
            self.used += 1
            n = self.used
        index, image = got
        # the annotated video's rate: the source's divided by --vid-stride, as a file video's (it was the source's)
        ref = InputRef(self.ref.path, f"{self.ref.key}_{n}", index, self.ref.key,
                       (self.fps or DEFAULT_FPS) / self.stride, True)
        return Frame(ref, image)

    @property
    def has_frame(self) -> bool:
        return self._frame is not None

    @property
    def finished(self) -> bool:
        with self._lock:
            return self.state in ("ended", "failed") and self._frame is None

    def new_failure(self) -> bool:
        """Whether the stream has failed and this is the first time the consumer asks."""
        if self.state != "failed" or self._seen_failure:
            return False
        self._seen_failure = True
        return True

    def stats(self, now: float) -> dict[str, Any]:
        span = self.last_t - self.first_t
        return {"source": self.ref.path, "key": self.ref.key, "state": self.state, "reason": self.reason,
                "frames_read": self.read, "frames_processed": self.used, "dropped": self.dropped,
                "fps_read": round((self.read - 1) / span, 2) if span > 0 else 0.0,
                "fps_processed": round(self.used / max(now - self.started, 1e-9), 2),
                "source_fps": self.fps}

    def stop(self) -> None:
        self._stop.set()


class StreamSet:
    """Several live streams read together. Use as a context manager: the readers start on entry and are told to stop
    on exit (they are daemon threads, so a reader blocked inside OpenCV never holds the process)."""

    def __init__(self, refs: list[InputRef], timeout: float = DEFAULT_TIMEOUT, stride: int = 1) -> None:
        self.wake = threading.Condition()
        self.streams = [LiveStream(r, timeout, stride, self.wake) for r in refs]
        self.started = time.monotonic()
        self.ended_at = 0.0

    def __enter__(self) -> StreamSet:
        self.started = time.monotonic()
        for s in self.streams:
            s.started = self.started
            s.open_grace = s.timeout * (len(self.streams) + 1)
            s.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.ended_at = time.monotonic()
        for s in self.streams:
            s.stop()
        for s in self.streams:
            s.thread.join(timeout=0.2)

    def rounds(self, poll: float = 0.1) -> Iterator[tuple[list[Frame], list[tuple[InputRef, str]]]]:
        """Until every stream has ended: the newest frame of each stream that has one, and the streams that failed
        since the last round (with the reason). Once one stream has a new frame, the others get up to one frame
        interval (at most 0.1 s) to deliver theirs, so streams are inferred together as one batch. Waits at most
        ``poll`` seconds between checks of the timeouts."""
        while True:
            with self.wake:
                first = 0.0  # when the first waiting frame of this round was seen
                while True:
                    now = time.monotonic()
                    for s in self.streams:
                        s.check_timeout(now)
                    failed = [(s.ref, s.reason) for s in self.streams if s.new_failure()]
                    live = [s for s in self.streams if s.state == "live"]
                    waiting = [s for s in self.streams if s.has_frame]
                    done = all(s.finished for s in self.streams)
                    if waiting and not first:
                        first = now
                    gather = min(0.1, 1.0 / max([s.fps or DEFAULT_FPS for s in live] or [DEFAULT_FPS]))
                    all_in = all(s.has_frame for s in live)
                    if failed or done or (waiting and (all_in or now - first >= gather)):
                        break
                    self.wake.wait(min(poll, gather) if waiting else poll)
                frames = [f for f in (s.take() for s in self.streams) if f is not None]
            if frames or failed:
                yield frames, failed
            if done and not frames:
                return

    def stats(self) -> list[dict[str, Any]]:
        now = self.ended_at or time.monotonic()
        return [s.stats(now) for s in self.streams]
