"""The one batch routine (load -> prepare -> infer -> post-process, with stage timings) and the small types around
it: :class:`DetectorConfig`, :class:`StageTimes`, :class:`Result`, :class:`Prepared`.

:class:`BatchRoutine` serves every way of running a model: ``Detector.predict``, thread mode (its reader threads
call :meth:`BatchRoutine.load_and_prepare`, its inference threads :meth:`BatchRoutine.run_batch`), process-mode
workers and Ray actors (both call :meth:`BatchRoutine.process`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from toolkit.augment import SCALES, augment_views, merge_views
from toolkit.detections import Detections
from toolkit.errors import DetectorClosedError, InputError, ModelFileError, YolokitError, first_line, last_line
from toolkit.io.decode import decode_image
from toolkit.io.downloads import DEFAULT_WORKERS, DownloadSettings, Payload, expand_inputs, read_input
from toolkit.io.files import DEFAULT_MAX_FILE_SIZE, DEFAULT_MAX_PIXELS, ImageReadError, ReadLimits
from toolkit.io.sources import InputRef
from toolkit.io.transfer import DEFAULT_DEADLINE, DEFAULT_MEMORY, DEFAULT_TIMEOUT, Download, FetchLimits
from toolkit.meta import BakedNMS, ModelMeta
from toolkit.ops import (
    LetterboxInfo,
    NMSOptions,
    final_detections,
    letterbox,
    letterbox_shape,
    postprocess,
    scale_boxes,
    to_chw_rgb,
)
from toolkit.options import (
    CONF,
    DETECTION,
    IMGSZ,
    INPUTS,
    IOU,
    MAX_DET,
    MODEL,
    SPEED,
    check,
    class_ids,
    clip,
    flag_of,
    option,
    typed,
)

if TYPE_CHECKING:
    from backends.base import Runner


PIPELINES = ("auto", "host", "device")
PRECISIONS = ("auto", "fp32", "bf16")  # --precision: how a runtime computes (backends.base.Backend.RUN_PRECISIONS)


@dataclass(frozen=True)
class DetectorConfig:
    """Everything a :class:`~toolkit.engine.detector.Detector` is built from: a worker process, a Ray actor or a
    second copy with another thread budget rebuild the same detector from it (``Detector.from_config``). Each field
    is declared once (:mod:`toolkit.options`): ``yolokit run`` builds its model, detection and input options from
    these declarations, and ``Detector(**settings)`` takes these names."""

    weights: str | None = option(None, "Model: a .pt checkpoint, .onnx, OpenVINO .xml or folder, TensorRT .engine "
                                 "(under any name: the backend is found from the file's first bytes), or a name "
                                 "(yolov5n, yolov5s, yolov5m, yolov5l, yolov5x: found in the cache or "
                                 "../shared/weights, else downloaded and verified). Default: $YOLOKIT_WEIGHTS, else "
                                 "yolov5n.",
                          panel=MODEL, affects_output=True)
    backend: str | None = option(None, "Force a backend (torch, onnx, openvino, trt); default: chosen from the model "
                                 "file.", panel=MODEL)
    device: str | None = option(None, "cpu, cuda, cuda:N, gpu or a GPU index. Default: the backend's own: the CPU, "
                                "a GPU for a TensorRT engine.", panel=MODEL)
    half: bool | None = option(None, "FP16 PyTorch on a CUDA device: faster, but boxes and confidences move slightly "
                               "against YOLOv5's detect.py, whose default is FP32 (the default here too). Exported "
                               "artifacts keep the precision they were exported in.",
                               decls=("--half/--fp32",), panel=MODEL, affects_output=True)
    imgsz: int | tuple[int, int] = IMGSZ.field()
    conf: float = CONF.field()
    iou: float = IOU.field()
    max_det: int = MAX_DET.field()
    classes: tuple[int, ...] | None = option(None, "Keep only these class ids, e.g. 0,2 (COCO: 0 person, 2 car).",
                                             text="classes", panel=DETECTION, affects_output=True, lo=0)
    agnostic: bool = option(False, "Class-agnostic NMS: boxes of different classes suppress each other too.",
                            cli_name="agnostic_nms", panel=DETECTION, affects_output=True)
    multi_label: bool = option(False, "Every class that scores above conf gets its box, not only the best (YOLOv5's "
                               "val.py).", cli=False, affects_output=True)
    threads: int | None = option(None, "Intra-op threads of the runtime (None: its own choice; a run's plan sets "
                                 "them for its duration).", cli=False, lo=1)
    options: dict[str, Any] = option({}, "Runtime options a backend reads at load (backends.base.LoadOptions).",
                                     cli=False)
    fast_decode: bool = option(False, "Decode JPEGs at least twice the model input at reduced size (libjpeg's DCT "
                               "scaling; never when annotated images are saved). Faster on large photos, but the "
                               "model sees other pixels, so detections differ from YOLOv5's detect.py (the cost in "
                               "mAP and the speed gained are measured in docs/benchmarks.md).", panel=SPEED,
                               affects_output=True)
    max_file_size: int = option(DEFAULT_MAX_FILE_SIZE, "Refuse (and list as failed) images and downloads larger "
                                "than this, before reading them: bytes, or 500M, 2G. Local videos are streamed and "
                                "have no limit.",
                                text="bytes", panel=INPUTS, lo=1, affects_output=True)
    max_pixels: int = option(DEFAULT_MAX_PIXELS, "Refuse images whose header claims more pixels than this, before "
                             "decoding them (pixel bombs): a number, or 500M. At most 1073741824, OpenCV's own "
                             "limit. A 13400x9528 photo is 128M.", text="pixels", panel=INPUTS, lo=1,
                             affects_output=True)
    augment: bool = option(False, "Test-time augmentation (YOLOv5's --augment): the model also runs on the image "
                           "scaled by 0.83 and flipped, and by 0.67, all joined before NMS; about 2.1x the inference "
                           "time.", panel=DETECTION, affects_output=True)
    vid_stride: int = option(1, "Process every N-th video or stream frame (YOLOv5's --vid-stride).", panel=INPUTS,
                             affects_output=True, lo=1)
    # at most a day: inf (or 1e12) overflowed the clock's arithmetic (every object failed "timestamp out of range";
    # a download's deadline thread died with a traceback)
    timeout: float = option(DEFAULT_TIMEOUT, "Seconds a URL or live stream may stay silent before it is listed as "
                            "failed.", cli_name="stream_timeout", panel=INPUTS, lo=0, lo_open=True, hi=86400)
    download_timeout: float = option(DEFAULT_DEADLINE, "Seconds a whole download (an image or video URL) may take, "
                                     "however slowly its bytes arrive; past it the URL is listed as failed.",
                                     panel=INPUTS, lo=0, lo_open=True, hi=86400)
    download_workers: int = option(DEFAULT_WORKERS, "URLs downloaded at once, beside decoding and inference.",
                                   panel=INPUTS, lo=1)
    download_memory: int = option(DEFAULT_MEMORY, "Memory the downloads in progress hold together: bytes, or 256M; "
                                  "past it, a download goes to a temporary file.", text="bytes", panel=INPUTS, lo=1)
    pipeline: str = option("auto", "auto: the GPU pipeline on a CUDA device; host: never; device: wherever the "
                           "runner has a device side (the CPU too, which is how the tests check it).", cli=False,
                           choices=PIPELINES)
    gpu_resize: bool = option(False, "On a GPU, resize images on the device too (less CPU work). Resized pixels can "
                              "differ from OpenCV's by a grey level, which moves about 1 % of boxes slightly.",
                              panel=SPEED, affects_output=True)
    precision: str = option("auto", "How the runtime computes on the CPU. auto: as the model file says (an FP32 "
                            "model in FP32, as PyTorch); fp32: FP32 wherever the model allows (also the float parts "
                            "of an INT8 OpenVINO model); bf16: bfloat16 inside an OpenVINO model, on CPUs with "
                            "AVX512-BF16 or AMX (refused elsewhere): faster, but boxes move (parity, mAP and speed in "
                            "docs/guide/performance.md). Never the default.", panel=SPEED, affects_output=True,
                            choices=PRECISIONS)

    def __post_init__(self) -> None:
        typed(self)
        if self.classes is not None:
            object.__setattr__(self, "classes", class_ids(self.classes))
        if not isinstance(self.imgsz, (int, np.integer)) or isinstance(self.imgsz, bool):
            size = tuple(self.imgsz) if isinstance(self.imgsz, (tuple, list)) else ()
            if len(size) not in (1, 2) or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                                  for v in size):
                raise InputError(f"--imgsz takes one size or (height, width) in pixels, got {self.imgsz!r}")
            object.__setattr__(self, "imgsz", int(size[0]) if len(size) == 1 else (int(size[0]), int(size[1])))
        else:
            object.__setattr__(self, "imgsz", int(self.imgsz))  # numpy's int64 was indexed as a pair: IndexError
        if isinstance(self.device, (int, np.integer)) and not isinstance(self.device, bool):
            object.__setattr__(self, "device", str(int(self.device)))  # device=0 read as "not chosen": the CPU
        elif self.device is not None and not isinstance(self.device, str):
            raise InputError(f"--device takes cpu, cuda, cuda:N, gpu or a GPU index, got {self.device!r}")
        object.__setattr__(self, "options", dict(self.options))
        check(self)
        ReadLimits(self.max_file_size, self.max_pixels)  # checked here, where the options enter
        self.downloads()  # refuses a bad --stream-timeout, --download-timeout, --download-workers, --download-memory

    @property
    def size(self) -> tuple[int, int]:
        return (self.imgsz, self.imgsz) if isinstance(self.imgsz, int) else (int(self.imgsz[0]), int(self.imgsz[1]))

    @property
    def limits(self) -> ReadLimits:
        return ReadLimits(self.max_file_size, self.max_pixels)

    def downloads(self) -> DownloadSettings:
        return DownloadSettings(FetchLimits(self.max_file_size, self.timeout, self.download_timeout),
                                self.download_workers, self.download_memory)

    def nms(self) -> NMSOptions:
        return NMSOptions(conf=self.conf, iou=self.iou, max_det=self.max_det, classes=self.classes,
                          agnostic=self.agnostic, multi_label=self.multi_label)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class StageTimes:
    """Seconds spent per stage, summed over images (for ms/image reports). Safe to update from several threads."""

    STAGES = ("read", "pre", "infer", "post")

    def __init__(self) -> None:
        self.read = self.pre = self.infer = self.post = 0.0
        self.images = 0
        self._lock = threading.Lock()
        # per model input shape (batch, 3, h, w): [calls, seconds of the first call, seconds of the others]
        self.shapes: dict[tuple[int, ...], list[float]] = {}

    def add_shape(self, shape: tuple[int, ...], seconds: float) -> None:
        """One inference call at ``shape`` took ``seconds``."""
        with self._lock:
            seen = self.shapes.get(shape)
            if seen is None:
                self.shapes[shape] = [1, seconds, 0.0]
            else:
                seen[0] += 1
                seen[2] += seconds

    def first_call_cost(self) -> tuple[int, float]:
        """How many input shapes the model met, and the seconds their first calls took beyond a repeat's (what a
        dynamic-shape runtime spends compiling kernels for each new shape; shapes met once count whole)."""
        with self._lock:
            shapes = list(self.shapes.values())
        later = [rest / (n - 1) for n, _, rest in shapes if n > 1]
        typical = sorted(later)[len(later) // 2] if later else 0.0
        return len(shapes), sum(max(0.0, first - (rest / (n - 1) if n > 1 else typical)) for n, first, rest in shapes)

    def add(self, stage: str, seconds: float, images: int = 0) -> None:
        with self._lock:
            setattr(self, stage, getattr(self, stage) + seconds)
            self.images += images

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - t0)

    def snapshot(self) -> tuple[float, float, float, float]:
        with self._lock:
            return self.read, self.pre, self.infer, self.post

    def ms_per_image(self) -> dict[str, float]:
        n = max(self.images, 1)
        return {k: 1000 * getattr(self, k) / n for k in self.STAGES}


@dataclass
class Result:
    """One input's outcome: detections, or the reason it failed."""

    ref: InputRef
    detections: Detections | None = None
    error: str | None = None
    image: np.ndarray | None = field(default=None, repr=False)  # the BGR image, when asked to keep it
    annotated: bytes | None = field(default=None, repr=False)  # or the annotated image already encoded (workers)
    crops: list[bytes | None] | None = field(default=None, repr=False)  # each box's crop, encoded (workers)

    @property
    def ok(self) -> bool:
        return self.error is None

    def __eq__(self, other: object) -> bool:
        """The same input, outcome and kept image (the dataclass's own comparison asked numpy for the truth of the
        image array and raised ValueError, as Detections' once did)."""
        if not isinstance(other, Result):
            return NotImplemented
        a, b = self.image, other.image
        same_image = a is b if a is None or b is None else np.array_equal(a, b)
        return (self.ref == other.ref and self.detections == other.detections and self.error == other.error
                and same_image and self.annotated == other.annotated and self.crops == other.crops)

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value


@dataclass
class Prepared:
    """One input letterboxed and ready for a batch."""

    index: int
    ref: InputRef
    chw: np.ndarray
    info: LetterboxInfo
    image: np.ndarray | None
    orig_shape: tuple[int, int]
    nms: NMSOptions | None = None  # this image's NMS settings, when not the routine's (a served request's own)


# Payload: a decoded frame, a failure reason, a remote image's finished download, or None: read the file
Item = tuple[int, InputRef, Payload]


def expand(items: Iterable[InputRef], config: DetectorConfig | None = None) -> Iterator[Item]:
    """Number the inputs, expanding videos into frames (decoded here, in order; every ``config.vid_stride``-th),
    with remote inputs downloaded ahead in a bounded pool (:func:`toolkit.io.downloads.expand_inputs`): a remote
    image comes when its download ends, so items may come out of index order (never more than the pool's window
    past the oldest one missing); :func:`in_order` puts results back in order."""
    config = config or DetectorConfig()
    return expand_inputs(items, config.vid_stride, config.downloads())


def in_order(results: Iterable[tuple[int, Any]]) -> Iterator[Any]:
    """``(index, value)`` pairs that come out of order (see :func:`expand`) -> the values in index order."""
    held: dict[int, Any] = {}
    next_out = 0
    for index, value in results:
        held[index] = value
        while next_out in held:
            yield held.pop(next_out)
            next_out += 1
    for index in sorted(held):
        yield held.pop(index)


def ordered_map(pool: ThreadPoolExecutor, fn: Callable[[Any], Any], items: Iterable[Any],
                window: int) -> Iterator[Any]:
    """``map`` over a thread pool with at most ``window`` items in flight, results in order."""
    pending: deque[Future[Any]] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def to_original(det: Detections, orig_shape: tuple[int, int], decoded_shape: tuple[int, int]) -> None:
    """Boxes of an image decoded at reduced size (``decoded_shape``) back to its original pixels, in place."""
    if orig_shape == decoded_shape:
        return
    (h0, w0), (h1, w1) = orig_shape, decoded_shape
    det.xyxy *= np.array([w0 / w1, h0 / h1, w0 / w1, h0 / h1], np.float32)
    det.xyxy[:, [0, 2]] = det.xyxy[:, [0, 2]].clip(0, w0)
    det.xyxy[:, [1, 3]] = det.xyxy[:, [1, 3]].clip(0, h0)
    det.shape = orig_shape


def batch_sizes(n: int, batch: int, whole: bool = True) -> list[int]:
    """How ``n`` same-shape images go through the model in calls of at most ``batch``: whole batches, then the rest
    one by one when ``whole`` (so that the model only ever sees two batch sizes: a dynamic-shape runtime compiles
    its kernels again for each new input shape, batch size included; measured on OpenVINO's CPU plugin: 40-65 ms per
    new shape, which a folder of mixed aspect ratios paid once per shape and partial batch size), else the rest as
    one partial batch (a GPU, where batching pays and engines take any batch of their profile)."""
    full, rest = divmod(n, max(1, batch))
    return [batch] * full + ([1] * rest if whole and batch > 1 else [rest] if rest else [])


def set_threads(runner: Runner, n: int) -> bool:
    """Give ``runner`` ``n`` intra-op threads in place, where its runtime can; whether it could. A runner without
    ``set_threads`` (a wrapper, a runner of one's own) cannot."""
    change = getattr(runner, "set_threads", None)
    return bool(change(n)) if change is not None else False


@contextmanager
def intra_op_threads(runner: Runner, threads: int | None) -> Iterator[None]:
    """Give ``runner`` ``threads`` intra-op threads for the duration of a run, where its runtime can change them in
    place (PyTorch's count is per process), and restore the count it had, whatever the run changed meanwhile."""
    # a runner that cannot change its count (a wrapper, a runner of one's own) need not implement these two
    current: Callable[[], int | None] = getattr(runner, "current_threads", lambda: None)
    before = current()
    if threads:
        set_threads(runner, int(threads))
    try:
        yield
    finally:
        if before is not None and current() != before:
            set_threads(runner, before)


CLOSED = ("this Detector is closed (close(), or the end of its with-block, released the model); create a new "
          "Detector")
CLOSED_WHILE_RUNNING = ("the Detector was closed while this run used it (close(), or the end of its with-block, "
                        "released the model), so the run ends here; close it after the run")


class BatchRoutine:
    """load -> prepare -> infer -> post-process over a loaded ``runner``: letterboxed to ``imgsz`` (a rectangle
    when ``auto``), NMS by ``nms``, stage times summed in :attr:`times`. A
    :class:`~toolkit.engine.detector.Detector` holds one (``Detector.routine``, built by
    :meth:`toolkit.engine.detector.ModelRoutine.load`) and runs it; the ways of running it (threads, processes, Ray
    actors, live streams, tiles, the GPU pipeline) call its steps."""

    def __init__(self, runner: Runner, config: DetectorConfig, imgsz: tuple[int, int], auto: bool,
                 nms: NMSOptions) -> None:
        self.runner, self.config = runner, config
        self.meta: ModelMeta = runner.meta
        self.imgsz, self.auto, self.nms = imgsz, auto, nms
        self.closed = False  # its model released (close()): a run still using it ends with DetectorClosedError
        self.names: dict[int, str] = dict(self.meta.names)
        self.times = StageTimes()
        self.whole_batches = True  # partial batches run one image at a time (batch_sizes); a GPU routine: False

    def expect(self, images: int | None, batch: int) -> None:
        """Tell the runner how many inferences come: ``images`` inputs in batches of ``batch``, each batch once per
        test-time augmentation view (None: not known, as for a video or tiles). A hint it may weigh
        (:meth:`backends.base.BaseRunner.expect`); a runner of one's own without the method is left alone."""
        expect = getattr(self.runner, "expect", None)
        if callable(expect):
            views = len(SCALES) if self.config.augment else 1
            expect(None if images is None else views * -(-images // max(1, batch)))

    # ------------------------------------------------------------------------------------------- steps
    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, LetterboxInfo]:
        """BGR HWC uint8 -> (letterboxed CHW RGB uint8, letterbox info)."""
        problem = image_array_problem(image)
        if problem is not None:
            raise InputError(problem)
        lb, info = letterbox(image, self.imgsz, self.meta.stride, auto=self.auto)
        return to_chw_rgb(lb), info

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on a uint8 (B, 3, H, W) batch: raw ``(B, N, 5 + nc)`` predictions in input pixels. With
        test-time augmentation (``config.augment``), the three views' predictions joined as YOLOv5 joins them."""
        if not self.config.augment:
            return self._infer(batch)
        views = augment_views(batch, self.meta.stride)
        preds = [self._infer(v.batch) for v in views]
        return merge_views(preds, views, (batch.shape[2], batch.shape[3]), self.meta.stride)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """The runner on one batch; a batch larger than a static artifact's batch (or than a dynamic artifact's
        ``max_batch``) is split."""
        if self.closed:
            raise DetectorClosedError(CLOSED_WHILE_RUNNING)
        limit = self.meta.batch or self.meta.max_batch
        if limit is not None and len(batch) > limit:
            return np.concatenate([self._infer(batch[i:i + limit]) for i in range(0, len(batch), limit)])
        pred = self.runner.infer(batch)
        check_output(self.meta, pred, str(self.config.weights))
        return pred

    def detect(self, pred: np.ndarray, nms: NMSOptions | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One image's model output -> ``(xyxy, conf, cls)`` in letterboxed-input pixels: YOLOv5's NMS over raw
        predictions, or, for a model with NMS inside (``meta.nms``), its final detections with what was asked
        applied on top (:func:`toolkit.ops.final_detections`); they are never post-processed again."""
        nms = nms or self.nms
        if self.meta.nms is not None:
            return final_detections(pred, nms)
        return postprocess(pred, nms)

    def postprocess(self, pred: np.ndarray, info: LetterboxInfo, path: str | None = None,
                    nms: NMSOptions | None = None) -> Detections:
        xyxy, conf, cls = self.detect(pred, nms)
        return Detections(scale_boxes(xyxy, info), conf, cls, self.names, path, info.src_shape)

    def reduce_factor(self, shape: tuple[int, int]) -> int:
        """The largest JPEG reduced-decode factor (2, 4, 8) that keeps the long side >= the model input."""
        target = max(self.imgsz)
        f = 1
        while f < 8 and max(shape) / (f * 2) >= target:
            f *= 2
        return f

    def load_input(self, ref: InputRef, fast_decode: bool | None = None, data: Download | None = None
                   ) -> tuple[np.ndarray, tuple[int, int]] | str:
        """Read one image file (or take its finished download, ``data``, released here) and :meth:`decode` it:
        (BGR image, original (h, w)), or the reason it cannot be read."""
        with self.times.timed("read"):
            try:
                encoded = data.array() if data is not None else read_input(ref.path, self.config.downloads().limits)
                return self.decode(encoded, ref.path, fast_decode)
            except ImageReadError as e:
                return e.reason
            finally:
                if data is not None:
                    data.close()

    def decode(self, encoded: np.ndarray, name: str, fast_decode: bool | None = None
               ) -> tuple[np.ndarray, tuple[int, int]]:
        """Decode one image's bytes as every run does: (BGR image, original (h, w)), or
        :class:`~toolkit.io.files.ImageReadError` naming ``name`` and the reason (within ``config.max_pixels``). With
        ``fast_decode`` (default: the detector's setting), a JPEG at least twice the model input is decoded at
        reduced size; the shape returned is still the original's (as displayed: OpenCV applies the EXIF rotation)."""
        from toolkit.io.decode import jpeg_size

        if fast_decode is None:
            fast_decode = self.config.fast_decode
        size = jpeg_size(encoded) if fast_decode else None
        factor = self.reduce_factor(size) if size else 1
        img = decode_image(encoded, name, factor, self.config.limits.max_pixels)
        if factor == 1 or not size:
            return img, (img.shape[0], img.shape[1])
        h, w = size  # as stored in the JPEG
        rotated = (img.shape[0], img.shape[1]) != (-(-h // factor), -(-w // factor))
        return img, ((w, h) if rotated else (h, w))

    def prepare(self, index: int, ref: InputRef, image: np.ndarray, orig_shape: tuple[int, int] | None = None,
                keep_image: bool = False) -> Prepared | Result:
        """Letterbox one decoded image, or a failed result."""
        with self.times.timed("pre"):
            try:
                chw, info = self.preprocess(image)
            except Exception as e:  # one bad image fails alone (e.g. a shape OpenCV cannot resize)
                return Result(ref, error=f"cannot prepare the image: {last_line(e)}")
        return Prepared(index, ref, chw, info, image if keep_image else None,
                        orig_shape or (image.shape[0], image.shape[1]))

    def load_and_prepare(self, item: Item, keep_images: bool, fast_decode: bool) -> tuple[int, Result | Prepared]:
        """The first half of the routine for one input: read and decode it (or take its decoded frame), letterbox."""
        index, ref, payload = item
        if isinstance(payload, str):
            return index, Result(ref, error=payload)
        if payload is None or isinstance(payload, Download):
            got = self.load_input(ref, fast_decode, payload)
            if isinstance(got, str):
                return index, Result(ref, error=got)
            img, shape = got
        else:
            img, shape = payload, (payload.shape[0], payload.shape[1])
        return index, self.prepare(index, ref, img, shape, keep_images)

    def run_batch(self, group: list[Prepared]) -> list[tuple[int, Result]]:
        """The second half: infer one batch of same-shape prepared images and post-process it; a runtime error
        fails this batch's images, not the run."""
        t0 = time.perf_counter()
        try:
            preds = self.infer(np.stack([p.chw for p in group]))
        except (ModelFileError, DetectorClosedError):
            raise  # the model itself is wrong, or released: every image would fail the same way
        except Exception as e:
            if self.closed:  # released while this batch ran: the runtime's own words name nothing
                raise DetectorClosedError(CLOSED_WHILE_RUNNING) from None
            return [(p.index, Result(p.ref, error=f"inference failed: {first_line(e)}")) for p in group]
        t1 = time.perf_counter()
        self.times.add_shape((len(group), *group[0].chw.shape), t1 - t0)
        out = []
        for p, pred in zip(group, preds, strict=True):
            det = self.postprocess(pred, p.info, p.ref.path, p.nms)
            to_original(det, p.orig_shape, p.info.src_shape)
            out.append((p.index, Result(p.ref, det, image=p.image)))
        self.times.add("infer", t1 - t0)
        self.times.add("post", time.perf_counter() - t1, images=len(group))
        return out

    def run_prepared(self, pending: list[Prepared], batch: int = 0) -> dict[int, Result]:
        """Run prepared images grouped by letterboxed shape, at most ``batch`` per inference call (0: a whole
        group per call); results by input index."""
        groups: dict[tuple[int, ...], list[Prepared]] = {}
        for p in pending:
            groups.setdefault(p.chw.shape, []).append(p)
        out: dict[int, Result] = {}
        for group in groups.values():
            start = 0
            for size in batch_sizes(len(group), batch if batch > 0 else len(group), self.whole_batches and batch > 0):
                out.update(self.run_batch(group[start:start + size]))
                start += size
        return out

    def process(self, items: Iterable[Item], batch: int = 0, keep_images: bool = False,
                fast_decode: bool | None = None) -> dict[int, Result]:
        """The whole routine over a few inputs at once (``Detector.predict``, a process-mode task, a Ray actor's
        batch): results by input index, failures included."""
        fast = self.config.fast_decode if fast_decode is None else fast_decode
        done: dict[int, Result] = {}
        prepared: list[Prepared] = []
        for item in items:
            index, res = self.load_and_prepare(item, keep_images, fast and not keep_images)
            if isinstance(res, Prepared):
                prepared.append(res)
            else:
                done[index] = res
        done.update(self.run_prepared(prepared, batch))
        return done


def resolve_size(config: DetectorConfig, meta: ModelMeta, path: Path) -> tuple[tuple[int, int], bool]:
    """The letterbox target and whether it is a rectangle (``auto``): a fixed-shape artifact's own shape, else the
    asked size rounded up to the stride (refused when a dynamic artifact takes less)."""
    stride = meta.stride
    if meta.imgsz is not None and config.augment:
        raise InputError(f"{path}: --augment runs the model on three input sizes, but this {meta.format} model was "
                         f"exported for a fixed {meta.imgsz[0]}x{meta.imgsz[1]} input; export it without --static")
    if meta.imgsz is not None:
        return (int(meta.imgsz[0]), int(meta.imgsz[1])), False
    h, w = config.size
    size = (max(stride, -(-h // stride) * stride), max(stride, -(-w // stride) * stride))
    limit = meta.max_imgsz
    if limit is not None and (size[0] > limit[0] or size[1] > limit[1]):
        raise InputError(f"{path}: this {meta.format} model takes inputs up to {limit[0]}x{limit[1]}, but --imgsz "
                         f"asks for {size[0]}x{size[1]}; use --imgsz {max(limit)} or less, or re-export with "
                         f"--imgsz {max(size)}")
    return size, True


def image_sizes(refs: Sequence[InputRef], sample: int = 64, budget: float = 0.05) -> dict[tuple[int, int], int]:
    """How many of ``refs`` are images of each size ((h, w) as displayed), estimated from the headers of the first
    ``sample`` (the files a run reads first) and scaled to the whole list: local image files only (a video, a URL
    or an object in a store is not read ahead), and only for ``budget`` seconds (a slow network file system gets a
    smaller sample, not a later start). Empty where none could be read."""
    from toolkit.io.files import read_head
    from toolkit.io.imageheader import oriented_size
    from toolkit.io.remote import is_url
    from toolkit.io.store import is_store_url

    until = time.monotonic() + budget
    found: dict[tuple[int, int], int] = {}
    looked = 0
    for ref in refs[:sample]:
        if looked and time.monotonic() > until:
            break
        looked += 1
        if ref.frame is not None or is_url(ref.path) or is_store_url(ref.path):
            continue
        try:
            size = oriented_size(read_head(ref.path, 1 << 16))
        except (ImageReadError, OSError, ValueError):
            continue
        if size and min(size) > 0:
            found[size] = found.get(size, 0) + 1
    scale = len(refs) / max(1, looked)
    return {size: round(n * scale) for size, n in found.items()}


def expected_shapes(config: DetectorConfig, path: Path, sizes: dict[tuple[int, int], int]
                    ) -> Callable[[ModelMeta], dict[tuple[int, ...], int]]:
    """:attr:`backends.base.LoadOptions.expected` for images of ``sizes`` (how many of each): the letterboxed input
    shapes, batch 1, that they take with a model once its metadata is known, as :meth:`BatchRoutine.preprocess`
    letterboxes them."""
    def shapes(meta: ModelMeta) -> dict[tuple[int, ...], int]:
        try:
            imgsz, auto = resolve_size(config, meta, path)
        except YolokitError:
            return {}
        out: dict[tuple[int, ...], int] = {}
        for size, n in sizes.items():
            shape = (1, 3, *letterbox_shape(size, imgsz, meta.stride, auto=auto)[1])
            out[shape] = out.get(shape, 0) + n
        return out

    return shapes


def resolve_nms(config: DetectorConfig, meta: ModelMeta, path: Path,
                named: Callable[[str], str] = flag_of) -> NMSOptions:
    """The NMS options of a detector. For a model with NMS inside, what is asked must be reachable from what was
    exported: a higher ``conf``, a smaller ``max_det`` and a ``classes`` filter are applied on top; a lower
    ``conf``, a larger ``max_det``, another IoU threshold or agnostic setting cannot be, and are refused in one line.
    A setting left at its default is not asked for: it takes the export's value (``Detector(path)`` needs nothing
    else; an export made with ``--iou 0.6 --max-det 300`` was refused for the defaults 0.45 and 1000).
    Multi-label is not possible there: such a model keeps the best class per box (as YOLOv5's ``detect.py``).
    ``named``: how a refusal names a setting asked for (the command line's flag; a server's request parameter)."""
    nms = config.nms()
    if meta.nms is not None:
        nms = unasked_from_export(nms, meta.nms)
    if nms.classes is not None and meta.names:
        nc = max(meta.names) + 1
        beyond = sorted({int(c) for c in nms.classes if not 0 <= int(c) < nc})
        if beyond:
            first, last = meta.names.get(0, 0), meta.names.get(nc - 1, nc - 1)
            raise InputError(f"{named('classes')} {clip(','.join(map(str, beyond)))}: this model's classes are "
                             f"0-{nc - 1} ({first} ... {last}); `yolokit info {path.name}` lists them")
    baked = meta.nms
    if baked is None:
        return nms
    if config.augment:
        raise InputError(f"{path}: --augment joins the raw predictions of three views before NMS, and this model has "
                         f"NMS inside; use the plain export (without --nms) for --augment")
    refuse_unreachable(nms, baked, path, named)
    return replace(nms, multi_label=False)


def refuse_unreachable(nms: NMSOptions, baked: BakedNMS, path: Path, named: Callable[[str], str] = flag_of) -> None:
    """Refuse, in one line, NMS settings a model with NMS inside (exported at ``baked``) cannot give: a lower
    ``conf``, a larger ``max_det``, another IoU threshold or agnostic setting."""
    fix = "or re-export it with `yolokit export WEIGHTS --to FORMAT --nms` at the settings you need"
    exported = (f"--conf {baked.conf:g} --iou {baked.iou:g} --max-det {baked.max_det}"
                + (" --agnostic-nms" if baked.agnostic else ""))
    problems = []
    if nms.conf < baked.conf:
        problems.append(f"{named('conf')} {nms.conf:g} is below the exported --conf {baked.conf:g} (boxes under it are "
                        f"gone)")
    if nms.max_det > baked.max_det:
        problems.append(f"{named('max_det')} {nms.max_det} is above the exported --max-det {baked.max_det}")
    if abs(nms.iou - baked.iou) > 1e-9:
        problems.append(f"{named('iou')} {nms.iou:g} differs from the exported --iou {baked.iou:g} (NMS cannot be "
                        f"redone)")
    if nms.agnostic != baked.agnostic:
        problems.append(f"{'' if nms.agnostic else 'no '}--agnostic-nms differs from the export")
    elif baked.agnostic and nms.classes is not None:  # detect.py filters classes before NMS
        problems.append(f"{named('classes')} cannot be applied to an export with --agnostic-nms inside (other classes' "
                        f"boxes have suppressed these classes' boxes already, which detect.py keeps)")
    if problems:
        raise InputError(f"{path}: this model has NMS inside, exported with {exported}; " + "; ".join(problems)
                         + f"; run it with those settings (a higher --conf or a lower --max-det is fine), {fix}")


def unasked_from_export(nms: NMSOptions, baked: BakedNMS, unset: NMSOptions | None = None) -> NMSOptions:
    """``nms`` with each setting the export cannot give, where it is the default (``unset``'s value: not asked
    for; the declared defaults unless a job has its own, as val has), the export's."""
    unset = unset or NMSOptions()
    changes: dict[str, Any] = {}
    if nms.conf < baked.conf and nms.conf == unset.conf:
        changes["conf"] = baked.conf
    if nms.max_det > baked.max_det and nms.max_det == unset.max_det:
        changes["max_det"] = baked.max_det
    if abs(nms.iou - baked.iou) > 1e-9 and nms.iou == unset.iou:
        changes["iou"] = baked.iou
    if nms.agnostic != baked.agnostic and nms.agnostic == unset.agnostic:
        changes["agnostic"] = baked.agnostic
    return replace(nms, **changes) if changes else nms


def check_output(meta: ModelMeta, pred: Any, weights: str) -> None:
    """:class:`ModelFileError` when a model's output (numpy or torch) does not have the shape its metadata says:
    ``(batch, boxes, 5 + classes)``, or ``(batch, max_det, 6)`` with NMS inside. Tampered metadata, or another
    network carrying yolokit's, gave boxes named '54' or an IndexError."""
    width = 6 if meta.nms is not None else 5 + meta.nc  # x1 y1 x2 y2 score class; or xywh objectness classes
    if getattr(pred, "ndim", 0) != 3 or pred.shape[-1] != width:
        what = "final detections" if meta.nms is not None else f"{meta.nc} classes"
        shape = [int(d) for d in getattr(pred, "shape", [])]
        raise ModelFileError(f"{weights}: the model's output has shape {shape}, where its metadata ({what}) says "
                             f"(batch, boxes, {width}): the model and its metadata do not belong together; "
                             f"re-export it with yolokit export")


def image_array_problem(image: np.ndarray) -> str | None:
    """Why ``image`` is no picture the detector takes (a BGR uint8 (H, W, 3) array with pixels), with the fix; None
    for one it takes."""
    got = f"got {image.dtype} {image.shape}"
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 4)):
        fix = "cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)" if image.ndim == 2 or image.shape[2] == 1 \
            else "cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)"
        if image.dtype == np.uint8 and image.size:
            return f"images must be BGR uint8 (H, W, 3) arrays, {got}; convert it with {fix}"
    if image.ndim != 3 or image.shape[2] != 3:
        return (f"images must be BGR uint8 (H, W, 3) arrays, {got} (a batch or CHW tensor: pass a list of HWC "
                f"images)")
    if image.dtype != np.uint8:
        fix = "(image * 255).round().astype(np.uint8) for 0-1 floats" if image.dtype.kind == "f" \
            else "cv2.convertScaleAbs or a shift to 8 bits"
        return f"images must be BGR uint8 (H, W, 3) arrays, {got}; convert it, e.g. {fix}"
    if not image.size:
        return f"the image has no pixels ({got})"
    return None


def as_items(images: Sequence[Any]) -> list[Item]:
    """``Detector.predict``'s inputs as routine items: arrays pass as decoded payloads, paths are read."""
    items: list[Item] = []
    for i, item in enumerate(images):
        if isinstance(item, np.ndarray):
            items.append((i, InputRef(f"<array {i}>", f"image{i}"), item))
        else:
            items.append((i, InputRef(str(item), Path(item).stem), None))
    return items
