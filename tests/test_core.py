"""The batch routine's small types: DetectorConfig, StageTimes under threads, and no process-wide side effects when a
detector is built."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest
import torch

from toolkit import Detector
from toolkit.engine.core import DetectorConfig, StageTimes, intra_op_threads
from toolkit.errors import InputError


def test_stage_times_are_safe_from_many_threads() -> None:
    times = StageTimes()

    def work() -> None:
        for _ in range(2000):
            times.add("infer", 0.001, images=1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert times.images == 16000 and times.infer == pytest.approx(16.0)
    assert times.ms_per_image()["infer"] == pytest.approx(1.0)


def test_detector_config_checks_and_rebuilds_the_same_detector() -> None:
    with pytest.raises(InputError):
        DetectorConfig(conf=1.5)
    with pytest.raises(InputError):
        DetectorConfig(max_pixels=0)
    det = Detector("yolov5n.yaml", imgsz=128, conf=0.001, classes=[0, 2])
    again = Detector.from_config(det.config)
    assert again.config == det.config and again.config.classes == (0, 2)
    x = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    a, b = det.predict(x)[0], again.predict(x)[0]
    np.testing.assert_array_equal(a.xyxy, b.xyxy)
    assert set(a.class_id.tolist()) <= {0, 2}


def test_building_a_detector_leaves_torch_threads_alone_and_a_run_restores_them() -> None:
    before = torch.get_num_threads()
    det = Detector("yolov5n.yaml", imgsz=64, threads=1)
    assert torch.get_num_threads() == before  # construction has no process-wide side effect
    with intra_op_threads(det.routine.runner, 1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    other = replace(det.config, threads=None)
    assert other.threads is None and det.config.threads == 1


def test_classes_on_an_export_with_agnostic_nms_inside_is_refused() -> None:
    """An export with agnostic NMS inside filtered --classes after its NMS, where boxes of other classes had
    suppressed boxes of these (detect.py filters before NMS): 215 boxes for detect.py's 218, without a word."""
    from pathlib import Path

    from toolkit.engine.core import refuse_unreachable
    from toolkit.meta import BakedNMS
    from toolkit.ops import NMSOptions

    agnostic = BakedNMS(conf=0.01, iou=0.45, max_det=1000, agnostic=True)
    with pytest.raises(InputError, match="--classes cannot be applied to an export with --agnostic-nms inside"):
        refuse_unreachable(NMSOptions(conf=0.25, agnostic=True, classes=(0, 2)), agnostic, Path("m.onnx"))
    refuse_unreachable(NMSOptions(conf=0.25, agnostic=True), agnostic, Path("m.onnx"))  # no classes: fine
    refuse_unreachable(NMSOptions(conf=0.25, classes=(0, 2)), BakedNMS(conf=0.01), Path("m.onnx"))  # per class
