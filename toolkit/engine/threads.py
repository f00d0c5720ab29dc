"""Thread mode: reader threads decode and letterbox, inference threads share one loaded model, queues are bounded
and results come back in input order. Tiled runs: huge images one at a time, their tile batches over the threads."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

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


class _Batcher:
    """Groups prepared images by letterboxed shape into batches and runs them (inline, or on the inference
    threads), keeping at most two batches per thread in flight; results by input index."""

    def __init__(self, routine: BatchRoutine, plan: Plan, pool: ThreadPoolExecutor) -> None:
        self.routine, self.plan, self.pool = routine, plan, pool
        self.inline = plan.workers == 1 and plan.readers == 0  # exactly the sequential loop, nothing in parallel
        self.groups: dict[tuple[int, ...], list[Prepared]] = {}
        self.futures: deque[Future[list[tuple[int, Result]]]] = deque()
        self.results: dict[int, Result] = {}

    def add(self, item: Prepared, index: int) -> None:
        key = item.chw.shape
        group = self.groups.setdefault(key, [])
        group.append(item)
        if len(group) >= self.plan.batch:
            self.submit(self.groups.pop(key))
        max_wait = 4 * self.plan.batch  # a partial group older than this many inputs is flushed (bounded memory)
        for k in [k for k, g in self.groups.items() if g[0].index < index - max_wait]:
            self.submit(self.groups.pop(k))
        while len(self.futures) > self.plan.workers * 2:
            self.collect(block=True)
        self.collect(block=False)

    def submit(self, group: list[Prepared]) -> None:
        start = 0
        for size in batch_sizes(len(group), self.plan.batch, self.routine.whole_batches):
            part, start = group[start:start + size], start + size
            if self.inline:
                self.results.update(self.routine.run_batch(part))
            else:
                self.futures.append(self.pool.submit(self.routine.run_batch, part))

    def collect(self, block: bool) -> None:
        while self.futures and (block or self.futures[0].done()):
            self.results.update(self.futures.popleft().result())
            block = False

    def finish(self) -> None:
        for group in self.groups.values():
            self.submit(group)
        self.groups.clear()
        while self.futures:
            self.collect(block=True)


def run_threads(routine: BatchRoutine, items: list[InputRef], plan: Plan, keep_images: bool,
                fast_decode: bool) -> Iterator[Result]:
    readers = ThreadPoolExecutor(max(1, plan.readers), thread_name_prefix="yolokit-read")
    infer_pool = ThreadPoolExecutor(plan.workers, thread_name_prefix="yolokit-infer")
    batcher = _Batcher(routine, plan, infer_pool)
    next_out = 0

    def load(it: Item) -> tuple[int, Result | Prepared]:
        return routine.load_and_prepare(it, keep_images, fast_decode)

    try:
        with intra_op_threads(routine.runner, plan.threads):
            prepared: Iterable[tuple[int, Result | Prepared]] = (
                ordered_map(readers, load, expand(items, routine.config), window=plan.readers * 4) if plan.readers
                else map(load, expand(items, routine.config)))
            for index, item in prepared:
                if isinstance(item, Result):
                    batcher.results[index] = item
                    batcher.collect(block=False)
                else:
                    batcher.add(item, index)
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
