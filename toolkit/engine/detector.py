"""``Detector``: one interface over every backend."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.detections import Detections
from toolkit.engine.core import BatchRoutine, DetectorConfig, Item, Result, StageTimes, resolve_nms, resolve_size
from toolkit.engine.plan import Plan, make_plan
from toolkit.engine.processes import ProcessPool, TaskSpec
from toolkit.engine.threads import run_threads, run_tiled
from toolkit.engine.tiled import predict_tiled
from toolkit.errors import YolokitError
from toolkit.io.decode import read_image
from toolkit.io.files import DEFAULT_MAX_FILE_SIZE, DEFAULT_MAX_PIXELS
from toolkit.io.sources import InputRef, SourceList, list_sources
from toolkit.meta import ModelMeta
from toolkit.ops import letterbox_shape
from toolkit.tiling import TileOptions


class Detector(BatchRoutine):
    """Detect objects with a YOLOv5 model from any backend.

    ``weights`` is a ``.pt`` checkpoint, an exported artifact (``.onnx``, OpenVINO ``.xml`` or folder,
    TensorRT ``.engine``, or any of them under another name), a manifest name (``yolov5n``) or a built-in config
    (``yolov5s.yaml``, random weights). The backend is chosen from the file unless ``backend`` is given.

    Images are decoded whole and letterboxed as YOLOv5's ``detect.py`` does, so detections match the official
    code. ``fast_decode=True`` opts in to decoding JPEGs at least twice the model input at reduced size (libjpeg's
    DCT scaling): faster on large photos, but the model sees different pixels and detections shift (the README
    gives the measured cost in mAP and the speed gained). ``max_file_size`` and ``max_pixels`` bound what an input
    may be before it is read or decoded. The whole configuration is :attr:`config`, a :class:`DetectorConfig`.
    """

    def __init__(self, weights: str | Path = "yolov5n", backend: str | None = None, device: str = "cpu",
                 half: bool | None = None, imgsz: int | tuple[int, int] = 640, conf: float = 0.25,
                 iou: float = 0.45, max_det: int = 1000, classes: Sequence[int] | None = None,
                 agnostic: bool = False, multi_label: bool = False, threads: int | None = None,
                 options: dict[str, Any] | None = None, fast_decode: bool = False,
                 max_file_size: int = DEFAULT_MAX_FILE_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self._load(DetectorConfig(str(weights), backend, device, half, imgsz, conf, iou, max_det,
                                  tuple(classes) if classes is not None else None, agnostic, multi_label, threads,
                                  dict(options or {}), bool(fast_decode), int(max_file_size), int(max_pixels)))

    @classmethod
    def from_config(cls, config: DetectorConfig) -> Detector:
        """The detector ``config`` describes (worker processes and Ray actors rebuild theirs this way)."""
        det = cls.__new__(cls)
        det._load(config)
        return det

    def _load(self, config: DetectorConfig) -> None:
        import backends
        from backends.base import LoadOptions
        from toolkit.model.configs import resolve_model

        path = resolve_model(config.weights)
        self.weights = path
        self.backend_name = config.backend or backends.backend_for(path)
        self.config = replace(config, weights=str(path), backend=self.backend_name)
        module = backends.require(self.backend_name)
        self.runner = module.load(path, LoadOptions(device=config.device, half=config.half, threads=config.threads,
                                                    imgsz=config.size, options=dict(config.options)))
        self.meta: ModelMeta = self.runner.meta
        try:
            self.imgsz, self.auto = resolve_size(config, self.meta, path)
            self.nms = resolve_nms(config, self.meta, path)
        except YolokitError:
            self.runner.close()
            raise
        self.names = dict(self.meta.names)
        self.times = StageTimes()
        self.last_plan: Plan | None = None

    @property
    def fast_decode(self) -> bool:
        return self.config.fast_decode

    def letterbox_differs(self, shape: tuple[int, int]) -> bool:
        """Whether this detector letterboxes an image of ``shape`` (h, w) to another input shape than the ``.pt``
        checkpoint would (a fixed-shape artifact pads a 16:9 photo to a square where the ``.pt`` uses a rectangle),
        so that its detections can differ from the checkpoint's."""
        if self.auto:
            return False
        rect = letterbox_shape(shape, max(self.imgsz), self.meta.stride, auto=True)[1]
        return tuple(rect) != tuple(self.imgsz)

    # -------------------------------------------------------------------------------------------- API
    def predict(self, images: np.ndarray | str | Path | Iterable[np.ndarray | str | Path],
                batch: int = 1, tile: TileOptions | int | None = None) -> list[Detections]:
        """Detections for one image or a sequence of images (BGR arrays or paths), in order.

        ``tile`` (a :class:`TileOptions` or a tile size) switches to sliced inference for huge images.
        An unreadable path raises :class:`~toolkit.io.files.ImageReadError`; use :meth:`predict_iter` to carry on
        past it.
        """
        if isinstance(images, (np.ndarray, str, Path)):
            images = [images]
        arrays = [im if isinstance(im, np.ndarray) else read_image(str(im), limits=self.config.limits)
                  for im in images]
        paths = [None if isinstance(im, np.ndarray) else str(im) for im in images]
        if tile is not None:
            opts = TileOptions(tile=tile) if isinstance(tile, int) else tile
            return [self.predict_tiled(a, opts, p) for a, p in zip(arrays, paths, strict=True)]
        items: list[Item] = [(i, InputRef(p or f"<array {i}>", Path(p).stem if p else f"image{i}"), a)
                             for i, (a, p) in enumerate(zip(arrays, paths, strict=True))]
        results = self.process(items, max(1, batch))
        out: list[Detections] = []
        for i, p in enumerate(paths):
            res = results[i]
            if res.detections is None:
                raise YolokitError(f"{res.ref.name}: {res.error}")
            res.detections.path = p  # an in-memory image has no path
            out.append(res.detections)
        return out

    def predict_iter(self, source: str | Path | SourceList | list[str], batch: int = 1, workers: int = 1,
                     mode: str = "thread", keep_images: bool = False, fast_decode: bool | None = None,
                     plan: Plan | None = None, tile: TileOptions | None = None) -> Iterator[Result]:
        """Results for every input of ``source`` (see :func:`toolkit.io.sources.list_sources`), in input order.

        ``mode`` is ``thread``, ``process`` or ``auto`` (see :func:`toolkit.engine.plan.make_plan`); decoding runs
        in reader threads, inference in ``workers`` threads or processes, with bounded queues. Inputs that
        cannot be read, or whose batch failed, come back as failed results with the reason; nothing is dropped.
        ``fast_decode`` (default: the detector's own setting, off unless asked for) decodes large JPEGs at reduced
        size when they are at least twice the model input (never when ``keep_images`` asks for the full image).
        """
        sources = source if isinstance(source, SourceList) else list_sources(
            [str(s) for s in source] if isinstance(source, list) else source)
        for ref, reason in sources.failed:
            yield Result(ref, error=reason)
        if plan is None:
            plan = make_plan(self, len(sources.items), mode=mode, workers=workers, batch=batch)
        self.last_plan = plan
        fast = (self.config.fast_decode if fast_decode is None else fast_decode) and not keep_images and tile is None
        if plan.mode == "process":
            spec = TaskSpec(plan.batch, fast, tile, keep_images)
            yield from ProcessPool(self, type(self).from_config, sources.items, plan, spec).results()
        elif tile is not None:
            yield from run_tiled(self, sources.items, plan, keep_images, tile)
        else:
            yield from run_threads(self, sources.items, plan, keep_images, fast)

    def predict_tiled(self, image: np.ndarray, tile: TileOptions, path: str | None = None,
                      pool: ThreadPoolExecutor | None = None, in_flight: int = 4) -> Detections:
        """Detections for one (huge) image by sliced inference (see :func:`toolkit.engine.tiled.predict_tiled`)."""
        return predict_tiled(self, image, tile, path, pool, in_flight)

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
