"""ONNX backend: export with ``torch.onnx.export`` (see :mod:`backends.onnx_graph`), run with onnxruntime.

The yolokit metadata (:class:`toolkit.meta.ModelMeta` as JSON) is stored in ``metadata_props`` under ``"yolokit"``.
onnxruntime and onnx are imported only when a function needs them.
"""

from __future__ import annotations

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
    no_export_precision,
    pack_detections,
    suffixed,
)
from backends.onnx_graph import export_graph, export_meta
from toolkit.errors import BackendUnavailableError, InputError, ModelFileError
from toolkit.meta import META_KEY, ModelMeta

if TYPE_CHECKING:
    from toolkit.model.load import LoadedModel

NAME = "onnx"
EXTRA = "onnx"
SUFFIXES = (".onnx",)
DESCRIPTION = "an ONNX model"
PACKAGES = ("onnxruntime", "onnxruntime-gpu", "onnx")
DEFAULT_DEVICE = "cpu"
PRECISIONS = {"cpu": ("fp32",), "cuda": ("fp16", "fp32")}
EXPORTS = True
EXPORT_PRECISIONS = ("fp32", "fp16")
# measured (200/400 JPEGs of 1920x1080, 2 cores): processes 1.2-1.5x faster than threads once start-up (~1 s) is
# paid for; the per-image Python work (letterbox, NMS) contends for the GIL in threads
PLANNING = PlanningHints(releases_gil=True, thread_batch=1, process_inputs_per_core=64)
REEXPORT_HINT = "re-export it with `yolokit export WEIGHTS --to onnx`"

_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
               "all": "ORT_ENABLE_ALL"}


def unavailable_reason() -> str | None:
    """Running needs onnxruntime only; exporting also needs the onnx package (checked when exporting)."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return "the onnx backend needs onnxruntime: pip install 'yolokit[onnx]'"
    return None


def is_available() -> bool:
    return unavailable_reason() is None


def claims(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES and not path.is_dir()


def sniff(head: bytes) -> bool:
    """Whether a file's first bytes are an ONNX ``ModelProto``: protobuf field 1 (``ir_version``, a small varint)
    followed by another of ModelProto's fields (producer name/version, domain, model version, doc string, graph,
    opset imports)."""
    if len(head) < 4 or head[0] != 0x08 or not 1 <= head[1] <= 30:
        return False
    return head[2] in (0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42)


def output_path(path: Path) -> Path:
    """The export target with ``.onnx`` added when it has none (``-o mymodel`` -> ``mymodel.onnx``)."""
    return suffixed(path, SUFFIXES)


def default_name(stem: str, tag: str) -> str:
    return f"{stem}{tag}.onnx"


# ------------------------------------------------------------------------------------------------ export


def check_export(options: ExportOptions) -> None:
    import importlib.util

    no_export_precision(NAME, options, EXPORT_PRECISIONS)
    if importlib.util.find_spec("onnx") is None:
        raise BackendUnavailableError("ONNX export needs the onnx package: pip install 'yolokit[onnx]'")


def export(source: LoadedModel, path: Path, options: ExportOptions) -> Path:
    """Write ``path`` (.onnx) with yolokit metadata; FP32, or FP16 with ``options.half``."""
    import onnx
    import torch

    from toolkit.errors import ExportError

    if options.int8:
        raise ExportError("INT8 is not supported for ONNX export; use --to openvino --int8")
    proto, notes = export_graph(source, path, options, nms=options.nms)
    meta = export_meta(source, options, "onnx", options.precision,
                       {"onnx": onnx.__version__, "torch": torch.__version__},
                       extra={"opset": options.opset, "exporter": "torch.onnx.export (TorchScript, dynamo=False)",
                              "notes": notes}, nms=options.nms)
    onnx.helper.set_model_props(proto, {META_KEY: meta.to_json()})
    onnx.save(proto, str(path))
    return path


# ------------------------------------------------------------------------------------------------ reading


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise ModelFileError(f"{path}: no such ONNX file")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path}: the file is empty, not an ONNX model")


def _session(path: Path, so: Any = None, providers: list[Any] | None = None, raw: bool = False) -> Any:
    """An onnxruntime session; any failure to load is one line about the file (onnxruntime's text means nothing to
    a user: protobuf parse errors, graph checks). ``raw``: a model with NMS inside, with its raw output instead."""
    import onnxruntime as ort

    _check_file(path)
    try:
        model: Any = str(path)
        if raw:
            import onnx

            from backends.onnx_nms import raw_graph

            proto = onnx.load(str(path))
            if [o.name for o in proto.graph.output] == list(E2E_OUTPUTS):
                model = raw_graph(proto).SerializeToString()
        return ort.InferenceSession(model, so, providers=providers or ["CPUExecutionProvider"])
    except Exception:
        raise ModelFileError(f"{path}: not a readable ONNX model; the file is truncated, corrupt or not ONNX "
                             f"(or uses operators this onnxruntime lacks); {REEXPORT_HINT}") from None


def meta_from_props(props: dict[str, str], path: Path) -> ModelMeta:
    """The yolokit metadata among an ONNX model's ``metadata_props`` (onnxruntime's ``custom_metadata_map``)."""
    if META_KEY not in props:
        raise ModelFileError(f"{path}: this ONNX model has no yolokit metadata (class names, stride, input size); "
                             f"it was not exported by yolokit or the metadata was stripped; {REEXPORT_HINT}")
    try:
        return ModelMeta.from_json(props[META_KEY])
    except (ValueError, TypeError) as e:
        raise ModelFileError(f"{path}: the yolokit metadata is unreadable ({e}); {REEXPORT_HINT}") from None


def read_meta(path: Path) -> ModelMeta:
    """The yolokit metadata of an .onnx file, read through onnxruntime: the ``onnx`` package (whose import takes
    about 0.7 s, mostly ml_dtypes) is needed only to export."""
    path = Path(path)
    return meta_from_props(dict(_session(path).get_modelmeta().custom_metadata_map), path)


def describe(path: Path) -> dict[str, Any]:
    return {}


# ------------------------------------------------------------------------------------------------ runner


def _providers(device: str, extra: dict[str, Any]) -> list[Any]:
    import onnxruntime as ort

    if "providers" in extra:
        return list(extra["providers"])
    available = ort.get_available_providers()
    dev = device.lower()
    if dev in ("cpu", ""):
        return ["CPUExecutionProvider"]
    if not (dev in ("cuda", "gpu") or dev.startswith("cuda:")):
        raise InputError(f"device {device!r}: the onnx backend runs on cpu, cuda or cuda:N")
    if "CUDAExecutionProvider" not in available:
        raise BackendUnavailableError(f"device {device!r} asked for, but this onnxruntime has no CUDA provider "
                                      f"(has {', '.join(available)}): pip install 'yolokit[gpu]', or use --device cpu")
    index = int(dev.split(":", 1)[1]) if ":" in dev else 0
    providers: list[Any] = []
    if "TensorrtExecutionProvider" in available and extra.get("tensorrt", True):
        providers.append(("TensorrtExecutionProvider", {"device_id": index}))
    providers.append(("CUDAExecutionProvider", {"device_id": index}))
    providers.append("CPUExecutionProvider")
    return providers


class OnnxRunner(BaseRunner):
    """An onnxruntime session. ``InferenceSession.run`` is thread-safe, so one runner serves many threads."""

    def __init__(self, path: Path, options: LoadOptions) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        if options.threads:
            so.intra_op_num_threads = int(options.threads)
        level = str(options.options.get("graph_optimization_level", "all")).lower()
        if level not in _OPT_LEVELS:
            raise InputError(f"graph_optimization_level {level!r}: choose one of {', '.join(_OPT_LEVELS)}")
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[level])
        raw = bool(options.options.get(RAW_OUTPUT))
        self.session = _session(path, so, _providers(options.device, options.options), raw=raw)
        meta = meta_from_props(dict(self.session.get_modelmeta().custom_metadata_map), path)
        inp = self.session.get_inputs()[0]
        self._in = inp.name
        self._outs = [o.name for o in self.session.get_outputs()]
        self._e2e = meta.nms is not None and not raw
        if self._e2e and self._outs != list(E2E_OUTPUTS):
            raise ModelFileError(f"{path}: its metadata says NMS is inside, but its outputs are {self._outs}, not "
                                 f"{', '.join(E2E_OUTPUTS)}; {REEXPORT_HINT} --nms")
        self._dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        used = self.session.get_providers()
        self.meta = ModelMeta(**{**meta.__dict__, "nms": meta.nms if self._e2e else None,
                                 "extra": {**meta.extra, "providers": used}})

    def _run(self, batch: np.ndarray) -> np.ndarray:
        x = batch.astype(np.float32)
        x /= 255
        if self._dtype is np.float16:
            x = x.astype(np.float16)
        if self._e2e:
            return pack_detections(*self.session.run(self._outs, {self._in: x}))
        y = self.session.run(self._outs[:1], {self._in: x})[0]
        return np.asarray(y, dtype=np.float32)

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]


def load(path: Path, options: LoadOptions) -> OnnxRunner:
    return OnnxRunner(Path(path), options)
