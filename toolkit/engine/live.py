"""Live streams through the batch routine: each round takes the newest frame of every stream that has one and
infers them as one batch (streams of the same size share a letterboxed shape), as YOLOv5's detect.py batches its
streams. A stream that fails comes back as a failed result for that stream; the others go on."""

from __future__ import annotations

from collections.abc import Iterator

from toolkit.engine.core import BatchRoutine, Item, Result, intra_op_threads
from toolkit.io.streams import StreamSet


def run_live(routine: BatchRoutine, streams: StreamSet, keep_images: bool) -> Iterator[Result]:
    """Results of every processed stream frame (``<stream>_<n>``), and one failed result per failed stream, until
    every stream has ended. ``streams`` must be entered (its readers running)."""
    index = 0
    with intra_op_threads(routine.runner, routine.config.threads):
        for frames, failed in streams.rounds():
            for ref, reason in failed:
                yield Result(ref, error=reason)
            items: list[Item] = []
            for f in frames:
                items.append((index, f.ref, f.image))
                index += 1
            done = routine.process(items, keep_images=keep_images)
            for i, _, _ in items:
                yield done[i]
