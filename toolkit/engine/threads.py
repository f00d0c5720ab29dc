"""Thread mode: inference threads share one loaded model, queues are bounded and results come back in input order.
On a CPU plan without reader threads (every core taken by inference), each inference thread decodes and letterboxes
its own inputs, as a process-mode worker does: one thread decoding for all beside the inference threads would be a
busy thread more than there are cores. Otherwise reader threads decode (a GPU plan: the device infers). Tiled runs:
huge images one at a time, their tile batches over the threads."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from toolkit.engine.core import (
    BatchRoutine,
    Item,
    Payload,
    Prepared,
    Result,
    batch_sizes,
    expand,
    in_order,
    intra_op_threads,
    ordered_map,
)
from toolkit.engine.plan import Plan
from toolkit.engine.tiled import tiled_result
from toolkit.io.sources import InputRef
from toolkit.io.transfer import Download
from toolkit.tiling import TileOptions

if TYPE_CHECKING:
    from toolkit.engine.ahead import HeadStart


def run_tiled(routine: BatchRoutine, items: list[InputRef], plan: Plan, keep_images: bool,
              tile: TileOptions) -> Iterator[Result]:
    """Huge images one at a time (the next one decoding meanwhile: at most two held), their tile batches over
    the inference threads."""
    reader = ThreadPoolExecutor(1, thread_name_prefix="yolokit-read")
    pool = ThreadPoolExecutor(plan.workers, thread_name_prefix="yolokit-infer") if plan.workers > 1 else None

    def load(item: Item) -> tuple[int, InputRef, Payload]:
        index, ref, payload = item
        if payload is None or isinstance(payload, Download):
            got = routine.load_input(ref, fast_decode=False, data=payload)
            payload = got if isinstance(got, str) else got[0]
        return index, ref, payload

    def tiled() -> Iterator[tuple[int, Result]]:
        for index, ref, payload in ordered_map(reader, load, expand(items, routine.config), window=2):
            # two tile batches in flight per inference thread: every thread busy, memory bounded
            result = tiled_result(routine, ref, payload, tile, keep_images, pool, 2 * plan.workers)
            del payload  # release this image before the next one starts decoding
            yield index, result

    try:
        with intra_op_threads(routine.runner, plan.threads):
            yield from in_order(tiled())  # a remote image comes when downloaded: back in input order
    finally:
        reader.shutdown(wait=True, cancel_futures=True)
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


class _Groups:
    """Prepared images grouped by letterboxed shape, shared by the threads that prepare them: a group is handed back
    to run once it holds a batch, or once it is older than a few batches' worth of inputs (bounded memory)."""

    def __init__(self, batch: int) -> None:
        self.batch, self.max_wait = batch, 4 * batch
        self.groups: dict[tuple[int, ...], list[Prepared]] = {}
        self.lock = threading.Lock()

    def add(self, item: Prepared) -> list[list[Prepared]]:
        with self.lock:
            group = self.groups.setdefault(item.chw.shape, [])
            group.append(item)
            ready = [self.groups.pop(item.chw.shape)] if len(group) >= self.batch else []
            stale = [k for k, g in self.groups.items() if g[0].index < item.index - self.max_wait]
            return ready + [self.groups.pop(k) for k in stale]

    def rest(self) -> list[list[Prepared]]:
        with self.lock:
            out, self.groups = list(self.groups.values()), {}
            return out


def _parts(routine: BatchRoutine, plan: Plan, group: list[Prepared]) -> Iterator[list[Prepared]]:
    """A shape group cut into the batch sizes the plan and the runtime take."""
    start = 0
    for size in batch_sizes(len(group), plan.batch, routine.whole_batches):
        yield group[start:start + size]
        start += size


def _run_groups(routine: BatchRoutine, plan: Plan, groups: list[list[Prepared]]) -> list[tuple[int, Result]]:
    return [r for group in groups for part in _parts(routine, plan, group) for r in routine.run_batch(part)]


class _Batcher:
    """Groups prepared images by letterboxed shape into batches (:class:`_Groups`) and runs them (inline, or on the
    inference threads), keeping at most two batches per thread in flight; results by input index."""

    def __init__(self, routine: BatchRoutine, plan: Plan, pool: ThreadPoolExecutor) -> None:
        self.routine, self.plan, self.pool = routine, plan, pool
        self.inline = plan.workers == 1 and plan.readers == 0  # exactly the sequential loop, nothing in parallel
        self.groups = _Groups(max(1, plan.batch))
        self.futures: deque[Future[list[tuple[int, Result]]]] = deque()
        self.results: dict[int, Result] = {}

    def add(self, item: Prepared) -> None:
        for group in self.groups.add(item):
            self.submit(group)
        while len(self.futures) > self.plan.workers * 2:
            self.collect(block=True)
        self.collect(block=False)

    def submit(self, group: list[Prepared]) -> None:
        for part in _parts(self.routine, self.plan, group):
            if self.inline:
                self.results.update(self.routine.run_batch(part))
            else:
                self.futures.append(self.pool.submit(self.routine.run_batch, part))

    def collect(self, block: bool) -> None:
        while self.futures and (block or self.futures[0].done()):
            self.results.update(self.futures.popleft().result())
            block = False

    def finish(self) -> None:
        for group in self.groups.rest():
            self.submit(group)
        while self.futures:
            self.collect(block=True)


def _numbered(routine: BatchRoutine, items: list[InputRef], ahead: HeadStart | None) -> Iterator[Item]:
    """The run's items (:func:`toolkit.engine.core.expand`), with the images decoded ahead handed over."""
    got = expand(items, routine.config)
    return ahead.fill(got, routine.times) if ahead is not None else got


def run_workers(routine: BatchRoutine, items: list[InputRef], plan: Plan, keep_images: bool,
                fast_decode: bool, ahead: HeadStart | None = None) -> Iterator[Result]:
    """Thread mode where the plan's inference threads also decode: each takes an input, decodes and letterboxes it,
    adds it to its shape's group and runs the groups that are ready (batches formed as the other path forms them);
    a bounded number of inputs in flight; results in input order."""
    pool = ThreadPoolExecutor(plan.workers, thread_name_prefix="yolokit-infer")
    groups = _Groups(max(1, plan.batch))
    futures: deque[Future[list[tuple[int, Result]]]] = deque()
    results: dict[int, Result] = {}
    next_out = 0

    def one(item: Item) -> list[tuple[int, Result]]:
        index, got = routine.load_and_prepare(item, keep_images, fast_decode)
        if isinstance(got, Result):
            return [(index, got)]
        return _run_groups(routine, plan, groups.add(got))

    def drain(block: bool) -> Iterator[Result]:
        nonlocal next_out
        while futures and (block or futures[0].done()):
            results.update(futures.popleft().result())
        while next_out in results:
            yield results.pop(next_out)
            next_out += 1

    try:
        with intra_op_threads(routine.runner, plan.threads):
            for item in _numbered(routine, items, ahead):
                futures.append(pool.submit(one, item))
                while len(futures) > 2 * plan.workers * max(1, plan.batch):
                    results.update(futures.popleft().result())
                yield from drain(block=False)
            yield from drain(block=True)
            futures.extend(pool.submit(_run_groups, routine, plan, [g]) for g in groups.rest())
            yield from drain(block=True)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_threads(routine: BatchRoutine, items: list[InputRef], plan: Plan, keep_images: bool,
                fast_decode: bool, ahead: HeadStart | None = None) -> Iterator[Result]:
    """Thread mode: reader threads decode and letterbox, the plan's inference threads run the batches (or, without
    readers, :func:`run_workers`); images a :class:`~toolkit.engine.ahead.HeadStart` decoded are not read again."""
    if not plan.gpu and plan.readers == 0 and plan.workers > 1:
        yield from run_workers(routine, items, plan, keep_images, fast_decode, ahead)
        return
    readers = ThreadPoolExecutor(max(1, plan.readers), thread_name_prefix="yolokit-read")
    infer_pool = ThreadPoolExecutor(plan.workers, thread_name_prefix="yolokit-infer")
    batcher = _Batcher(routine, plan, infer_pool)
    next_out = 0

    def load(it: Item) -> tuple[int, Result | Prepared]:
        return routine.load_and_prepare(it, keep_images, fast_decode)

    try:
        with intra_op_threads(routine.runner, plan.threads):
            prepared: Iterable[tuple[int, Result | Prepared]] = (
                ordered_map(readers, load, _numbered(routine, items, ahead), window=plan.readers * 4)
                if plan.readers else map(load, _numbered(routine, items, ahead)))
            for index, item in prepared:
                if isinstance(item, Result):
                    batcher.results[index] = item
                    batcher.collect(block=False)
                else:
                    batcher.add(item)
                while next_out in batcher.results:
                    yield batcher.results.pop(next_out)
                    next_out += 1
            batcher.finish()
            while next_out in batcher.results:
                yield batcher.results.pop(next_out)
                next_out += 1
    finally:
        readers.shutdown(wait=True, cancel_futures=True)
        infer_pool.shutdown(wait=True, cancel_futures=True)
