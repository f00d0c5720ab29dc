"""Dynamic batching on an asyncio event loop: requests from many clients are gathered into batches of items that
share a key (the letterbox shape), run on a few model instances in threads, and each result goes back to its own
request. It knows nothing of HTTP, gRPC or models: it runs ``runs[i](items) -> results`` (one callable per instance,
results in the items' order), so a server of another kind can drive the same callables (a Ray Serve replica batches
with ``@serve.batch`` instead).

The policy, per free instance: take the group (same key) whose oldest item waited longest; run it at once when it
holds ``max_batch`` items, when its oldest item has waited ``max_delay``, or when no admitted request is still being
prepared (nothing more can come soon, so waiting would only add latency); otherwise wait for one of those. While
every instance is busy, items gather, so batches grow with the load and a lone request never waits.

Admission (:meth:`Batcher.admit`) bounds the requests in the server (preparing, queued or running) by ``max_queue``,
and the model work a new request would find ahead of it by ``max_wait``: the images in the server times the time per
image the executions took lately (a moving average), over the instances. Past either, :class:`QueueFull` at once, so
that under overload the excess is refused at once and what is admitted is answered within about ``max_wait`` plus its
own execution (a count alone would hold seconds of work on a slow model, or refuse early on a fast one). An item
whose request gave up (timed out, client gone) is cancelled and dropped from the queue; one past its deadline when
its batch forms fails with :class:`Expired`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol


class QueueFull(Exception):
    """The server holds as much as it may (``max_queue`` requests, or ``max_wait`` of work); the message says
    which."""


class Draining(Exception):
    """The server is shutting down and takes no new requests."""


class Expired(Exception):
    """The request's deadline passed before its work started."""


class Observer(Protocol):
    """What the batcher reports (metrics): queue depth changes, and each batch run."""

    def queued(self, depth: int) -> None: ...

    def executed(self, size: int, seconds: float, waits: list[float]) -> None: ...


@dataclass(eq=False)
class _Job:
    item: Any
    key: Hashable
    future: asyncio.Future[Any]
    deadline: float
    queued_at: float


@dataclass
class Ticket:
    """One admitted request: it counts as preparing until :meth:`submit` (or :meth:`prepared`), and in the server
    until released."""

    admission: Admission
    preparing: bool = True
    jobs: list[_Job] = field(default_factory=list)

    def submit(self, items: Sequence[Any], keys: Sequence[Hashable], deadline: float) -> list[asyncio.Future[Any]]:
        """Queue this request's items (prepared; ``keys``: what may share a batch); one future per item, which the
        caller awaits (and cancels when it gives up: the item leaves the queue)."""
        if not isinstance(self.admission, Batcher):
            raise TypeError("this ticket's admission has no batch queue")
        futures = self.admission._enqueue(self, items, keys, deadline)
        self.prepared()
        return futures

    def prepared(self) -> None:
        """This request is no longer being prepared (its work is queued, or sent elsewhere)."""
        if self.preparing:
            self.preparing = False
            self.admission._preparing -= 1
            self.admission._wake.set()

    def release(self) -> None:
        self.prepared()
        for job in self.jobs:
            job.future.cancel()
        self.admission._admitted -= 1
        self.admission._wake.set()


class Admission:
    """How many requests are in the server, bounded by ``max_queue``: :meth:`admit` takes one in (a
    :class:`Ticket`), or refuses it at once (:class:`QueueFull`, or :class:`Draining` once :meth:`drain` was
    called). The :class:`Batcher` is one; a server that batches elsewhere (Ray Serve) admits with one alone."""

    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self._admitted = self._preparing = 0
        self._draining = False
        self._wake = asyncio.Event()

    @property
    def admitted(self) -> int:
        """Requests in the server: being prepared, queued or running."""
        return self._admitted

    def admit(self) -> Ticket:
        """Admit one request, or :class:`QueueFull` / :class:`Draining` at once."""
        if self._draining:
            raise Draining()
        if self._admitted >= self.max_queue:
            raise QueueFull(f"{self.max_queue} requests are in progress (its --max-queue)")
        self._check_room()
        self._admitted += 1
        self._preparing += 1
        return Ticket(self)

    def _check_room(self) -> None:
        """Refuse (:class:`QueueFull`) past a bound other than the count; none here."""

    def drain(self) -> None:
        """Admit nothing more."""
        self._draining = True
        self._wake.set()

    async def idle(self, timeout: float) -> bool:
        """Wait until no request is admitted (or ``timeout`` seconds); whether it is idle."""
        end = time.monotonic() + timeout
        while self._admitted and time.monotonic() < end:
            await asyncio.sleep(0.02)
        return not self._admitted


class Batcher(Admission):
    """The dynamic batcher (see the module's docstring). ``runs``: one callable per model instance, each called in a
    thread of its own with a list of same-key items, returning their results in order. Start it on the running
    loop (:meth:`start`) before submitting."""

    def __init__(self, runs: Sequence[Callable[[list[Any]], list[Any]]], max_batch: int, max_delay: float,
                 max_queue: int, observer: Observer | None = None, max_wait: float = 0.0) -> None:
        if not runs:
            raise ValueError("a batcher needs at least one instance")
        super().__init__(max_queue)
        self.runs, self.max_batch, self.max_delay = list(runs), max(1, max_batch), max_delay
        self.max_wait = max_wait
        self.per_image: float | None = None  # seconds of execution per image, a moving average (None: none ran yet)
        self._running_items = 0
        self.observer = observer
        self._groups: dict[Hashable, list[_Job]] = {}
        self._free = list(range(len(self.runs)))
        self._depth = 0
        self._pool = ThreadPoolExecutor(len(self.runs), thread_name_prefix="yolokit-serve")
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Future[Any]] = set()

    # ------------------------------------------------------------------------------------------ the public face
    @property
    def running(self) -> int:
        """Batches running in the instances' threads."""
        return len(self._running)

    @property
    def depth(self) -> int:
        """Items queued, waiting for an instance."""
        return self._depth

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._dispatch())

    def drain(self) -> None:
        """Admit nothing more; what is queued still runs, without waiting for more."""
        super().drain()

    async def close(self) -> None:
        """Stop dispatching; a batch that is running finishes in its thread."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for group in self._groups.values():
            for job in group:
                job.future.cancel()
        self._groups.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def work_ahead(self) -> float | None:
        """Seconds of model work a request admitted now would find ahead of it: the images being prepared, queued
        or running, times :attr:`per_image`, over the instances (None before any execution was timed)."""
        if self.per_image is None:
            return None
        return (self._preparing + self._depth + self._running_items) * self.per_image / len(self.runs)

    def _check_room(self) -> None:
        ahead = self.work_ahead()
        if (self.max_wait > 0 and ahead is not None and ahead > self.max_wait
                and self._admitted >= self.max_batch * len(self.runs)):
            raise QueueFull(f"about {ahead * 1000:.0f} ms of work is queued ahead (its --max-wait-ms is "
                            f"{self.max_wait * 1000:.0f})")

    def _timed(self, size: int, seconds: float) -> None:
        per = seconds / max(1, size)
        self.per_image = per if self.per_image is None else 0.8 * self.per_image + 0.2 * per

    # ------------------------------------------------------------------------------------------ the queue
    def _enqueue(self, ticket: Ticket, items: Sequence[Any], keys: Sequence[Hashable],
                 deadline: float) -> list[asyncio.Future[Any]]:
        loop = asyncio.get_running_loop()
        now = loop.time()
        futures = []
        for item, key in zip(items, keys, strict=True):
            job = _Job(item, key, loop.create_future(), deadline, now)
            job.future.add_done_callback(functools.partial(self._cancelled, job))
            self._groups.setdefault(key, []).append(job)
            ticket.jobs.append(job)
            futures.append(job.future)
        self._set_depth(self._depth + len(futures))
        self._wake.set()
        return futures

    def _cancelled(self, job: _Job, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            self._forget(job)

    def _forget(self, job: _Job) -> None:
        """A cancelled job leaves the queue (if it is still there)."""
        group = self._groups.get(job.key)
        if group is not None and job in group:
            group.remove(job)
            if not group:
                del self._groups[job.key]
            self._set_depth(self._depth - 1)
        self._wake.set()

    def _set_depth(self, depth: int) -> None:
        self._depth = depth
        if self.observer is not None:
            self.observer.queued(depth)

    def _take(self, now: float) -> tuple[list[_Job], float | None]:
        """The next batch to run, or none and how long to wait for one."""
        if not self._groups or not self._free:
            return [], None
        key, group = min(self._groups.items(), key=lambda kv: kv[1][0].queued_at)
        oldest = group[0].queued_at
        ready = (len(group) >= self.max_batch or now - oldest >= self.max_delay or self._preparing == 0
                 or self._draining)
        if not ready:
            return [], oldest + self.max_delay - now
        batch: list[_Job] = []
        while group and len(batch) < self.max_batch:
            job = group.pop(0)
            if job.future.done():
                continue
            if now > job.deadline:
                job.future.set_exception(Expired())
                continue
            batch.append(job)
        if not group:
            del self._groups[key]
        self._set_depth(sum(len(g) for g in self._groups.values()))
        return batch, 0.0

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            batch, wait = self._take(loop.time())
            if batch:
                self._launch(batch, loop)
                continue
            if wait == 0.0:
                continue  # the group held only dropped jobs: look again
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    def _launch(self, batch: list[_Job], loop: asyncio.AbstractEventLoop) -> None:
        instance = self._free.pop()
        start = loop.time()
        waits = [start - j.queued_at for j in batch]
        items = [j.item for j in batch]
        run = self.runs[instance]

        def timed() -> tuple[list[Any], float]:
            t0 = time.perf_counter()
            out = run(items)
            return out, time.perf_counter() - t0

        fut = loop.run_in_executor(self._pool, timed)
        self._running.add(fut)
        self._running_items += len(batch)

        def finished(f: asyncio.Future[tuple[list[Any], float]]) -> None:
            self._running.discard(f)
            self._running_items -= len(batch)
            self._free.append(instance)
            self._wake.set()
            if f.cancelled():
                for j in batch:
                    j.future.cancel()
                return
            error = f.exception()
            if error is not None:
                for j in batch:
                    if not j.future.done():
                        j.future.set_exception(error)
                return
            results, seconds = f.result()
            self._timed(len(batch), seconds)
            if self.observer is not None:
                self.observer.executed(len(batch), seconds, waits)
            for j, r in zip(batch, results, strict=True):
                if not j.future.done():
                    j.future.set_result(r)

        fut.add_done_callback(finished)
