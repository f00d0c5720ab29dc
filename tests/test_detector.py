"""The Detector library API."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from toolkit import Detector
from toolkit.detections import Detections
from toolkit.errors import InputError


def test_predict_arrays_paths_and_batches_agree(coco128_images: Path, yolov5n_pt: Path) -> None:
    files = sorted(coco128_images.glob("*.jpg"))[:6]
    det = Detector(yolov5n_pt)
    by_path = det.predict([str(f) for f in files])
    by_array = det.predict([cv2.imread(str(f)) for f in files])
    batched = det.predict([str(f) for f in files], batch=4)
    assert len(by_path) == len(by_array) == len(batched) == 6
    for a, b, c in zip(by_path, by_array, batched, strict=True):
        assert isinstance(a, Detections)
        np.testing.assert_array_equal(a.class_id, b.class_id)
        np.testing.assert_allclose(a.xyxy, b.xyxy)
        np.testing.assert_array_equal(a.class_id, c.class_id)
        np.testing.assert_allclose(a.xyxy, c.xyxy, atol=1e-2)
        np.testing.assert_allclose(a.confidence, c.confidence, atol=1e-4)
    assert by_path[0].path == str(files[0]) and by_path[0].shape == cv2.imread(str(files[0])).shape[:2]
    assert by_array[0].path is None and by_array[0].shape == by_path[0].shape
    assert sum(len(d) for d in by_path) > 0


def test_predict_iter_keeps_order_and_reports_failures(tmp_path: Path) -> None:
    paths = []
    for i in range(5):
        p = tmp_path / f"{i}.jpg"
        cv2.imwrite(str(p), np.full((64, 96 + 32 * i, 3), 30 * i, np.uint8))
        paths.append(str(p))
    (tmp_path / "2.jpg").write_bytes(b"broken")
    det = Detector("yolov5n.yaml", imgsz=128)
    results = list(det.predict_iter(paths, batch=3))
    assert [r.ref.path for r in results] == paths
    assert [r.ok for r in results] == [True, True, False, True, True]
    assert "cannot decode" in (results[2].error or "")


def test_predict_iter_tells_the_runner_how_many_inferences_come(tmp_path: Path) -> None:
    """The hint a runner may weigh (BaseRunner.expect; OpenVINO's shape models): the batches of a list of images,
    three times with test-time augmentation (its three views); None where a video makes the count unknown until it
    is decoded."""
    paths = []
    for i in range(7):
        p = tmp_path / f"{i}.jpg"
        cv2.imwrite(str(p), np.full((64, 96, 3), 20 * i, np.uint8))
        paths.append(str(p))
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (96, 64))
    for i in range(3):
        writer.write(np.full((64, 96, 3), 40 * i, np.uint8))
    writer.release()
    det = Detector("yolov5n.yaml", imgsz=128)
    told: list[int | None] = []
    det.routine.runner.expect = told.append
    assert all(r.ok for r in det.predict_iter(paths, batch=3))
    assert [r.ok for r in det.predict_iter(str(video))] == [True] * 3
    assert told == [3, None]
    tta = Detector("yolov5n.yaml", imgsz=128, augment=True)  # three views: each batch runs three times
    tta.routine.runner.expect = told.append
    assert all(r.ok for r in tta.predict_iter(paths, batch=3))
    assert told == [3, None, 9]


def test_classes_filter_and_max_det(coco128_images: Path, yolov5n_pt: Path) -> None:
    img = str(coco128_images / "000000000009.jpg")  # bowls, broccoli, oranges
    all_dets = Detector(yolov5n_pt, conf=0.01).predict(img)[0]
    found = sorted(set(all_dets.class_id.tolist()))
    assert len(found) > 1
    only = Detector(yolov5n_pt, conf=0.01, classes=[found[0]]).predict(img)[0]
    assert len(only) and set(only.class_id.tolist()) == {found[0]}
    assert len(Detector(yolov5n_pt, conf=0.01, max_det=2).predict(img)[0]) == 2
    with pytest.raises(InputError, match=r"--classes 80,999: this model's classes are 0-79 \(person ... toothbrush"):
        Detector(yolov5n_pt, classes=[0, 999, 80])  # a class the model has not: no box ever, and no word (before)
