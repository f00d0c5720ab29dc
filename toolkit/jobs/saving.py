"""Saving off the critical path: annotating, encoding and writing each result's outputs run in a bounded thread
pool while inference goes on, and come back in input order.

Order is kept where it matters. A video's annotated frames go into its ``.mp4`` in order, through that video's own
writer thread. The run records an input (its manifest line) only once its outputs exist: outcomes are handed back
in input order, each when its writes are done; a video's frames are handed back together once its ``.mp4`` is
complete, the last one marked ``video_done`` (a killed run redoes an unfinished video). OpenCV releases the GIL
while it draws, encodes and writes, so the pool's threads run beside inference.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from toolkit.engine.core import Result
from toolkit.io.media import VideoSink
from toolkit.io.outputs import annotate
from toolkit.io.store import Store
from toolkit.jobs.records import CropNames, Outcome, RunOptions, write_outputs


class _Entry:
    """Outcomes handed back together, in order, once all their futures (and a video's closing) are done."""

    def __init__(self, futures: list[Future[Outcome]], closing: Future[None] | None = None,
                 video: bool = False, file: str = "") -> None:
        self.futures, self.closing, self.video, self.file = futures, closing, video, file

    def done(self) -> bool:
        return all(f.done() for f in self.futures) and (self.closing is None or self.closing.done())

    def result(self) -> list[Outcome]:
        if self.closing is not None:
            self.closing.result()
        out = [f.result() for f in self.futures]
        if self.video and out:
            out[-1].video_done = True
            if self.file:  # the annotated .mp4, recorded with the video's last frame
                out[-1].files.append(self.file)
        return out


@dataclass
class _Video:
    """A video (or stream) being written: its sink and the one thread that writes its frames in order."""

    key: str
    sink: VideoSink | None
    writer: ThreadPoolExecutor | None
    frames: list[Future[Outcome]] = field(default_factory=list)

    def close(self, finish: bool = True) -> Future[None] | None:
        """Finish the video with its frames (``finish``), or drop the file (a file video cut short)."""
        if self.sink is None or self.writer is None:
            return None
        closing = self.writer.submit(self.sink.close if finish else self.sink.discard)
        self.writer.shutdown(wait=False)  # the queued frames and the closing still run
        return closing


class OutputPool:
    """Writes results' outputs in ``workers`` threads (0: from the core count) with a bounded number in flight;
    :meth:`ready` and :meth:`finish` hand back the outcomes, in input order, whose outputs exist.
    ``taken_crops``: crop names earlier parts of a resumed run used."""

    def __init__(self, opts: RunOptions, out_dir: Store, taken_crops: Iterable[str] = (), workers: int = 0) -> None:
        n = workers or max(2, min(4, os.cpu_count() or 1))
        self.opts, self.out_dir = opts, out_dir
        self.pool = ThreadPoolExecutor(n, thread_name_prefix="yolokit-save")
        self.limit = 4 * n + 4  # results (and their images) held at once
        self.inflight: deque[Future[Outcome]] = deque()
        self.pending: deque[_Entry] = deque()
        self.video: _Video | None = None
        self.live: dict[str, _Video] = {}
        self.crops = CropNames(taken_crops) if opts.save.save_crop else None
        self.style = opts.draw

    # ------------------------------------------------------------------------------------------- in
    def submit(self, res: Result) -> None:
        """Queue one result's outputs (results come in input order). Blocks while too many are in flight; raises the
        first write error (a full disk) of what it waited for."""
        ref = res.ref
        names = None
        if self.crops is not None and res.detections is not None and len(res.detections):
            names = self.crops.assign(ref.key, res.detections.class_names)
        if ref.video:
            video = self._stream(ref.video, ref.fps) if ref.live else self._file_video(ref.video, ref.fps)
            fut = self._frame(video, res, names)
            if ref.live:
                self.pending.append(_Entry([fut]))
            else:
                video.frames.append(fut)  # handed back when the video is complete
        else:
            self._end_video()
            fut = self.pool.submit(write_outputs, res, self.opts, self.out_dir, names)
            self.pending.append(_Entry([fut]))
        self.inflight.append(fut)
        while self.inflight and self.inflight[0].done():
            self.inflight.popleft().result()
        while len(self.inflight) > self.limit:
            self.inflight.popleft().result()

    def _new_video(self, key: str, fps: float) -> _Video:
        if self.opts.save.nosave:
            return _Video(key, None, None)
        writer = ThreadPoolExecutor(1, thread_name_prefix="yolokit-video")
        return _Video(key, VideoSink(self.out_dir, f"{key}.mp4", fps), writer)

    def _file_video(self, key: str, fps: float) -> _Video:
        if self.video is None or self.video.key != key:
            self._end_video()
            self.video = self._new_video(key, fps)
        return self.video

    def _stream(self, key: str, fps: float) -> _Video:
        if key not in self.live:
            self.live[key] = self._new_video(key, fps)
        return self.live[key]

    def _end_video(self) -> None:
        video, self.video = self.video, None
        if video is not None:
            file = f"{video.key}.mp4" if video.sink is not None else ""
            self.pending.append(_Entry(video.frames, video.close(), video=True, file=file))

    def _frame(self, video: _Video, res: Result, names: list[str] | None) -> Future[Outcome]:
        if video.sink is None or video.writer is None:
            return self.pool.submit(write_outputs, res, self.opts, self.out_dir, names)
        job = self.pool.submit(self._annotated, res, names)
        return video.writer.submit(_write_frame, video.sink, job)

    def _annotated(self, res: Result, names: list[str] | None) -> tuple[Outcome, np.ndarray | None]:
        oc = write_outputs(res, self.opts, self.out_dir, names)
        d = res.detections
        if d is None or res.image is None:
            return oc, None  # a frame that failed is not in the video
        # its crops are cut (write_outputs): drawn on the frame itself
        return oc, annotate(res.image, d.rounded() if self.opts.save.round_boxes else d, self.style, copy=False)

    # ------------------------------------------------------------------------------------------- out
    def ready(self) -> Iterator[Outcome]:
        """Outcomes whose outputs exist, in input order, without waiting."""
        while self.pending and self.pending[0].done():
            yield from self.pending.popleft().result()

    def finish(self) -> Iterator[Outcome]:
        """Every remaining outcome, in order, once its outputs exist (videos finished and named)."""
        self._end_video()
        for video in self.live.values():
            self.pending.append(_Entry([], video.close()))
        self.live = {}
        while self.pending:
            yield from self.pending.popleft().result()

    def close(self) -> None:
        """Stop: writes under way finish, queued ones are dropped (a resumed run redoes their inputs); live streams'
        videos are finished with the frames they have, a file video's unfinished file is dropped (under its name it
        looked complete, unrecorded; ``--resume`` redoes the video)."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        videos = [(v, v is not self.video) for v in [self.video, *self.live.values()] if v is not None]
        self.video, self.live = None, {}
        for v, live in videos:
            with contextlib.suppress(Exception):
                closing = v.close(finish=live)
                if closing is not None:
                    closing.result(timeout=60)


def _write_frame(sink: VideoSink, job: Future[tuple[Outcome, np.ndarray | None]]) -> Outcome:
    oc, frame = job.result()
    if frame is not None:
        sink.write(frame)
    return oc
