"""``HeadStart``: a run's first images decoded while its model loads.

Loading a model keeps one core busy (ONNX Runtime builds its session, OpenVINO compiles, in the loading thread) and,
on a machine of a few cores, leaves the others idle until the first image is read. A head start decodes the first
local image files in one thread meanwhile, exactly as a worker would (:func:`toolkit.io.decode.decode_image`, the
same limits), and hands each to the worker that takes it up: the same pixels, earlier. It stops when the model is
loaded (the image being decoded then is finished and kept: its worker waits for it rather than decode it a second
time beside it, which for a 400-megapixel image doubled the run's memory and time), after ``most`` images
(``yolokit run``: one for each worker to start with) or ``budget`` bytes of decoded pixels, and at the first image
it cannot read (its worker reads it again and reports it as it would have). More than a worker's first image did
not pay: OpenVINO's load, which compiles, slowed by as much as the images decoded ahead saved (100 photos: 16 ahead,
the same wall time and 2 % more CPU; 4 ahead, 2 % faster).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from toolkit.io.decode import decode_image
from toolkit.io.files import ReadLimits, read_bytes
from toolkit.io.remote import is_url
from toolkit.io.sources import InputRef
from toolkit.io.store import is_store_url

if TYPE_CHECKING:
    from toolkit.engine.core import Item, StageTimes

MOST = 16  # images decoded ahead at most by default
BUDGET = 128 << 20  # bytes of decoded pixels held at most (three 4032x3024 photos)


class HeadStart:
    """Decodes ``refs``' first local image files in a thread of its own from construction until :meth:`stop`; a
    run's inputs pass through :meth:`fill`, which hands each decoded image to its input."""

    def __init__(self, refs: Sequence[InputRef], limits: ReadLimits, most: int = MOST, budget: int = BUDGET) -> None:
        self.most = most
        self._lock = threading.Lock()
        self._stopped = False
        self._done: dict[str, tuple[np.ndarray, float]] = {}  # path -> (decoded image, CPU seconds it took)
        self._current: str | None = None  # the path being decoded now
        todo = []
        for ref in refs[:most]:
            if ref.frame is not None or is_url(ref.path) or is_store_url(ref.path):
                break  # the first images only, in the order the run takes them
            todo.append(ref.path)
        self._thread = threading.Thread(target=self._decode, args=(todo, limits, budget),
                                        name="yolokit-headstart", daemon=True)  # a read that hangs holds no exit
        self._thread.start()

    def _decode(self, paths: list[str], limits: ReadLimits, budget: int) -> None:
        held = 0
        for path in paths:
            with self._lock:
                if self._stopped or held >= budget:
                    return
                self._current = path
            t0 = time.thread_time()
            try:
                image = decode_image(read_bytes(path, limits.max_file_size), path, 1, limits.max_pixels)
            except Exception:  # ImageReadError, OSError, MemoryError, ...: its worker reads it and says why
                with self._lock:
                    self._current = None
                return
            with self._lock:  # kept even when stopped meanwhile, and in the same step no longer current
                self._done.setdefault(path, (image, time.thread_time() - t0))
                self._current = None
            held += image.nbytes

    def close(self, timeout: float = 5.0) -> None:
        """Stop and wait (at most ``timeout`` s: one decode, or a read that hangs) for the thread to end: where the
        run ends at once (its model failed to load), so that no thread is still decoding when the interpreter tears
        down (a daemon thread inside OpenCV then aborted the process)."""
        self.stop()
        self._thread.join(timeout)

    def stop(self) -> int:
        """End the head start (the model is loaded): nothing more is decoded or kept. How many images were."""
        with self._lock:
            self._stopped = True
            return len(self._done)

    def fill(self, items: Iterable[Item], times: StageTimes | None = None) -> Iterator[Item]:
        """``items`` with each image decoded ahead as its payload (a payload of None reads the file), its decoding
        counted in ``times``' read stage (as CPU time: the waits for the core the loading model held are not)."""
        self.stop()
        for index, ref, payload in items:
            if payload is None and ref.frame is None and ref.path == self._current:
                self._thread.join()  # being decoded: wait for it rather than decode it again beside it
            got = self._done.pop(ref.path, None) if payload is None and ref.frame is None and self._done else None
            if got is None:
                yield index, ref, payload
                continue
            if times is not None:
                times.add("read", got[1])
            yield index, ref, got[0]
