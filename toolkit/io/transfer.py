"""Bytes from a remote source within three limits: a size cap, a silence timeout and a wall-clock deadline that
holds while bytes trickle in.

The source is anything that hands over what has arrived (:class:`Stream`): an HTTP response
(:mod:`toolkit.io.remote`), or another protocol's reader. :func:`pump` reads it chunk by chunk, checking the clock
and the size on every chunk; a :class:`Deadline` also cuts the source (its ``abort``) from a timer at the deadline,
so a read blocked on a trickle ends there too. :func:`receive` lands the bytes in memory, within a budget shared by
the downloads of a run (:class:`MemoryBudget`), in a buffer sized from the declared length, or in a temporary file
past the budget: a finished :class:`Download` never needs twice its size. Every refusal is one sentence."""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np

from toolkit.errors import InputError
from toolkit.io.files import DEFAULT_MAX_FILE_SIZE, ImageReadError, size_text
from toolkit.io.imageheader import image_format
from toolkit.io.videofile import EBML, is_avi

DEFAULT_TIMEOUT = 30.0  # seconds a server may stay silent (connecting, or between two reads): --stream-timeout
DEFAULT_DEADLINE = 600.0  # seconds a whole download may take, however its bytes arrive: --download-timeout
DEFAULT_MEMORY = 256 << 20  # bytes the downloads of a run hold in memory together: --download-memory
CHUNK = 1 << 16
HEAD = 4096  # the first bytes of a download, kept for sniffing what it is


class FetchError(ImageReadError):
    """A download refused or broken, as one sentence. ``kind`` says which: ``size``, ``deadline``, ``silence``,
    ``broken`` (the connection failed or closed early), ``http`` (an error status, in ``code``), ``redirect``,
    ``refused`` (a URL yolokit does not read), ``content`` (not what was asked for). A ``broken`` or ``silence``
    download, or an HTTP 5xx, may succeed when tried again (:attr:`retryable`)."""

    def __init__(self, url: str, reason: str, kind: str = "broken", code: int | None = None) -> None:
        super().__init__(url, reason)
        self.kind, self.code = kind, code

    @property
    def retryable(self) -> bool:
        return self.kind in ("broken", "silence") or (self.kind == "http" and (self.code or 0) >= 500)


@dataclass(frozen=True)
class FetchLimits:
    """``max_bytes`` per download, ``timeout`` seconds of silence, ``deadline`` seconds for the whole download."""

    max_bytes: int = DEFAULT_MAX_FILE_SIZE
    timeout: float = DEFAULT_TIMEOUT
    deadline: float = DEFAULT_DEADLINE

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise InputError(f"--stream-timeout must be positive, got {self.timeout}")
        if not self.deadline > 0:
            raise InputError(f"--download-timeout must be positive, got {self.deadline}")


class Stream(Protocol):
    """What :func:`pump` reads: ``length`` (the size the source declares, or None), ``read1`` (at most ``n`` of the
    bytes that have arrived, at least one unless the source has ended, b"" at its end; ``TimeoutError`` after the
    silence timeout, ``OSError`` when the transfer breaks), ``abort`` (called from another thread at the deadline:
    a ``read1`` blocked then must return or raise at once) and ``close``."""

    length: int | None

    def read1(self, n: int) -> bytes: ...

    def abort(self) -> None: ...

    def close(self) -> None: ...


class FileStream:
    """A local file read as a :class:`Stream` (a ``file://`` mirror); no HTTP status or headers."""

    status = None
    headers: Mapping[str, str] = MappingProxyType({})

    def __init__(self, path: str) -> None:
        self.file = open(path, "rb")  # noqa: SIM115 - closed by close()
        self.length: int | None = os.fstat(self.file.fileno()).st_size

    def read1(self, n: int) -> bytes:
        return self.file.read1(n)

    def abort(self) -> None:
        pass

    def close(self) -> None:
        self.file.close()


class Deadline:
    """A wall-clock budget of ``seconds``, started when made. At the deadline a timer marks it passed and calls the
    ``abort`` functions given to :meth:`watch` (cutting connections a read may be blocked on). :meth:`close` it when
    the download ends. ``hint`` ends its refusal: how to give a slow server more time."""

    def __init__(self, seconds: float, hint: str = "raise --download-timeout for a slow server") -> None:
        self.seconds, self.hint = seconds, hint
        self.start = time.monotonic()
        self._fired = False
        self._closed = False
        self._aborts: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self.fire)
        self._timer.daemon = True
        self._timer.start()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def remaining(self) -> float:
        return self.seconds - self.elapsed()

    @property
    def passed(self) -> bool:
        return self._fired or self.elapsed() >= self.seconds

    def watch(self, abort: Callable[[], None]) -> None:
        """Call ``abort`` at the deadline (at once when it has passed)."""
        with self._lock:
            if not self._fired:
                self._aborts.append(abort)
                return
        with contextlib.suppress(Exception):
            abort()

    def fire(self) -> None:
        """The deadline is reached (or the download is given up): cut what is being read."""
        with self._lock:
            if self._closed or self._fired:
                return
            self._fired = True
            aborts, self._aborts = self._aborts, []
        for abort in aborts:
            with contextlib.suppress(Exception):
                abort()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._aborts = []
        self._timer.cancel()

    def refusal(self, url: str, got: int) -> FetchError:
        return FetchError(url, f"the download took longer than {self.seconds:g} s ({size_text(got)} received in "
                               f"{self.elapsed():.1f} s); {self.hint}", "deadline")


class MemoryBudget:
    """Bytes that downloads may hold in memory together; ``peak`` is the most ever held."""

    def __init__(self, total: int) -> None:
        self.total, self.used, self.peak = total, 0, 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.total:
                return False
            self.used += n
            self.peak = max(self.peak, self.used)
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


@dataclass
class FetchContext:
    """Where the downloads of a run land and what bounds them: the limits, the memory budget, the folder of the
    temporary files (None: the system's), and the deadlines in progress (:meth:`cut_all` ends them all)."""

    limits: FetchLimits = field(default_factory=FetchLimits)
    memory: MemoryBudget = field(default_factory=lambda: MemoryBudget(DEFAULT_MEMORY))
    directory: str | None = None
    _live: set[Deadline] = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _closed: bool = False

    @contextlib.contextmanager
    def deadline(self) -> Iterator[Deadline]:
        """A :class:`Deadline` of ``limits.deadline`` s for one download, closed when it ends."""
        d = Deadline(self.limits.deadline)
        with self._lock:
            self._live.add(d)
            closed = self._closed
        if closed:
            d.fire()
        try:
            yield d
        finally:
            d.close()
            with self._lock:
                self._live.discard(d)

    def cut_all(self) -> None:
        """End every download in progress now (the run is over), and any started later."""
        with self._lock:
            self._closed = True
            live = list(self._live)
        for d in live:
            d.fire()


def _release(budget: MemoryBudget | None, held: int, path: str | None) -> None:
    if budget is not None and held:
        budget.give(held)
    if path is not None:
        with contextlib.suppress(OSError):
            os.unlink(path)


class Download:
    """A finished download: ``size`` bytes, the first of them in ``head``, held in memory (``data``) or in a
    temporary file (``path``). :meth:`close` gives them back (the memory to the budget, the file deleted); one that
    is dropped unclosed is closed when collected. A copy sent to a worker process carries the bytes or the file's
    name, and never deletes the file: the owner does."""

    def __init__(self, url: str, size: int, head: bytes, data: bytearray | None, path: str | None,
                 budget: MemoryBudget | None = None, held: int = 0, owned: bool = True) -> None:
        self.url, self.size, self.head, self.data, self.path = url, size, head, data, path
        self._finalizer = weakref.finalize(self, _release, budget, held, path if owned else None)

    def array(self) -> np.ndarray:
        """The bytes as a uint8 array (no copy when in memory; read once from the file otherwise)."""
        if self.data is not None:
            return np.frombuffer(self.data, np.uint8)
        if self.path is None:
            raise ImageReadError(self.url, "the download was already released")
        try:
            return np.fromfile(self.path, np.uint8)
        except OSError as e:
            raise ImageReadError(self.url, f"cannot read the downloaded file ({e.strerror or e})") from None

    def close(self) -> None:
        self.data = None
        self._finalizer()

    def __reduce__(self) -> tuple[Any, ...]:
        return Download, (self.url, self.size, self.head, self.data, self.path, None, 0, False)


def os_reason(e: BaseException) -> str:
    """A transport error in a few plain words."""
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, ConnectionResetError):
        return "connection reset"
    if isinstance(e, OSError) and e.strerror:
        return str(e.strerror)
    text = str(e).splitlines()[0] if str(e) else ""
    return text[:120] or type(e).__name__


def pump(stream: Stream, url: str, deadline: Deadline, max_bytes: int, timeout: float,
         write: Callable[[bytes], None], start: int = 0) -> int:
    """Read ``stream`` to its end into ``write``, chunk by chunk, and return the bytes read. Refused (one sentence,
    :class:`FetchError`) past ``max_bytes``, after ``timeout`` s of silence, at the deadline (checked on every
    chunk, and the stream aborted by the deadline's timer while a read waits), or when the source ends before the
    length it declared. ``start``: bytes already received (a resumed download), for the messages."""
    length = stream.length
    if length is not None and length > max_bytes:
        raise FetchError(url, f"the server sends {size_text(start + length)}, over the {size_text(start + max_bytes)}"
                              f" limit; raise it with --max-file-size", "size")
    deadline.watch(stream.abort)
    got = 0
    while True:
        if deadline.passed:
            raise deadline.refusal(url, start + got)
        try:
            chunk = stream.read1(CHUNK)
        except TimeoutError:
            if deadline.passed:
                raise deadline.refusal(url, start + got) from None
            raise FetchError(url, f"the server stopped sending for {timeout:g} s with {size_text(start + got)} "
                                  f"received (--stream-timeout)", "silence") from None
        except OSError as e:
            if deadline.passed:
                raise deadline.refusal(url, start + got) from None
            raise FetchError(url, f"the download broke off after {size_text(start + got)} ({os_reason(e)})") \
                from None
        if deadline.passed:
            raise deadline.refusal(url, start + got)
        if not chunk:
            break
        if got + len(chunk) > max_bytes:
            raise FetchError(url, f"the download passed the {size_text(start + max_bytes)} limit; raise it with "
                                  f"--max-file-size", "size")
        write(chunk)
        got += len(chunk)
    if length is not None and got < length:
        raise FetchError(url, f"the connection closed after {size_text(start + got)} of the "
                              f"{size_text(start + length)} announced")
    return got


class _Sink:
    """Where :func:`receive` puts the bytes: a buffer sized from the declared length, growing within the memory
    budget, or a temporary file once the budget is spent (or from the start, ``to_file``)."""

    def __init__(self, ctx: FetchContext, length: int | None, to_file: bool, suffix: str) -> None:
        self.ctx, self.suffix = ctx, suffix
        self.buf: bytearray | None = None
        self.file: Any = None
        self.path: str | None = None
        self.held = self.got = 0
        self.head = b""
        if to_file:
            self._to_file()
        elif length is not None and length and ctx.memory.take(length):
            self.buf, self.held = bytearray(length), length
        else:
            self.buf = bytearray()

    def _to_file(self) -> None:
        import tempfile

        fd, self.path = tempfile.mkstemp(prefix="yolokit-", suffix=self.suffix, dir=self.ctx.directory)
        self.file = os.fdopen(fd, "wb")
        if self.buf is not None:
            self.file.write(memoryview(self.buf)[:self.got])
            self.buf = None
            self.ctx.memory.give(self.held)
            self.held = 0

    def write(self, chunk: bytes) -> None:
        if len(self.head) < HEAD:
            self.head += chunk[:HEAD - len(self.head)]
        end = self.got + len(chunk)
        if self.buf is not None and end > self.held:
            if self.ctx.memory.take(end - self.held):
                self.held = end
            else:
                self._to_file()
        if self.buf is not None:
            self.buf[self.got:end] = chunk  # fills the sized buffer in place, or grows it
        else:
            self.file.write(chunk)
        self.got = end

    def finish(self, url: str) -> Download:
        if self.file is not None:
            self.file.close()
            self.file = None
            return Download(url, self.got, self.head, None, self.path)
        buf = self.buf if self.buf is not None else bytearray()
        if len(buf) > self.got:
            del buf[self.got:]
        if self.held > self.got:
            self.ctx.memory.give(self.held - self.got)
            self.held = self.got
        return Download(url, self.got, self.head, buf, None, self.ctx.memory, self.held)

    def discard(self) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
        _release(self.ctx.memory if self.buf is not None else None, self.held, self.path)
        self.buf = None


def receive(stream: Stream, url: str, ctx: FetchContext, deadline: Deadline, to_file: bool = False,
            suffix: str = "") -> Download:
    """The whole of ``stream`` as a :class:`Download`, within ``ctx``'s limits and memory budget (see :func:`pump`);
    ``to_file``: always in a temporary file named with ``suffix`` (a video, which its decoder opens by name)."""
    limits = ctx.limits
    length = stream.length
    sink = _Sink(ctx, length if length is not None and length <= limits.max_bytes else None, to_file, suffix)
    try:
        pump(stream, url, deadline, limits.max_bytes, limits.timeout, sink.write)
        return sink.finish(url)
    except BaseException:
        sink.discard()
        raise


def sniff_media(head: bytes) -> str | None:
    """What downloaded bytes are, from their first bytes: ``image``, ``video``, ``html``, ``text``, or None."""
    if image_format(np.frombuffer(head, np.uint8)) is not None:
        return "image"
    if (head[4:8] == b"ftyp" or is_avi(head) or head[:4] == EBML
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


def expect_image(got: Download, url: str, sender: str = "the server sent") -> Download:
    """``got``, when its bytes are an image; otherwise released and refused with what they are (``sender`` starts
    the reason: "the server sent", "the object holds")."""
    kind = sniff_media(got.head)
    if kind != "image":
        got.close()
        if not got.size:
            raise FetchError(url, f"{sender} an empty body" if "server" in sender else "the object is empty",
                             "content")
        hint = "; name it with a video suffix (.mp4) to run its frames" if kind == "video" else ""
        raise FetchError(url, f"{sender} {_what(kind)}, not an image{hint}", "content")
    return got


def expect_video(got: Download, url: str, sender: str = "the server sent") -> Download:
    """``got``, when its bytes are a video (or an animated GIF, which OpenCV reads as one); otherwise released and
    refused."""
    kind = sniff_media(got.head)
    if kind != "video" and got.head[:3] != b"GIF":
        got.close()
        if not got.size:
            raise FetchError(url, f"{sender} an empty body" if "server" in sender else "the object is empty",
                             "content")
        raise FetchError(url, f"{sender} {_what(kind)}, not a video", "content")
    return got
