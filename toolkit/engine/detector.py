"""``Detector``: one interface over every backend, and :class:`ModelRoutine`, the batch routine of a loaded model
that it holds (with the GPU pipeline where the model's runner has a device side)."""

from __future__ import annotations

import glob as globmod
import inspect
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import MISSING, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from toolkit.detections import Detections
from toolkit.devices import parse_device
from toolkit.engine.core import (
    CLOSED,
    BatchRoutine,
    DetectorConfig,
    Item,
    Result,
    StageTimes,
    expand,
    expected_shapes,
    image_array_problem,
    in_order,
    intra_op_threads,
    resolve_nms,
    resolve_size,
)
from toolkit.engine.plan import Plan, cpu_count, make_plan
from toolkit.engine.threads import run_threads, run_tiled
from toolkit.engine.tiled import predict_tiled
from toolkit.errors import DetectorClosedError, InputError, YolokitError
from toolkit.io.decode import decode_image, read_image
from toolkit.io.files import ImageReadError
from toolkit.io.outputs import AnnotateStyle
from toolkit.io.sources import VIDEO_SUFFIXES, InputRef, SourceList, in_listing_order, list_sources
from toolkit.meta import ModelMeta
from toolkit.ops import NMSOptions, letterbox_shape
from toolkit.options import brief, refuse_unknown, whole_number
from toolkit.tiling import TileOptions

if TYPE_CHECKING:
    from toolkit.engine.ahead import HeadStart
    from toolkit.engine.gpu import DevicePipeline


def module_runs_cuda(precisions: dict[str, tuple[str, ...]], device: str) -> bool:
    """Whether a backend with these ``PRECISIONS`` runs ``device`` as a CUDA device (OpenVINO's "gpu" is not)."""
    return parse_device(device).is_gpu and "cuda" in precisions


class ModelRoutine(BatchRoutine):
    """The batch routine of one loaded model (:meth:`load`), which the ways of running it share: a
    :class:`Detector`'s calls, thread- and process-mode runs, Ray actors and live streams. On a CUDA device, when the
    model's runner has a device side, :meth:`process` runs the GPU pipeline of :mod:`toolkit.engine.gpu`."""

    def __init__(self, runner: Any, config: DetectorConfig, imgsz: tuple[int, int], auto: bool, nms: NMSOptions,
                 gpu: bool = False) -> None:
        super().__init__(runner, config, imgsz, auto, nms)
        self.gpu = gpu  # the device is a CUDA device of a backend that runs CUDA
        self.whole_batches = not gpu  # a GPU takes partial batches whole (batch_sizes)
        self._pipeline: DevicePipeline | None = None
        self._copies: dict[int, ModelRoutine] = {}  # this model at other intra-op thread counts (at_threads)

    @classmethod
    def load(cls, config: DetectorConfig, sizes: dict[tuple[int, int], int] | None = None) -> ModelRoutine:
        """Find the model, choose its backend (unless ``config.backend`` names one), load it on ``config.device``
        (default: the backend's own) and resolve the letterbox size and NMS; ``config`` of the result records the
        model's path, the backend and the device. Worker processes and Ray actors load theirs this way. ``sizes``:
        the image sizes a run will give it, how many of each (:func:`~toolkit.engine.core.image_sizes`), which the
        runtime may prepare for while it loads (:attr:`backends.base.LoadOptions.expected`)."""
        import backends
        from backends.base import LoadOptions
        from toolkit.model.configs import resolve_model

        if config.backend:  # a name that is no backend is that, not a file of another backend's
            backends.get_backend(config.backend)
        path = resolve_model(config.weights)
        name = config.backend or backends.backend_for(path)
        if config.backend:
            backends.check_backend(name, path)
        module = backends.require(name)
        module.check_precision(config.precision)
        device = config.device or module.DEFAULT_DEVICE  # not chosen: the backend's own (a GPU for engines)
        # a file by its absolute path: worker processes and Ray actors load it again, from another working folder
        # (after an os.chdir a relative name found another file, or none)
        config = replace(config, weights=str(path.absolute()) if path.exists() else str(path), backend=name,
                         device=device)
        expected = expected_shapes(config, path, sizes) if sizes else None
        runner = module.load(path, LoadOptions(device=device, half=config.half, threads=config.threads,
                                               imgsz=config.size, options=dict(config.options),
                                               precision=config.precision, expected=expected))
        try:
            imgsz, auto = resolve_size(config, runner.meta, path)
            nms = resolve_nms(config, runner.meta, path)
        except YolokitError:
            runner.close()
            raise
        return cls(runner, config, imgsz, auto, nms, module_runs_cuda(module.PRECISIONS, device))

    def at_threads(self, threads: int) -> ModelRoutine:
        """This model at ``threads`` intra-op threads: this routine when it was loaded at that count or its runner
        changes the count in place (PyTorch); else a copy loaded at that count (ONNX Runtime and OpenVINO fix it at
        load: two inference threads sharing one two-thread session oversubscribe the cores), kept for later runs,
        sharing this routine's stage times and closed with it. A runner of one's own (a wrapper, not a backend's
        :class:`~backends.base.BaseRunner`) is kept as it is."""
        from backends.base import BaseRunner

        can_change = getattr(self.runner, "current_threads", lambda: None)() is not None
        own = self.config.threads is None and threads >= cpu_count()  # the runtime's own choice: every core
        if self.config.threads == threads or own or can_change or not isinstance(self.runner, BaseRunner):
            return self
        copy = self._copies.get(threads)
        if copy is None:
            copy = self._copies[threads] = ModelRoutine.load(replace(self.config, threads=threads))
            copy.times = self.times
        return copy

    def device_pipeline(self, batch: int) -> DevicePipeline | None:
        """The GPU pipeline at ``batch`` when this model runs on a CUDA device and its runner has a device side;
        a fresh one while the cached one is busy with another pass."""
        mode = self.config.pipeline
        if mode == "host" or (mode == "auto" and not self.gpu) or self.config.augment:
            return None  # test-time augmentation runs the three views through the host routine
        get = getattr(self.runner, "device_runner", None)
        dev = get() if get is not None else None
        if dev is None:
            return None
        return self._pipeline_for(dev, batch)

    def _pipeline_for(self, dev: Any, batch: int) -> DevicePipeline:
        from toolkit.engine.gpu import DevicePipeline

        pipe = self._pipeline
        resize = self.config.gpu_resize
        if pipe is None or pipe.dev is not dev or pipe.batch != int(dev.static_batch or max(1, batch)) \
                or pipe.gpu_resize != resize:
            if pipe is not None and not pipe.busy():
                pipe.close()
            pipe = self._pipeline = DevicePipeline(self, dev, batch, gpu_resize=resize)
        elif pipe.busy():
            return DevicePipeline(self, dev, batch, gpu_resize=resize)
        return pipe

    def process(self, items: Iterable[Item], batch: int = 0, keep_images: bool = False,
                fast_decode: bool | None = None) -> dict[int, Result]:
        """The whole routine over a few inputs (see :meth:`BatchRoutine.process`), through the GPU pipeline when
        this model has one."""
        pipe = self.device_pipeline(batch or 1)
        if pipe is None:
            with self.device_settings():
                return super().process(items, batch, keep_images, fast_decode)
        fast = self.config.fast_decode if fast_decode is None else fast_decode
        return dict(pipe.results(items, 0, keep_images, fast and not keep_images))

    def device_settings(self) -> AbstractContextManager[None]:
        """On a CUDA device, cuDNN autotuning and (FP32) no TF32 for the duration of a run (see
        :func:`toolkit.engine.gpu.memory.cuda_settings`); nothing elsewhere."""
        if not self.gpu:
            return nullcontext()
        import torch

        from toolkit.engine.gpu import cuda_settings

        return cuda_settings(torch.device(parse_device(self.config.device).torch), self.meta.precision == "fp32")

    def close(self) -> None:
        self.closed = True
        if self._pipeline is not None and not self._pipeline.busy():
            self._pipeline.close()
        self._pipeline = None
        for copy in self._copies.values():
            copy.close()
        self._copies.clear()
        self.runner.close()


def _tile_options(tile: Any) -> TileOptions | None:
    """``tile`` as the library takes it: a :class:`TileOptions`, a tile size in pixels (numpy's integers too), or
    None (no tiling); :class:`InputError` otherwise (an int given to predict_iter failed each image with "'int'
    object has no attribute 'scales'")."""
    if tile is None or isinstance(tile, TileOptions):
        return tile
    if whole_number(tile):
        return TileOptions(tile=int(tile))
    raise InputError(f"tile takes a tile size in pixels or a TileOptions, got {brief(tile)}")


def _check_counts(least: int, **counts: Any) -> None:
    """:class:`InputError` for a count that is not a whole number of at least ``least`` (``batch=2.5``: a TypeError
    deep in the planner)."""
    for name, value in counts.items():  # numpy's integers too, as DetectorConfig takes them
        if not whole_number(value) or value < least:
            raise InputError(f"{name} takes a whole number, at least {least}, got {value!r}")


# the kinds predict_iter's arguments take, and how a refusal says them
_KINDS: dict[str, tuple[tuple[type, ...], str]] = {
    "keep_images": ((bool, np.bool_), "True or False"), "crops": ((bool, np.bool_), "True or False"),
    "fast_decode": ((bool, np.bool_, type(None)), "True, False or None"),
    "style": ((AnnotateStyle, type(None)), "an AnnotateStyle"), "plan": ((Plan, type(None)), "a Plan"),
    "mode": ((str,), "thread, process or auto")}


def _check_kinds(**given: Any) -> None:
    """:class:`InputError` for an argument of ``predict_iter`` of the wrong kind (``keep_images='yes'`` was taken as
    true; ``style='x'`` failed every input with an AttributeError inside a worker)."""
    for name, value in given.items():
        kinds, wants = _KINDS[name]
        if not isinstance(value, kinds):
            raise InputError(f"{name} takes {wants}, got {value!r:.60}")


def _settings_signature() -> inspect.Signature:
    """``Detector(weights, *, conf=..., ...)`` as help() and editors show it: the :class:`DetectorConfig` fields."""
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for f in fields(DetectorConfig):
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD if f.name == "weights" else inspect.Parameter.KEYWORD_ONLY
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc,operator]
        params.append(inspect.Parameter(f.name, kind, default=default, annotation=f.type))
    return inspect.Signature(params, return_annotation=None)


class Detector:
    """Detect objects with a YOLOv5 model from any backend.

    ``weights`` is a ``.pt`` checkpoint, an exported artifact (``.onnx``, OpenVINO ``.xml`` or folder,
    TensorRT ``.engine``, or any of them under another name), a manifest name (``yolov5n``) or a built-in config
    (``yolov5s.yaml``, random weights); None: ``$YOLOKIT_WEIGHTS``, else yolov5n. The other settings are keywords,
    the fields of :class:`DetectorConfig`
    (``conf``, ``iou``, ``max_det``, ``imgsz``, ``classes``, ``agnostic``, ``backend``, ``device``, ``half``, ...;
    each declared once, with its default and help, in :mod:`toolkit.engine.core`; ``docs/guide/options.md`` lists
    them); an unknown keyword is an :class:`~toolkit.errors.InputError` naming the nearest known one. The backend is
    chosen from the file unless ``backend`` is given.

    Images are decoded whole and letterboxed as YOLOv5's ``detect.py`` does, so detections match the official
    code. ``fast_decode=True`` opts in to decoding JPEGs at least twice the model input at reduced size (libjpeg's
    DCT scaling): faster on large photos, but the model sees different pixels and detections shift (the measured
    cost in mAP and the speed gained are in docs/benchmarks.md). ``max_file_size`` and ``max_pixels`` bound what an
    input may be before it is read or decoded. ``augment=True`` is YOLOv5's test-time augmentation (``--augment``):
    the model also runs on the image scaled by 0.83 and flipped, and by 0.67, all joined before NMS (about 2.1x the
    inference time). The whole configuration is :attr:`config`, a :class:`DetectorConfig`.
    ``device`` is ``cpu``, ``cuda``, ``cuda:N``, ``gpu`` or a GPU index (:func:`toolkit.devices.parse_device`);
    ``None`` means the backend's own default (the CPU, a GPU for TensorRT engines). On a CUDA device, a backend
    whose runner has a device side (PyTorch, FP32 unless ``half=True``; TensorRT; ONNX Runtime with IOBinding) runs
    the GPU pipeline of :mod:`toolkit.engine.gpu`: letterbox, inference and NMS on the device, only detections
    copied back.
    ``pipeline="host"`` keeps the CPU letterbox and NMS on a GPU too; ``"device"`` uses the device pipeline on any
    device whose runner has a device side, the CPU included (how the tests run it without a GPU). The pipeline's
    letterbox resizes with OpenCV on the CPU, so the model sees the CPU path's input exactly; ``gpu_resize=True``
    resizes on the device instead (less CPU work; resized pixels can differ by one grey level, which moves about 1 %
    of boxes beyond IoU 0.9 or 0.02 confidence, measured on coco128).

    The model itself runs in :attr:`routine` (a :class:`ModelRoutine`: read, letterbox, infer, NMS, step by step),
    which code that drives the steps (benchmarks, the export parity check) uses directly.
    """

    def __init__(self, weights: str | Path | None = None, **settings: Any) -> None:
        refuse_unknown(settings, [f.name for f in fields(DetectorConfig) if f.name != "weights"], "Detector()")
        if weights is not None and not isinstance(weights, (str, os.PathLike)):  # str() of it was a file name
            hint = "; for a DetectorConfig use Detector.from_config(config)" if isinstance(weights, DetectorConfig) \
                else ""
            raise InputError(f"Detector takes the model's path or name (a .pt, .onnx, OpenVINO folder, .engine, or "
                             f"yolov5n), got {type(weights).__name__}{hint}")
        self._hold(ModelRoutine.load(DetectorConfig(weights=None if weights is None else str(weights), **settings)))

    __init__.__signature__ = _settings_signature()  # type: ignore[attr-defined]

    @classmethod
    def from_config(cls, config: DetectorConfig, sizes: dict[tuple[int, int], int] | None = None) -> Detector:
        """The detector ``config`` describes; ``sizes``: the image sizes a run will give it
        (:meth:`ModelRoutine.load`)."""
        det = cls.__new__(cls)
        det._hold(ModelRoutine.load(config, sizes))
        return det

    def _hold(self, routine: ModelRoutine) -> None:
        self.routine = routine
        self.last_plan: Plan | None = None  # the plan of the last predict_iter
        self.last_deaths = 0  # worker processes of the last predict_iter that died (and were started again)
        self.closed = False  # close() (or the end of its with-block) released the model

    def _open(self) -> ModelRoutine:
        """The model, or :class:`InputError` once the detector is closed (the runtime's own failure named nothing)."""
        if self.closed:
            raise DetectorClosedError(CLOSED)
        return self.routine

    # ------------------------------------------------------------------------------------------ what it is
    @property
    def config(self) -> DetectorConfig:
        """The whole configuration, with the model's path, the backend and the device it resolved to."""
        return self.routine.config

    @property
    def meta(self) -> ModelMeta:
        return self.routine.meta

    @property
    def names(self) -> dict[int, str]:
        return self.routine.names

    @property
    def weights(self) -> Path:
        """The model file (or built-in config name) that was loaded."""
        return Path(str(self.routine.config.weights))  # resolved at load: never None here

    @property
    def backend_name(self) -> str:
        return str(self.routine.config.backend)

    @property
    def times(self) -> StageTimes:
        """Seconds per stage (read, pre, infer, post) summed over every image this detector ran."""
        return self.routine.times

    @property
    def imgsz(self) -> tuple[int, int]:
        """The letterbox target (h, w): a fixed-shape artifact's own, else the asked size rounded to the stride."""
        return self.routine.imgsz

    @property
    def nms(self) -> NMSOptions:
        return self.routine.nms

    @property
    def fast_decode(self) -> bool:
        return self.config.fast_decode

    def letterbox_differs(self, shape: tuple[int, int]) -> bool:
        """Whether this detector letterboxes an image of ``shape`` (h, w) to another input shape than the ``.pt``
        checkpoint would (a fixed-shape artifact pads a 16:9 photo to a square where the ``.pt`` uses a rectangle),
        so that its detections can differ from the checkpoint's."""
        r = self.routine
        if r.auto:
            return False
        rect = letterbox_shape(shape, max(r.imgsz), r.meta.stride, auto=True)[1]
        return tuple(rect) != tuple(r.imgsz)

    # -------------------------------------------------------------------------------------------- API
    def predict(self, images: np.ndarray | str | Path | bytes | Iterable[np.ndarray | str | Path | bytes],
                batch: int = 1, tile: TileOptions | int | None = None) -> list[Detections]:
        """Detections for one image or a sequence of images (BGR uint8 arrays, paths, or encoded files' bytes), in
        order. Images are read ``batch`` at a time (a list of photos is never all in memory at once), as a run
        reads them (``fast_decode`` included).

        ``tile`` (a :class:`TileOptions` or a tile size) switches to sliced inference for huge images.
        An unreadable path raises :class:`~toolkit.io.files.ImageReadError`; use :meth:`predict_iter` to carry on
        past it, and for folders, globs, lists, videos, URLs and streams.
        """
        routine = self._open()
        _check_counts(1, batch=batch)
        opts = _tile_options(tile)
        given: list[Any]
        if isinstance(images, (np.ndarray, str, os.PathLike, bytes, bytearray, memoryview)):
            given = [images]
        elif hasattr(images, "read") or hasattr(images, "readinto"):  # a file object iterates its lines
            raise InputError(f"predict takes an image's path, array or bytes, not an open file "
                             f"({type(images).__name__}): pass its bytes (f.read()) or its path")
        elif isinstance(images, (dict, set)) or not isinstance(images, Iterable):
            raise InputError(f"predict takes an image (a BGR uint8 array, a path, or an encoded file's bytes) or a "
                             f"list of them, got {type(images).__name__}")
        else:
            given = list(images)
        paths = [os.fspath(im) if isinstance(im, (str, os.PathLike)) else None for im in given]
        if opts is not None:
            return [self.predict_tiled(self._picture(im, i), opts, p)
                    for i, (im, p) in enumerate(zip(given, paths, strict=True))]
        step = max(1, batch)
        out: list[Detections] = []
        for start in range(0, len(given), step):
            prepared = []
            for i in range(start, min(start + step, len(given))):
                named = paths[i]
                ref = InputRef(named or f"<array {i}>", Path(named).stem if named else f"image{i}")
                img, shape = self._decoded(given[i], i, routine)
                ready = routine.prepare(i, ref, img, shape)
                if isinstance(ready, Result):
                    raise YolokitError(f"{ref.name}: {ready.error}")
                prepared.append(ready)
            results = routine.run_prepared(prepared, step)
            for i in range(start, start + len(prepared)):
                res = results[i]
                if res.detections is None:
                    raise YolokitError(f"{res.ref.name}: {res.error}")
                res.detections.path = paths[i]  # an in-memory image has no path
                out.append(res.detections)
        return out

    def _decoded(self, image: Any, i: int, routine: ModelRoutine) -> tuple[np.ndarray, tuple[int, int]]:
        """One of :meth:`predict`'s images decoded as a run decodes it (a file's or bytes' JPEG at reduced size
        with ``fast_decode``) with its original (h, w); :class:`InputError` naming it otherwise."""
        if isinstance(image, (str, os.PathLike)):
            text = self._readable_path(os.fspath(image))
            got = routine.load_input(InputRef(text, Path(text).stem))
            if isinstance(got, str):
                if os.path.splitext(text)[1].lower() in VIDEO_SUFFIXES:  # a .gif OpenCV reads is an image here
                    raise InputError(self._elsewhere(text))
                raise ImageReadError(text, got)
            return got
        if isinstance(image, (bytes, bytearray, memoryview)):
            return routine.decode(np.frombuffer(bytes(image), np.uint8), f"<bytes {i}>")
        img = self._picture(image, i)
        return img, (img.shape[0], img.shape[1])

    @staticmethod
    def _elsewhere(text: str) -> str:
        return (f"{text}: predict reads image files, arrays and bytes; for a folder, a glob, a .txt list, a URL, a "
                f"video or a stream use predict_iter (or yolokit run)")

    def _readable_path(self, text: str) -> str:
        """``text``, or :class:`InputError` where it names what predict does not read (a URL, a webcam's index, a
        folder, a glob, a list file): what does."""
        listed = os.path.splitext(text)[1].lower() in (".txt", ".streams") and os.path.isfile(text)
        glob = any(ch in text for ch in "*?[") and not os.path.lexists(text) and bool(globmod.glob(text))
        if "://" in text or (text.isdigit() and not os.path.exists(text)) or os.path.isdir(text) or listed or glob:
            raise InputError(self._elsewhere(text))  # a webcam's index; a file named 7 is a file
        return text

    def _picture(self, image: Any, i: int) -> np.ndarray:
        """One of :meth:`predict`'s images as a checked BGR array: an array as it is, a path read, encoded bytes
        decoded; :class:`InputError` naming it otherwise."""
        if isinstance(image, np.ndarray):
            problem = image_array_problem(image)
            if problem is not None:
                raise InputError(f"<array {i}>: {problem}")
            return image
        if isinstance(image, (str, os.PathLike)):
            text = self._readable_path(os.fspath(image))
            try:
                return read_image(text, limits=self.config.limits)
            except ImageReadError:
                if os.path.splitext(text)[1].lower() in VIDEO_SUFFIXES:  # a .gif OpenCV reads is an image here
                    raise InputError(self._elsewhere(text)) from None
                raise
        if isinstance(image, (bytes, bytearray, memoryview)):
            limits = self.config.limits
            return decode_image(np.frombuffer(bytes(image), np.uint8), f"<bytes {i}>", max_pixels=limits.max_pixels)
        raise InputError(f"image {i}: predict takes BGR uint8 arrays, paths or encoded files' bytes, got "
                         f"{type(image).__name__}")

    def predict_iter(self, source: str | Path | SourceList | list[str], batch: int = 1, workers: int = 1,
                     mode: str = "thread", keep_images: bool = False, fast_decode: bool | None = None,
                     plan: Plan | None = None, tile: TileOptions | None = None, crops: bool = False,
                     style: AnnotateStyle | None = None, ahead: HeadStart | None = None) -> Iterator[Result]:
        """Results for every input of ``source`` (see :func:`toolkit.io.sources.list_sources`), in input order.

        ``mode`` is ``thread``, ``process`` or ``auto`` (see :func:`toolkit.engine.plan.make_plan`); decoding runs
        in reader threads, inference in ``workers`` threads or processes, with bounded queues. Inputs that
        cannot be read, or whose batch failed, come back as failed results with the reason; nothing is dropped.
        ``fast_decode`` (default: the detector's own setting, off unless asked for) decodes large JPEGs at reduced
        size when they are at least twice the model input (never when ``keep_images`` asks for the full image).
        Process-mode workers annotate (in ``style``) and encode the images they keep, and with ``crops`` cut and
        encode each box's crop; in thread mode results keep the image (``keep_images`` or ``crops``). So with
        ``keep_images`` a result holds ``image`` (the decoded BGR image) in thread mode and ``annotated`` (the encoded
        annotated image) in process mode; ``mode="auto"`` chooses by the number of inputs, so code that reads
        ``image`` passes ``mode="thread"``. ``ahead``: the
        first images, decoded while the model loaded (:class:`~toolkit.engine.ahead.HeadStart`; thread mode, used
        where an image is decoded whole).
        """
        self._open()
        _check_counts(0, batch=batch, workers=workers)  # 0: the plan chooses
        _check_kinds(keep_images=keep_images, crops=crops, fast_decode=fast_decode, style=style, plan=plan,
                     mode=mode)
        tile = _tile_options(tile)
        if not isinstance(source, (SourceList, str, Path, list)):
            raise InputError(f"predict_iter takes a source (a path, folder, glob, list file or URL) or a list of "
                             f"paths, got {type(source).__name__}; for arrays in memory use predict")
        listed: list[Any] = source if isinstance(source, list) else []
        odd = next(((i, s) for i, s in enumerate(listed) if not isinstance(s, (str, os.PathLike))), None)
        if odd is not None:  # an array was made a file name: "cannot read: File name too long"
            raise InputError(f"predict_iter takes a list of paths, and item {odd[0]} is a {type(odd[1]).__name__}; "
                             f"for arrays in memory use predict")
        sources = source if isinstance(source, SourceList) else list_sources(
            [os.fspath(s) for s in source] if isinstance(source, list) else source)
        # what listing found unusable (a folder named in a list, a broken link) comes back in its place
        yield from in_listing_order(sources, self._results(sources, batch, workers, mode, keep_images, fast_decode,
                                                           plan, tile, crops, style, ahead),
                                    lambda r: r.ref.video or r.ref.key, lambda ref, why: Result(ref, error=why))

    def _results(self, sources: SourceList, batch: int, workers: int, mode: str, keep_images: bool,
                 fast_decode: bool | None, plan: Plan | None, tile: TileOptions | None, crops: bool,
                 style: AnnotateStyle | None, ahead: HeadStart | None) -> Iterator[Result]:
        """:meth:`predict_iter`'s results for ``sources.items``, in their order."""
        routine = self.routine
        if plan is None:
            whole = tile is None and all(ref.frame is None for ref in sources.items)  # no video to expand, no tiles
            plan = make_plan(routine, len(sources.items), mode=mode, workers=workers, batch=batch, whole=whole)
        self.last_plan, self.last_deaths = plan, 0
        keep = keep_images or crops
        fast = (self.config.fast_decode if fast_decode is None else fast_decode) and not keep and tile is None
        wanted = plan.gpu or self.config.pipeline == "device"
        pipe = routine.device_pipeline(plan.batch) if plan.mode == "thread" and wanted and tile is None else None
        if pipe is not None or plan.mode != "thread" or tile is not None or fast:
            ahead = None  # decoded whole for the thread path alone: not held through a run that cannot use them
        if pipe is not None:
            from toolkit.engine.gpu import background

            self.last_plan = replace(plan, pipeline="device", workers=1)
            refs = sources.items
            with intra_op_threads(routine.runner, plan.threads):  # matters on the CPU device only
                results = background(lambda stop: pipe.results(expand(refs, self.config), plan.readers, keep, fast,
                                                                stop))
                yield from in_order(results)  # a remote image comes when downloaded: back in input order
            return
        with routine.device_settings():
            known = tile is None and all(ref.frame is None for ref in sources.items)  # no video, no tiles
            if plan.mode == "process":  # each process hears its share of the inputs
                each = -(-len(sources.items) // max(1, plan.workers)) if known else None
                from toolkit.engine.processes import ProcessPool, TaskSpec

                spec = TaskSpec(plan.batch, fast, tile, keep_images, crops, style or AnnotateStyle(), each)
                pool = ProcessPool(routine, ModelRoutine.load, sources.items, plan, spec)
                try:
                    yield from pool.results()
                finally:
                    self.last_deaths = pool.restarts
            else:
                local = routine if plan.gpu else routine.at_threads(plan.threads)  # the plan's CPU threads
                local.expect(len(sources.items) if known else None, plan.batch)
                if tile is not None:
                    yield from run_tiled(local, sources.items, plan, keep, tile)
                else:
                    yield from run_threads(local, sources.items, plan, keep, fast, ahead)

    def predict_tiled(self, image: np.ndarray | str | Path | bytes, tile: TileOptions | int,
                      path: str | None = None, pool: ThreadPoolExecutor | None = None,
                      in_flight: int = 4) -> Detections:
        """Detections for one (huge) image (as :meth:`predict` takes one) by sliced inference of ``tile`` (a
        :class:`TileOptions` or a tile size; see :func:`toolkit.engine.tiled.predict_tiled`)."""
        routine = self._open()
        opts = _tile_options(tile)
        if opts is None:
            raise InputError("predict_tiled takes a tile size in pixels or a TileOptions, got None")
        array = self._picture(image, 0)
        if path is None and isinstance(image, (str, os.PathLike)):
            path = os.fspath(image)
        return predict_tiled(routine, array, opts, path, pool, in_flight)

    def close(self) -> None:
        """Release the model (a second call does nothing); the detector cannot predict after it."""
        if not self.closed:
            self.closed = True
            self.routine.close()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
