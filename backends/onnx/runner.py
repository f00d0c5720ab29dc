"""Reading ``.onnx`` files with onnxruntime, and running them: :class:`OnnxRunner` (``InferenceSession.run``) and its
device side :class:`OrtDeviceRunner` (IOBinding). The yolokit metadata (:class:`toolkit.meta.ModelMeta` as JSON) is
stored in the model's ``metadata_props`` under ``"yolokit"``. onnxruntime and onnx are imported only when a function
needs them.

On a CUDA device inputs are normalised on the GPU and bound with IOBinding (providers: :mod:`backends.onnx.providers`).
None of the CUDA side has run here (no GPU); the IOBinding path runs, and is tested, with CPU tensors.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any

import numpy as np

from backends.base import E2E_OUTPUTS, EXPORT_EXTRA, RAW_OUTPUT, BaseRunner, LoadOptions, pack_detections
from backends.onnx.providers import ort_cache_dir, provider_list
from backends.shared.onnx_nms import raw_graph
from toolkit.devices import parse_device
from toolkit.errors import BackendUnavailableError, InputError, ModelFileError
from toolkit.meta import META_KEY, ModelMeta

REEXPORT_HINT = "re-export it with `yolokit export WEIGHTS --to onnx`"
_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
               "all": "ORT_ENABLE_ALL"}


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise ModelFileError(f"{path}: no such ONNX file")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path}: the file is empty, not an ONNX model")


def open_session(path: Path, so: Any = None, providers: list[Any] | None = None, raw: bool = False) -> Any:
    """An onnxruntime session; any failure to load is one line about the file (onnxruntime's text means nothing to
    a user: protobuf parse errors, graph checks). ``raw``: a model with NMS inside, with its raw output instead."""
    import onnxruntime as ort

    _check_file(path)
    if raw and importlib.util.find_spec("onnx") is None:
        raise BackendUnavailableError(f"{path}: reading the raw output of a model with NMS inside needs the onnx "
                                      f"package: pip install '{EXPORT_EXTRA}'")
    try:
        model: Any = str(path)
        if raw:
            import onnx

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
    return meta_from_props(dict(open_session(path).get_modelmeta().custom_metadata_map), path)


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
        self.session = open_session(path, so, providers, raw=raw)
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
