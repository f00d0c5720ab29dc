"""The ``yolokit run`` job: detect over a SOURCE, write outputs, account for every input.

Two engines produce the outcomes: :class:`LocalEngine` (this machine's threads or processes) and
:class:`toolkit.jobs.ray.RayJob` (a Ray cluster). Everything else (the run folder, the manifest, resume, the summary,
exit codes) is the same for both.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from toolkit.engine.ahead import HeadStart
from toolkit.engine.core import DetectorConfig, Result, image_sizes
from toolkit.engine.detector import Detector
from toolkit.engine.plan import Plan, load_threads, preplan
from toolkit.errors import InputError, OutputError
from toolkit.io.outputs import annotated_suffix, json_bytes
from toolkit.io.sources import InputRef, SourceList, fingerprint, list_sources
from toolkit.io.store import LocalStore, Store, is_store_url, local_path
from toolkit.jobs.lock import LOCK_NAME, FolderLock, StoreLock, claim_store_folder
from toolkit.jobs.manifest import (
    Inputs,
    Manifest,
    claim_out_dir,
    increment_dir,
    output_names,
    prepare_out_dir,
    read_jsonl,
    remove_partial_writes,
    retried_on_resume,
    with_resume_note,
)
from toolkit.jobs.records import ENGINES, Outcome, RunFolder, RunOptions, SaveOptions, run_identity, write_outputs
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
    planned: int = 0  # the images and frames the run was to handle, as far as known when it ended (0: live, unknown)
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    streams: list[dict[str, Any]] = field(default_factory=list)  # live streams: frames read, processed, dropped, fps
    resume: dict[str, list[str]] = field(default_factory=dict)  # a resume's changed, retried and removed inputs

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
TickFn = Callable[[int, int], None]


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

    def __init__(self, opts: RunOptions, out_dir: Store, detector: Detector | None = None,
                 taken_crops: list[str] | None = None, n_inputs: int | None = None,
                 refs: Sequence[InputRef] | None = None) -> None:
        self.opts, self.out_dir = opts, out_dir
        config = opts.detector_config()
        if refs is not None:
            n_inputs = len(refs)
        sizes = None
        self.ahead: HeadStart | None = None
        if detector is None and n_inputs is not None:  # loaded at the plan's intra-op threads: no second copy
            e = opts.engine
            config = replace(config, threads=load_threads(config, n_inputs, e.mode, e.workers))
            plan = _one_by_one(opts, config, n_inputs) if refs is not None else None
            if refs is not None and plan is not None:
                sizes = image_sizes(refs)  # the model may prepare for them as it loads
                # and each worker's first image is decoded meanwhile
                self.ahead = HeadStart(refs, config.limits, most=plan.workers)
        try:
            self.det = detector or Detector.from_config(config, sizes)
        except BaseException:  # the run ends here: nothing may still be decoding when the process ends
            if self.ahead is not None:
                self.ahead.close()
            raise
        if self.ahead is not None:
            self.ahead.stop()
        self.owned = detector is None
        self.weights, self.backend = str(self.det.weights), self.det.backend_name
        self.taken_crops = taken_crops or []
        self.on_result: Callable[[Result], None] | None = None  # told of each result as it is inferred (a tick)
        self.live: Any = None  # the StreamSet of a live run

    def results(self, sources: SourceList) -> Iterator[Result]:
        o = self.opts
        if sources.streams:
            yield from self._live(sources)
            return
        ahead, self.ahead = self.ahead, None  # for the first pass over the inputs only
        yield from self.det.predict_iter(sources, batch=o.engine.batch, workers=o.engine.workers, mode=o.engine.mode,
                                         keep_images=not o.save.nosave, fast_decode=o.detector.fast_decode,
                                         tile=o.tiling, crops=o.save.save_crop, style=o.draw, ahead=ahead)

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
                if self.on_result is not None:
                    self.on_result(res)
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
        deaths = self.det.last_deaths  # told as the Ray engine tells its actors' deaths
        died = (f"; {deaths} worker process(es) died and were started again, their inputs retried"
                if deaths else "")
        return (self.det.last_plan.describe() + died) if self.det.last_plan else ""

    def ms_per_image(self) -> dict[str, float]:
        return {k: round(v, 2) for k, v in self.det.times.ms_per_image().items()}

    def settings(self) -> dict[str, Any]:
        plan = self.det.last_plan
        nms = self.det.nms  # a model with NMS inside takes its export's settings where none was asked for
        out = {"imgsz": list(self.det.imgsz), "fixed_input": not self.det.routine.auto,
               "precision": self.det.meta.precision, "batch": plan.batch if plan else self.opts.engine.batch,
               "conf": nms.conf, "iou": nms.iou, "max_det": nms.max_det}
        computes = self.det.meta.extra.get("inference_precision")  # what the runtime computes in (--precision)
        if computes:
            out["inference_precision"] = computes
        return out

    def stream_stats(self) -> list[dict[str, Any]]:
        return self.live.stats() if self.live is not None else []

    def close(self) -> None:
        if self.owned:
            self.det.close()


def _one_by_one(opts: RunOptions, config: DetectorConfig, n_inputs: int) -> Plan | None:
    """The run's plan where one loaded model runs its images in this process, one to an inference, letterboxed as
    decoded in full (a thread-mode CPU run without --batch, --augment, --tile, --fast-decode or the device pipeline),
    else None: there the loading model is told the sizes of the images coming (their headers read ahead), and the
    first images are decoded as it loads."""
    e = opts.engine
    if opts.tiling is not None or config.augment or config.fast_decode or e.batch > 1 or config.pipeline == "device":
        return None
    plan = preplan(config, n_inputs, e.mode, e.workers)
    return plan if plan is not None and plan.mode == "thread" else None


def _check(opts: RunOptions) -> None:
    """Option checks first: nothing is created for a bad command (each group checked its own values already)."""
    if opts.engine.name != "local" and opts.tiling is not None:
        raise InputError("--tile runs with the local engine only; drop --engine ray or --tile")
    if opts.engine.name != "local" and opts.save.save_crop:
        raise InputError("--save-crop runs with the local engine only; drop --engine ray or --save-crop")
    e = opts.engine
    if e.name != "local" and e.mode != "auto":  # Ray's actors are its processes: --mode process was ignored
        raise InputError(f"--mode {e.mode} applies to the local engine only (Ray runs each actor in a process of its "
                         f"own); drop --mode or --engine ray")
    if e.name == "local":
        ray_only = [flag for flag, value in (("--address", e.address), ("--gpus-per-worker", e.gpus_per_worker),
                                             ("--cpus-per-worker", e.cpus_per_worker)) if value]
        if ray_only:
            raise InputError(f"{', '.join(ray_only)} {'applies' if len(ray_only) == 1 else 'apply'} to --engine "
                             f"ray only; add --engine ray, or drop {'it' if len(ray_only) == 1 else 'them'}")
    if opts.folder.retry_failed and not opts.folder.resume:
        raise InputError("--retry-failed retries the failed inputs of a run it resumes: add --resume")


def _inputs(sources: SourceList) -> Inputs:
    """Every input SOURCE names (failed ones too) by its id, with its path and fingerprint, taken before any is
    read: a file changed while the run reads it is found changed by the next resume."""
    return {ref.key: (ref.path, fingerprint(ref)) for ref in [*sources.items, *(r for r, _ in sources.failed)]}


def _engine(opts: RunOptions, out_dir: Store, detector: Detector | None, records: Manifest,
            sources: SourceList) -> Engine:
    if opts.engine.name == "ray":
        from toolkit.jobs.ray import RayJob

        return RayJob(opts, out_dir)
    if sources.streams:
        return LocalEngine(opts, out_dir, detector, records.crop_names)
    return LocalEngine(opts, out_dir, detector, [*records.crop_names, *_crop_places(sources.items)],
                       refs=sources.items)


def _crop_places(items: list[InputRef]) -> list[str]:
    """The crop names (below ``crops/``) that inputs below a SOURCE folder named ``crops`` have their annotated images
    at (``crops/person/a.jpg``, where the crop of ``a``'s first person goes): taken, so that no crop overwrites
    them."""
    top = "crops" + os.sep
    return ["/".join(r.key[len(top):].split(os.sep, 1)) + annotated_suffix(r.path, r.frame) for r in items
            if r.frame is None and r.key.startswith(top)]  # as CropNames spells them: <class>/<key>.jpg


def run(opts: RunOptions, progress: ProgressFn | None = None, detector: Detector | None = None,
        release: bool = True, ticks: TickFn | None = None) -> RunSummary:
    """Run detection over ``opts.source`` and write the outputs under ``project/name``.

    Every input ends up either processed or in ``failures.jsonl`` and the summary with its reason.
    ``manifest.jsonl`` gets one line per finished input, written after its outputs, so ``opts.resume``
    continues an interrupted run in the same folder: nothing done twice, nothing missing. A resume needs the same
    output settings; it redoes inputs that changed, removes the outputs of inputs gone from SOURCE and retries
    failed inputs that may pass now (all of them with ``opts.retry_failed``). One run at a time holds the folder.
    ``progress(done, total, result)`` is called after each image or frame (``total``: the images and frames of
    the run, as far as known: a video counts as its frames once its first is read; 0 for live streams), once the
    input's outputs are recorded (a video's frames together, once its annotated video is complete). ``ticks(done,
    total)`` is called as each image or frame is inferred, before its outputs are written (the local engine; a
    progress bar that moves through a long video). ``release=False`` releases the model this run
    loaded in a background thread, for a caller whose process ends right after (the ``yolokit`` command): the run
    returns without waiting for it (OpenVINO took 25 ms), and an exit that does not wait for it ends it.
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
    _apart_from_run_folder(sources, folder, opts.save)
    out_dir, lock, new, made = _claim(folder)
    records = Manifest(out_dir)
    # one run at a time holds the folder (released when the run ends; by the kernel when the process dies on local
    # disk, at the end of its lease in a store); a run that fails before any input leaves no empty run folder behind
    with lock, records.removed_unless_used(new, made, also=(LOCK_NAME,)):
        summary = _run_in(out_dir, opts, sources, records, progress, detector, lock, release, ticks)
    problem = getattr(lock, "problem", "")
    if problem:  # a store's lock this run could not delete: the next --resume waits for its lease
        summary.notes.append(problem)
    return summary


def _apart_from_run_folder(sources: SourceList, folder: RunFolder, save: SaveOptions) -> None:
    """Keep a run's inputs apart from run folders' outputs, and its outputs off its inputs.

    Files that a run folder's records list as its outputs (annotated images and videos, crops) are set aside, with a
    note: those of every run folder found below a SOURCE folder or a glob's fixed part (``--project photos/runs``:
    the second run read the first's outputs as photos, 13 inputs for 2, and more each time), and those of this run's
    own folder when it exists already (``--exist-ok``, ``--resume``), however it is reached. Other files are inputs
    like any. Where an output of this run would then land on an input (the run folder is SOURCE's folder, or a listed
    file's, or holds an input named as another input's annotated image, or holds inputs in its ``crops/``), the run is
    refused before anything is written: the annotated image would overwrite the photo."""
    if (folder.resume or folder.exist_ok) and is_store_url(folder.project):
        # a run folder in a store: its own earlier outputs were set aside with every run folder below SOURCE when
        # listed (toolkit.io.sources); an object still below it is a photo its outputs would replace
        run_url = folder.project.rstrip("/") + "/" + folder.name
        photo = next((r.path for r in sources.items if r.path.startswith(run_url + "/")), None)
        if photo is not None:
            raise InputError(f"{run_url}: the run folder holds SOURCE's input {photo}, where its outputs go: each "
                             f"annotated image would replace its photo; give another --name or --project")
    own = ""
    if (folder.resume or folder.exist_ok) and not is_store_url(folder.project):
        own = os.path.join(local_path(folder.project), folder.name)
        own = own if os.path.isdir(own) else ""
    refs = [r for r in [*sources.items, *(r for r, _ in sources.failed)] if "://" not in r.path]
    if not refs or not (own or sources.run_folders):
        return
    seen: dict[str, str] = {}

    def resolved(folder_path: str) -> str:  # one realpath per folder, not per file
        if folder_path not in seen:
            seen[folder_path] = os.path.realpath(folder_path or ".")
        return seen[folder_path]

    def real(path: str) -> str:
        return os.path.join(resolved(os.path.dirname(os.path.abspath(path))), os.path.basename(path))

    runs = list(dict.fromkeys([*sources.run_folders, *([own] if own else [])]))
    outputs: set[str] = set()
    for run_dir in runs:
        outputs |= _recorded_outputs(run_dir, os.path.realpath(run_dir))
    if outputs:
        before = len(sources.items) + len(sources.failed)
        sources.items = [r for r in sources.items if "://" in r.path or real(r.path) not in outputs]
        sources.failed = [(r, why) for r, why in sources.failed if "://" in r.path or real(r.path) not in outputs]
        dropped = before - len(sources.items) - len(sources.failed)
        if dropped:
            named = f"the run folder {runs[0]}" if len(runs) == 1 else f"{len(runs)} run folders ({runs[0]}, ...)"
            if not sources.items and not sources.failed and not sources.streams:  # "no inputs to process" said why not
                raise InputError(f"{sources.root or 'SOURCE'}: its {dropped} image(s) are all outputs that {named} "
                                 f"records; give a run folder itself as SOURCE to read its files")
            sources.notes.append(f"{dropped} file(s) that {named} records as outputs were not read as inputs (give "
                                 f"a run folder itself as SOURCE to read its files)")
        refs = [r for r in refs if real(r.path) not in outputs]
    if not own:
        return
    run_real = os.path.realpath(own)
    crops = os.path.join(run_real, "crops")
    root = sources.root if "://" not in sources.root else ""
    folders = {root} if root else {os.path.dirname(r.path) for r in refs}  # keys below SOURCE, else file names
    for f in sorted(folders):
        where = resolved(f)
        if where == run_real or os.path.dirname(where) == crops:
            first = next((r.path for r in refs if root or os.path.dirname(r.path) == f), f)
            raise InputError(f"{own}: the run folder holds SOURCE's inputs ({first}), where its outputs go: "
                             f"each annotated image would overwrite its photo; give another --name or --project")
    inside = {}  # an input in the run folder: its name there -> its path
    for r in refs:
        path = real(r.path)
        if path.startswith(run_real + os.sep):
            inside[os.path.relpath(path, run_real)] = r.path
    cropped = next((p for n, p in inside.items() if n.split(os.sep, 1)[0] == "crops"), None)
    if cropped is not None and save.save_crop:
        raise InputError(f"{own}: the run folder holds SOURCE's input {cropped} in its crops folder, where crops "
                         f"are written over; give another --name or --project")
    for r in sources.items if inside and not save.nosave else ():
        name = f"{r.key}.mp4" if r.frame == -1 else f"{r.key}{annotated_suffix(r.path, r.frame)}"
        hit = inside.get(os.path.normpath(name))
        if hit is not None:
            raise InputError(f"{own}: the run folder holds SOURCE's input {hit}, where the annotated "
                             f"{'video' if r.frame == -1 else 'image'} of {r.path} goes: it would be written over; "
                             f"give another --name or --project")


def _recorded_outputs(run_dir: str, real: str) -> set[str]:
    """The real paths of the outputs (annotated images and videos, crops) the run folder's records list: a yolokit
    run folder's (its run.json says so), names inside it alone (a foreign manifest.jsonl beside a run.json was a
    TypeError traceback; one naming ../photo.jpg would have set a photo outside aside)."""
    try:
        identity = json.loads((Path(run_dir) / "run.json").read_bytes())
        records = read_jsonl(Path(run_dir) / "manifest.jsonl")
    except (OSError, ValueError):
        return set()
    if not isinstance(identity, dict) or not {"run_format", "source"} & identity.keys():
        return set()
    out = set()
    for r in records:
        if not isinstance(r, dict) or not isinstance(r.get("files") or [], list) \
                or not isinstance(r.get("crops") or [], list):
            continue
        for name in output_names(r):
            path = os.path.normpath(os.path.join(real, name))
            if path.startswith(real + os.sep):
                out.add(path)
    return out


def _claim(folder: RunFolder) -> tuple[Store, FolderLock | StoreLock, bool, list[Path]]:
    """The run folder (a local folder, or a prefix in a store, claimed by creating its lock object), its lock (held
    for a store, taken by ``with`` for a local folder), whether it is new, and the local folders this run made
    (deepest first)."""
    if is_store_url(folder.project):
        store, held, new = claim_store_folder(folder.project, folder.name, folder.exist_ok, folder.resume)
        return store, held, new, []
    project = Path(local_path(folder.project))  # a file:// URL is the local folder it names
    kept = {p for p in (project, *project.parents) if p.exists()}  # folders this run did not make
    if folder.resume or (folder.exist_ok and (project / folder.name).is_dir()):
        kept.add(project / folder.name)
    out_dir = claim_out_dir(str(project), folder.name, folder.exist_ok, folder.resume)
    made = list(itertools.takewhile(lambda p: p not in kept, (out_dir, *out_dir.parents)))  # deepest first
    return LocalStore(out_dir), FolderLock(out_dir), bool(made), made


def _run_in(out_dir: Store, opts: RunOptions, sources: SourceList, records: Manifest, progress: ProgressFn | None,
            detector: Detector | None, lock: FolderLock | StoreLock, release: bool = True,
            ticks: TickFn | None = None) -> RunSummary:
    live = bool(sources.streams)
    source_label = str(opts.source or "the sample photos shipped with yolokit")
    inputs = {} if live else _inputs(sources)
    found = records.open(run_identity(opts), opts.folder.resume, inputs, opts.folder.retry_failed)
    done_keys, done_videos = records.done_keys, records.done_videos
    if done_keys:  # a video is skipped once its annotated .mp4 was finished; otherwise it is run again
        sources.items = [r for r in sources.items
                         if (r.key not in done_videos if r.frame == -1 else r.key not in done_keys)]
        sources.failed = [(r, why) for r, why in sources.failed if r.key not in done_keys]
    t0 = time.perf_counter()
    d = opts.detector
    summary = RunSummary(out_dir=str(out_dir), weights=str(d.weights or ""), backend=str(d.backend or ""),
                         source=source_label,
                         settings={"imgsz": [d.imgsz, d.imgsz], "conf": d.conf, "iou": d.iou, "max_det": d.max_det,
                                   "batch": opts.engine.batch, "precision": "", "fast_decode": d.fast_decode,
                                   "resumed": len(records.previous),
                                   "resumed_failed": sum(not r.get("ok") for r in records.previous),
                                   "engine": opts.engine.name,
                                   "augment": d.augment, "vid_stride": d.vid_stride})
    summary.resume = {"changed": found.changed, "retried": found.retried, "removed": found.removed}
    summary.notes.extend(_resume_notes(summary.resume) + ([lock.note] if lock.note else []) + sources.notes)
    for r in records.previous:  # the summary covers the whole run, resumed or not
        summary.count(bool(r.get("ok")), int(r.get("n", 0)), r.get("classes"), str(r.get("path")),
                      str(r.get("reason")))
    # what the progress counts toward: images and frames; a video counts as one until its first frame says how many
    # frames it gives (a live stream's are not known: 0, no total)
    total = 0 if live else len(sources.items) + len(sources.failed) + len(records.previous)
    counted: set[str] = set()  # the videos whose frames are in the total
    recorded = Counter(str(r["video"]) for r in records.previous if r.get("video"))  # a resumed run's frames
    reshaped = 0  # images a fixed-shape artifact letterboxed differently from the .pt
    engine: Engine | None = None
    outcomes: Iterator[Outcome] | None = None
    full: Counter[int] = Counter()  # inputs by their number of detections
    try:  # Ctrl-C at any point from here (the model still loading included) ends with a summary
        engine = _engine(opts, out_dir, detector, records, sources)
        summary.weights, summary.backend = engine.weights, engine.backend
        if ticks is not None and isinstance(engine, LocalEngine):
            inferred = len(records.previous)

            def tick(res: Result) -> None:
                nonlocal inferred, total
                if res.ref.key in done_keys:  # recorded before an interruption: skipped below
                    return
                inferred += 1
                total = _progress_total(total, res.ref.video, res.ref.frames, counted, recorded, inferred)
                ticks(inferred, total)

            engine.on_result = tick
        outcomes = engine.outcomes(sources)
        with records:
            for oc in outcomes:
                if oc.key in done_keys:  # a video frame finished before the interruption
                    continue
                path, fp = inputs.get(oc.video or oc.key, ("", ""))
                retry = oc.error is None or retried_on_resume(oc.error, fp)
                if oc.error is not None and not live:  # a live run cannot be resumed
                    oc.error = with_resume_note(oc.error, retry)
                summary.count(oc.error is None, oc.n, oc.classes, oc.path, oc.error or "")
                full[oc.n] += 1  # how many inputs reached --max-det: told in a note (_finish)
                reshaped += bool(oc.error is None and oc.shape is not None and engine.letterbox_differs(oc.shape))
                records.record(oc, path, fp, retry)
                total = _progress_total(total, oc.video, oc.frames, counted, recorded, summary.images)
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
        if engine is not None and (release or not isinstance(engine, LocalEngine)):
            engine.close()  # a Ray job always ends its actors
        elif engine is not None:
            threading.Thread(target=engine.close, name="yolokit-release", daemon=True).start()
    summary.planned = total
    save = opts.save
    if save.save_json or save.save_csv:
        records.write_predictions(coco=save.save_json, rows=save.save_csv)
    if engine is not None:
        summary.streams = list(getattr(engine, "stream_stats", list)())
    _finish(summary, engine, t0, sum(1 for r in records.previous if r.get("ok")), reshaped, full)
    if getattr(lock, "lost", False):
        summary.notes.append("another run took this run folder's lock over while this run held it (its renewals "
                             "had stopped for longer than the lease): check that no other run wrote here")
    out_dir.put("summary.json", json_bytes(summary.to_dict()))
    if summary.images == 0 and not summary.interrupted:
        raise InputError(f"{opts.source or source_label}: no inputs to process")
    return summary


def _progress_total(total: int, video: str, frames: int, counted: set[str], recorded: Counter[str],
                    done: int) -> int:
    """The progress's total once an image or a frame of ``video`` (which is to give ``frames``) is done: a video's
    first frame turns the one input it was counted as into its frames, less those a resumed run had recorded;
    never below what is done (a frame count is the container's, and can be an estimate). 0 stays 0 (not known)."""
    if not total:
        return 0
    if video and video not in counted:
        counted.add(video)
        if frames:
            total += max(frames - recorded[video], 0) - 1
    return max(total, done)


def _resume_notes(found: dict[str, list[str]]) -> list[str]:
    notes = []
    if found["changed"]:
        notes.append(f"{len(found['changed'])} input(s) changed since they were recorded: done again, their old "
                     f"outputs replaced")
    if found["retried"]:
        notes.append(f"{len(found['retried'])} input(s) that had failed were tried again")
    if found["removed"]:
        notes.append(f"{len(found['removed'])} input(s) recorded earlier are no longer in SOURCE: their outputs "
                     f"were removed (summary.json lists them under resume.removed)")
    return notes


def _finish(summary: RunSummary, engine: Engine | None, t0: float, resumed_ok: int, reshaped: int,
            full: Counter[int] | None = None) -> None:
    summary.wall_s = time.perf_counter() - t0
    new = summary.processed - resumed_ok
    summary.img_per_s = new / summary.wall_s if summary.wall_s > 0 else 0.0
    summary.per_class = dict(sorted(summary.per_class.items(), key=lambda kv: (-kv[1], kv[0])))
    if engine is None:  # interrupted while the model was still loading
        return
    summary.ms_per_image = engine.ms_per_image()
    summary.plan = engine.describe()
    asked = summary.settings.get("imgsz")
    summary.settings.update(engine.settings())
    got = summary.settings.get("imgsz")
    if (not summary.settings.get("fixed_input") and isinstance(asked, list) and isinstance(got, list)
            and len(asked) == len(got) == 2
            and all(isinstance(v, int) for v in (*asked, *got)) and asked != got
            and all(0 < g - a < 64 for a, g in zip(asked, got, strict=True) if g != a)):
        summary.notes.append(f"--imgsz {'x'.join(map(str, asked))} is not a multiple of the model's stride: it ran at "
                             f"{'x'.join(map(str, got))}, as detect.py rounds it up")
    if reshaped:
        size = "x".join(str(v) for v in summary.settings.get("imgsz", []))
        summary.notes.append(f"this model has a fixed {size} input: {reshaped} image(s) were letterboxed to it where "
                             f"the .pt letterboxes to a smaller rectangle, so detections can differ from the .pt's; "
                             f"export without --static for the same results")
    max_det = summary.settings.get("max_det")
    capped = (full or Counter()).get(max_det, 0) if isinstance(max_det, int) else 0
    if capped:  # a huge or tiled image can hold more boxes than detect.py's 1000 per image: they went unsaid
        summary.notes.append(f"{capped} input(s) have {max_det} box(es), the most --max-det keeps: any more above "
                             f"--conf were dropped; to keep them, raise --max-det (a model with NMS inside: re-export "
                             f"it with a larger --max-det)")


def format_summary(s: RunSummary) -> str:
    """A short human-readable summary."""
    cut = f" (interrupted: {s.images} of {s.planned} handled)" if s.interrupted and s.planned > s.images else ""
    earlier = int(s.settings.get("resumed") or 0)
    if earlier:  # the rate is this session's: say what the earlier ones did
        failed = int(s.settings.get("resumed_failed") or 0)
        done = [f"{earlier - failed} processed" if earlier > failed else "", f"{failed} failed" if failed else ""]
        cut += f" ({' and '.join(filter(None, done))} before this resume)"
    lines = [f"{s.processed}/{s.images} images processed{cut} in {s.wall_s:.1f} s ({s.img_per_s:.1f} img/s), "
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
    if s.interrupted and s.streams:  # a live run cannot be resumed (--resume is refused for streams)
        lines.append(f"  INTERRUPTED: {s.images} frames were recorded before the stop; a live run is not resumed "
                     f"(its outputs stay in the run folder)")
    elif s.interrupted:
        of = f"{s.images} of {s.planned}" if s.planned > s.images else f"{s.images} of the"
        lines.append(f"  INTERRUPTED: {of} inputs were handled before the stop; the same command with --resume "
                     f"continues")
    if s.ms_per_image:
        # each stage's wall time in the worker that ran it: workers overlap, so these add up to more than the run
        lines.append("  ms/image in each stage, per worker (workers overlap): "
                     + ", ".join(f"{k} {v:.1f}" for k, v in s.ms_per_image.items()))
    if s.failed:
        lines.append(f"  {len(s.failed)} failed (listed in {s.out_dir}/failures.jsonl):")
        lines.extend(f"    {line}" for line in failure_lines(s.failed))
    lines.append(f"  results in {s.out_dir}")
    return "\n".join(lines)


def failure_lines(failed: list[dict[str, Any]], most: int = 20) -> list[str]:
    """``path: reason`` for each failed input, in order, a video's frames that follow one another failing for the
    same reason folded into one line (``clip.mp4#frame27-59 (33 frames): ...``, as a file cut short gives them);
    at most ``most`` lines, then how many more failed."""
    groups: list[tuple[str, int, int, int, str]] = []  # path or video, first frame (-1: none), last frame, count, why
    for f in failed:
        path, reason = str(f.get("path", "")), str(f.get("reason", ""))
        video, sep, number = path.rpartition("#frame")
        frame = int(number) if sep and number.isdigit() else -1
        if frame >= 0 and groups and groups[-1][0] == video and groups[-1][4] == reason and groups[-1][2] < frame:
            first = groups[-1][1]
            groups[-1] = (video, first, frame, groups[-1][3] + 1, reason)
        else:
            groups.append((video if frame >= 0 else path, frame, frame, 1, reason))
    lines = [f"{name}: {why}" if first < 0 else f"{name}#frame{first}: {why}" if count == 1
             else f"{name}#frame{first}-{last} ({count} frames): {why}"
             for name, first, last, count, why in groups[:most]]
    shown = sum(g[3] for g in groups[:most])
    if shown < len(failed):
        lines.append(f"... and {len(failed) - shown} more")
    return [one_line(line) for line in lines]


def one_line(text: str) -> str:
    """``text`` fit for one line of a terminal: a character that is not printable (a newline or an escape in a
    file's name, a byte of a name that is not UTF-8) written as its Python escape, ``\\n``, ``\\x1b``."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
