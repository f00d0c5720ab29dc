"""The ``yolokit run`` job: detect over a SOURCE, write outputs, account for every input."""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from toolkit.detector import Detector, Result
from toolkit.errors import InputError, OutputError
from toolkit.outputs import (
    annotate,
    atomic_write_bytes,
    coco_image_id,
    coco_results,
    image_suffix,
    write_encoded,
    write_image,
    write_json,
    write_labels,
)
from toolkit.sources import DEFAULT_MAX_FILE_SIZE, DEFAULT_MAX_PIXELS, ReadLimits, list_sources
from toolkit.tiling import TileOptions

TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{12}\.tmp")  # atomic_write_bytes' temporary files


@dataclass
class RunOptions:
    """Options of a detection run (the CLI's ``yolokit run`` flags)."""

    source: str | None = None
    weights: str | None = None
    backend: str | None = None
    device: str = "cpu"
    half: bool | None = None
    imgsz: int = 640
    conf: float = 0.25
    iou: float = 0.45
    max_det: int = 1000
    classes: tuple[int, ...] | None = None
    agnostic: bool = False
    save_txt: bool = False
    save_conf: bool = False
    save_json: bool = False
    nosave: bool = False
    project: str = "runs/detect"
    name: str = "exp"
    exist_ok: bool = False
    batch: int = 0  # 0: chosen by the plan
    workers: int = 0  # 0: chosen by the plan
    mode: str = "auto"  # auto | thread | process
    fast_decode: bool = False  # opt-in: decode big JPEGs at reduced size when not saving annotated images
    max_file_size: int = DEFAULT_MAX_FILE_SIZE  # bytes; larger inputs are refused before they are read
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images (by their header) are refused before they are decoded
    resume: bool = False  # continue an interrupted run in project/name
    tile: int = 0  # > 0: sliced inference with tiles of this many source pixels
    overlap: float = 0.3
    tile_batch: int = 4
    tile_scales: tuple[float, ...] = (1.0, 0.5)
    full_frame: bool = True
    round_boxes: bool = True  # written outputs use whole-pixel corners, as YOLOv5's detect.py does
    engine: str = "local"  # local | ray
    address: str | None = None  # --engine ray: a running cluster (auto, HOST:PORT); None starts a local one
    gpus_per_worker: float = 0.0  # --engine ray
    cpus_per_worker: float = 0.0  # --engine ray; 0: the cluster's CPUs shared among the workers


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

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def increment_dir(project: str, name: str, exist_ok: bool) -> Path:
    """``project/name``, or ``name2``, ``name3``... when it exists and ``exist_ok`` is false."""
    base = Path(project) / name
    if exist_ok or not base.exists():
        return base
    n = 2
    while (Path(project) / f"{name}{n}").exists():
        n += 1
    return Path(project) / f"{name}{n}"


def prepare_out_dir(path: Path) -> None:
    """Create the output folder and prove it is writable, or fail now with a clear error."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".yolokit-write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"{path}: cannot write the output folder ({e.strerror or e}); "
                          f"choose another with --project/--name or free some space") from None


def remove_partial_writes(out_dir: Path) -> None:
    """Delete the temporary files of atomic writes that a killed run left behind (``.NAME.HEX.tmp``)."""
    for p in out_dir.rglob(".*.tmp"):
        if TEMP_NAME.fullmatch(p.name):
            with contextlib.suppress(OSError):
                p.unlink()


ProgressFn = Callable[[int, int, "Outcome"], None]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Complete JSON lines of a file; a line cut short by a crash is dropped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _rewrite_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


@dataclass
class Outcome:
    """What the run records of one finished input (its outputs are already written)."""

    key: str
    path: str
    error: str | None = None
    n: int = 0
    classes: dict[str, int] = field(default_factory=dict)
    coco: list[dict[str, Any]] | None = None  # COCO results, with --save-json
    shape: tuple[int, int] | None = None  # the source image's (h, w)


def write_outputs(res: Result, opts: RunOptions, out_dir: Path) -> Outcome:
    """Write one result's labels and annotated image under ``out_dir`` (atomically); what to record of it.

    The local engine calls this in the driver loop, the Ray engine inside its workers."""
    key = res.ref.key
    if res.error is not None:
        return Outcome(key, res.ref.name, res.error)
    d = res.detections
    assert d is not None
    if opts.round_boxes:
        d = d.rounded()
    if opts.save_txt and len(d):
        write_labels(out_dir / "labels" / f"{key}.txt", d, opts.save_conf)
    if not opts.nosave and (res.image is not None or res.annotated is not None):
        suffix = Path(res.ref.path).suffix if res.ref.frame is None else ".jpg"
        if res.annotated is not None:
            write_encoded(out_dir / f"{key}{image_suffix(Path(suffix))}", res.annotated)
        else:
            assert res.image is not None
            write_image(out_dir / f"{key}{suffix}", annotate(res.image, d))
    return Outcome(key, res.ref.name, None, len(d), dict(Counter(d.class_names)),
                   coco_results(d, coco_image_id(key)) if opts.save_json else None, d.shape)


def run(opts: RunOptions, progress: ProgressFn | None = None, detector: Detector | None = None) -> RunSummary:
    """Run detection over ``opts.source`` and write the outputs under ``project/name``.

    Every input ends up either processed or in ``failures.jsonl`` and the summary with its reason.
    ``manifest.jsonl`` gets one line per finished input, written after its outputs, so ``opts.resume``
    continues an interrupted run in the same folder: nothing done twice, nothing missing.
    ``progress(done, total, result)`` is called after each input.
    """
    from toolkit.samples import sample_paths

    if opts.engine not in ("local", "ray"):  # option checks first: nothing is created for a bad command
        raise InputError(f"--engine must be local or ray, got {opts.engine!r}")
    ReadLimits(opts.max_file_size, opts.max_pixels)  # checked before anything is created
    if opts.engine == "ray" and opts.tile:
        raise InputError("--tile runs with the local engine only; drop --engine ray or --tile")
    source: str | list[str] = opts.source if opts.source is not None else sample_paths()
    sources = list_sources(source)
    out_dir = Path(opts.project) / opts.name if opts.resume else increment_dir(opts.project, opts.name,
                                                                               opts.exist_ok)
    manifest_path, failures_path = out_dir / "manifest.jsonl", out_dir / "failures.jsonl"
    preds_path = out_dir / "predictions.jsonl"
    source_label = str(opts.source or "the sample photos shipped with yolokit")
    run_info: dict[str, Any] = {"source": source_label, "weights": opts.weights,
                "conf": opts.conf, "iou": opts.iou, "imgsz": opts.imgsz, "max_det": opts.max_det,
                "tile": opts.tile, "fast_decode": opts.fast_decode}
    if opts.tile:
        run_info.update(overlap=opts.overlap, tile_scales=list(opts.tile_scales))
    previous: list[dict[str, Any]] = []
    if opts.resume:
        if not manifest_path.is_file():
            raise InputError(f"{out_dir}: nothing to resume (no manifest.jsonl); run without --resume first")
        before = json.loads((out_dir / "run.json").read_text()) if (out_dir / "run.json").is_file() else {}
        changed = [k for k in run_info if k in before and before[k] != run_info[k]]
        if changed:
            raise InputError(f"{out_dir}: --resume needs the same settings as the interrupted run; "
                             f"{', '.join(changed)} differ")
        previous = _read_jsonl(manifest_path)
    prepare_out_dir(out_dir)
    write_json(out_dir / "run.json", run_info)
    done_keys = {str(r.get("key")) for r in previous}
    # a crash can leave a torn last line or outputs of inputs that never reached the manifest: tidy both
    _rewrite_jsonl(manifest_path, previous)
    _rewrite_jsonl(failures_path, [r for r in _read_jsonl(failures_path) if r.get("key") in done_keys])
    _rewrite_jsonl(preds_path, [r for r in _read_jsonl(preds_path) if r.get("key") in done_keys])
    if opts.resume:
        remove_partial_writes(out_dir)
    if done_keys:
        sources.items = [r for r in sources.items if r.frame == -1 or r.key not in done_keys]
        sources.failed = [(r, why) for r, why in sources.failed if r.key not in done_keys]

    t0 = time.perf_counter()
    det: Detector | None = None
    job: Any = None
    outcomes: Iterator[Outcome]
    if opts.engine == "ray":
        from toolkit.ray_engine import RayJob

        job = RayJob(opts, out_dir)
        weights_name, backend_name = job.weights, job.backend
        outcomes = job.outcomes(sources)
    else:
        det = detector or Detector(opts.weights or "yolov5n", backend=opts.backend, device=opts.device,
                                   half=opts.half, imgsz=opts.imgsz, conf=opts.conf, iou=opts.iou,
                                   max_det=opts.max_det, classes=opts.classes, agnostic=opts.agnostic,
                                   fast_decode=opts.fast_decode, max_file_size=opts.max_file_size,
                                   max_pixels=opts.max_pixels)
        weights_name, backend_name = str(det.weights), det.backend_name
        tiling = TileOptions(opts.tile, opts.overlap, opts.tile_batch, opts.full_frame,
                             scales=tuple(opts.tile_scales)) if opts.tile else None
        results = det.predict_iter(sources, batch=opts.batch, workers=opts.workers, mode=opts.mode,
                                   keep_images=not opts.nosave, fast_decode=opts.fast_decode, tile=tiling)
        outcomes = (write_outputs(res, opts, out_dir) for res in results)
    summary = RunSummary(out_dir=str(out_dir), weights=weights_name, backend=backend_name,
                         source=source_label,
                         settings={"imgsz": list(det.imgsz) if det else [opts.imgsz, opts.imgsz],
                                   "conf": opts.conf, "iou": opts.iou, "max_det": opts.max_det,
                                   "batch": opts.batch, "precision": det.meta.precision if det else "",
                                   "fast_decode": opts.fast_decode,
                                   "resumed": len(previous), "engine": opts.engine})
    counts: Counter[str] = Counter()
    for r in previous:  # the summary covers the whole run, resumed or not
        summary.images += 1
        if r.get("ok"):
            summary.processed += 1
            summary.detections += int(r.get("n", 0))
            counts.update({str(k): int(v) for k, v in (r.get("classes") or {}).items()})
        else:
            summary.failed.append({"path": str(r.get("path")), "reason": str(r.get("reason"))})
    total = len(sources.items) + len(sources.failed) + len(previous)
    done = len(previous)
    differs: Callable[[tuple[int, int]], bool] = det.letterbox_differs if det is not None else job.letterbox_differs
    reshaped = 0  # images a fixed-shape artifact letterboxed differently from the .pt
    try:
        with manifest_path.open("a") as manifest, failures_path.open("a") as failures, \
                preds_path.open("a") as preds:
            for oc in outcomes:
                if oc.key in done_keys:  # a video frame finished before the interruption
                    continue
                done += 1
                summary.images += 1
                entry: dict[str, Any] = {"key": oc.key, "path": oc.path}
                if oc.error is not None:
                    summary.failed.append({"path": oc.path, "reason": oc.error})
                    failures.write(json.dumps({**entry, "reason": oc.error}) + "\n")
                    failures.flush()
                    entry.update(ok=False, reason=oc.error)
                else:
                    summary.processed += 1
                    summary.detections += oc.n
                    if oc.shape is not None and differs(oc.shape):
                        reshaped += 1
                    counts.update(oc.classes)
                    if oc.coco is not None:
                        preds.write(json.dumps({"key": oc.key, "results": oc.coco}) + "\n")
                        preds.flush()
                    entry.update(ok=True, n=oc.n, classes=oc.classes)
                manifest.write(json.dumps(entry) + "\n")  # after the outputs: a manifest line means done
                manifest.flush()
                if progress is not None:
                    progress(done, total, oc)
    except KeyboardInterrupt:
        summary.interrupted = True  # what is done is written; the summary says the run was cut short
    except OSError as e:
        raise OutputError(f"{out_dir}: cannot write outputs ({e.strerror or e}); check free space and "
                          f"permissions, then continue with --resume") from None
    finally:
        if det is not None and detector is None:
            det.close()
        if job is not None:
            job.close()
    if opts.save_json:
        write_json(out_dir / "predictions.json", [p for r in _read_jsonl(preds_path) for p in r["results"]])
    summary.wall_s = time.perf_counter() - t0
    new = summary.processed - sum(1 for r in previous if r.get("ok"))
    summary.img_per_s = new / summary.wall_s if summary.wall_s > 0 else 0.0
    summary.per_class = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    if det is not None:
        summary.ms_per_image = {k: round(v, 2) for k, v in det.times.ms_per_image().items()}
        summary.plan = det.last_plan.describe() if det.last_plan else ""
        summary.settings["batch"] = det.last_plan.batch if det.last_plan else opts.batch
    if job is not None:
        summary.ms_per_image = job.ms_per_image()
        summary.plan = job.describe()
        summary.settings.update(job.settings())
    if reshaped:
        size = "x".join(str(v) for v in summary.settings.get("imgsz", []))
        summary.notes.append(f"this model has a fixed {size} input: {reshaped} image(s) were letterboxed to it where "
                             f"the .pt letterboxes to a smaller rectangle, so detections can differ from the .pt's; "
                             f"export without --static for the same results")
    write_json(out_dir / "summary.json", summary.to_dict())
    if summary.images == 0 and not summary.interrupted:
        raise InputError(f"{source}: no inputs to process")
    return summary


def format_summary(s: RunSummary) -> str:
    """A short human-readable summary."""
    lines = [f"{s.processed}/{s.images} images processed in {s.wall_s:.1f} s ({s.img_per_s:.1f} img/s), "
             f"{s.detections} detections; backend {s.backend}, weights {os.path.basename(s.weights)}"]
    if s.per_class:
        lines.append("  " + ", ".join(f"{n} {k}" for k, n in list(s.per_class.items())[:12])
                     + (" ..." if len(s.per_class) > 12 else ""))
    if s.plan:
        lines.append(f"  {s.plan}")
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
