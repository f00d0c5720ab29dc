"""Remote inputs downloaded ahead, in a small bounded pool, while the run decodes and infers everything else.

:func:`expand_inputs` numbers a run's inputs (each video frame gets its own number) and hands them on as
``(index, ref, payload)``: ``None`` for a local image (read by whoever decodes it), a decoded frame, a reason (the
input failed), or the finished :class:`~toolkit.io.transfer.Download` of a remote image. Remote inputs are
downloaded in a :class:`DownloadPool` of ``workers`` threads, each download within its own deadline, size limit and
the run's memory budget (:mod:`toolkit.io.transfer`).

A remote image is handed on when its download ends, so a slow one does not hold the inputs behind it: their
numbers are still in input order, and the engines hand results back in that order. The run works at most
``window`` inputs past the oldest download still in flight; past that it waits for it (at most its deadline), so
the results held for reordering stay bounded. A remote video is downloaded ahead too, but its frames are numbered
when its turn comes, so the inputs behind it wait for its download (image downloads finishing meanwhile are handed
on).

Other protocols plug in at :func:`fetcher`: a function ``(url, FetchContext) -> Download`` built on
:func:`toolkit.io.transfer.receive` gets the same pool, deadline, limits and memory budget. Objects in a store
(``s3://`` and the other fsspec URLs, :mod:`toolkit.io.store`) are downloaded this way."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field

import numpy as np

from toolkit.errors import InputError
from toolkit.io.files import ImageReadError, read_bytes
from toolkit.io.remote import fetch_image, fetch_video, is_url
from toolkit.io.sources import InputRef, iter_video, video_frames
from toolkit.io.store import fetch_object_image, fetch_object_video, is_store_url
from toolkit.io.transfer import DEFAULT_MEMORY, Download, FetchContext, FetchLimits, MemoryBudget

DEFAULT_WORKERS = 8  # downloads at once: --download-workers
# inputs the run may work past a download still in flight; below process mode's reorder bound (64 results per
# task item, toolkit.engine.processes), which stops pulling inputs once reached
WINDOW = 32

Payload = np.ndarray | str | Download | None
Fetcher = Callable[[str, FetchContext], Download]


@dataclass(frozen=True)
class DownloadSettings:
    """How a run downloads: per-download ``limits``, ``workers`` downloads at once, ``memory`` bytes held in memory
    by them together (past it a download goes to a temporary file), and the ``window`` of inputs worked past a
    download in flight."""

    limits: FetchLimits = field(default_factory=FetchLimits)
    workers: int = DEFAULT_WORKERS
    memory: int = DEFAULT_MEMORY
    window: int = WINDOW

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise InputError(f"--download-workers must be at least 1, got {self.workers}")
        if self.memory < 0:
            raise InputError(f"--download-memory must not be negative, got {self.memory}")
        if self.window < 1:
            raise InputError(f"the download window must be at least 1, got {self.window}")


def fetcher(path: str, video: bool) -> Fetcher | None:
    """How the input at ``path`` is downloaded (a video to a file, an image into memory), or None: a local file."""
    if is_url(path):
        return fetch_video if video else fetch_image
    if is_store_url(path):
        return fetch_object_video if video else fetch_object_image
    return None


def read_input(path: str, limits: FetchLimits) -> np.ndarray:
    """An image input's encoded bytes, read here: a local file (:func:`toolkit.io.files.read_bytes`), or an image
    URL or object downloaded within ``limits`` (a Ray actor's inputs, ``Detector.predict`` given a path)."""
    fetch = fetcher(path, False)
    if fetch is None:
        return read_bytes(path, limits.max_bytes)
    got = fetch(path, FetchContext(limits))
    try:
        return got.array()
    finally:
        got.close()


class DownloadPool:
    """``settings.workers`` download threads sharing one memory budget. :meth:`close` ends the downloads still in
    progress at once (their connections cut) and drops those not started; finished downloads own their bytes."""

    def __init__(self, settings: DownloadSettings) -> None:
        self.settings = settings
        self.ctx = FetchContext(settings.limits, MemoryBudget(settings.memory))
        self._executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="yolokit-download")

    def submit(self, fetch: Fetcher, url: str) -> Future[Download]:
        return self._executor.submit(fetch, url, self.ctx)

    def close(self) -> None:
        self.ctx.cut_all()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> DownloadPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _outcome(future: Future[Download]) -> Download | str:
    try:
        return future.result()
    except ImageReadError as e:
        return e.reason
    except Exception as e:  # a fault of the download itself fails that input alone
        text = str(e).splitlines()[0][:120] if str(e) else ""
        return f"the download failed ({type(e).__name__}{': ' + text if text else ''})"


class _Expansion:
    """The state of one :func:`expand_inputs` pass."""

    def __init__(self, refs: Iterable[InputRef], stride: int, settings: DownloadSettings) -> None:
        self.source, self.stride, self.settings = iter(refs), stride, settings
        self.pool: DownloadPool | None = None
        self.ahead: deque[tuple[InputRef, Future[Download] | None]] = deque()  # read ahead, downloads started
        self.pending: dict[int, tuple[InputRef, Future[Download]]] = {}  # numbered image downloads in flight
        self.started = 0  # downloads started and not handed on
        self.index = 0
        self.exhausted = False

    def fill(self) -> None:
        window = self.settings.window
        while not self.exhausted and len(self.ahead) < window and self.started < window:
            ref = next(self.source, None)
            if ref is None:
                self.exhausted = True
                break
            fetch = fetcher(ref.path, ref.frame == -1)
            future = None
            if fetch is not None:
                if self.pool is None:
                    self.pool = DownloadPool(self.settings)
                future = self.pool.submit(fetch, ref.path)
                self.started += 1
            self.ahead.append((ref, future))

    def finished(self) -> Iterator[tuple[int, InputRef, Payload]]:
        """Image downloads that have ended, handed on."""
        for index in [i for i, (_, f) in self.pending.items() if f.done()]:
            ref, future = self.pending.pop(index)
            self.started -= 1
            yield index, ref, _outcome(future)

    def wait(self, target: Future[Download] | None = None) -> Iterator[tuple[int, InputRef, Payload]]:
        """Until ``target`` has ended (None: until any image download ends), handing on the image downloads that
        end meanwhile."""
        if target is None:
            wait_futures([f for _, f in self.pending.values()], return_when=FIRST_COMPLETED)
            yield from self.finished()
            return
        while True:
            yield from self.finished()
            if target.done():
                return
            wait_futures([target, *(f for _, f in self.pending.values())], return_when=FIRST_COMPLETED)

    def bound(self) -> Iterator[tuple[int, InputRef, Payload]]:
        """At most ``window`` inputs past the oldest download in flight: wait for it beyond that."""
        yield from self.finished()
        while self.pending and self.index - min(self.pending) > self.settings.window:
            yield from self.wait(self.pending[min(self.pending)][1])

    def step(self, ref: InputRef, future: Future[Download] | None) -> Iterator[tuple[int, InputRef, Payload]]:
        if future is not None and ref.frame != -1:  # a remote image: numbered now, handed on when downloaded
            self.pending[self.index] = (ref, future)
            self.index += 1
            return
        if future is None and ref.frame != -1:
            yield self.index, ref, None
            self.index += 1
            return
        if future is None:
            frames = iter_video(ref, self.stride)
        else:  # a remote video: its frames are numbered here, so it is waited for
            yield from self.wait(future)
            self.started -= 1
            got = _outcome(future)
            frames = iter([(ref, None, got)]) if isinstance(got, str) else _frames_of(ref, got, self.stride)
        for fref, frame, reason in frames:
            yield self.index, fref, frame if frame is not None else (reason or "unreadable frame")
            self.index += 1
            yield from self.bound()

    def run(self) -> Iterator[tuple[int, InputRef, Payload]]:
        while True:
            self.fill()
            if self.ahead:
                yield from self.step(*self.ahead.popleft())
                yield from self.bound()
            elif self.pending:
                yield from self.wait()
            else:
                return

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


def _frames_of(ref: InputRef, got: Download, stride: int) -> Iterator[tuple[InputRef, np.ndarray | None, str | None]]:
    try:
        yield from video_frames(ref, str(got.path), stride)
    finally:
        got.close()


def expand_inputs(refs: Iterable[InputRef], stride: int = 1, settings: DownloadSettings | None = None
                  ) -> Iterator[tuple[int, InputRef, Payload]]:
    """Number ``refs`` and hand them on with their payloads (see the module's description), videos expanded into
    every ``stride``-th frame. Remote inputs are downloaded in a pool started at the first of them; closing this
    generator ends the downloads in progress."""
    expansion = _Expansion(refs, stride, settings or DownloadSettings())
    try:
        yield from expansion.run()
    finally:
        expansion.close()
