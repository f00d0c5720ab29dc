"""OpenVINO backend: IR (``.xml`` + ``.bin``) export from the ONNX graph, FP32/FP16 and NNCF INT8; CPU runner.

Export traces the model with the ONNX backend's exporter to a temporary file and converts it with
``openvino.convert_model`` (one traced graph for every format, with stable ``/model.N/...`` node names that
the INT8 ignored scope refers to). ``--dynamic`` makes batch, height and width dynamic.

Precision that actually executes on the CPU: the CPU plugin's default ``INFERENCE_PRECISION_HINT`` is bf16
on CPUs with AVX512-BF16/AMX (this includes AMD Zen 4 EPYC), f16 on CPUs with native FP16 arithmetic, else
f32. yolokit pins ``f32`` for an FP32 IR (bf16 would move boxes by several pixels), and leaves the plugin
default for FP16 and INT8 IRs (an FP16 IR's weights are decompressed and run at that default precision;
INT8 IRs run quantized convolutions in int8 and the rest at that default). The precision used is recorded
in the runner's ``meta.extra["inference_precision"]``; ``LoadOptions.options["inference_precision"]``
("f32", "bf16", "f16") overrides it.

Compiled models are cached (OpenVINO's ``CACHE_DIR``): compiling yolov5n INT8 takes about 0.35 s on a 2-core
CPU, loading it from the cache 0.08 s, in every process that loads it. OpenVINO keys the cache by model,
configuration, device and its own version, and recompiles over a corrupt or truncated entry. The folder is
``LoadOptions.options["cache_dir"]``, else ``$YOLOKIT_OPENVINO_CACHE`` (``off`` disables it), else
``~/.cache/yolokit/openvino``; one that cannot be written is not used, and a compile that fails with the cache
is retried without it.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from backends.base import (
    E2E_OUTPUTS,
    RAW_OUTPUT,
    BaseRunner,
    ExportOptions,
    LoadOptions,
    PlanningHints,
    cache_dir,
    no_export_precision,
    pack_detections,
)
from backends.onnx_graph import export_graph, export_meta
from backends.onnx_nms import RAW_NAME
from toolkit.errors import BackendUnavailableError, ExportError, InputError, ModelFileError
from toolkit.meta import META_KEY, ModelMeta

if TYPE_CHECKING:
    from toolkit.model.load import LoadedModel

NAME = "openvino"
EXTRA = "openvino"
SUFFIXES = (".xml",)
PACKAGES = ("openvino", "nncf")
DEFAULT_DEVICE = "cpu"
PRECISIONS = {"cpu": ("fp32", "fp16", "int8")}
EXPORTS = True
EXPORT_PRECISIONS = ("fp32", "fp16", "int8")
# measured (200/400 JPEGs of 1920x1080, 2 cores): threads with batch 4 beat batch 1 by 1.2-1.3x and processes by
# 1.6x; OpenVINO runs one compiled model's infer requests in parallel without the GIL
PLANNING = PlanningHints(releases_gil=True, thread_batch=4, process_inputs_per_core=None)
DESCRIPTION = "an OpenVINO IR (.xml, or its folder)"
REEXPORT_HINT = "re-export it with `yolokit export WEIGHTS --to openvino`"
ENV_CACHE = "YOLOKIT_OPENVINO_CACHE"


def unavailable_reason() -> str | None:
    import importlib.util

    return None if importlib.util.find_spec("openvino") else "the openvino backend needs OpenVINO: pip install " \
                                                               "'yolokit[openvino]'"


def is_available() -> bool:
    return unavailable_reason() is None


def _xml_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.xml") if p.is_file())


def claims(path: Path) -> bool:
    if path.is_dir():
        return len(_xml_in(path)) == 1
    return path.suffix.lower() in SUFFIXES


def sniff(head: bytes) -> bool:
    """Whether a file's first bytes are an OpenVINO IR: an XML document whose root element is ``<net``."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    return text.startswith((b"<?xml", b"<net")) and b"<net " in text[:4096]


def output_path(path: Path) -> Path:
    """Export targets: an ``.xml`` file as given, anything else is the folder that gets the IR."""
    return Path(path)


def default_name(stem: str, tag: str) -> str:
    return f"{stem}{tag}_openvino"


def check_export(options: ExportOptions) -> None:
    no_export_precision(NAME, options, EXPORT_PRECISIONS)
    if options.int8 and not options.calib_data and options.int8_data is None:
        raise InputError("--int8 needs calibration images: --data FOLDER")


def resolve_xml(path: Path) -> Path:
    """The IR's .xml for a path that is the .xml itself or a folder holding exactly one."""
    path = Path(path)
    if path.is_dir():
        found = _xml_in(path)
        if len(found) != 1:
            raise ModelFileError(f"{path}: an OpenVINO model folder holds exactly one .xml (found {len(found)})")
        return found[0]
    if not path.is_file():
        raise ModelFileError(f"{path}: no such OpenVINO .xml file or folder")
    return path


def output_paths(path: Path, stem: str | None = None) -> tuple[Path, Path]:
    """``(artifact, xml)`` for an export target: an ``.xml`` file, or a folder that gets ``<stem>.xml``."""
    path = Path(path)
    if path.suffix.lower() == ".xml":
        return path, path
    name = stem or path.name.removesuffix("_openvino")
    return path, path / f"{name}.xml"


# ------------------------------------------------------------------------------------------------ export


def export(source: LoadedModel, path: Path, options: ExportOptions) -> Path:
    """Write an IR (``path`` is an .xml file or a folder) with the yolokit metadata in ``rt_info``."""
    import openvino as ov
    import torch

    if options.half and options.int8:
        raise InputError("choose one of --half and --int8")
    artifact, xml = output_paths(path)
    with tempfile.TemporaryDirectory(prefix="yolokit_ov_") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        # OpenVINO's NonMaxSuppression suppresses at IoU >= its threshold (YOLOv5: >); see backends.onnx_nms
        _, notes = export_graph(source, onnx_path, options, half=False, nms=options.nms, suppresses_at_equal=True)
        try:
            model = ov.convert_model(str(onnx_path))
        except Exception as e:
            raise ExportError(f"openvino.convert_model failed on the traced ONNX graph: {e}") from e
    precision = options.precision
    versions = {"openvino": ov.get_version(), "torch": torch.__version__}
    extra: dict[str, Any] = {"opset": options.opset, "via": "onnx", "notes": notes}
    if options.int8:
        from backends.openvino_int8 import quantize

        model, qnotes, record = quantize(model, options, source.model.detect.i)  # type: ignore[arg-type]
        notes += qnotes
        extra["int8"] = record
        import nncf  # type: ignore[import-not-found]

        versions["nncf"] = nncf.__version__
    meta = export_meta(source, options, "openvino", precision, versions, extra=extra, nms=options.nms)
    model.set_rt_info(meta.to_json(), [META_KEY])
    xml.parent.mkdir(parents=True, exist_ok=True)
    try:
        ov.save_model(model, str(xml), compress_to_fp16=bool(options.half))
    except Exception as e:
        raise ExportError(f"{xml}: openvino.save_model failed: {e}") from e
    return artifact


# ------------------------------------------------------------------------------------------------ reading


def _read_model(path: Path) -> tuple[Any, Path]:
    import openvino as ov

    xml = resolve_xml(path)
    if not xml.with_suffix(".bin").is_file():
        raise ModelFileError(f"{xml}: the weights file {xml.with_suffix('.bin').name} is missing beside it; "
                             f"{REEXPORT_HINT}")
    try:
        return ov.Core().read_model(str(xml)), xml
    except Exception:  # OpenVINO's parser text names its own sources: not a reason a user can act on
        raise ModelFileError(f"{xml}: not a readable OpenVINO IR; the file is corrupt or not an IR; "
                             f"{REEXPORT_HINT}") from None


def _meta_of(model: Any, xml: Path) -> ModelMeta:
    if not model.has_rt_info([META_KEY]):
        raise ModelFileError(f"{xml}: this OpenVINO IR has no yolokit metadata (class names, stride, input size); "
                             f"it was not exported by yolokit; {REEXPORT_HINT}")
    try:
        return ModelMeta.from_json(model.get_rt_info([META_KEY]).astype(str))
    except (ValueError, TypeError) as e:
        raise ModelFileError(f"{xml}: the yolokit metadata is unreadable ({e}); {REEXPORT_HINT}") from None


def read_meta(path: Path) -> ModelMeta:
    """The yolokit metadata of an IR (``.xml`` or its folder), for ``yolokit info``."""
    model, xml = _read_model(Path(path))
    return _meta_of(model, xml)


def describe(path: Path) -> dict[str, Any]:
    return {}


# ------------------------------------------------------------------------------------------------ runner
def compile_cache_dir(options: dict[str, Any]) -> Path | None:
    """The folder for OpenVINO's compiled-model cache (see the module docstring), created if needed; None when
    caching is off or the folder cannot be written."""
    return cache_dir(options, ENV_CACHE, "openvino")


class OpenVinoRunner(BaseRunner):
    """A compiled model with one infer request per thread (``CompiledModel`` is thread-safe, requests are not)."""

    def __init__(self, path: Path, options: LoadOptions) -> None:
        import openvino as ov

        model, xml = _read_model(path)
        meta = _meta_of(model, xml)
        raw = bool(options.options.get(RAW_OUTPUT)) and meta.nms is not None
        if raw:
            model.add_outputs(RAW_NAME)  # the NMS part is then left unused
        self._outs = [RAW_NAME] if raw else list(E2E_OUTPUTS) if meta.nms is not None else None
        if meta.nms is not None and not raw and not set(E2E_OUTPUTS) <= {n for o in model.outputs for n in o.names}:
            raise ModelFileError(f"{xml}: its metadata says NMS is inside, but it lacks the outputs "
                                 f"{', '.join(E2E_OUTPUTS)}; {REEXPORT_HINT} --nms")
        core = ov.Core()
        device = {"cpu": "CPU", "gpu": "GPU", "npu": "NPU", "auto": "AUTO"}.get(options.device.lower(), options.device)
        if device.startswith("cuda"):
            raise BackendUnavailableError(f"device {options.device!r}: OpenVINO runs on Intel/AMD CPUs and Intel "
                                          f"GPUs/NPUs, not CUDA; use --device cpu or the onnx/trt backend")
        known = set(core.available_devices) | {d.split(".")[0] for d in core.available_devices} | {"AUTO"}
        if device not in known:
            raise BackendUnavailableError(f"device {options.device!r}: OpenVINO sees "
                                          f"{', '.join(core.available_devices)}")
        extra = options.options
        hint = str(extra.get("hint", extra.get("performance_hint", "LATENCY"))).upper()
        if hint not in ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT"):
            raise InputError(f"OpenVINO performance hint {hint!r}: choose LATENCY or THROUGHPUT")
        config: dict[str, Any] = {"PERFORMANCE_HINT": hint}
        if options.threads:
            config["INFERENCE_NUM_THREADS"] = int(options.threads)
        if device == "CPU":
            # OpenVINO pins its threads to cores by default; two worker processes with one thread each were both
            # pinned to the same core (measured: 26 instead of 51 img/s each). Pin only a model that has the cores.
            pin = extra.get("cpu_pinning")
            if pin is None:
                pin = not options.threads or int(options.threads) >= (os.cpu_count() or 1)
            config["ENABLE_CPU_PINNING"] = bool(pin)
        precision = extra.get("inference_precision") or ("f32" if meta.precision == "fp32" else None)
        if precision and device == "CPU":
            config["INFERENCE_PRECISION_HINT"] = str(precision)
        cache = compile_cache_dir(extra)
        if cache is not None:
            core.set_property({"CACHE_DIR": str(cache)})
        try:
            try:
                self.compiled = core.compile_model(model, device, config)
            except Exception:
                if cache is None:
                    raise
                core.set_property({"CACHE_DIR": ""})  # a cache problem (full disk, ...) must not stop the run
                self.compiled = core.compile_model(model, device, config)
        except Exception as e:
            raise ModelFileError(f"{xml}: OpenVINO cannot compile this model for {device} ({e})") from None
        try:
            hint_type = self.compiled.get_property("INFERENCE_PRECISION_HINT")
            executes = str(hint_type.get_type_name() if hasattr(hint_type, "get_type_name") else hint_type)
        except Exception:  # not every device reports it
            executes = "unknown"
        self.meta = ModelMeta(**{**meta.__dict__, "nms": None if raw else meta.nms,
                                 "extra": {**meta.extra, "inference_precision": executes, "device": device,
                                           "hint": hint}})
        self._local = threading.local()
        self._requests: list[Any] = []
        self._lock = threading.Lock()

    def _request(self) -> Any:
        req = getattr(self._local, "request", None)
        if req is None:
            req = self.compiled.create_infer_request()
            self._local.request = req
            with self._lock:
                self._requests.append(req)
        return req

    def _run(self, batch: np.ndarray) -> np.ndarray:
        x = batch.astype(np.float32)
        x /= 255
        req = self._request()
        req.infer({0: x})
        return outputs_of(req, self._outs)

    def close(self) -> None:
        with self._lock:
            self._requests.clear()
        self._local = threading.local()
        self.compiled = None


def outputs_of(request: Any, names: list[str] | None) -> np.ndarray:
    """A finished infer request's result in the runner format: its first output, the output ``names[0]`` (the raw
    output of a model with NMS inside), or the four end-to-end outputs packed (:func:`pack_detections`)."""
    if names is None:
        return np.array(request.get_output_tensor(0).data, dtype=np.float32)
    if len(names) == 1:
        return np.array(request.get_tensor(names[0]).data, dtype=np.float32)
    return pack_detections(*(np.array(request.get_tensor(n).data) for n in names))


def load(path: Path, options: LoadOptions) -> OpenVinoRunner:
    return OpenVinoRunner(Path(path), options)
