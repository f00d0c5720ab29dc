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
