"""What a run is asked to do (:class:`RunOptions`) and what it records of each input (:class:`Outcome`), with the
one function that writes an input's outputs; shared by the local and the Ray engine."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from toolkit.engine.core import DetectorConfig, Result
from toolkit.io.files import DEFAULT_MAX_FILE_SIZE, DEFAULT_MAX_PIXELS
from toolkit.io.outputs import (
    AnnotateStyle,
    annotate,
    coco_image_id,
    coco_results,
    csv_rows,
    encode_crops,
    image_suffix,
    write_encoded,
    write_image,
    write_labels,
)
from toolkit.io.remote import DEFAULT_TIMEOUT


@dataclass
class RunOptions:
    """Options of a detection run (the CLI's ``yolokit run`` flags)."""

    source: str | None = None
    weights: str | None = None
    backend: str | None = None
    device: str | None = None  # None: the backend's own default device
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
    save_csv: bool = False  # predictions.csv: one row per box
    save_crop: bool = False  # crops/<class name>/<key>.jpg
    nosave: bool = False
    line_thickness: int = 0  # 0: from the image size
    hide_labels: bool = False
    hide_conf: bool = False
    augment: bool = False  # test-time augmentation
    vid_stride: int = 1
    stream_timeout: float = DEFAULT_TIMEOUT  # seconds a URL or live stream may stay silent
    save_workers: int = 0  # threads that annotate, encode and write outputs (0: from the core count)
    project: str = "runs/detect"
    name: str = "exp"
    exist_ok: bool = False
    batch: int = 0  # 0: chosen by the plan
    workers: int = 0  # 0: chosen by the plan
    mode: str = "auto"  # auto | thread | process
    fast_decode: bool = False  # opt-in: decode big JPEGs at reduced size when not saving annotated images
    gpu_resize: bool = False  # opt-in: the GPU pipeline resizes on the device (pixels differ by a grey level)
    max_file_size: int = DEFAULT_MAX_FILE_SIZE  # bytes; larger inputs are refused before they are read
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images (by their header) are refused before they are decoded
    resume: bool = False  # continue an interrupted run in project/name
    retry_failed: bool = False  # with resume: retry every failed input, refusals of what an input is included
    tile: int = 0  # > 0: sliced inference with tiles of this many source pixels
    overlap: float = 0.2
    tile_batch: int = 4
    tile_scales: tuple[float, ...] = (1.0,)
    full_frame: bool = True
    tile_merge: str = "views"  # views | nms | nmm (toolkit.tiling)
    tile_refocus: bool = True  # a second look, centred, at objects that every tile cut
    tile_near: float = 0.5  # ... and at boxes from this fraction of conf up to it (0: off)
    round_boxes: bool = True  # written outputs use whole-pixel corners, as YOLOv5's detect.py does
    engine: str = "local"  # local | ray
    address: str | None = None  # --engine ray: a running cluster (auto, HOST:PORT); None starts a local one
    gpus_per_worker: float = 0.0  # --engine ray
    cpus_per_worker: float = 0.0  # --engine ray; 0: the cluster's CPUs shared among the workers

    def detector_config(self, **overrides: Any) -> DetectorConfig:
        """The detector these options describe (the one place options become detector settings)."""
        values: dict[str, Any] = dict(
            weights=self.weights or "yolov5n", backend=self.backend, device=self.device, half=self.half,
            imgsz=self.imgsz, conf=self.conf, iou=self.iou, max_det=self.max_det, classes=self.classes,
            agnostic=self.agnostic, fast_decode=self.fast_decode, max_file_size=self.max_file_size,
            max_pixels=self.max_pixels, augment=self.augment, vid_stride=self.vid_stride,
            timeout=self.stream_timeout, gpu_resize=self.gpu_resize)
        values.update(overrides)
        return DetectorConfig(**values)

    def style(self) -> AnnotateStyle:
        return AnnotateStyle(self.line_thickness or None, self.hide_labels, self.hide_conf)

    @property
    def keep_images(self) -> bool:
        """Whether results keep their decoded image: annotated images or crops are saved."""
        return not self.nosave or self.save_crop


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
    rows: list[list[Any]] | None = None  # predictions.csv rows, with --save-csv
    crops: list[str] | None = None  # crop files written (below crops/), with --save-crop
    video: str = ""  # a video frame's video key
    video_done: bool = False  # the last record of a video whose outputs (its annotated .mp4) are complete
    files: list[str] = field(default_factory=list)  # files written (below the run folder), crops apart


class CropNames:
    """Crop file names, unique within a run: ``<class>/<key>.jpg`` for an image's first box of a class, then
    ``<key>_2.jpg``, ``<key>_3.jpg``... A name another input already took is skipped, so no crop overwrites another;
    names are given in input order, so a resumed run gives an input the names it had."""

    def __init__(self, taken: Iterable[str] = ()) -> None:
        self.taken = set(taken)

    def assign(self, key: str, class_names: list[str]) -> list[str]:
        counts: Counter[str] = Counter()
        out = []
        for name in class_names:
            folder = name.replace("/", "_").replace("\\", "_").strip(". ") or "class"
            n = counts[folder] + 1
            while True:
                candidate = f"{folder}/{key}.jpg" if n == 1 else f"{folder}/{key}_{n}.jpg"
                if candidate not in self.taken:
                    break
                n += 1
            counts[folder] = n
            self.taken.add(candidate)
            out.append(candidate)
        return out


def write_outputs(res: Result, opts: RunOptions, out_dir: Path, crop_names: list[str] | None = None) -> Outcome:
    """Write one result's labels, crops and annotated image under ``out_dir`` (atomically); what to record of it.
    A video frame's annotated image goes into its video (:class:`toolkit.jobs.saving.OutputPool`), not here.

    The local engine calls this in its output pool, the Ray engine inside its workers."""
    key, video = res.ref.key, res.ref.video
    if res.error is not None:
        return Outcome(key, res.ref.name, res.error, video=video)
    d = res.detections
    assert d is not None
    if opts.round_boxes:
        d = d.rounded()
    files = []
    if opts.save_txt and len(d):
        write_labels(out_dir / "labels" / f"{key}.txt", d, opts.save_conf)
        files.append(f"labels/{key}.txt")
    if not opts.nosave and not video and (res.image is not None or res.annotated is not None):
        suffix = Path(res.ref.path).suffix if res.ref.frame is None else ".jpg"
        name = f"{key}{image_suffix(Path(suffix))}"  # the name write_image gives it too
        if res.annotated is not None:
            write_encoded(out_dir / name, res.annotated)
        else:
            assert res.image is not None
            write_image(out_dir / f"{key}{suffix}", annotate(res.image, d, opts.style()))
        files.append(name)
    written: list[str] | None = None
    if crop_names and (res.crops is not None or res.image is not None):
        crops = res.crops if res.crops is not None else encode_crops(res.image, d)  # type: ignore[arg-type]
        written = []
        for name, data in zip(crop_names, crops, strict=True):
            if data is not None:
                write_encoded(out_dir / "crops" / name, data)
                written.append(name)
    return Outcome(key, res.ref.name, None, len(d), dict(Counter(d.class_names)),
                   coco_results(d, coco_image_id(key)) if opts.save_json else None, d.shape,
                   csv_rows(d, res.ref.path, res.ref.frame) if opts.save_csv else None, written, video,
                   files=files)


# The settings that change no output: --resume accepts any value of these. Every other RunOptions field is part of
# a run's identity (run_identity), so a field added to RunOptions is checked on --resume unless it is named here.
NO_OUTPUT_CHANGE = frozenset({
    "project", "name", "exist_ok", "resume", "retry_failed",  # where the run folder is and how it is opened
    "batch", "workers", "mode", "save_workers", "tile_batch",  # how the work is split: the same boxes either way
    "engine", "address", "gpus_per_worker", "cpus_per_worker",  # where it runs: the Ray engine writes the same files
    "stream_timeout",  # how long to wait for a URL; what it fails is retried by --resume
})
TILE_ONLY = frozenset({"overlap", "tile_scales", "full_frame", "tile_merge", "tile_refocus", "tile_near"})
_FLAGS = {"source": "SOURCE", "agnostic": "--agnostic-nms", "half": "--half/--fp32"}


def run_identity(opts: RunOptions) -> dict[str, Any]:
    """The settings that make a run's outputs what they are (as JSON values): every :class:`RunOptions` field but
    :data:`NO_OUTPUT_CHANGE`, and the tiling options only when tiling is on. ``run.json`` records them; a resumed
    run must have the same."""
    values = {f.name: getattr(opts, f.name) for f in fields(opts) if f.name not in NO_OUTPUT_CHANGE}
    if not opts.tile:
        values = {k: v for k, v in values.items() if k not in TILE_ONLY}
    return dict(json.loads(json.dumps(values)))


def _shown(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def identity_changes(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Each setting of ``now`` that differs from ``before`` as ``--flag OLD -> NEW``. A setting ``before`` does not
    record (an option newer than the run folder) counts as its default."""
    defaults = run_identity(RunOptions(tile=1))
    out = []
    for k, v in now.items():
        old = before.get(k, defaults.get(k))
        if old != v:
            out.append(f"{_FLAGS.get(k, '--' + k.replace('_', '-'))} {_shown(old)} -> {_shown(v)}")
    return out
