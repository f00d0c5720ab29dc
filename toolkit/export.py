"""``yolokit export``: write an ONNX / OpenVINO / TensorRT artifact and check it against PyTorch FP32.

Every export ends with a parity check: the same letterboxed images go through the PyTorch FP32 model and
through the artifact (loaded by its own backend); the report gives the largest absolute difference of the
raw outputs (box columns in pixels, confidence columns separately) and how many PyTorch detections the
artifact reproduces (same class, IoU >= 0.9, after yolokit's usual NMS). A failed export or a failed
parity check raises :class:`ExportError`; nothing is swallowed.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from backends.base import ExportOptions
from toolkit.errors import BackendUnavailableError, ExportError, InputError
from toolkit.meta import ModelMeta

FORMATS = ("onnx", "openvino", "trt")
PARITY_IOU = 0.9
PARITY_CONF = 0.25
PARITY_NMS_IOU = 0.45
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
    imgsz: tuple[int, int]
    max_abs_diff_conf: float  # objectness + class columns
    max_abs_diff_box: float  # xywh columns, pixels
    reference_detections: int
    artifact_detections: int
    matched: int
    match_rate: float  # matched / max(reference, artifact); 1.0 when both found nothing
    passed: bool
    criteria: str
    reason: str = ""


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
    size = f"any HxW (multiple of {m.stride})" if m.imgsz is None else f"{m.imgsz[0]}x{m.imgsz[1]}"
    lines = [
        f"exported {r.artifact}  ({r.format} {r.precision}, {r.export_s:.1f} s)",
        f"  input: {size}, "
        f"batch: {'dynamic' if m.batch is None else m.batch}"
        + (f" (max {m.max_batch})" if m.batch is None and m.max_batch else "")
        + f", {m.nc} classes, stride {m.stride}",
        f"  runtime: {', '.join(f'{k} {v}' for k, v in m.runtime_versions.items())}",
        f"  parity vs PyTorch FP32 on {p.images} images ({p.inputs}) at {p.imgsz[0]}x{p.imgsz[1]}: "
        f"max |diff| conf {p.max_abs_diff_conf:.2e}, box {p.max_abs_diff_box:.3g} px; detections "
        f"{p.matched}/{p.reference_detections} matched (IoU>={PARITY_IOU}, same class; artifact found "
        f"{p.artifact_detections}), match rate {p.match_rate:.3f} -> {'PASS' if p.passed else 'FAIL'}",
    ]
    lines += [f"  note: {n}" for n in r.notes]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ paths


def default_output(weights: str | Path, to: str, options: ExportOptions) -> Path:
    """Beside the weights (the current folder for a built-in config): ``yolov5n.onnx``,
    ``yolov5n_openvino/``, ``yolov5n.engine``; ``_fp16`` / ``_int8`` before the suffix when not FP32."""
    from toolkit.configs import is_builtin_config

    p = Path(weights)
    folder = Path.cwd() if (is_builtin_config(p.name) and not p.exists()) else p.parent
    stem = p.name.split(".")[0] if p.suffix in (".pt", ".pth", ".yaml", ".yml") else p.stem
    tag = "_int8" if options.int8 else "_fp16" if options.half else ""
    if to == "onnx":
        return folder / f"{stem}{tag}.onnx"
    if to == "openvino":
        return folder / f"{stem}{tag}_openvino"
    return folder / f"{stem}{tag}.engine"


# ------------------------------------------------------------------------------------------------ checks


def _validate(to: str, options: ExportOptions, stride: int) -> None:
    if to not in FORMATS:
        raise InputError(f"--to {to!r}: choose one of {', '.join(FORMATS)}")
    h, w = options.imgsz
    if h <= 0 or w <= 0 or h % stride or w % stride:
        raise InputError(f"--imgsz {h},{w}: height and width must be positive multiples of the model stride "
                         f"{stride}")
    if options.batch < 1:
        raise InputError(f"--batch {options.batch}: must be at least 1")
    if options.half and options.int8:
        raise InputError("choose one of --half and --int8")
    if options.int8 and to != "openvino":
        raise InputError(f"--int8 is supported for --to openvino only (not {to})")
    if options.int8 and not options.calib_data:
        raise InputError("--int8 needs calibration images: --data FOLDER")
    if not 7 <= options.opset <= 23:
        raise InputError(f"--opset {options.opset}: choose an ONNX opset between 7 and 23 (default 17)")
    if options.workspace_gb <= 0:
        raise InputError(f"--workspace {options.workspace_gb}: must be positive (GB)")


def _parity_inputs(parity_images: list[str] | None, size: tuple[int, int], stride: int,
                   notes: list[str]) -> tuple[list[np.ndarray], list[Any], str]:
    """Letterboxed CHW RGB uint8 images at ``size`` with their letterbox infos, and where they came from."""
    from toolkit.ops import letterbox, to_chw_rgb
    from toolkit.sources import read_image

    images: list[np.ndarray] = []
    what: list[str] = []
    if parity_images:
        images = [read_image(p) for p in parity_images]
        what.append(f"{len(images)} given images")
    else:
        rng = np.random.default_rng(0)
        for shape in ((size[0], size[1]), (max(32, size[0] // 2), size[1]), (size[0], max(32, size[1] * 3 // 4))):
            images.append(rng.integers(0, 256, (*shape, 3), dtype=np.uint8))
        what.append(f"{len(images)} noise images")
        try:
            from toolkit.samples import sample_paths

            samples = [read_image(p) for p in sample_paths()]
            images += samples
            what.append(f"{len(samples)} scikit-image samples")
        except InputError as e:
            notes.append(f"parity without sample photos ({e})")
    chws, infos = [], []
    for img in images:
        lb, info = letterbox(img, size, stride, auto=False)
        chws.append(to_chw_rgb(lb))
        infos.append(info)
    return chws, infos, " + ".join(what)


def _match(ref: Any, got: Any) -> int:
    """Greedy one-to-one matches, highest reference confidence first, same class and IoU >= PARITY_IOU."""
    from toolkit.ops import match_greedy

    m = match_greedy(ref.xyxy, ref.confidence, ref.class_id, got.xyxy, got.class_id, PARITY_IOU)
    return int((m >= 0).sum())


def parity_check(weights: str | Path, artifact: Path, to: str, options: ExportOptions,
                 parity_images: list[str] | None, notes: list[str]) -> ParityReport:
    """Run the same inputs through PyTorch FP32 (CPU) and the artifact; compare outputs and detections."""
    from toolkit.detector import Detector

    kw: dict[str, Any] = {"conf": PARITY_CONF, "iou": PARITY_NMS_IOU}
    with Detector(artifact, backend=to, device=options.device, **kw) as got_det, \
            Detector(weights, backend="torch", device="cpu", half=False, **kw) as ref_det:
        meta = got_det.meta
        executes = meta.extra.get("inference_precision")
        if executes:
            notes.append(f"OpenVINO {meta.extra.get('device', 'CPU')} executes this {meta.precision} IR at "
                         f"inference precision {executes}")
        size = tuple(meta.imgsz) if meta.imgsz is not None else tuple(options.imgsz)
        chws, infos, what = _parity_inputs(parity_images, size, meta.stride, notes)  # type: ignore[arg-type]
        step = meta.batch or 1
        ref_out, got_out = [], []
        for i in range(0, len(chws), step):
            batch = np.stack(chws[i:i + step])
            ref_out.append(ref_det.infer(batch))
            got_out.append(got_det.infer(batch))
        ref = np.concatenate(ref_out)
        got = np.concatenate(got_out)
        if ref.shape != got.shape:
            raise ExportError(f"{artifact}: output shape {got.shape} differs from PyTorch's {ref.shape}")
        if not np.isfinite(got).all():
            raise ExportError(f"{artifact}: the artifact's outputs contain NaN or inf")
        d_box = float(np.abs(got[..., :4] - ref[..., :4]).max())
        d_conf = float(np.abs(got[..., 4:] - ref[..., 4:]).max())
        n_ref = n_got = matched = 0
        for r, g, info in zip(ref, got, infos, strict=True):
            dr, dg = ref_det.postprocess(r, info), got_det.postprocess(g, info)
            n_ref += len(dr)
            n_got += len(dg)
            matched += _match(dr, dg)
    denom = max(n_ref, n_got)
    rate = matched / denom if denom else 1.0
    max_conf, max_box_frac, min_rate = THRESHOLDS.get(meta.precision, THRESHOLDS["int8"])
    failures = []
    if max_conf is not None and d_conf > max_conf:
        failures.append(f"confidence columns differ by {d_conf:.2e} > {max_conf:.0e}")
    if max_box_frac is not None and d_box > max_box_frac * max(size):
        failures.append(f"box columns differ by {d_box:.3g} px > {max_box_frac * max(size):.3g} px")
    if denom >= 5 and rate < min_rate:
        failures.append(f"only {matched} of {denom} detections agree ({rate:.2f} < {min_rate})")
    crit = ", ".join(x for x in (
        f"conf diff <= {max_conf:.0e}" if max_conf is not None else "",
        f"box diff <= {max_box_frac:g} x imgsz" if max_box_frac is not None else "",
        f"match rate >= {min_rate} (when >= 5 detections)") if x)
    return ParityReport(images=len(chws), inputs=what, imgsz=(int(size[0]), int(size[1])),
                        max_abs_diff_conf=d_conf, max_abs_diff_box=d_box, reference_detections=n_ref,
                        artifact_detections=n_got, matched=matched, match_rate=rate, passed=not failures,
                        criteria=crit, reason="; ".join(failures))


# ------------------------------------------------------------------------------------------------ export


def export(weights: str | Path, to: str, out: Path | None = None, options: ExportOptions | None = None,
           parity_images: list[str] | None = None) -> ExportReport:
    """Export ``weights`` (a .pt checkpoint, architecture yaml or built-in config) to ``to`` and check the
    artifact against PyTorch FP32. Raises :class:`ExportError` when the export or the parity check fails."""
    import backends
    from toolkit.configs import resolve_model
    from toolkit.loader import load_model

    options = options or ExportOptions()
    if to == "trt" and options.device in ("", "cpu"):
        options = replace(options, device="cuda")  # engines are built on (and for) a GPU
    if to not in FORMATS:
        raise InputError(f"--to {to!r}: choose one of {', '.join(FORMATS)}")
    module = backends.get_backend(to)
    if not module.is_available():
        why = getattr(module, "unavailable_reason", None)
        reason = why() if callable(why) else None
        raise BackendUnavailableError(reason or f"the {to} backend's runtime is not installed: "
                                                f"pip install 'yolokit[{module.EXTRA}]'")
    src_path = resolve_model(weights)
    source = load_model(src_path)
    _validate(to, options, source.meta.stride)
    target = Path(out) if out is not None else default_output(src_path, to, options)
    t0 = time.perf_counter()
    artifact = module.export(source, target, options)
    export_s = time.perf_counter() - t0
    meta_fn = getattr(module, "read_meta", None)
    meta: ModelMeta = meta_fn(artifact) if meta_fn is not None else source.meta
    notes = [str(n) for n in meta.extra.get("notes", [])]
    parity = parity_check(src_path, artifact, to, options, parity_images, notes)
    report = ExportReport(artifact=artifact, format=to, precision=meta.precision, meta=meta, export_s=export_s,
                          parity=parity, notes=notes)
    if not parity.passed:
        raise ExportError(f"{artifact}: parity check against PyTorch FP32 failed: {parity.reason} "
                          f"(the artifact was written; inspect it or re-export with other options)")
    return report
