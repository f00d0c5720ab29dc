"""INT8 OpenVINO IRs with NNCF: post-training quantization on the calibration images the export job chose, or
accuracy-controlled quantization (``nncf.quantize_with_accuracy_control``) that returns quantized layers to float
until the mAP50-95 drop on labelled images is at most ``--max-drop``.

The Detect head's decode (sigmoid, grid and anchor arithmetic, concat: pixel coordinates up to the image size, where
an 8-bit grid would cost whole pixels) and the NMS part of an end-to-end model stay in floating point; the head's
1x1 convolutions are still quantized. FP32 and INT8 mAP50-95 are measured here, on the same images, whenever the
data has labels; with ``--max-drop``, an INT8 model whose measured drop is larger is refused (nothing is written).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from backends.base import E2E_OUTPUTS, ExportOptions, Int8Data, pack_detections
from backends.shared.onnx_nms import PREFIX
from toolkit.errors import BackendUnavailableError, ExportError, InputError

INT8_HINT = "pip install 'yolokit[int8]'"


def _infer(compiled: Any, x: np.ndarray, e2e: bool) -> np.ndarray:
    """A compiled model's output for one input, in the runner format (raw, or end-to-end outputs packed)."""
    res = compiled(x)
    if not e2e:
        return np.asarray(res[compiled.output(0)], dtype=np.float32)
    return pack_detections(*(np.asarray(res[compiled.output(n)]) for n in E2E_OUTPUTS))


def _evaluate(model: Any, metric: Callable[[list[Any], list[np.ndarray]], float], data: Int8Data, e2e: bool,
              fp32: bool) -> float:
    """mAP50-95 of ``model`` on the validation items, compiled as the runner compiles it (FP32 pinned to f32)."""
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": "f32"} if fp32 else {}
    compiled = ov.Core().compile_model(model, "CPU", config)
    outs = [_infer(compiled, data.to_input(item), e2e) for item in data.validation]
    return float(metric(data.validation, outs))


def quantize(model: Any, options: ExportOptions, detect_index: int) -> tuple[Any, list[str], dict[str, Any]]:
    """The INT8 model, notes for the report, and what the artifact's metadata records (calibration images, FP32
    and INT8 mAP50-95 and the drop where measured). Raises ExportError when ``max_drop`` cannot be met."""
    try:
        import nncf  # type: ignore[import-not-found]
    except ImportError:
        raise BackendUnavailableError(f"INT8 export needs NNCF: {INT8_HINT}") from None
    data = options.int8_data
    if data is None or not data.calibration:
        raise InputError("--int8 needs calibration images: --data FOLDER (a few hundred representative images)")
    e2e = options.nms is not None
    scope = nncf.IgnoredScope(patterns=[rf"^/model\.{detect_index}/(?!m\.\d+/).*", rf"^{PREFIX}.*"], validate=False)
    calibration = nncf.Dataset(data.calibration, data.to_input)
    record: dict[str, Any] = dict(data.record)
    log = logging.getLogger("nncf")
    level = log.level
    controlled = data.max_drop is not None and data.max_iterations != 0  # 0: no layer back to float, drop checked
    # NNCF logs every skipped quantizer at INFO: only the accuracy restorer's steps pass, as one line each on stderr
    # (its handler writes to stdout, which carries the export report)
    progress = RestorerProgress()
    log.setLevel(logging.INFO if controlled else logging.WARNING)
    log.addFilter(progress)
    try:
        fp32_map = _evaluate(model, data.metric, data, e2e, fp32=True) if data.metric is not None else None
        if controlled:
            q = _accuracy_controlled(nncf, model, calibration, data, e2e, scope)
        else:
            q = nncf.quantize(model, calibration, preset=nncf.QuantizationPreset.MIXED,
                              subset_size=len(data.calibration), ignored_scope=scope)
        int8_map = _evaluate(q, data.metric, data, e2e, fp32=False) if data.metric is not None else None
    except (ExportError, InputError, BackendUnavailableError):
        raise
    except Exception as e:
        raise ExportError(f"NNCF INT8 quantization failed: {e}") from e
    finally:
        log.removeFilter(progress)
        log.setLevel(level)
    mode = "accuracy-controlled (quantize_with_accuracy_control)" if controlled else "post-training"
    record.update({"nncf": nncf.__version__, "mode": mode, "preset": "mixed"})
    notes = [f"INT8: NNCF {nncf.__version__} {mode} quantization, preset MIXED, {len(data.calibration)} calibration "
             f"images, Detect decode{' and NMS' if e2e else ''} kept in float"]
    if fp32_map is not None and int8_map is not None:
        drop = fp32_map - int8_map
        record.update({"fp32_map50_95": round(fp32_map, 4), "int8_map50_95": round(int8_map, 4),
                       "drop": round(drop, 4), "val_images": len(data.validation)})
        if data.max_drop is not None:
            record["max_drop"] = data.max_drop
            if drop > data.max_drop:
                raise ExportError(f"INT8 mAP50-95 is {int8_map:.4f} against FP32 {fp32_map:.4f} on "
                                  f"{len(data.validation)} labelled images: a drop of {drop:.4f}, more than "
                                  f"--max-drop {data.max_drop:g}, even with layers returned to float; nothing was "
                                  f"written. Allow a larger --max-drop, calibrate on other or more images "
                                  f"(--calib-images), or export FP16 (--half)")
    return q, notes, record


class RestorerProgress(logging.Filter):
    """A filter for NNCF's logger that drops every record and writes the accuracy restorer's steps (a group of
    layers returned to float, the drop measured after it, the end) to ``stream`` (stderr), one line each: a
    ``--max-drop`` export can take many minutes, and NNCF's progress bars do not cover those steps."""

    STEPS = ("Accuracy drop", "Reverted", "Re-calculating ranking", "Algorithm completed",
             "Maximum number of iteration", "The algorithm could not", "All layers have been checked")

    def __init__(self, stream: Any = None) -> None:
        super().__init__()
        self.stream = stream

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        text = record.getMessage().split("\n", 1)[0].strip().rstrip(":")
        if text.startswith(self.STEPS):
            out = self.stream if self.stream is not None else sys.stderr
            print(f"INT8 accuracy control: {text}", file=out, flush=True)
        return False


def _accuracy_controlled(nncf: Any, model: Any, calibration: Any, data: Int8Data, e2e: bool, scope: Any) -> Any:
    """``nncf.quantize_with_accuracy_control`` with yolokit's metric. The validation function returns the model's
    outputs per image as well, so NNCF ranks the layers to return to float by how much they change the outputs
    (its "logits" mode) instead of by one-image mAPs."""
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    metric = data.metric
    if metric is None or not data.validation:
        raise InputError("--max-drop needs labelled images: --data a dataset yaml, or a folder with images/ and "
                         "labels/")

    def validate(compiled: Any, items: Any) -> tuple[float, list[list[np.ndarray]]]:
        items = list(items)
        outs = [_infer(compiled, data.to_input(item), e2e) for item in items]
        return float(metric(items, outs)), [[o] for o in outs]

    restorer = AdvancedAccuracyRestorerParameters()
    if data.max_iterations is not None:
        restorer.max_num_iterations = int(data.max_iterations)
    return nncf.quantize_with_accuracy_control(
        model, calibration, nncf.Dataset(data.validation, data.to_input), validate, max_drop=float(data.max_drop or 0),
        drop_type=nncf.DropType.ABSOLUTE, preset=nncf.QuantizationPreset.MIXED, subset_size=len(data.calibration),
        ignored_scope=scope, advanced_accuracy_restorer_parameters=restorer)
