"""What a run is asked to do (:class:`RunOptions`) and what it records of each input (:class:`Outcome`), with the
one function that writes an input's outputs; shared by the local and the Ray engine."""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from toolkit.engine.core import DetectorConfig, Result
from toolkit.engine.plan import MODES
from toolkit.errors import InputError, OutputError
from toolkit.io.files import content_fingerprint
from toolkit.io.outputs import (
    AnnotateStyle,
    annotate,
    annotated_suffix,
    coco_image_id,
    coco_results,
    csv_rows,
    encode_crops,
    write_encoded,
    write_image,
    write_labels,
)
from toolkit.io.store import RUN_HINT, OutputNameError, Store
from toolkit.options import CONCURRENCY, FOLDER, RAY, SAVING, build, check, flag_of, group, identity, option
from toolkit.tiling import TileOptions

ENGINES = ("local", "ray")

SOURCE_HELP = ("Image, folder (recursive), glob ('imgs/*.jpg'), .txt list of paths or URLs, video, http(s) image or "
               "video URL, a prefix or object in a store (s3://bucket/images/, gs://, az://: pip install "
               "'yolokit[cloud]'), or a live stream: rtsp://, rtmp://, an http(s) URL naming no media file, a webcam "
               "index (0), a .streams file (one a line, batched together). Default: the four sample photos shipped "
               "with yolokit.")


@dataclass(frozen=True)
class SaveOptions:
    """What a run writes besides ``summary.json``, ``failures.jsonl`` and its records."""

    save_txt: bool = option(False, "Write labels/<name>.txt: class xc yc w h, normalised (YOLO format).",
                            panel=SAVING, affects_output=True)
    save_conf: bool = option(False, "Add the confidence to each --save-txt line.", panel=SAVING, affects_output=True)
    save_json: bool = option(False, "Write predictions.json in COCO results format.", panel=SAVING,
                             affects_output=True)
    save_csv: bool = option(False, "Write predictions.csv: path, frame, class_id, class_name, confidence, x1, y1, x2, "
                            "y2 (source pixels), one row per box.", panel=SAVING, affects_output=True)
    save_crop: bool = option(False, "Write each box's crop to crops/<class>/<name>.jpg.", panel=SAVING,
                             affects_output=True)
    nosave: bool = option(False, "Do not write annotated images or videos.", decls=("--nosave",), panel=SAVING,
                          affects_output=True)  # one flag: Typer's --no-nosave, a double negative, is no choice
    round_boxes: bool = option(True, "Written outputs use whole-pixel box corners, as YOLOv5's detect.py does.",
                               cli=False, affects_output=True)

    def __post_init__(self) -> None:
        check(self)

    @property
    def keep_images(self) -> bool:
        """Whether results keep their decoded image: annotated images or crops are saved."""
        return not self.nosave or self.save_crop


@dataclass(frozen=True)
class RunFolder:
    """Where a run writes: ``project/name`` (``name2``, ``name3``... when it exists, unless ``exist_ok``)."""

    project: str = option("runs/detect", "Parent folder of the run folder: a local folder, or a prefix in a store "
                          "(s3://bucket/runs; see docs/guide/object-storage.md).", panel=FOLDER)
    name: str = option("exp", "Run folder name (exp, exp2, ... when it exists).", panel=FOLDER)
    exist_ok: bool = option(False, "Reuse PROJECT/NAME instead of making a new one (never while another run holds "
                            "it).", panel=FOLDER)
    resume: bool = option(False, "Continue an interrupted run in PROJECT/NAME: inputs it finished are skipped, "
                          "inputs that changed are redone, failures that can now pass are retried, the rest "
                          "processed. The settings that change outputs must be the same (see "
                          "docs/guide/run-folders.md).", panel=FOLDER)
    retry_failed: bool = option(False, "With --resume: retry every failed input, also those refused for what the "
                                "file is (damaged, too large) and not changed since.", panel=FOLDER)

    def __post_init__(self) -> None:
        check(self)
        parts = self.name.replace("\\", "/").split("/")
        if not self.name.strip() or self.name.startswith(("/", "\\")) or Path(self.name).drive \
                or any(part in (".", "..") for part in parts):
            raise InputError(f"--name {self.name!r}: give the run folder's name inside --project (exp, or "
                             f"survey/day1): not empty, not an absolute path, no . or .. part that leaves --project")


@dataclass(frozen=True)
class EngineOptions:
    """How a run is spread: this machine's threads or processes, or a Ray cluster (``name``: ``--engine``)."""

    batch: int = option(0, "Images per inference batch (0: chosen by --mode auto; with --engine ray, 8).",
                        panel=CONCURRENCY, lo=0)
    workers: int = option(0, "Inference workers: threads or processes, or Ray actors (0: auto).", panel=CONCURRENCY,
                          lo=0)
    mode: str = option("auto", "auto, thread or process. auto picks from the backend, the device, the core count and "
                       "the number of inputs; the summary shows the choice.", panel=CONCURRENCY, choices=MODES)
    save_workers: int = option(0, "Threads that annotate, encode and write outputs (0: from the core count).",
                               cli=False, lo=0)
    name: str = option("local", "local (this machine) or ray (a Ray cluster; pip install 'yolokit[ray]').",
                       cli_name="engine", panel=RAY, choices=ENGINES)
    address: str | None = option(None, "With --engine ray: the cluster to join (auto, or HOST:PORT of 'ray start "
                                 "--head'); default: start a local one.", panel=RAY)
    gpus_per_worker: float = option(0.0, "With --engine ray: GPUs per inference actor.", panel=RAY, lo=0)
    cpus_per_worker: float = option(0.0, "With --engine ray: CPUs per inference actor (also its intra-op threads); "
                                    "0: the cluster's CPUs / --workers.", panel=RAY, lo=0)

    def __post_init__(self) -> None:
        check(self)


@dataclass(frozen=True)
class RunOptions:
    """Options of a detection run (``yolokit run``): the source, and one group per concept, each of whose options is
    declared once in its own dataclass. :meth:`of` builds one from flat settings by their command-line names
    (``RunOptions.of(source="photos", conf=0.5, save_txt=True, tile=640)``); ``tiling`` is None unless a tile size
    is given."""

    source: str | None = option(None, SOURCE_HELP, argument=True, affects_output=True)
    detector: DetectorConfig = group(DetectorConfig)
    save: SaveOptions = group(SaveOptions)
    draw: AnnotateStyle = group(AnnotateStyle)
    tiling: TileOptions | None = group(TileOptions, optional=True)
    folder: RunFolder = group(RunFolder)
    engine: EngineOptions = group(EngineOptions)

    @classmethod
    def of(cls, **settings: Any) -> RunOptions:
        """Options from flat settings by their command-line names (``max_det``, ``agnostic_nms``, ``tile_merge``,
        ``engine``...); the rest keep their defaults; an unknown name is an InputError naming the nearest."""
        return build(cls, settings, "RunOptions")  # type: ignore[no-any-return]

    def identity(self) -> dict[str, Any]:
        """The settings that change this run's outputs (:func:`toolkit.options.identity`): what a resumed run must
        share with the interrupted one."""
        return identity(self)

    def detector_config(self, **overrides: Any) -> DetectorConfig:
        """The detector these options describe, with ``overrides`` (the engine's weights path, threads...)."""
        return replace(self.detector, **overrides)

    @property
    def keep_images(self) -> bool:
        return self.save.keep_images


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
    frames: int = 0  # a video frame's: the frames its video is to give (InputRef.frames; 0: not known)
    files: list[str] = field(default_factory=list)  # files written (below the run folder), crops apart


class CropNames:
    """Crop file names, unique within a run, as detect.py's ``save_one_box`` names them: ``<class>/<key>.jpg``, then
    ``<key>2.jpg``, ``<key>3.jpg``... in detect.py's order (the lowest confidence first: its ``<key>.jpg`` is the
    least confident box of the class). A name another input already took is skipped, so no crop overwrites another;
    names are given in input order, so a resumed run gives an input the names it had."""

    def __init__(self, taken: Iterable[str] = ()) -> None:
        self.taken = set(taken)

    def assign(self, key: str, class_names: list[str]) -> list[str]:
        """The names of an image's crops, for its boxes in their order (the most confident first)."""
        counts: Counter[str] = Counter()
        out = []
        for name in reversed(class_names):
            folder = name.replace("/", "_").replace("\\", "_").strip(". ") or "class"
            n = counts[folder] + 1
            while True:
                candidate = f"{folder}/{key}.jpg" if n == 1 else f"{folder}/{key}{n}.jpg"
                if candidate not in self.taken:
                    break
                n += 1
            counts[folder] = n
            self.taken.add(candidate)
            out.append(candidate)
        return out[::-1]


def write_outputs(res: Result, opts: RunOptions, out_dir: Store, crop_names: list[str] | None = None) -> Outcome:
    """:func:`_write_outputs`, with an output name the run folder cannot hold (too long; a folder or file of
    another input's outputs in its way) failing its input, not the run: the outputs of that input written before the
    one refused are removed (they stayed, unrecorded, and no resume removed them)."""
    written: list[str] = []
    try:
        return _write_outputs(res, opts, out_dir, crop_names, written)
    except OutputNameError as e:
        for name in written:
            with contextlib.suppress(OSError, OutputError):
                out_dir.delete(name)
        reason = str(e).replace(RUN_HINT, "rename the input, or move what is in the way")
        return Outcome(res.ref.key, res.ref.name, reason, video=res.ref.video, frames=res.ref.frames)


def _write_outputs(res: Result, opts: RunOptions, out_dir: Store, crop_names: list[str] | None = None,
                   written_now: list[str] | None = None) -> Outcome:
    """Write one result's labels, crops and annotated image into the run folder ``out_dir``, each whole (a local
    folder or object storage: :mod:`toolkit.io.store`); what to record of it.
    A video frame's annotated image goes into its video (:class:`toolkit.jobs.saving.OutputPool`), not here.

    The local engine calls this in its output pool, the Ray engine inside its workers. ``written_now`` gets the name
    of each output as it is written."""
    done = written_now if written_now is not None else []
    key, video = res.ref.key, res.ref.video
    if res.error is not None:
        return Outcome(key, res.ref.name, res.error, video=video, frames=res.ref.frames)
    d = res.detections
    assert d is not None
    save = opts.save
    if save.round_boxes:
        d = d.rounded()
    files = []
    if save.save_txt and len(d):
        write_labels(out_dir, f"labels/{key}.txt", d, save.save_conf)
        files.append(f"labels/{key}.txt")
        done.append(files[-1])
    if not save.nosave and not video and (res.image is not None or res.annotated is not None):
        # .png for a PNG, .jpg for a TIFF or a video frame (Path(".png").suffix is "": every name was .jpg here)
        name = f"{key}{annotated_suffix(res.ref.path, res.ref.frame)}"
        if res.annotated is not None:  # encoded by a process-mode worker, with the same suffix
            write_encoded(out_dir, name, res.annotated)
        else:
            assert res.image is not None
            # drawn on the decoded image itself unless crops are cut from it next (nothing else reads it)
            name = write_image(out_dir, name, annotate(res.image, d, opts.draw, copy=bool(crop_names)))
        files.append(name)
        done.append(name)
    written: list[str] | None = None
    if crop_names and (res.crops is not None or res.image is not None):
        crops = res.crops if res.crops is not None else encode_crops(res.image, d)  # type: ignore[arg-type]
        written = []
        for name, data in zip(crop_names, crops, strict=True):
            if data is not None:
                write_encoded(out_dir, f"crops/{name}", data)
                written.append(name)
                done.append(f"crops/{name}")
    return Outcome(key, res.ref.name, None, len(d), dict(Counter(d.class_names)),
                   coco_results(d, coco_image_id(key, None if video else _file_stem(res.ref.path)))
                   if save.save_json else None, d.shape,
                   csv_rows(d, res.ref.path, res.ref.frame) if save.save_csv else None, written, video,
                   files=files, frames=res.ref.frames)


def _file_stem(path: str) -> str:
    """The stem of an input's file name: of a path, a store's key or a URL (without its query)."""
    if "://" in path:
        path = path.split("?", 1)[0].split("#", 1)[0]
    return os.path.splitext(os.path.basename(path.rstrip("/")))[0]


def _shown(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


MODEL_CONTENT = "weights_content"  # a run's identity: its local model's content (files.content_fingerprint)


def run_identity(opts: RunOptions) -> dict[str, Any]:
    """What a resumed run must share with the run it continues: the settings that change outputs
    (:meth:`RunOptions.identity`) and, for a local model, its content, so that the same file named another way
    (``./yolov5n.onnx``, ``yolov5n``, or no ``--weights`` at all for the default) is the same model, and another
    file under the same name is not."""
    out = opts.identity()
    local = _local_model(opts.detector.weights)
    content = content_fingerprint(str(local)) if local is not None else None
    if content is not None:
        out[MODEL_CONTENT] = content
    return out


def _local_model(weights: str | None) -> Path | None:
    """The local file a run's ``--weights`` names, found as the run finds it (a path; a name like yolov5n, or none
    at all, in $YOLOKIT_WEIGHTS, the cache or the shared folder) without downloading anything; None for a URL, a
    store's object, a built-in config, or a model not found here (compared by name then)."""
    from toolkit.errors import YolokitError
    from toolkit.model.configs import is_builtin_config
    from toolkit.model.weights import resolve_weights

    if weights is not None and ("://" in str(weights) or is_builtin_config(Path(str(weights)).name)):
        return None
    try:
        return resolve_weights(weights, allow_download=False)
    except (YolokitError, OSError):
        return None


def identity_changes(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Each setting of ``now`` (a :func:`run_identity`) that differs from ``before`` as ``--flag OLD -> NEW``.
    A setting ``before`` does not record (an option newer than the run folder) counts as its default. The model is
    compared by content where both record it (else by name), SOURCE as a path (``p1/`` is ``./p1``)."""
    defaults = {**RunOptions.of(tile=640).identity(), **RunOptions.of().identity()}  # tiling off, its options' defaults
    known = before.get(MODEL_CONTENT) is not None and now.get(MODEL_CONTENT) is not None
    out = []
    for k, v in now.items():
        old = before.get(k, defaults.get(k))
        if k == MODEL_CONTENT or (k == "weights" and known):
            continue
        if k == "source" and as_path(old) == as_path(v):  # not resolved from today's folder: run.json does not
            continue  # record the one the run started in (a relative SOURCE from elsewhere is another folder)
        if old is None and v is False or old is False and v is None:  # --fp32 is --half unset: FP32 either way
            continue
        if old != v:
            flag = "SOURCE" if k == "source" else flag_of(k)
            out.append(f"{flag} {_shown(old)} -> {_shown(v)}")
    if known and _content(before[MODEL_CONTENT]) != _content(now[MODEL_CONTENT]):
        old, new = _shown(before.get("weights")), _shown(now.get("weights"))
        if old == new:  # the same words name another file now ("unset -> unset" said nothing)
            out.insert(0, f"--weights {new} names another model than the run's now (its file's content differs"
                          f"{'; $YOLOKIT_WEIGHTS chooses the default' if new == 'unset' else ''})")
        else:
            out.insert(0, f"--weights {old} -> {new} (another model: the file's content differs from the run's)")
    return out


def _content(fingerprint: Any) -> Any:
    """A model's content fingerprint without its files' names (``yolov5n.onnx:8020386:091dc8ce`` is
    ``8020386:091dc8ce``): a byte-identical copy under another name is the same model."""
    if not isinstance(fingerprint, str):
        return fingerprint
    return ";".join(":".join(part.rsplit(":", 2)[1:]) for part in fingerprint.split(";"))


def as_path(value: Any) -> Any:
    """A local path in one spelling (``p1/``, ``./p1`` and ``p1//`` are ``p1``), for SOURCE and each input; a URL,
    or anything else, as it is."""
    return os.path.normpath(value) if isinstance(value, str) and value and "://" not in value else value
