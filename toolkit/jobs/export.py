"""``yolokit export``: write an ONNX / OpenVINO / TensorRT artifact and check it against PyTorch FP32.

Every export ends with a parity check: the same letterboxed images go through the PyTorch FP32 model and
through the artifact (loaded by its own backend); the report gives the largest absolute difference of the
raw outputs (box columns in pixels, confidence columns separately) and how many PyTorch detections the
artifact reproduces (same class, IoU >= 0.9, after yolokit's usual NMS). A failed export or a failed
parity check raises :class:`ExportError`; nothing is swallowed.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from glob import escape as glob_escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from backends.base import NMS_MIN_OPSET, RAW_OUTPUT, ExportOptions
from toolkit.devices import GPU_BATCH, is_gpu
from toolkit.errors import BackendUnavailableError, ExportError, InputError, OutputError, YolokitError
from toolkit.io.files import os_reason
from toolkit.meta import BakedNMS, ModelMeta
from toolkit.options import IMGSZ_MAX

if TYPE_CHECKING:
    from backends.base import Backend

__all__ = ["ExportOptions", "ExportReport", "ParityReport", "default_output", "export", "format_report",
           "parity_check"]
PARITY_IOU = 0.9
PARITY_NMS_IOU = 0.45
# Detections are compared at the first of these thresholds at which PyTorch finds at least MIN_DETECTIONS boxes
# (the sample photos hold few objects; low-confidence boxes are still the model's detections and must agree too)
PARITY_CONFS = (0.25, 0.1, 0.05, 0.01, 0.001)
MIN_DETECTIONS = 50
# Pass criteria per precision: (max conf-column diff, max box-column diff as a fraction of the input size,
# minimum detection match rate). Reduced precisions are judged on detections only.
THRESHOLDS: dict[str, tuple[float | None, float | None, float]] = {
    "fp32": (2e-3, 1e-3, 0.97),
    "fp16": (None, None, 0.85),
    "int8": (None, None, 0.5),
}


@dataclass
class ParityReport:
    """PyTorch FP32 vs the artifact on the same inputs."""

    images: int
    inputs: str  # where the images came from
    imgsz: tuple[int, int]  # the largest input side, twice
    shapes: list[tuple[int, int]]  # the letterboxed input shapes that ran
    conf: float  # the confidence threshold at which detections were compared
    max_abs_diff_conf: float  # objectness + class columns
    max_abs_diff_box: float  # xywh columns, pixels
    reference_detections: int
    artifact_detections: int
    matched: int
    match_rate: float  # matched / max(reference, artifact); 1.0 when both found nothing
    passed: bool
    criteria: str
    reason: str = ""
    # NMS inside: the artifact's final detections against PyTorch + yolokit's NMS at the exported settings
    final: dict[str, Any] | None = None


@dataclass
class ExportReport:
    artifact: Path
    format: str
    precision: str
    meta: ModelMeta
    export_s: float
    parity: ParityReport
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": str(self.artifact), "format": self.format, "precision": self.precision,
                "export_s": round(self.export_s, 2), "meta": asdict(self.meta), "parity": asdict(self.parity),
                "notes": list(self.notes)}


def format_report(r: ExportReport) -> str:
    p = r.parity
    m = r.meta
    size = f"{m.imgsz[0]}x{m.imgsz[1]} (static)" if m.imgsz is not None else f"any HxW (multiple of {m.stride}" + (
        f", up to {m.max_imgsz[0]}x{m.max_imgsz[1]})" if m.max_imgsz else ")")
    lines = [
        f"exported {r.artifact}  ({r.format} {r.precision}, {r.export_s:.1f} s)",
        f"  input: {size}, "
        f"batch: {'dynamic' if m.batch is None else m.batch}"
        + (f" (max {m.max_batch})" if m.batch is None and m.max_batch else "")
        + f", {m.nc} classes, stride {m.stride}",
        f"  runtime: {', '.join(f'{k} {v}' for k, v in m.runtime_versions.items())}",
        f"  parity vs PyTorch FP32 on {p.images} images ({p.inputs}; input shapes "
        f"{', '.join(f'{h}x{w}' for h, w in p.shapes)}): max |diff| conf {p.max_abs_diff_conf:.2e}, box "
        f"{p.max_abs_diff_box:.3g} px; detections at conf {p.conf:.3g}: {p.matched}/{p.reference_detections} matched "
        f"(IoU>={PARITY_IOU}, same class; artifact found {p.artifact_detections}), match rate {p.match_rate:.3f} "
        f"-> {'PASS' if p.passed else 'FAIL'}" + (f" ({p.reason})" if p.reason else ""),
    ]
    if p.final is not None:
        f = p.final
        lines.append(f"  NMS inside (conf {f['conf']:g}, iou {f['iou']:g}, max_det {f['max_det']}"
                     f"{', agnostic' if f['agnostic'] else ''}): final detections {f['matched']}/{f['reference']} "
                     f"matched against PyTorch + yolokit NMS (artifact found {f['artifact']}), match rate "
                     f"{f['match_rate']:.3f}")
    int8 = m.extra.get("int8")
    if isinstance(int8, dict):
        from toolkit.jobs.calibration import describe

        lines.append(f"  INT8: {describe(int8)}")
    lines += [f"  note: {n}" for n in r.notes]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ paths


def default_output(weights: str | Path, to: str, options: ExportOptions) -> Path:
    """Beside the weights (the current folder for a built-in config): ``yolov5n.onnx``,
    ``yolov5n_openvino/``, ``yolov5n.engine``; ``_fp16`` / ``_int8`` before the suffix when not FP32."""
    from toolkit.model.configs import is_builtin_config

    p = Path(weights)
    folder = Path.cwd() if (is_builtin_config(p.name) and not p.exists()) else p.parent
    stem = p.name.split(".")[0] if p.suffix in (".pt", ".pth", ".yaml", ".yml") else p.stem
    tag = "" if options.precision == "fp32" else f"_{options.precision}"
    return folder / _exporter(to).default_name(stem, tag)


def _exporter(to: str) -> Backend:
    import backends

    found = backends.exporters()
    if to not in found:
        raise InputError(f"--to {to!r}: choose one of {', '.join(found)}")
    return found[to]


# ------------------------------------------------------------------------------------------------ checks


def _validate(to: str, options: ExportOptions, stride: int) -> None:
    import backends

    h, w = options.imgsz
    if h <= 0 or w <= 0 or h % stride or w % stride:
        raise InputError(f"--imgsz {h},{w}: height and width must be positive multiples of the model stride "
                         f"{stride}")
    if max(h, w) > IMGSZ_MAX:
        raise InputError(f"--imgsz {h},{w}: at most {IMGSZ_MAX} a side (larger images are run with --tile)")
    if options.batch < 1:
        raise InputError(f"--batch {options.batch}: must be at least 1")
    if options.half and options.int8:
        raise InputError("choose one of --half and --int8")
    precision = options.precision
    if precision not in _exporter(to).EXPORT_PRECISIONS:
        able = [n for n, b in backends.exporters().items() if precision in b.EXPORT_PRECISIONS]
        flag = "--int8" if options.int8 else "--half" if options.half else "FP32"
        raise InputError(f"{flag} is supported for --to {' or '.join(able)} only (not {to})")
    if options.int8 and not options.calib_data and options.int8_data is None:
        raise InputError("--int8 needs calibration images: --data FOLDER")
    if options.max_batch < 1:
        raise InputError(f"--max-batch {options.max_batch}: must be at least 1")
    if not 0 < options.fraction <= 1:  # nan too
        raise InputError(f"--fraction {options.fraction:g}: must be in (0, 1], the share of --data's images used")
    if options.fraction != 1 and not options.int8:
        raise InputError("--fraction applies to --int8 exports (the share of --data's images calibrated on)")
    if options.max_drop is not None and not options.int8:
        raise InputError("--max-drop applies to --int8 exports (accuracy-controlled quantization)")
    if options.max_drop_iterations is not None and (options.max_drop is None or options.max_drop_iterations < 0):
        raise InputError(f"--max-drop-steps {options.max_drop_iterations}: needs --max-drop, and must be 0 or more "
                         f"(0: no layer returned to float, the drop only checked)")
    if options.max_drop is not None and options.max_drop < 0:
        raise InputError(f"--max-drop {options.max_drop}: must be 0 or more (an absolute mAP50-95 drop, e.g. 0.01)")
    if options.nms is not None:
        _validate_nms(options.nms, options.opset)
    _exporter(to).check_export(options)
    if not MIN_OPSET <= options.opset <= 23:  # 7 and 8 have no Resize for YOLOv5's upsampling: 420 lines of graph
        raise InputError(f"--opset {options.opset}: choose an ONNX opset between {MIN_OPSET} and 23 (default 17)")
    if options.workspace_gb <= 0:
        raise InputError(f"--workspace {options.workspace_gb}: must be positive (GB)")


def _validate_nms(nms: BakedNMS, opset: int) -> None:
    if not 0 <= nms.conf <= 1 or not 0 <= nms.iou <= 1:
        raise InputError(f"--conf {nms.conf:g} and --iou {nms.iou:g} must be in [0, 1]")
    if nms.max_det < 1:
        raise InputError(f"--max-det {nms.max_det}: must be at least 1")
    if nms.max_nms is not None and nms.max_nms < 1:
        raise InputError(f"max_nms {nms.max_nms}: must be at least 1")
    if opset < NMS_MIN_OPSET:
        raise InputError(f"--nms needs --opset {NMS_MIN_OPSET} or newer, got {opset}")


def _parity_images(parity_images: list[str] | None) -> tuple[list[np.ndarray], str]:
    """Real photos for the parity check: the given ones, else the sample photos shipped with yolokit, each also
    mirrored, plus a 2x2 mosaic of them (several aspect ratios, so a dynamic artifact runs several input shapes)."""
    import cv2

    from toolkit.io.decode import read_image
    from toolkit.io.samples import sample_paths

    if parity_images:
        return [read_image(p) for p in parity_images], f"{len(parity_images)} given images"
    photos = [read_image(p) for p in sample_paths()]
    mirrored = [np.ascontiguousarray(p[:, ::-1]) for p in photos]
    tiles = [cv2.resize(p, (320, 240), interpolation=cv2.INTER_AREA) for p in photos[:4]]
    mosaic = np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:4], 1)], 0)
    images = photos + mirrored + [mosaic]
    return images, f"{len(photos)} sample photos, mirrored, and their mosaic"


def _parity_confs(outputs: list[np.ndarray]) -> list[float]:
    """Thresholds to try, highest first: :data:`PARITY_CONFS`, then thresholds just below the scores of the
    MIN_DETECTIONS-th, 2x, 4x ... best candidate boxes (a model with random weights, or one trained for other
    objects, scores every box on the sample photos below 0.001; its top boxes are still compared)."""
    scores = np.sort(np.concatenate([o[:, 4] * o[:, 5:].max(1) for o in outputs]))[::-1]
    ranked = [float(scores[k]) * 0.999 for k in (MIN_DETECTIONS * 2 ** i for i in range(8)) if k < len(scores)]
    return list(PARITY_CONFS) + [c for c in ranked if 0 < c < PARITY_CONFS[-1]]


def _match(ref: Any, got: Any) -> int:
    """Greedy one-to-one matches, highest reference confidence first, same class and IoU >= PARITY_IOU."""
    from toolkit.ops import match_greedy

    m = match_greedy(ref[0], ref[1], ref[2], got[0], got[2], PARITY_IOU)
    return int((m >= 0).sum())


def parity_check(weights: str | Path, artifact: Path, to: str, options: ExportOptions,
                 parity_images: list[str] | None, notes: list[str]) -> ParityReport:
    """Run the same real photos through PyTorch FP32 (CPU) and the artifact, letterboxed as the artifact letterboxes
    them; compare the raw outputs and the detections.

    Detections are compared at the highest confidence threshold of :data:`PARITY_CONFS` at which PyTorch finds at
    least :data:`MIN_DETECTIONS` boxes, so that the check always compares enough detections to fail; when even the
    lowest threshold gives fewer, the check fails and says to pass more images with ``--parity-data``.

    An artifact with NMS inside is checked twice: its raw predictions (asked for with ``RAW_OUTPUT``) as above, and
    its final detections against yolokit's NMS of PyTorch's predictions at the exported settings. A runtime that
    cannot give the raw predictions back (a TensorRT engine) is judged on the final detections alone."""
    from toolkit.engine.detector import Detector

    baked = _exporter(to).read_meta(artifact).nms
    at: dict[str, Any] = {} if baked is None else {"conf": baked.conf, "iou": baked.iou, "max_det": baked.max_det,
                                                   "agnostic": baked.agnostic}
    with Detector(artifact, backend=to, device=options.device, imgsz=max(options.imgsz),
                  options={RAW_OUTPUT: True}, **at) as got_det, \
            Detector(weights, device="cpu", half=False, imgsz=got_det.imgsz) as ref_det:
        meta = got_det.meta
        executes = meta.extra.get("inference_precision")
        if executes:
            notes.append(f"OpenVINO {meta.extra.get('device', 'CPU')} executes this {meta.precision} IR at "
                         f"inference precision {executes}")
        images, what = _parity_images(parity_images)
        chws = [got_det.routine.preprocess(img)[0] for img in images]
        ref_out = [ref_det.routine.infer(chw[None])[0] for chw in chws]
        raw = meta.nms is None  # the artifact's raw predictions
        got_out = [got_det.routine.infer(chw[None])[0] for chw in chws] if raw else []
        final = None
        if baked is not None:
            if raw:
                with Detector(artifact, backend=to, device=options.device, imgsz=max(options.imgsz), **at) as e2e:
                    final_out = [e2e.routine.infer(chw[None])[0] for chw in chws]
            else:
                final_out = [got_det.routine.infer(chw[None])[0] for chw in chws]
            final = _final_parity(baked, ref_out, final_out)
    shapes = {tuple(c.shape[1:]) for c in chws}
    size = max(max(s) for s in shapes)
    max_conf, max_box_frac, min_rate = THRESHOLDS.get(meta.precision, THRESHOLDS["int8"])
    failures: list[str] = []
    if raw:
        d_conf, d_box, conf, n_ref, n_got, matched, rate = _raw_parity(artifact, ref_out, got_out, failures,
                                                                       max_conf, max_box_frac, min_rate, size)
    else:
        notes.append("this runtime cannot return the raw predictions of a model with NMS inside: only its final "
                     "detections were compared")
        d_conf = d_box = float("nan")
        conf, n_ref, n_got, matched, rate = 0.0, 0, 0, 0, 0.0
    if final is not None:
        if not raw:
            conf, n_ref, n_got, matched, rate = (final["conf"], final["reference"], final["artifact"],
                                                 final["matched"], final["match_rate"])
        if final["match_rate"] < min_rate:
            failures.append(f"only {final['matched']} of {max(final['reference'], final['artifact'])} final "
                            f"detections agree ({final['match_rate']:.2f} < {min_rate})")
        elif not final["reference"] and not final["artifact"]:  # 0 of 0 "agree": nothing of the NMS was compared
            notes.append(f"at the exported --conf {final['conf']:g} no box passes on the parity images, so the NMS "
                         f"inside was not compared (only the raw output was); give --parity-data with images "
                         f"where the model finds objects at that threshold")
    crit = ", ".join(x for x in (
        f"conf diff <= {max_conf:.0e}" if max_conf is not None else "",
        f"box diff <= {max_box_frac:g} x imgsz" if max_box_frac is not None else "",
        f"match rate >= {min_rate} over >= {MIN_DETECTIONS} detections") if x)
    return ParityReport(images=len(images), inputs=what, imgsz=(int(size), int(size)),
                        shapes=sorted((int(h), int(w)) for h, w in shapes), conf=conf,
                        max_abs_diff_conf=d_conf, max_abs_diff_box=d_box, reference_detections=n_ref,
                        artifact_detections=n_got, matched=matched, match_rate=rate, passed=not failures,
                        criteria=crit, reason="; ".join(failures), final=final)


def _raw_parity(artifact: Path, ref_out: list[np.ndarray], got_out: list[np.ndarray], failures: list[str],
                max_conf: float | None, max_box_frac: float | None, min_rate: float,
                size: int) -> tuple[float, float, float, int, int, int, float]:
    """Raw outputs and detections at the highest threshold with enough boxes: (conf diff, box diff, threshold,
    reference boxes, artifact boxes, matched, match rate); failures are appended."""
    from toolkit.ops import NMSOptions, postprocess

    for r, g in zip(ref_out, got_out, strict=True):
        if r.shape != g.shape:
            raise ExportError(f"{artifact}: output shape {g.shape} differs from PyTorch's {r.shape}")
        if not np.isfinite(g).all():
            raise ExportError(f"{artifact}: the artifact's outputs contain NaN or inf")
    d_box = max(float(np.abs(g[:, :4] - r[:, :4]).max()) for r, g in zip(ref_out, got_out, strict=True))
    d_conf = max(float(np.abs(g[:, 4:] - r[:, 4:]).max()) for r, g in zip(ref_out, got_out, strict=True))
    for conf in _parity_confs(ref_out):
        nms = NMSOptions(conf=conf, iou=PARITY_NMS_IOU)
        ref_dets = [postprocess(r, nms) for r in ref_out]
        n_ref = sum(len(d[0]) for d in ref_dets)
        if n_ref >= MIN_DETECTIONS:
            break
    got_dets = [postprocess(g, nms) for g in got_out]
    n_got = sum(len(d[0]) for d in got_dets)
    matched = sum(_match(r, g) for r, g in zip(ref_dets, got_dets, strict=True))
    denom = max(n_ref, n_got)
    rate = matched / denom if denom else 0.0
    if max_conf is not None and d_conf > max_conf:
        failures.append(f"confidence columns differ by {d_conf:.2e} > {max_conf:.0e}")
    if max_box_frac is not None and d_box > max_box_frac * size:
        failures.append(f"box columns differ by {d_box:.3g} px > {max_box_frac * size:.3g} px")
    if n_ref < MIN_DETECTIONS:
        failures.append(f"PyTorch finds only {n_ref} boxes on the parity images even at conf {conf:.3g}, fewer than "
                        f"the {MIN_DETECTIONS} a meaningful comparison needs; pass images of the objects this model "
                        f"detects with --parity-data")
    elif rate < min_rate:
        failures.append(f"only {matched} of {denom} detections agree ({rate:.2f} < {min_rate})")
    return d_conf, d_box, conf, n_ref, n_got, matched, rate


def _final_parity(baked: BakedNMS, ref_out: list[np.ndarray], final_out: list[np.ndarray]) -> dict[str, Any]:
    """The artifact's final detections against yolokit's NMS of PyTorch's predictions at the exported settings."""
    from toolkit.ops import NMSOptions, final_detections, postprocess

    nms = NMSOptions(conf=baked.conf, iou=baked.iou, max_det=baked.max_det, agnostic=baked.agnostic,
                     max_nms=baked.max_nms if baked.max_nms is not None else 1 << 62)
    ref = [postprocess(r, nms) for r in ref_out]
    got = [final_detections(f, nms) for f in final_out]
    n_ref, n_got = sum(len(d[0]) for d in ref), sum(len(d[0]) for d in got)
    matched = sum(_match(r, g) for r, g in zip(ref, got, strict=True))
    denom = max(n_ref, n_got)
    return {"conf": baked.conf, "iou": baked.iou, "max_det": baked.max_det, "agnostic": baked.agnostic,
            "reference": n_ref, "artifact": n_got, "matched": matched,
            "match_rate": matched / denom if denom else 1.0}


# ------------------------------------------------------------------------------------------------ export


def export_defaults(options: ExportOptions, default_device: str) -> ExportOptions:
    """The options with what was not chosen filled in: the format's own device (engines are built on a GPU) for
    ``""``/``cpu``, and for ``batch=0`` the batch a GPU run plans (:data:`toolkit.devices.GPU_BATCH`, within
    ``max_batch``) as a dynamic GPU artifact's profile optimum, else 1."""
    if options.device in ("", "cpu"):
        options = replace(options, device=default_device)
    if options.batch == 0:
        gpu_profile = options.dynamic and is_gpu(options.device)
        options = replace(options, batch=min(GPU_BATCH, max(1, options.max_batch)) if gpu_profile else 1)
    return options


def writable_folder(folder: Path, target: Path) -> None:
    """Refuse, in one line naming ``target``, a folder that cannot be created or written (a file in its place, a
    read-only or virtual file system), before minutes of exporting."""
    import tempfile

    for above in (folder, *folder.parents):
        if above.exists() and not above.is_dir():
            raise OutputError(f"{target}: {above} is a file, where the export needs a folder; choose another path "
                              f"with -o, or move the file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise OutputError(f"{target}: cannot write the export in {folder} ({os_reason(e)}); choose another path "
                          f"with -o, or fix the folder") from None


def export(weights: str | Path, to: str, out: Path | None = None, options: ExportOptions | None = None,
           parity_images: list[str] | None = None) -> ExportReport:
    """Export ``weights`` (a .pt checkpoint, architecture yaml or built-in config) to ``to`` and check the
    artifact against PyTorch FP32. Raises :class:`ExportError` when the export or the parity check fails."""
    import backends
    from toolkit.model.configs import resolve_model

    options = options or ExportOptions()
    module = _exporter(to)
    tools = module.export_unavailable_reason(options.simplify)  # the export tools are not in the run-only extras
    if tools:
        raise BackendUnavailableError(tools)
    backends.require(backends.checkpoint_backend())  # every export reads a checkpoint with PyTorch
    from toolkit.model.load import load_model

    if options.dynamic and options.batch > 1 and not module.TUNES_BATCH:  # accepted, then silently ignored
        raise InputError(f"--batch {options.batch} fixes a --static export's batch; a dynamic export (the default) "
                         f"takes any batch: add --static, or leave --batch out")
    options = export_defaults(options, module.DEFAULT_DEVICE)
    reason = module.unavailable_reason()
    if reason:
        raise BackendUnavailableError(reason)
    src_path = resolve_model(weights)
    found = backends.artifact_backend(src_path)
    if src_path.is_dir() and found is None:
        raise InputError(f"{src_path}: a folder; yolokit export starts from a .pt checkpoint: give its path")
    if found is not None and found != backends.checkpoint_backend():  # "is not a PyTorch checkpoint ... a pickle"
        raise InputError(f"{src_path}: is {backends.REGISTRY[found].DESCRIPTION}, an export already; yolokit export "
                         f"starts from the .pt checkpoint it came from: give that")
    source = load_model(src_path)
    _validate(to, options, source.meta.stride)
    if options.int8 and options.int8_data is None:
        from toolkit.jobs.calibration import int8_data

        options = replace(options, int8_data=int8_data(options, source.meta.stride, options.nms is not None))
    # beside a checkpoint given by its path; a name (yolov5n), a URL or the default into the current folder (a name
    # wrote into the shared data folder or the weights cache, found from nowhere the user stood)
    given = weights is not None and "://" not in str(weights) and Path(str(weights)).exists()
    near = src_path if given else Path.cwd() / src_path.name
    target = module.output_path(Path(out)) if out is not None else default_output(near, to, options)
    writable_folder(target.parent, target)
    module.check_target(target)
    replacing = _replaceable(module, target)
    # exported and checked beside the target, then moved into place: a failed, refused or interrupted export leaves
    # nothing under the target's name, and an artifact already there stays as it was
    stage = _stage(target)
    try:
        t0 = time.perf_counter()
        try:
            staged = module.export(source, stage / target.name, options)
        except (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
            raise OutputError(f"{target}: cannot write the export there ({os_reason(e)}); choose another path with "
                              f"-o, or move what is in the way") from None
        export_s = time.perf_counter() - t0
        try:
            meta = module.read_meta(staged)
            notes = [str(n) for n in meta.extra.get("notes", [])]
            parity = parity_check(src_path, staged, to, options, parity_images, notes)
        except YolokitError as e:  # named as the target, not the folder it was checked in
            e.args = (str(e).replace(str(stage / target.name), str(target)),)
            raise
        if not parity.passed:
            raise ExportError(f"{target}: parity check against PyTorch FP32 failed: {parity.reason} (nothing was "
                              f"written; re-export with other options, or --parity-data with more images)")
        artifact = target.parent / staged.relative_to(stage)
        _publish(stage, target.parent)
        if replacing:
            notes.append(f"replaced the earlier export at {target}")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return ExportReport(artifact=artifact, format=to, precision=meta.precision, meta=meta, export_s=export_s,
                        parity=parity, notes=notes)


def _replaceable(module: Backend, target: Path) -> bool:
    """Whether an artifact is at ``target`` already, which the export replaces (a re-export); something there that
    is no artifact of this format with yolokit's metadata (a file of notes named mine.onnx, another tool's model) is
    refused before anything is written: it was overwritten without a word."""
    there = [p for p in module.written_files(target) if os.path.lexists(p)]  # an IR's .bin too: it was overwritten
    if not there and not (target.is_file() or (target.is_dir() and module.claims(target))):
        return False
    try:
        module.read_meta(target)  # the artifact there, whose own files the others are
    except YolokitError:
        raise OutputError(f"{target}: something is there that is not a yolokit export ({module.DESCRIPTION} with "
                          f"yolokit's metadata), and the export would overwrite it; nothing was written: move it away "
                          f"or choose another path with -o") from None
    return True


MIN_OPSET = 9  # the oldest opset YOLOv5's nearest upsampling exports to (torch.onnx fails on 7 and 8)
STAGE_SUFFIX = ".export-partial"  # the hidden folder an export is written and checked in, beside its target


def _stage(target: Path) -> Path:
    """A new hidden folder beside ``target`` to export into (the same file system: moved into place by renames),
    named with this process's id; those an export to the same target left when it was killed (its process gone) are
    removed first, never one still in use."""
    import re
    import tempfile

    mine = re.compile(rf"\.{re.escape(target.name)}\.(\d+)\.[^.]+{re.escape(STAGE_SUFFIX)}")
    for old in target.parent.glob(f".{glob_escape(target.name)}.*{STAGE_SUFFIX}"):
        found = mine.fullmatch(old.name)  # not another target's (m for m.onnx)
        if found is not None and not _alive(int(found.group(1))):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=STAGE_SUFFIX, dir=target.parent))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process
        return True
    return True


def _publish(stage: Path, folder: Path) -> None:
    """Move what ``stage`` holds into ``folder``, file by file (each an atomic rename, replacing a file of the same
    name: an IR's .xml and .bin, a folder's files)."""
    for src in sorted(stage.rglob("*")):
        if src.is_dir():
            continue
        dest = folder / src.relative_to(stage)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
        except OSError as e:
            raise OutputError(f"{dest}: cannot put the checked export there ({os_reason(e)}); move what is in the "
                              f"way, or export with another -o") from None
