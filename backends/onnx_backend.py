"""ONNX backend: export with ``torch.onnx.export``, run with onnxruntime.

Exporter choice: the TorchScript-based exporter (``dynamo=False``). With torch 2.13 it traces this model
(including the shape-derived grids of the Detect head when ``Detect.dynamic`` is set) to a plain opset-17
graph with real dynamic batch/height/width axes, and needs nothing beyond ``onnx``. The torch.export-based
exporter (``dynamo=True``) needs the extra ``onnxscript`` package, specialises shapes unless every dimension
is declared with ``torch.export.Dim`` constraints (height and width must be multiples of the stride, which
it cannot express without rewriting the model), and gained nothing here; it stays an option for later.

The graph takes ``images`` ``(B, 3, H, W)`` float32 (float16 with ``--half``) in [0, 1]; normalisation
(/255) is done by the runner, not in the graph. It returns ``output0`` ``(B, N, 5 + nc)``. The yolokit
metadata (:class:`toolkit.meta.ModelMeta` as JSON) is stored in ``metadata_props`` under ``"yolokit"``.
onnxruntime and onnx are imported only when a function needs them.
"""

from __future__ import annotations

import copy
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from backends.base import ExportOptions, LoadOptions, check_batch
from toolkit.errors import BackendUnavailableError, ExportError, InputError, ModelFileError
from toolkit.meta import META_KEY, ModelMeta

if TYPE_CHECKING:
    from toolkit.loader import LoadedModel

NAME = "onnx"
EXTRA = "onnx"
SUFFIXES = (".onnx",)
DESCRIPTION = "an ONNX model"
INPUT_NAME = "images"
OUTPUT_NAME = "output0"
REEXPORT_HINT = "re-export it with `yolokit export WEIGHTS --to onnx`"

_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
               "all": "ORT_ENABLE_ALL"}


def is_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


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
    """The export target with the ``.onnx`` suffix added when it has none (``-o mymodel`` -> ``mymodel.onnx``)."""
    path = Path(path)
    return path if path.suffix.lower() in SUFFIXES else path.with_name(path.name + SUFFIXES[0])


# ------------------------------------------------------------------------------------------------ export


def _grid_fp32(self: Any, i: int, nx: int, ny: int, like: Any) -> tuple[Any, Any]:
    """Detect grids built in float32 and cast: ONNX ``Range`` has no float16 kernel, so an FP16 trace must
    not call ``arange`` in half precision (installed on the export copy of the head only)."""
    from toolkit.model import Detect

    grid, anchor_grid = Detect._grid(self, i, nx, ny, like.float())
    return grid.to(like.dtype), anchor_grid.to(like.dtype)


def export_graph(source: LoadedModel, path: Path, options: ExportOptions, *, half: bool | None = None,
                 dynamic: bool | None = None, simplify: bool | None = None) -> tuple[Any, list[str]]:
    """Trace ``source`` to an ONNX file at ``path`` without yolokit metadata (OpenVINO and TensorRT build
    from this). Returns the checked ``onnx.ModelProto`` and notes about what was done or skipped."""
    import warnings

    import onnx
    import torch

    half = options.half if half is None else half
    dynamic = options.dynamic if dynamic is None else dynamic
    simplify = options.simplify if simplify is None else simplify
    notes: list[str] = []
    model = copy.deepcopy(source.model).eval()
    det = model.detect
    det._grids.clear()
    # dynamic: grids are computed from the traced shapes (so any H/W works); static: the grids of the one
    # export size become constants
    det.dynamic = dynamic
    dtype = torch.float16 if half else torch.float32
    if half:
        det.dynamic = True  # never reuse fp32 grids cached on the source
        det._grid = types.MethodType(_grid_fp32, det)  # type: ignore[method-assign]
    model = model.to(dtype)
    h, w = options.imgsz
    b = 1 if dynamic else options.batch
    x = torch.zeros(b, 3, h, w, dtype=dtype)
    axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, OUTPUT_NAME: {0: "batch", 1: "anchors"}} \
        if dynamic else None
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=options.opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=axes,
                              do_constant_folding=True)
    except Exception as e:  # the exporter raises many kinds (RuntimeError, OnnxExporterError, ...)
        raise ExportError(f"torch.onnx.export failed (opset {options.opset}): {e}") from e
    proto = onnx.load(str(path))
    if simplify:
        try:
            import onnxslim  # type: ignore[import-not-found]
        except ImportError:
            notes.append("onnxslim is not installed: graph not simplified (pip install onnxslim)")
        else:
            try:
                proto = onnxslim.slim(proto)
                notes.append(f"simplified with onnxslim {getattr(onnxslim, '__version__', '')}".strip())
            except Exception as e:  # slimming is an optimisation: keep the traced graph
                notes.append(f"onnxslim failed ({e}); kept the unsimplified graph")
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"the exported ONNX graph does not pass onnx.checker: {e}") from e
    onnx.save(proto, str(path))
    return proto, notes


def export_meta(source: LoadedModel, options: ExportOptions, fmt: str, precision: str,
                runtime_versions: dict[str, str], extra: dict[str, Any] | None = None,
                dynamic_hw: bool | None = None) -> ModelMeta:
    """Metadata of an artifact exported from ``source`` with ``options``."""
    dynamic = options.dynamic
    dynamic_hw = dynamic if dynamic_hw is None else dynamic_hw
    return ModelMeta(
        names=dict(source.meta.names), stride=source.meta.stride,
        imgsz=None if dynamic_hw else (int(options.imgsz[0]), int(options.imgsz[1])),
        batch=None if dynamic else int(options.batch),
        max_batch=None if dynamic else int(options.batch),
        precision=precision, format=fmt, source_sha256=source.meta.source_sha256,
        runtime_versions=dict(runtime_versions),
        extra={**source.meta.extra, "dynamic": dynamic, **(extra or {})},
    )


def export(source: LoadedModel, path: Path, options: ExportOptions) -> Path:
    """Write ``path`` (.onnx) with yolokit metadata; FP32, or FP16 with ``options.half``."""
    import onnx
    import torch

    if options.int8:
        raise ExportError("INT8 is not supported for ONNX export; use --to openvino --int8")
    proto, notes = export_graph(source, path, options)
    meta = export_meta(source, options, "onnx", "fp16" if options.half else "fp32",
                       {"onnx": onnx.__version__, "torch": torch.__version__},
                       extra={"opset": options.opset, "exporter": "torch.onnx.export (TorchScript, dynamo=False)",
                              "notes": notes})
    onnx.helper.set_model_props(proto, {META_KEY: meta.to_json()})
    onnx.save(proto, str(path))
    return path


# ------------------------------------------------------------------------------------------------ reading


def _load_proto(path: Path) -> Any:
    import onnx

    if not path.is_file():
        raise ModelFileError(f"{path}: no such ONNX file")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path}: the file is empty, not an ONNX model")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise ModelFileError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e}); the file is truncated, "
                             f"corrupt or not ONNX; {REEXPORT_HINT}") from None
    if not proto.graph.node or not proto.graph.input or not proto.graph.output:
        raise ModelFileError(f"{path}: not an ONNX model (no graph); the file is truncated, corrupt or not ONNX; "
                             f"{REEXPORT_HINT}")
    return proto


def meta_from_proto(proto: Any, path: Path) -> ModelMeta:
    props = {p.key: p.value for p in proto.metadata_props}
    if META_KEY not in props:
        raise ModelFileError(f"{path}: this ONNX model has no yolokit metadata (class names, stride, input size); "
                             f"it was not exported by yolokit or the metadata was stripped; {REEXPORT_HINT}")
    try:
        meta = ModelMeta.from_json(props[META_KEY])
    except (ValueError, TypeError) as e:
        raise ModelFileError(f"{path}: the yolokit metadata is unreadable ({e}); {REEXPORT_HINT}") from None
    meta.names = dict(sorted(meta.names.items()))  # the JSON keeps names sorted as strings
    return meta


def read_meta(path: Path) -> ModelMeta:
    """The yolokit metadata of an .onnx file (``yolokit info``)."""
    return meta_from_proto(_load_proto(Path(path)), Path(path))


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


class OnnxRunner:
    """An onnxruntime session. ``InferenceSession.run`` is thread-safe, so one runner serves many threads."""

    def __init__(self, path: Path, options: LoadOptions) -> None:
        import onnxruntime as ort

        proto = _load_proto(path)
        meta = meta_from_proto(proto, path)
        del proto
        so = ort.SessionOptions()
        if options.threads:
            so.intra_op_num_threads = int(options.threads)
        level = str(options.options.get("graph_optimization_level", "all")).lower()
        if level not in _OPT_LEVELS:
            raise InputError(f"graph_optimization_level {level!r}: choose one of {', '.join(_OPT_LEVELS)}")
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[level])
        providers = _providers(options.device, options.options)
        try:
            self.session = ort.InferenceSession(str(path), so, providers=providers)
        except Exception as e:
            raise ModelFileError(f"{path}: onnxruntime cannot load this model ({e}); {REEXPORT_HINT}") from None
        inp = self.session.get_inputs()[0]
        out = self.session.get_outputs()[0]
        self._in, self._out = inp.name, out.name
        self._dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        used = self.session.get_providers()
        self.meta = ModelMeta(**{**meta.__dict__, "extra": {**meta.extra, "providers": used}})

    def infer(self, batch: np.ndarray) -> np.ndarray:
        check_batch(batch, self.meta)
        n = len(batch)
        static = self.meta.batch
        if static is not None and n < static:  # a static graph takes exactly its batch: pad
            batch = np.concatenate([batch, np.zeros((static - n, *batch.shape[1:]), batch.dtype)])
        x = batch.astype(np.float32)
        x /= 255
        if self._dtype is np.float16:
            x = x.astype(np.float16)
        y = self.session.run([self._out], {self._in: x})[0]
        return np.asarray(y[:n], dtype=np.float32)

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]


def load(path: Path, options: LoadOptions) -> OnnxRunner:
    return OnnxRunner(Path(path), options)
