"""``Detector``: one interface over every backend."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from toolkit.detections import Detections
from toolkit.errors import InputError, YolokitError
from toolkit.meta import ModelMeta
from toolkit.ops import (
    LetterboxInfo,
    NMSOptions,
    letterbox,
    letterbox_shape,
    postprocess,
    scale_boxes,
    to_chw_rgb,
)
from toolkit.sources import (
    DEFAULT_MAX_FILE_SIZE,
    DEFAULT_MAX_PIXELS,
    ImageReadError,
    InputRef,
    ReadLimits,
    SourceList,
    decode_image,
    jpeg_size,
    list_sources,
    read_bytes,
    read_image,
)
from toolkit.tiling import TileOptions

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

    from toolkit.pipeline import Plan


@dataclass
class StageTimes:
    """Seconds spent per stage, summed over images (for ms/image reports)."""

    read: float = 0.0
    pre: float = 0.0
    infer: float = 0.0
    post: float = 0.0
    images: int = 0

    def ms_per_image(self) -> dict[str, float]:
        n = max(self.images, 1)
        return {k: 1000 * getattr(self, k) / n for k in ("read", "pre", "infer", "post")}


@dataclass
class Result:
    """One input's outcome: detections, or the reason it failed."""

    ref: InputRef
    detections: Detections | None = None
    error: str | None = None
    image: np.ndarray | None = field(default=None, repr=False)  # the BGR image, when asked to keep it
    annotated: bytes | None = field(default=None, repr=False)  # or the annotated image already encoded (workers)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class _Prepared:
    index: int
    ref: InputRef
    chw: np.ndarray
    info: LetterboxInfo
    image: np.ndarray | None
    orig_shape: tuple[int, int]


class Detector:
    """Detect objects with a YOLOv5 model from any backend.

    ``weights`` is a ``.pt`` checkpoint, an exported artifact (``.onnx``, OpenVINO ``.xml`` or folder,
    TensorRT ``.engine``), a manifest name (``yolov5n``) or a built-in config (``yolov5s.yaml``, random
    weights). The backend is chosen from the file unless ``backend`` is given.

    Images are decoded whole and letterboxed as YOLOv5's ``detect.py`` does, so detections match the official
    code. ``fast_decode=True`` opts in to decoding JPEGs at least twice the model input at reduced size (libjpeg's
    DCT scaling): faster on large photos, but the model sees different pixels and detections shift (the README
    gives the measured cost in mAP and the speed gained).
    """

    def __init__(self, weights: str | Path, backend: str | None = None, device: str = "cpu",
                 half: bool | None = None, imgsz: int | tuple[int, int] = 640, conf: float = 0.25,
                 iou: float = 0.45, max_det: int = 1000, classes: Sequence[int] | None = None,
                 agnostic: bool = False, multi_label: bool = False, threads: int | None = None,
                 options: dict[str, Any] | None = None, fast_decode: bool = False,
                 max_file_size: int = DEFAULT_MAX_FILE_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        import backends
        from backends.base import LoadOptions

        if not 0 <= conf <= 1 or not 0 <= iou <= 1:
            raise InputError(f"conf and iou must be in [0, 1], got conf={conf} iou={iou}")
        if max_det < 1:
            raise InputError(f"max_det must be at least 1, got {max_det}")
        self.limits = ReadLimits(int(max_file_size), int(max_pixels))
        from toolkit.configs import resolve_model

        path = resolve_model(weights)
        self.weights = path
        self.backend_name = backend or backends.backend_for(path)
        module = backends.require(self.backend_name)
        size: tuple[int, int] = (imgsz, imgsz) if isinstance(imgsz, int) else (int(imgsz[0]), int(imgsz[1]))
        self.runner = module.load(path, LoadOptions(device=device, half=half, threads=threads,
                                                    imgsz=size, options=dict(options or {})))
        self.meta: ModelMeta = self.runner.meta
        stride = self.meta.stride
        if self.meta.imgsz is not None:
            self.imgsz: tuple[int, int] = tuple(self.meta.imgsz)  # type: ignore[assignment]
            self.auto = False
        else:
            self.imgsz = (max(stride, -(-size[0] // stride) * stride), max(stride, -(-size[1] // stride) * stride))
            self.auto = True
            limit = self.meta.max_imgsz
            if limit is not None and (self.imgsz[0] > limit[0] or self.imgsz[1] > limit[1]):
                self.close()
                raise InputError(f"{path}: this {self.meta.format} model takes inputs up to {limit[0]}x{limit[1]}, "
                                 f"but --imgsz asks for {self.imgsz[0]}x{self.imgsz[1]}; use --imgsz {max(limit)} "
                                 f"or less, or re-export with --imgsz {max(self.imgsz)}")
        self.nms = NMSOptions(conf=conf, iou=iou, max_det=max_det,
                              classes=tuple(int(c) for c in classes) if classes is not None else None,
                              agnostic=agnostic, multi_label=multi_label)
        self.names = dict(self.meta.names)
        self.fast_decode = bool(fast_decode)
        self.times = StageTimes()
        self.last_plan: Plan | None = None
        # how to build this detector again in a worker process
        self.init_kwargs: dict[str, Any] = dict(
            weights=str(path), backend=self.backend_name, device=device, half=half, imgsz=imgsz, conf=conf,
            iou=iou, max_det=max_det, classes=list(classes) if classes is not None else None, agnostic=agnostic,
            multi_label=multi_label, threads=threads, options=dict(options or {}), fast_decode=bool(fast_decode),
            max_file_size=self.limits.max_file_size, max_pixels=self.limits.max_pixels)

    def letterbox_differs(self, shape: tuple[int, int]) -> bool:
        """Whether this detector letterboxes an image of ``shape`` (h, w) to another input shape than the ``.pt``
        checkpoint would (a fixed-shape artifact pads a 16:9 photo to a square where the ``.pt`` uses a rectangle),
        so that its detections can differ from the checkpoint's."""
        if self.auto:
            return False
        rect = letterbox_shape(shape, max(self.imgsz), self.meta.stride, auto=True)[1]
        return tuple(rect) != tuple(self.imgsz)

    # -------------------------------------------------------------------------------------------- steps
    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, LetterboxInfo]:
        """BGR HWC uint8 -> (letterboxed CHW RGB uint8, letterbox info)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"images must be BGR uint8 (H, W, 3) arrays, got {image.dtype} {image.shape}")
        lb, info = letterbox(image, self.imgsz, self.meta.stride, auto=self.auto)
        return to_chw_rgb(lb), info

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on a uint8 (B, 3, H, W) batch, padding a partial batch for a static artifact."""
        n = len(batch)
        static = self.meta.batch
        if static is not None and n < static:
            pad = np.zeros((static - n, *batch.shape[1:]), dtype=batch.dtype)
            return self.runner.infer(np.concatenate([batch, pad]))[:n]
        if static is not None and n > static:
            return np.concatenate([self.infer(batch[i:i + static]) for i in range(0, n, static)])
        return self.runner.infer(batch)

    def postprocess(self, pred: np.ndarray, info: LetterboxInfo, path: str | None = None) -> Detections:
        xyxy, conf, cls = postprocess(pred, self.nms)
        return Detections(scale_boxes(xyxy, info), conf, cls, self.names, path, info.src_shape)

    # -------------------------------------------------------------------------------------------- API
    def predict(self, images: np.ndarray | str | Path | Iterable[np.ndarray | str | Path],
                batch: int = 1, tile: TileOptions | int | None = None) -> list[Detections]:
        """Detections for one image or a sequence of images (BGR arrays or paths), in order.

        ``tile`` (a :class:`TileOptions` or a tile size) switches to sliced inference for huge images.
        An unreadable path raises :class:`ImageReadError`; use :meth:`predict_iter` to carry on past it.
        """
        if isinstance(images, (np.ndarray, str, Path)):
            images = [images]
        items = list(images)
        if tile is not None:
            opts = TileOptions(tile=tile) if isinstance(tile, int) else tile
            return [self.predict_tiled(im if isinstance(im, np.ndarray) else read_image(str(im), limits=self.limits),
                                       opts,
                                       None if isinstance(im, np.ndarray) else str(im)) for im in items]
        prepared: list[_Prepared] = []
        for i, item in enumerate(items):
            if isinstance(item, np.ndarray):
                ref, img = InputRef(f"<array {i}>", f"image{i}"), item
            else:
                ref, img = InputRef(str(item), Path(item).stem), read_image(str(item), limits=self.limits)
            p = self.prepare(i, ref, img)
            if isinstance(p, Result):
                raise YolokitError(f"{ref.name}: {p.error}")
            prepared.append(p)
        results: dict[int, Result] = {}
        for start in range(0, len(prepared), max(1, batch)):
            results.update(self.run_prepared(prepared[start:start + max(1, batch)]))
        out: list[Detections] = []
        for i, item in enumerate(items):
            res = results[i]
            if res.error is not None:
                raise YolokitError(f"{res.ref.name}: {res.error}")
            assert res.detections is not None
            if isinstance(item, np.ndarray):
                res.detections.path = None  # an in-memory image has no path
            out.append(res.detections)
        return out

    def predict_iter(self, source: str | Path | SourceList | list[str], batch: int = 1, workers: int = 1,
                     mode: str = "thread", keep_images: bool = False, fast_decode: bool | None = None,
                     plan: Plan | None = None, tile: TileOptions | None = None) -> Iterator[Result]:
        """Results for every input of ``source`` (see :func:`toolkit.sources.list_sources`), in input order.

        ``mode`` is ``thread``, ``process`` or ``auto`` (see :func:`toolkit.pipeline.make_plan`); decoding runs
        in reader threads, inference in ``workers`` threads or processes, with bounded queues. Inputs that
        cannot be read, or whose batch failed, come back as failed results with the reason; nothing is dropped.
        ``fast_decode`` (default: the detector's own setting, off unless asked for) decodes large JPEGs at reduced
        size when they are at least twice the model input (never when ``keep_images`` asks for the full image).
        """
        from toolkit.pipeline import make_plan, run_pipeline

        sources = source if isinstance(source, SourceList) else list_sources(
            [str(s) for s in source] if isinstance(source, list) else source)
        for ref, reason in sources.failed:
            yield Result(ref, error=reason)
        if plan is None:
            plan = make_plan(self, len(sources.items), mode=mode, workers=workers, batch=batch)
        self.last_plan = plan
        fast = self.fast_decode if fast_decode is None else fast_decode
        yield from run_pipeline(self, sources.items, plan, keep_images=keep_images,
                                fast_decode=fast and not keep_images and tile is None, tile=tile)

    # ------------------------------------------------------------------------------- pipeline steps
    def reduce_factor(self, shape: tuple[int, int]) -> int:
        """The largest JPEG reduced-decode factor (2, 4, 8) that keeps the long side >= the model input."""
        target = max(self.imgsz)
        f = 1
        while f < 8 and max(shape) / (f * 2) >= target:
            f *= 2
        return f

    def load_input(self, ref: InputRef, fast_decode: bool | None = None) -> tuple[np.ndarray, tuple[int, int]] | str:
        """Read one image file: (BGR image, original (h, w)), or the reason it cannot be read. With
        ``fast_decode`` (default: the detector's setting), a JPEG at least twice the model input is decoded at
        reduced size; the shape returned is still the original's (as displayed: OpenCV applies the EXIF rotation)."""
        t0 = time.perf_counter()
        if fast_decode is None:
            fast_decode = self.fast_decode
        try:
            data = read_bytes(ref.path, self.limits.max_file_size)
            size = jpeg_size(data) if fast_decode else None
            factor = self.reduce_factor(size) if size else 1
            img = decode_image(data, ref.path, factor, self.limits.max_pixels)
        except ImageReadError as e:
            return e.reason
        finally:
            self.times.read += time.perf_counter() - t0
        if factor == 1 or not size:
            return img, (img.shape[0], img.shape[1])
        h, w = size  # as stored in the JPEG
        rotated = (img.shape[0], img.shape[1]) != (-(-h // factor), -(-w // factor))
        return img, ((w, h) if rotated else (h, w))

    def prepare(self, index: int, ref: InputRef, image: np.ndarray, orig_shape: tuple[int, int] | None = None,
                keep_image: bool = False) -> _Prepared | Result:
        """Letterbox one decoded image, or a failed result."""
        t0 = time.perf_counter()
        try:
            chw, info = self.preprocess(image)
        except Exception as e:  # one bad image fails alone (e.g. a shape OpenCV cannot resize)
            msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            return Result(ref, error=f"cannot prepare the image: {msg}")
        finally:
            self.times.pre += time.perf_counter() - t0
        return _Prepared(index, ref, chw, info, image if keep_image else None,
                         orig_shape or (image.shape[0], image.shape[1]))

    def run_batch(self, group: list[_Prepared]) -> list[tuple[int, Result]]:
        """Infer one batch of same-shape prepared images and post-process it; failures become results."""
        t0 = time.perf_counter()
        try:
            preds = self.infer(np.stack([p.chw for p in group]))
        except Exception as e:  # a runtime error fails this batch's images, not the run
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            return [(p.index, Result(p.ref, error=f"inference failed: {msg}")) for p in group]
        t1 = time.perf_counter()
        out = []
        for p, pred in zip(group, preds, strict=True):
            det = self.postprocess(pred, p.info, p.ref.path)
            if p.orig_shape != p.info.src_shape:  # decoded at reduced size: back to original pixels
                (h0, w0), (h1, w1) = p.orig_shape, p.info.src_shape
                det.xyxy *= np.array([w0 / w1, h0 / h1, w0 / w1, h0 / h1], np.float32)
                det.xyxy[:, [0, 2]] = det.xyxy[:, [0, 2]].clip(0, w0)
                det.xyxy[:, [1, 3]] = det.xyxy[:, [1, 3]].clip(0, h0)
                det.shape = p.orig_shape
            out.append((p.index, Result(p.ref, det, image=p.image)))
        t2 = time.perf_counter()
        self.times.infer += t1 - t0
        self.times.post += t2 - t1
        self.times.images += len(group)
        return out

    def predict_tiled(self, image: np.ndarray, tile: TileOptions, path: str | None = None,
                      pool: ThreadPoolExecutor | None = None, in_flight: int = 4) -> Detections:
        """Detections for one (huge) image by sliced inference: overlapping native-resolution tiles, batched
        through the backend (in ``pool`` threads when given, at most ``in_flight`` tile batches at once), boxes
        shifted back and merged (:func:`toolkit.tiling.merge_tiles`); with ``tile.full_frame`` also the whole
        image letterboxed."""
        from toolkit.tiling import cut_mask, merge_tiles, pyramid_grid

        h, w = image.shape[:2]
        grid = pyramid_grid(h, w, tile)
        stride = self.meta.stride
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

        def run(chunk: list[tuple[int, tuple[int, int, int, int]]]) -> None:
            # tiles are letterboxed only when their batch runs: memory stays at one batch of tiles
            t0 = time.perf_counter()
            groups: dict[tuple[int, ...], list[tuple[int, tuple[int, int, int, int], np.ndarray, LetterboxInfo]]]
            groups = {}
            for k, box in chunk:
                x0, y0, x1, y1 = box
                lb, info = letterbox(image[y0:y1, x0:x1], self.imgsz, stride, auto=self.auto, scaleup=False)
                groups.setdefault(lb.shape, []).append((k, box, to_chw_rgb(lb), info))
            self.times.pre += time.perf_counter() - t0
            for group in groups.values():
                t1 = time.perf_counter()
                preds = self.infer(np.stack([g[2] for g in group]))
                t2 = time.perf_counter()
                for (k, box, _, info), pred in zip(group, preds, strict=True):
                    xyxy, conf, cls = postprocess(pred, self.nms)
                    xyxy = scale_boxes(xyxy, info) + np.array([box[0], box[1], box[0], box[1]], np.float32)
                    parts.append((xyxy, conf, cls, cut_mask(xyxy, box, (h, w), tile.border), np.full(len(xyxy), k)))
                self.times.infer += t2 - t1
                self.times.post += time.perf_counter() - t2

        indexed = list(enumerate(grid))
        chunks = [indexed[i:i + tile.batch] for i in range(0, len(indexed), tile.batch)]
        if pool is not None:
            from toolkit.pipeline import ordered_map

            for _ in ordered_map(pool, run, chunks, window=in_flight):
                pass
        else:
            for c in chunks:
                run(c)
        if tile.full_frame and len(grid) > 1:
            chw, info = self.preprocess(image)
            d = self.postprocess(self.infer(chw[None])[0], info)
            parts.append((d.xyxy, d.confidence, d.class_id, np.zeros(len(d), bool), np.full(len(d), -1)))
        self.times.images += 1
        if not parts:
            return Detections.empty(self.names, path, (h, w))
        cat = [np.concatenate([p[k] for p in parts]) for k in range(5)]
        xyxy, conf, cls = merge_tiles(cat[0], cat[1], cat[2], cat[3], cat[4], self.nms.iou, tile.merge_ios,
                                      self.nms.max_det)
        return Detections(xyxy, conf, cls, self.names, path, (h, w))

    def run_prepared(self, pending: list[_Prepared], batch: int = 0) -> dict[int, Result]:
        """Run prepared images grouped by letterboxed shape, at most ``batch`` per inference call (0: a whole
        group per call); results by input index."""
        groups: dict[tuple[int, ...], list[_Prepared]] = {}
        for p in pending:
            groups.setdefault(p.chw.shape, []).append(p)
        step = batch if batch > 0 else max(1, len(pending))
        return {i: r for group in groups.values() for start in range(0, len(group), step)
                for i, r in self.run_batch(group[start:start + step])}

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
