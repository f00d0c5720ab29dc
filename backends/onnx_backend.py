"""ONNX backend: export with ``torch.onnx.export`` (see :mod:`backends.onnx_graph`), run with onnxruntime.

The yolokit metadata (:class:`toolkit.meta.ModelMeta` as JSON) is stored in ``metadata_props`` under ``"yolokit"``.
onnxruntime and onnx are imported only when a function needs them.

On a CUDA device (``onnxruntime-gpu``): the TensorRT provider, when present, with its engine and timing caches
(:func:`ort_cache_dir`), FP16 for FP16 models or ``--half``, and a shape profile over the letterbox rectangles
(:func:`trt_profile_options`); then the CUDA provider. Inputs are normalised on the GPU and bound with IOBinding.
None of the CUDA side has run here (no GPU); :func:`provider_list` is tested as a pure function, and the IOBinding
path runs, and is tested, with CPU tensors.
"""

from __future__ import annotations

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
    suffixed,
)
from backends.onnx_graph import INPUT_NAME, export_graph, export_meta
from toolkit.devices import GPU_BATCH, parse_device
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


ENV_CACHE = "YOLOKIT_ORT_CACHE"


def ort_cache_dir(options: dict[str, Any]) -> Path | None:
    """Where ONNX Runtime's TensorRT provider keeps its engines and timing cache: ``options["cache_dir"]``, else
    ``$YOLOKIT_ORT_CACHE`` (``off`` disables it), else ``~/.cache/yolokit/onnxruntime``; created if needed, None when
    off or not writable. Without it every process rebuilds its TensorRT engines, for minutes."""
    return cache_dir(options, ENV_CACHE, "onnxruntime")


def trt_profile_options(meta: ModelMeta, imgsz: tuple[int, int] | None, batch: int = GPU_BATCH,
                        max_batch: int = GPU_BATCH) -> dict[str, str]:
    """The TensorRT provider's shape profile (``trt_profile_{min,opt,max}_shapes``) for a model with dynamic axes:
    batch 1 to ``max_batch`` (tuned for ``batch``), height and width from the stride up to the long side of
    ``imgsz`` (tuned for ``imgsz``), as :mod:`backends.tensorrt_backend` builds its own engines. Empty for a fully
    static model (nothing to profile)."""
    if meta.batch is not None and meta.imgsz is not None:
        return {}
    s = meta.stride
    h, w = imgsz if imgsz is not None else (640, 640)
    h, w = max(s, -(-int(h) // s) * s), max(s, -(-int(w) // s) * s)
    side = max(h, w)
    b_min, b_opt, b_max = (meta.batch,) * 3 if meta.batch is not None else (1, min(batch, max_batch), max_batch)
    if meta.imgsz is not None:
        lo = opt = hi = (int(meta.imgsz[0]), int(meta.imgsz[1]))
    else:
        lo, opt, hi = (s, s), (h, w), (side, side)

    def dims(b: int, hw: tuple[int, int]) -> str:
        return f"{INPUT_NAME}:{b}x3x{hw[0]}x{hw[1]}"

    return {"trt_profile_min_shapes": dims(b_min, lo), "trt_profile_opt_shapes": dims(b_opt, opt),
            "trt_profile_max_shapes": dims(b_max, hi)}


def provider_list(device: str | None, available: list[str], meta: ModelMeta, extra: dict[str, Any],
                  half: bool | None = None, imgsz: tuple[int, int] | None = None,
                  cache_dir: Path | None = None) -> list[Any]:
    """The execution providers (with their options) for ``device``, from the ``available`` ones: the CPU; or on a
    CUDA device TensorRT (engine and timing caches in ``cache_dir``, FP16 for an FP16 model or when ``half`` asks,
    the shape profile of :func:`trt_profile_options`), then CUDA, then the CPU. ``extra["providers"]`` overrides
    everything; ``extra["tensorrt"] = False`` leaves TensorRT out."""
    if "providers" in extra:
        return list(extra["providers"])
    spec = parse_device(device)
    if spec.kind == "cpu":
        return ["CPUExecutionProvider"]
    if spec.kind != "cuda":
        raise InputError(f"device {device!r}: the onnx backend runs on cpu, cuda or cuda:N")
    if "CUDAExecutionProvider" not in available:
        raise BackendUnavailableError(f"device {device!r} asked for, but this onnxruntime has no CUDA provider "
                                      f"(has {', '.join(available)}): pip install 'yolokit[gpu]', or use --device cpu")
    providers: list[Any] = []
    if "TensorrtExecutionProvider" in available and extra.get("tensorrt", True):
        trt: dict[str, Any] = {"device_id": spec.index, "trt_fp16_enable": bool(half) or meta.precision == "fp16"}
        if cache_dir is not None:
            trt.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache_dir / "trt_engines"),
                       trt_timing_cache_enable=True, trt_timing_cache_path=str(cache_dir / "trt_timing"))
        trt.update(trt_profile_options(meta, imgsz, int(extra.get("trt_batch", GPU_BATCH)),
                                       int(extra.get("trt_max_batch", GPU_BATCH))))
        providers.append(("TensorrtExecutionProvider", trt))
    providers.append(("CUDAExecutionProvider", {"device_id": spec.index}))
    providers.append("CPUExecutionProvider")
    return providers


class OrtDeviceRunner:
    """The device side of an :class:`OnnxRunner` (see :class:`backends.base.DeviceRunner`) through IOBinding: the
    input is bound where it lies (a CUDA or CPU torch tensor), the output to a torch buffer of the calling thread.
    ONNX Runtime runs on its own CUDA stream, so the caller's stream is synchronised first; its ``Run`` returns once
    the output is written."""

    graphable = False

    def __init__(self, runner: OnnxRunner, device: Any, dtype: Any) -> None:
        self.runner, self.device, self.dtype = runner, device, dtype
        self.static_batch = runner.meta.batch
        self._local = threading.local()
        self._kind = ("cuda", int(device.index or 0)) if device.type == "cuda" else ("cpu", 0)

    def forward(self, x: Any) -> Any:
        import torch

        session = self.runner.session
        st = self._local
        if getattr(st, "binding", None) is None:
            st.binding, st.shapes, st.buf = session.io_binding(), {}, None
        x = x.contiguous()
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # x is complete before ONNX Runtime reads it
        shape = tuple(int(v) for v in x.shape)
        in_np, out_np = self.runner._dtype, self.runner._out_dtype
        binding = st.binding
        binding.bind_input(self.runner._in, *self._kind, in_np, shape, x.data_ptr())
        if shape not in st.shapes:  # first run at this shape: ONNX Runtime allocates, and says the output shape
            binding.bind_output(self.runner._out, *self._kind)
            session.run_with_iobinding(binding)
            st.shapes[shape] = tuple(int(v) for v in binding.get_outputs()[0].shape())
        out_shape = st.shapes[shape]
        n = int(np.prod(out_shape))
        out_dtype = torch.float16 if out_np is np.float16 else torch.float32
        if st.buf is None or st.buf.numel() < n:
            st.buf = torch.empty(max(n, 2 * (0 if st.buf is None else st.buf.numel())), dtype=out_dtype,
                                 device=self.device)
        out = st.buf[:n].view(out_shape)
        binding.bind_output(self.runner._out, *self._kind, out_np, out_shape, out.data_ptr())
        session.run_with_iobinding(binding)
        return out


class OnnxRunner(BaseRunner):
    """An onnxruntime session. ``InferenceSession.run`` is thread-safe, so one runner serves many threads.

    On a CUDA device the batch is normalised on the GPU (a quarter of the bytes cross the bus) and run through
    IOBinding (:class:`OrtDeviceRunner`), which also serves the GPU pipeline."""

    def __init__(self, path: Path, options: LoadOptions) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        if options.threads:
            so.intra_op_num_threads = int(options.threads)
        level = str(options.options.get("graph_optimization_level", "all")).lower()
        if level not in _OPT_LEVELS:
            raise InputError(f"graph_optimization_level {level!r}: choose one of {', '.join(_OPT_LEVELS)}")
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[level])
        spec = parse_device(options.device)
        if spec.kind == "other" and "providers" not in options.options:
            raise InputError(f"device {options.device!r}: the onnx backend runs on cpu, cuda or cuda:N")
        file_meta = read_meta(path) if spec.is_gpu else ModelMeta(names={})  # the TensorRT profile needs it first
        providers = provider_list(options.device if spec.is_gpu else "cpu", ort.get_available_providers(), file_meta,
                                  options.options, options.half, options.imgsz,
                                  ort_cache_dir(options.options) if spec.is_gpu else None)
        raw = bool(options.options.get(RAW_OUTPUT))
        self.session = _session(path, so, providers, raw=raw)
        meta = meta_from_props(dict(self.session.get_modelmeta().custom_metadata_map), path)
        inp = self.session.get_inputs()[0]
        self._in = inp.name
        self._outs = [o.name for o in self.session.get_outputs()]
        out = self.session.get_outputs()[0]
        self._out = out.name
        self._e2e = meta.nms is not None and not raw
        if self._e2e and self._outs != list(E2E_OUTPUTS):
            raise ModelFileError(f"{path}: its metadata says NMS is inside, but its outputs are {self._outs}, not "
                                 f"{', '.join(E2E_OUTPUTS)}; {REEXPORT_HINT} --nms")
        self._dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        self._out_dtype = np.float16 if out.type == "tensor(float16)" else np.float32
        used = self.session.get_providers()
        self.meta = ModelMeta(**{**meta.__dict__, "nms": meta.nms if self._e2e else None,
                                 "extra": {**meta.extra, "providers": used}})
        self._cuda = spec.is_gpu and any(p in used for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider"))
        self._device = f"cuda:{spec.index}" if self._cuda else "cpu"
        self._device_side: OrtDeviceRunner | None = None

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self._cuda and not self._e2e:
            import torch

            dev = self.device_runner()
            assert dev is not None  # only models without NMS inside come here
            xt = torch.from_numpy(np.ascontiguousarray(batch)).to(dev.device).to(dev.dtype).div_(255)
            return dev.forward(xt).float().cpu().numpy()
        x = batch.astype(np.float32)
        x /= 255
        if self._dtype is np.float16:
            x = x.astype(np.float16)
        if self._e2e:
            return pack_detections(*self.session.run(self._outs, {self._in: x}))
        y = self.session.run(self._outs[:1], {self._in: x})[0]
        return np.asarray(y, dtype=np.float32)

    def device_runner(self) -> OrtDeviceRunner | None:
        if self._e2e:
            return None  # NMS inside: the GPU pipeline post-processes raw predictions; session.run serves it
        if self._device_side is None:
            import torch

            dtype = torch.float16 if self._dtype is np.float16 else torch.float32
            self._device_side = OrtDeviceRunner(self, torch.device(self._device), dtype)
        return self._device_side

    def close(self) -> None:
        self._device_side = None
        self.session = None  # type: ignore[assignment]


def load(path: Path, options: LoadOptions) -> OnnxRunner:
    return OnnxRunner(Path(path), options)
