"""A loaded model as the server serves it, with no transport and no event loop.

:class:`ModelFacts` is what a request needs to know of the model, as plain data that travels between processes (a
Ray Serve ingress holds it without the model): its name, settings, letterbox and NMS, and, as plain synchronous calls:

* :meth:`ModelFacts.nms_for`: a request's ``parameters`` -> its NMS settings (checked against the declarations);
* :meth:`ModelFacts.preparations`: its ``images`` input -> one :class:`Work` per image (the image's bytes or tensor,
  its name, its NMS), the input's form and shape checked;
* :meth:`ModelFacts.outputs`: detections -> the ``--nms`` export's four output tensors (``/v1/detect``'s JSON is
  :meth:`~toolkit.detections.Detections.to_detect_json`).

:class:`ServedModel` is a :class:`ModelFacts` with the model loaded (its routine(s)):

* :meth:`ServedModel.prepare`: one :class:`Work` -> the image decoded and letterboxed exactly as ``yolokit run`` does
  (an encoded file), or taken as given (an FP32 tensor): a :class:`~toolkit.engine.core.Prepared`, or the reason
  ``yolokit run`` would give (run it off the event loop);
* :meth:`ServedModel.run`: a list of prepared images -> their results, one model execution per letterbox shape
  (:meth:`~toolkit.engine.core.BatchRoutine.run_batch`, the routine every run uses).

The asyncio batcher (:mod:`toolkit.serve.batcher`) and the HTTP and gRPC transports call these; so does the Ray Serve
deployment (:mod:`toolkit.serve.ray`), whose ``@serve.batch`` method calls :meth:`ServedModel.run`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from backends.base import E2E_OUTPUTS
from toolkit.detections import Detections
from toolkit.engine.core import DetectorConfig, Prepared, Result, intra_op_threads
from toolkit.engine.detector import ModelRoutine
from toolkit.engine.plan import cpu_count, make_plan
from toolkit.errors import YolokitError
from toolkit.io.files import ImageReadError, check_size
from toolkit.io.samples import sample_paths
from toolkit.io.sources import InputRef
from toolkit.meta import ModelMeta
from toolkit.ops import LetterboxInfo, NMSOptions, letterbox, to_chw_rgb
from toolkit.options import ascii_digits, refuse_unknown, whole_number
from toolkit.serve.options import REQUEST_PARAMETERS, request_nms
from toolkit.serve.protocol import BYTES, InferRequest, ProtocolError, Tensor, json_text_reason

INPUT = "images"
MAX_IMAGES = 256  # images in one request (each is decoded and prepared on its own; 256 JPEGs fill the 64 MB body)
VERSION = "1"
CPU_BATCH = 8  # the default --max-batch on a CPU, where batching buys little beyond fewer Python round trips
# request parameters of the protocol itself, beside the detector settings: binary outputs; Triton's request timeout
# (microseconds, read by the service) and priority (checked, not used); /v1/detect takes the timeout alone
PROTOCOL_PARAMETERS = ("binary_data_output", "timeout", "priority")
DETECT_PARAMETERS = ("timeout",)
_FORMS = "BYTES [B] (encoded image files) or FP32 [B,3,H,W] (RGB in 0-1, letterboxed)"
# the forms of an image (Work.form): an encoded file, one sent as a JSON string (text), an FP32 tensor
ENCODED, TEXT, TENSOR = "encoded", "text", "tensor"
T = TypeVar("T")


class ModelFailure(YolokitError):
    """The model failed on a batch (the runtime's error, in one line)."""


@dataclass(frozen=True)
class Work:
    """One image of a request, as data: ``data`` an encoded image file (``form`` ``"encoded"``; ``"text"`` when it
    came as a JSON string) or an FP32 (3, H, W) RGB tensor in 0-1 (``"tensor"``); ``name`` what errors call it
    (``images[0]``); ``nms`` its request's settings; ``index`` its place in the request."""

    form: str
    data: Any
    name: str
    nms: NMSOptions
    index: int = 0

    def portable(self) -> Work:
        """The same work with its data owned (a view into a request's body becomes bytes), to send to another
        process."""
        return replace(self, data=bytes(self.data)) if isinstance(self.data, memoryview) else self


class ModelFacts:
    """What a request needs to know of a served model, and the request-level work that needs no model loaded (see
    the module's docstring). Plain data: it pickles, so a process that does not hold the model (a Ray Serve ingress)
    can check requests and encode answers exactly as the server that holds it."""

    def __init__(self, name: str, version: str, config: DetectorConfig, meta: ModelMeta, nms: NMSOptions,
                 imgsz: tuple[int, int], auto: bool) -> None:
        self.name, self.version = name, version
        self.config, self.meta, self.nms = config, meta, nms
        self.imgsz, self.auto = imgsz, auto
        self.names: dict[int, str] = dict(meta.names)

    def facts(self) -> ModelFacts:
        """These facts alone, as a plain :class:`ModelFacts` (without a loaded model)."""
        return ModelFacts(self.name, self.version, self.config, self.meta, self.nms, self.imgsz, self.auto)

    def metadata(self) -> dict[str, Any]:
        """The KServe v2 model metadata (``properties`` holds the class names, as JSON, and the model's facts)."""
        import json

        meta = self.meta
        properties = {"names": json.dumps({str(k): v for k, v in self.names.items()}), "stride": str(meta.stride),
                      "imgsz": f"{self.imgsz[0]},{self.imgsz[1]}", "letterbox": "rect" if self.auto else "fixed",
                      "format": meta.format, "precision": meta.precision,
                      "input_forms": f"{INPUT}: {_FORMS}; boxes in original-image pixels for BYTES, input pixels for "
                                     f"FP32"}
        if meta.nms is not None:
            properties["nms"] = (f"conf {meta.nms.conf:g}, iou {meta.nms.iou:g}, max_det {meta.nms.max_det}, "
                                 f"agnostic {meta.nms.agnostic}")
        return {"name": self.name, "versions": [self.version], "platform": f"yolokit_{meta.format}",
                "inputs": [{"name": INPUT, "datatype": BYTES, "shape": [-1]}],
                "outputs": [{"name": "num_dets", "datatype": "INT32", "shape": [-1, 1]},
                            {"name": "det_boxes", "datatype": "FP32", "shape": [-1, -1, 4]},
                            {"name": "det_scores", "datatype": "FP32", "shape": [-1, -1]},
                            {"name": "det_classes", "datatype": "INT32", "shape": [-1, -1]}],
                "properties": properties}

    # ------------------------------------------------------------------------------------------- a request
    def nms_for(self, parameters: dict[str, Any], protocol: tuple[str, ...] = PROTOCOL_PARAMETERS) -> NMSOptions:
        """The NMS settings of a request with these ``parameters`` (unknown names refused, naming the nearest;
        ``protocol``: the protocol's own parameters the route takes, checked by :func:`check_protocol`)."""
        refuse_unknown(parameters, (*REQUEST_PARAMETERS, *protocol), "the request's parameters")
        check_protocol(parameters)
        asked = {k: v for k, v in parameters.items() if k in REQUEST_PARAMETERS}
        return request_nms(self.config, self.meta, self.nms, asked, self.name)

    def check_outputs(self, request: InferRequest) -> list[str]:
        """The outputs a request asks for, in order (all four when it names none)."""
        if request.outputs is None:
            return list(E2E_OUTPUTS)
        unknown = [o for o in request.outputs if o not in E2E_OUTPUTS]
        if unknown:
            raise ProtocolError(f"this model has no output {unknown[0]!r}; it has {', '.join(E2E_OUTPUTS)}")
        return list(request.outputs)

    def preparations(self, request: InferRequest, nms: NMSOptions) -> list[Work]:
        """One :class:`Work` per image of the request's ``images`` input (each prepared by
        :meth:`ServedModel.prepare`, off the event loop); the input's form and shape are checked here."""
        if [t.name for t in request.inputs] != [INPUT]:
            raise ProtocolError(f"this model takes one input, {INPUT!r} ({_FORMS}); got "
                                + ", ".join(repr(t.name) for t in request.inputs))
        t = request.inputs[0]
        if t.shape and t.shape[0] > MAX_IMAGES:  # each image is prepared on its own: 100,000 held the server 15 s
            raise ProtocolError(f"input {INPUT} holds {t.shape[0]} images; a request takes at most {MAX_IMAGES} "
                                f"(send more requests: the server batches images across them)")
        if t.datatype == BYTES and t.shape and t.shape[0] >= 1 and (len(t.shape) == 1 or t.shape[1:] == (1,)):
            form = TEXT if t.text else ENCODED
            return [Work(form, data, f"{INPUT}[{i}]", nms, i) for i, data in enumerate(t.data)]
        if t.datatype == "FP32" and len(t.shape) == 4 and t.shape[0] >= 1 and t.shape[1] == 3:
            self.check_tensor_shape(t.shape[2], t.shape[3])
            return [Work(TENSOR, t.data[i], f"{INPUT}[{i}]", nms, i) for i in range(t.shape[0])]
        raise ProtocolError(f"input {INPUT} must be {_FORMS}, got {t.describe()}")

    def check_tensor_shape(self, h: int, w: int) -> None:
        """Refuse an FP32 input of ``h`` x ``w`` this model cannot take, in one line."""
        meta = self.meta
        if meta.imgsz is not None and (h, w) != tuple(meta.imgsz):
            raise ProtocolError(f"this model takes {meta.imgsz[0]}x{meta.imgsz[1]} FP32 input, got {h}x{w}")
        if h < 1 or w < 1 or h % meta.stride or w % meta.stride:
            raise ProtocolError(f"FP32 input {h}x{w}: height and width must be multiples of the model stride, "
                                f"{meta.stride}")
        limit = meta.max_imgsz or (4 * max(self.imgsz),) * 2
        if h > limit[0] or w > limit[1]:
            raise ProtocolError(f"FP32 input {h}x{w} is larger than this model takes, {limit[0]}x{limit[1]}")

    @staticmethod
    def key(p: Prepared) -> tuple[Any, ...]:
        """What images may share a model execution: the same input shape and type."""
        return (*p.chw.shape, p.chw.dtype.str)

    # ------------------------------------------------------------------------------------------- answers
    @staticmethod
    def outputs(dets: list[Detections], names: list[str]) -> list[Tensor]:
        """The ``--nms`` export's outputs for these images (K: the most detections of any of them; rows past an
        image's ``num_dets`` are zero, as the exported model leaves them)."""
        b, k = len(dets), max((len(d) for d in dets), default=0)
        num = np.zeros((b, 1), np.int32)
        boxes, scores, classes = np.zeros((b, k, 4), np.float32), np.zeros((b, k), np.float32), \
            np.zeros((b, k), np.int32)
        for i, d in enumerate(dets):
            n = len(d)
            num[i, 0] = n
            boxes[i, :n], scores[i, :n], classes[i, :n] = d.xyxy, d.confidence, d.class_id
        arrays = {"num_dets": ("INT32", num), "det_boxes": ("FP32", boxes), "det_scores": ("FP32", scores),
                  "det_classes": ("INT32", classes)}
        return [Tensor(n, arrays[n][0], arrays[n][1].shape, arrays[n][1]) for n in names]



class ServedModel(ModelFacts):
    """One loaded model behind a server: ``routines`` holds one :class:`ModelRoutine` per instance (copies of one
    model), ``name`` and ``version`` are what the routes call it."""

    def __init__(self, routines: list[ModelRoutine], name: str = "", version: str = VERSION) -> None:
        r = routines[0]
        super().__init__(name or Path(str(r.config.weights)).stem, version, r.config, r.meta, r.nms, r.imgsz, r.auto)
        self.routines = routines
        self.routine = r

    @classmethod
    def load(cls, config: DetectorConfig, name: str = "", instances: int = 0) -> ServedModel:
        """Load ``instances`` copies of the model ``config`` describes (0: one, whose intra-op threads use every
        core); the CPU's cores are shared between the copies unless ``config.threads`` says how many each takes."""
        n = instances or 1
        if config.threads is None:
            config = replace(config, threads=max(1, cpu_count() // n))
        routines = [ModelRoutine.load(config)]
        try:
            routines += [ModelRoutine.load(routines[0].config) for _ in range(n - 1)]
        except BaseException:
            for r in routines:
                r.close()
            raise
        return cls(routines, name)

    def settings(self) -> contextlib.ExitStack[bool | None]:
        """What a run sets for its duration, for the server's: the intra-op thread count where the runtime sets it
        per process (PyTorch), the device's settings (cuDNN autotuning on a CUDA device)."""
        stack = contextlib.ExitStack()
        stack.enter_context(intra_op_threads(self.routine.runner, self.routine.config.threads))
        stack.enter_context(self.routine.device_settings())
        return stack

    def close(self) -> None:
        for r in self.routines:
            r.close()

    def default_batch(self) -> int:
        """The batch size ``--max-batch 0`` means: the GPU plan's on a CUDA device, else :data:`CPU_BATCH`; within
        the model's own limit (a static artifact: exactly its batch)."""
        meta = self.meta
        if meta.batch is not None:
            return int(meta.batch)
        plan = make_plan(self.routine, 1 << 20)
        batch = plan.batch if plan.gpu else CPU_BATCH
        return min(batch, int(meta.max_batch)) if meta.max_batch is not None else batch

    # ------------------------------------------------------------------------------------------- an image
    def prepare(self, work: Work) -> Prepared:
        """One image of a request, prepared (:meth:`prepare_encoded` or :meth:`prepare_tensor`); one sent as a JSON
        string that is no image is told how to send an image instead."""
        if work.form == TENSOR:
            return self.prepare_tensor(work.data, work.name, work.nms, work.index)
        try:
            return self.prepare_encoded(work.data, work.name, work.nms, work.index)
        except ImageReadError:
            if work.form != TEXT:
                raise
            # "text, not an image; re-copy the image itself" named no fix for a JSON string (base64, as a rule)
            raise ImageReadError(work.name, json_text_reason(work.data)) from None

    def prepare_encoded(self, data: bytes | memoryview | np.ndarray, name: str, nms: NMSOptions | None = None,
                        index: int = 0) -> Prepared:
        """One encoded image file, checked, decoded and letterboxed as ``yolokit run`` does (its limits and refusals:
        :class:`~toolkit.io.files.ImageReadError` with ``yolokit run``'s reason)."""
        r = self.routine
        encoded = data if isinstance(data, np.ndarray) else np.frombuffer(data, np.uint8)
        check_size(name, encoded.size, r.config.max_file_size)
        image, shape = r.decode(encoded, name)
        got = r.prepare(index, InputRef(name, name), image, shape)
        if isinstance(got, Result):
            raise ImageReadError(name, str(got.error))
        got.nms = nms
        return got

    def prepare_tensor(self, chw: np.ndarray, name: str, nms: NMSOptions | None = None, index: int = 0) -> Prepared:
        """One FP32 (3, H, W) RGB image in 0-1, already letterboxed: given to the model as it is (on the 0-255
        scale runners take, which maps uint8 / 255 back to the same integers exactly); its boxes stay in input
        pixels."""
        x = np.asarray(chw, dtype=np.float32)
        if not np.isfinite(x).all() or x.min(initial=0.0) < 0 or x.max(initial=0.0) > 1:
            raise ProtocolError(f"{name}: FP32 input must be RGB values in 0-1")
        h, w = x.shape[1:]
        info = LetterboxInfo(1.0, (0.0, 0.0), (h, w), (h, w))
        return Prepared(index, InputRef(name, name), np.ascontiguousarray(x * np.float32(255)), info, None, (h, w),
                        nms)

    def run(self, items: list[Prepared], instance: int = 0) -> list[Detections]:
        """Prepared images -> their detections, in order: one execution per input shape on instance ``instance``;
        :class:`ModelFailure` when the model fails."""
        routine = self.routines[instance]
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, p in enumerate(items):
            groups.setdefault(self.key(p), []).append(i)
        out: list[Detections | None] = [None] * len(items)
        for positions in groups.values():
            batch = [items[i] for i in positions]
            for i, (_, res) in zip(positions, routine.run_batch(batch), strict=True):
                if res.detections is None:
                    raise ModelFailure(f"the model failed on this batch: {res.error}")
                out[i] = res.detections
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------------------------------- warm-up
    def warm(self, batch: int) -> float | None:
        """Run every instance once on a sample photo (decoded, letterboxed, inferred, as a request is), then check
        whether this runtime gives an image the same output alone and inside a batch of ``batch``: the largest
        absolute difference (0.0: bit for bit the same), or None when not checked (``batch`` 1, a static batch)."""
        paths = sample_paths()
        data = Path(paths[0]).read_bytes()
        for i in range(len(self.routines)):
            self.run([self.prepare_encoded(data, "warm-up")], i)
        if batch <= 1 or self.meta.batch is not None:
            return None
        return self.batch_difference(batch, paths)

    def batch_difference(self, batch: int, paths: list[str]) -> float:
        """The largest difference between each of ``batch`` distinct images inferred alone and inside one batch."""
        from toolkit.io.decode import read_image

        r = self.routine
        size = r.imgsz
        photos = [to_chw_rgb(letterbox(read_image(p), size, r.meta.stride, auto=False)[0]) for p in paths]
        views = [photos[i % len(photos)] if (i // len(photos)) % 2 == 0 else photos[i % len(photos)][:, :, ::-1]
                 for i in range(batch)]
        x = np.ascontiguousarray(np.stack(views))
        together = r.infer(x)
        worst = 0.0
        for i in range(batch):  # one image's output at a time: no second batch of outputs, none in float64
            alone = r.infer(x[i:i + 1])
            if alone.shape != together[i:i + 1].shape:
                return float("inf")
            diff = np.abs(together[i:i + 1].astype(np.float64) - alone.astype(np.float64))
            worst = max(worst, float(np.nan_to_num(diff, nan=np.inf).max()) if diff.size else 0.0)
        return worst


def choose_batch(model: ServedModel, asked: int, log: Callable[[str], None]) -> int:
    """Warm the model up and settle the batch size: ``asked``, or :meth:`ServedModel.default_batch`; on a CPU, an
    automatic choice falls to 1 when the warm-up finds that an image's output changes with the batch it rides in
    (so that every answer is ``yolokit run``'s, which runs such a runtime one image at a time there)."""
    meta = model.meta
    batch = asked or model.default_batch()
    if meta.batch is not None:
        batch = int(meta.batch)
    elif meta.max_batch is not None:
        batch = min(batch, int(meta.max_batch))
    diff = model.warm(batch)
    if diff:
        if not asked and not model.routine.gpu:
            log(f"yolokit serve: this runtime's output for an image changes with the batch it rides in (by up to "
                f"{diff:.3g}); serving one image per execution, so that answers are yolokit run's exactly "
                f"(--max-batch N batches anyway)")
            return 1
        log(f"yolokit serve: note: this runtime's output for an image changes with the batch it rides in (by up to "
            f"{diff:.3g}), so answers can differ from yolokit run's in the last digits")
    return batch


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """``fn()`` and the seconds it took (a preparation or a batch, in its thread)."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def check_protocol(parameters: dict[str, Any]) -> None:
    """Refuse a protocol parameter of the wrong kind, as its detector settings are refused: ``binary_data_output``
    true or false, ``priority`` a whole number (Triton's uint64). The ``timeout`` is read with the deadline."""
    flag = parameters.get("binary_data_output")
    if flag is not None and not isinstance(flag, bool):  # a gRPC string_param "false" read as nothing at all
        raise ProtocolError(f"parameter binary_data_output must be true or false, got {flag!r}")
    priority = parameters.get("priority")
    if priority is not None and not ((whole_number(priority) and priority >= 0)
                                     or (isinstance(priority, str) and ascii_digits(priority))):
        raise ProtocolError(f"parameter priority takes a whole number of 0 or more (Triton's request priority), got "
                            f"{priority!r}")
