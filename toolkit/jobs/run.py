"""The ``yolokit run`` job: detect over a SOURCE, write outputs, account for every input.

Two engines produce the outcomes: :class:`LocalEngine` (this machine's threads or processes) and
:class:`toolkit.jobs.ray.RayJob` (a Ray cluster). Everything else (the run folder, the manifest, resume, the summary,
exit codes) is the same for both.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from toolkit.engine.core import Result
from toolkit.engine.detector import Detector
from toolkit.engine.plan import load_threads
from toolkit.errors import InputError, OutputError
from toolkit.io.outputs import write_json
from toolkit.io.sources import SourceList, list_sources
from toolkit.jobs.manifest import Manifest, increment_dir, prepare_out_dir, read_jsonl, remove_partial_writes
from toolkit.jobs.records import ENGINES, Outcome, RunOptions, write_outputs
from toolkit.jobs.saving import OutputPool

__all__ = ["ENGINES", "LocalEngine", "Outcome", "RunOptions", "RunSummary", "format_summary", "increment_dir",
           "prepare_out_dir", "read_jsonl", "remove_partial_writes", "run", "write_outputs"]


@dataclass
class RunSummary:
    out_dir: str
    weights: str
    backend: str
    source: str
    images: int = 0
    processed: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    detections: int = 0
    per_class: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    img_per_s: float = 0.0
    ms_per_image: dict[str, float] = field(default_factory=dict)
    plan: str = ""
    interrupted: bool = False
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    streams: list[dict[str, Any]] = field(default_factory=list)  # live streams: frames read, processed, dropped, fps

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def count(self, ok: bool, n: int = 0, classes: dict[str, int] | None = None, path: str = "",
              reason: str = "") -> None:
        self.images += 1
        if ok:
            self.processed += 1
            self.detections += n
            for k, v in (classes or {}).items():
                self.per_class[k] = self.per_class.get(k, 0) + int(v)
        else:
            self.failed.append({"path": path, "reason": reason})


ProgressFn = Callable[[int, int, Outcome], None]


class Engine(Protocol):
    """What :func:`run` needs of an engine."""

    weights: str
    backend: str

    def outcomes(self, sources: SourceList) -> Iterator[Outcome]: ...

    def letterbox_differs(self, shape: tuple[int, int]) -> bool: ...

    def describe(self) -> str: ...

    def ms_per_image(self) -> dict[str, float]: ...

    def settings(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class LocalEngine:
    """This machine: a :class:`Detector` over threads or processes (or live streams, batched across streams);
    outputs written by an :class:`OutputPool` as results arrive."""

    def __init__(self, opts: RunOptions, out_dir: Path, detector: Detector | None = None,
                 taken_crops: list[str] | None = None, n_inputs: int | None = None) -> None:
        self.opts, self.out_dir = opts, out_dir
        config = opts.detector_config()
        if detector is None and n_inputs is not None:  # loaded at the plan's intra-op threads: no second copy
            e = opts.engine
            config = replace(config, threads=load_threads(config, n_inputs, e.mode, e.workers))
        self.det = detector or Detector.from_config(config)
        self.owned = detector is None
        self.weights, self.backend = str(self.det.weights), self.det.backend_name
        self.taken_crops = taken_crops or []
        self.live: Any = None  # the StreamSet of a live run

    def results(self, sources: SourceList) -> Iterator[Result]:
        o = self.opts
        if sources.streams:
            yield from self._live(sources)
            return
        yield from self.det.predict_iter(sources, batch=o.engine.batch, workers=o.engine.workers, mode=o.engine.mode,
                                         keep_images=not o.save.nosave, fast_decode=o.detector.fast_decode,
                                         tile=o.tiling, crops=o.save.save_crop, style=o.draw)

    def _live(self, sources: SourceList) -> Iterator[Result]:
        from toolkit.engine.live import run_live
        from toolkit.io.streams import StreamSet

        for ref, reason in sources.failed:
            yield Result(ref, error=reason)
        self.live = StreamSet(sources.streams, self.opts.detector.timeout, self.opts.detector.vid_stride)
        with self.live:
            yield from run_live(self.det.routine, self.live, self.opts.keep_images)

    def outcomes(self, sources: SourceList) -> Iterator[Outcome]:
        saver = OutputPool(self.opts, self.out_dir, self.taken_crops, self.opts.engine.save_workers)
        try:
            for res in self.results(sources):
                saver.submit(res)
                yield from saver.ready()
            yield from saver.finish()
        finally:
            saver.close()

    def letterbox_differs(self, shape: tuple[int, int]) -> bool:
        return self.det.letterbox_differs(shape)

    def describe(self) -> str:
        if self.live is not None:
            return f"live: {len(self.live.streams)} stream(s), the newest frame of each inferred as one batch"
        return self.det.last_plan.describe() if self.det.last_plan else ""

    def ms_per_image(self) -> dict[str, float]:
        return {k: round(v, 2) for k, v in self.det.times.ms_per_image().items()}

    def settings(self) -> dict[str, Any]:
        plan = self.det.last_plan
        out = {"imgsz": list(self.det.imgsz), "precision": self.det.meta.precision,
               "batch": plan.batch if plan else self.opts.engine.batch}
        computes = self.det.meta.extra.get("inference_precision")  # what the runtime computes in (--precision)
        if computes:
            out["inference_precision"] = computes
        return out

    def stream_stats(self) -> list[dict[str, Any]]:
        return self.live.stats() if self.live is not None else []

    def close(self) -> None:
        if self.owned:
            self.det.close()


def _check(opts: RunOptions) -> None:
    """Option checks first: nothing is created for a bad command (each group checked its own values already)."""
    if opts.engine.name != "local" and opts.tiling is not None:
        raise InputError("--tile runs with the local engine only; drop --engine ray or --tile")
    if opts.engine.name != "local" and opts.save.save_crop:
        raise InputError("--save-crop runs with the local engine only; drop --engine ray or --save-crop")


def _run_info(opts: RunOptions, source_label: str) -> dict[str, Any]:
    """The settings a resumed run must share with the interrupted one."""
    d, t = opts.detector, opts.tiling
    info: dict[str, Any] = {"source": source_label, "weights": d.weights, "conf": d.conf, "iou": d.iou,
                            "imgsz": d.imgsz, "max_det": d.max_det, "tile": t.tile if t is not None else 0,
                            "fast_decode": d.fast_decode, "augment": d.augment, "vid_stride": d.vid_stride,
                            "save_csv": opts.save.save_csv, "save_crop": opts.save.save_crop}
    if t is not None:
        info.update(overlap=t.overlap, tile_scales=list(t.scales), tile_merge=t.merge, tile_refocus=t.refocus,
                    tile_near=t.near, full_frame=t.full_frame)
    return info


def _engine(opts: RunOptions, out_dir: Path, detector: Detector | None, records: Manifest,
            sources: SourceList) -> Engine:
    if opts.engine.name == "ray":
        from toolkit.jobs.ray import RayJob

        return RayJob(opts, out_dir)
    return LocalEngine(opts, out_dir, detector, records.crop_names, None if sources.streams else len(sources.items))


def run(opts: RunOptions, progress: ProgressFn | None = None, detector: Detector | None = None) -> RunSummary:
    """Run detection over ``opts.source`` and write the outputs under ``project/name``.

    Every input ends up either processed or in ``failures.jsonl`` and the summary with its reason.
    ``manifest.jsonl`` gets one line per finished input, written after its outputs, so ``opts.resume``
    continues an interrupted run in the same folder: nothing done twice, nothing missing.
    ``progress(done, total, result)`` is called after each input.
    """
    from toolkit.io.samples import sample_paths

    _check(opts)
    source: str | list[str] = opts.source if opts.source is not None else sample_paths()
    sources = list_sources(source)
    folder = opts.folder
    if sources.streams and folder.resume:
        raise InputError(f"{source}: live streams cannot be resumed; run them again without --resume")
    if sources.streams and opts.engine.name != "local":
        raise InputError(f"{source}: live streams run with the local engine only; drop --engine ray")
    out_dir = Path(folder.project) / folder.name if folder.resume else increment_dir(folder.project, folder.name,
                                                                                     folder.exist_ok)
    records = Manifest(out_dir)
    with records.removed_unless_used():  # a run that fails before any input leaves no empty run folder behind
        return _run(opts, sources, out_dir, records, progress, detector)


def _run(opts: RunOptions, sources: SourceList, out_dir: Path, records: Manifest, progress: ProgressFn | None,
         detector: Detector | None) -> RunSummary:
    source_label = str(opts.source or "the sample photos shipped with yolokit")
    records.open(_run_info(opts, source_label), opts.folder.resume)
    done_keys, done_videos = records.done_keys, records.done_videos
    if done_keys:  # a video is skipped once its annotated .mp4 was finished; otherwise it is run again
        sources.items = [r for r in sources.items
                         if (r.key not in done_videos if r.frame == -1 else r.key not in done_keys)]
        sources.failed = [(r, why) for r, why in sources.failed if r.key not in done_keys]
    t0 = time.perf_counter()
    d = opts.detector
    summary = RunSummary(out_dir=str(out_dir), weights=d.weights, backend=str(d.backend or ""), source=source_label,
                         settings={"imgsz": [d.imgsz, d.imgsz], "conf": d.conf, "iou": d.iou, "max_det": d.max_det,
                                   "batch": opts.engine.batch, "precision": "", "fast_decode": d.fast_decode,
                                   "resumed": len(records.previous), "engine": opts.engine.name,
                                   "augment": d.augment, "vid_stride": d.vid_stride})
    for r in records.previous:  # the summary covers the whole run, resumed or not
        summary.count(bool(r.get("ok")), int(r.get("n", 0)), r.get("classes"), str(r.get("path")),
                      str(r.get("reason")))
    total = len(sources.items) + len(sources.failed) + len(records.previous)
    reshaped = 0  # images a fixed-shape artifact letterboxed differently from the .pt
    engine: Engine | None = None
    outcomes: Iterator[Outcome] | None = None
    try:  # Ctrl-C at any point from here (the model still loading included) ends with a summary
        engine = _engine(opts, out_dir, detector, records, sources)
        summary.weights, summary.backend = engine.weights, engine.backend
        outcomes = engine.outcomes(sources)
        with records:
            for oc in outcomes:
                if oc.key in done_keys:  # a video frame finished before the interruption
                    continue
                summary.count(oc.error is None, oc.n, oc.classes, oc.path, oc.error or "")
                reshaped += bool(oc.error is None and oc.shape is not None and engine.letterbox_differs(oc.shape))
                records.record(oc)
                if progress is not None:
                    progress(summary.images, total, oc)
    except KeyboardInterrupt:
        summary.interrupted = True  # what is done is written; the summary says the run was cut short
    except OSError as e:
        raise OutputError(f"{out_dir}: cannot write outputs ({e.strerror or e}); check free space and "
                          f"permissions, then continue with --resume") from None
    finally:
        stop = getattr(outcomes, "close", None)
        if stop is not None:
            stop()  # the local engine's output pool finishes the writes under way and the open videos
        if engine is not None:
            engine.close()
    save = opts.save
    if save.save_json or save.save_csv:
        records.write_predictions(coco=save.save_json, rows=save.save_csv)
    if engine is not None:
        summary.streams = list(getattr(engine, "stream_stats", list)())
    _finish(summary, engine, t0, sum(1 for r in records.previous if r.get("ok")), reshaped)
    write_json(out_dir / "summary.json", summary.to_dict())
    if summary.images == 0 and not summary.interrupted:
        raise InputError(f"{opts.source or 'the sample photos'}: no inputs to process")
    return summary


def _finish(summary: RunSummary, engine: Engine | None, t0: float, resumed_ok: int, reshaped: int) -> None:
    summary.wall_s = time.perf_counter() - t0
    new = summary.processed - resumed_ok
    summary.img_per_s = new / summary.wall_s if summary.wall_s > 0 else 0.0
    summary.per_class = dict(sorted(summary.per_class.items(), key=lambda kv: (-kv[1], kv[0])))
    if engine is None:  # interrupted while the model was still loading
        return
    summary.ms_per_image = engine.ms_per_image()
    summary.plan = engine.describe()
    summary.settings.update(engine.settings())
    if reshaped:
        size = "x".join(str(v) for v in summary.settings.get("imgsz", []))
        summary.notes.append(f"this model has a fixed {size} input: {reshaped} image(s) were letterboxed to it where "
                             f"the .pt letterboxes to a smaller rectangle, so detections can differ from the .pt's; "
                             f"export without --static for the same results")


def format_summary(s: RunSummary) -> str:
    """A short human-readable summary."""
    lines = [f"{s.processed}/{s.images} images processed in {s.wall_s:.1f} s ({s.img_per_s:.1f} img/s), "
             f"{s.detections} detections; backend {s.backend}, weights {os.path.basename(s.weights)}"]
    if s.per_class:
        lines.append("  " + ", ".join(f"{n} {k}" for k, n in list(s.per_class.items())[:12])
                     + (" ..." if len(s.per_class) > 12 else ""))
    if s.plan:
        lines.append(f"  {s.plan}")
    for st in s.streams:
        lines.append(f"  stream {st['source']}: {st['frames_processed']} of {st['frames_read']} frames processed "
                     f"({st['dropped']} dropped), read at {st['fps_read']:.1f} fps, processed at "
                     f"{st['fps_processed']:.1f} fps; {st['reason'] or st['state']}")
    lines.extend(f"  note: {n}" for n in s.notes)
    if s.interrupted:
        lines.append(f"  INTERRUPTED: {s.images} of the inputs were handled before the stop")
    if s.ms_per_image:
        lines.append("  ms/image: " + ", ".join(f"{k} {v:.1f}" for k, v in s.ms_per_image.items()))
    if s.failed:
        lines.append(f"  {len(s.failed)} failed (listed in {s.out_dir}/failures.jsonl):")
        lines.extend(f"    {f['path']}: {f['reason']}" for f in s.failed[:20])
        if len(s.failed) > 20:
            lines.append(f"    ... and {len(s.failed) - 20} more")
    lines.append(f"  results in {s.out_dir}")
    return "\n".join(lines)
