"""LitServe with its own batching on a yolokit :class:`~toolkit.Detector`: the third server the serving benchmark
compares (``python -m toolkit.jobs.bench.serving litserve WEIGHTS --port N``). Needs ``litserve``.

LitServe's API server takes a JSON body or a form; the image travels as base64 in JSON (``{"image": "..."}``), the
form LitServe's own examples use for images. Its inference worker (a process of its own) decodes each request with
OpenCV, gathers up to ``max_batch`` of them (waiting at most ``batch_timeout`` seconds), runs them as one
:meth:`Detector.predict <toolkit.Detector.predict>` call and answers each with its detections. The batch sizes it runs
are appended, one a line, to the file ``$YOLOKIT_BENCH_BATCHES`` when set (the benchmark's mean batch size).
"""

from __future__ import annotations

import base64
import os
from typing import Any

import litserve as ls
import numpy as np

BATCH_LOG = "YOLOKIT_BENCH_BATCHES"


class DetectorAPI(ls.LitAPI):  # type: ignore[misc]
    """The Detector behind LitServe (see the module's docstring)."""

    def __init__(self, weights: str, detector: dict[str, Any], max_batch: int, batch_timeout: float) -> None:
        super().__init__(max_batch_size=max_batch, batch_timeout=batch_timeout, api_path="/detect")
        self.weights, self.detector = weights, detector

    def setup(self, device: str) -> None:
        from toolkit import Detector

        self.det = Detector(self.weights, **self.detector)
        self.det.predict(np.zeros((64, 64, 3), np.uint8))
        path = os.environ.get(BATCH_LOG)
        self.log = open(path, "a", buffering=1) if path else None  # noqa: SIM115 - open for the worker's life

    def decode_request(self, request, **kwargs: Any) -> Any:  # type: ignore[no-untyped-def]
        # (no annotation on request: LitServe reads it to choose how to parse the body; none means JSON)
        import cv2

        image = cv2.imdecode(np.frombuffer(base64.b64decode(request["image"]), np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError("not an image")  # LitServe answers it with an error status
        return image

    def batch(self, inputs: list[Any]) -> list[Any]:
        return list(inputs)

    def predict(self, images: list[Any], **kwargs: Any) -> list[Any]:
        if self.log is not None:
            self.log.write(f"{len(images)}\n")
        return self.det.predict(images, batch=len(images))

    def unbatch(self, output: list[Any]) -> list[Any]:
        return output

    def encode_response(self, output: Any, **kwargs: Any) -> dict[str, Any]:
        return output.to_detect_json()


def run_litserve(weights: str, port: int, max_batch: int, batch_timeout: float, **detector: Any) -> None:
    """LitServe on 127.0.0.1:``port`` (``POST /detect``, ``GET /health``), one inference worker on the CPU (or the
    Detector's ``device``), batching as said."""
    api = DetectorAPI(weights, detector, max_batch, batch_timeout)
    accelerator = "cuda" if str(detector.get("device", "cpu")).startswith("cuda") else "cpu"
    server = ls.LitServer(api, accelerator=accelerator, devices=1, workers_per_device=1, timeout=120)
    server.run(host="127.0.0.1", port=port, log_level="warning", generate_client_file=False)
