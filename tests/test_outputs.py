"""Output formats: annotation styles, crops cut as YOLOv5's save_one_box cuts them, CSV rows, crop names, and the
Detections conversions (dict, pandas, supervision)."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest

from toolkit.detections import Detections
from toolkit.errors import MissingExtraError
from toolkit.io.outputs import AnnotateStyle, annotate, crop_box, csv_rows, encode_crops
from toolkit.jobs.records import CropNames

NAMES = {0: "person", 1: "car"}


def _det() -> Detections:
    return Detections(np.array([[10.4, 20.2, 60.7, 90.1], [100, 30, 180, 70], [5, 5, 15, 12]], np.float32),
                      np.array([0.91, 0.55, 0.3], np.float32), np.array([0, 1, 0]), NAMES, "a.jpg", (120, 200))


def test_repr_is_a_summary_not_every_class_name() -> None:
    coco = {i: f"class{i}" for i in range(80)}
    d = Detections(_det().xyxy, _det().confidence, _det().class_id, coco, "a.jpg", (120, 200))
    text = repr(d)
    assert text == ("Detections(3 boxes: 2 class0, 1 class1; confidence 0.30-0.91; image 120x200; path='a.jpg'; "
                    "80 class names)")
    assert "class79" not in text and len(text) < 120
    many = Detections(np.zeros((7, 4)), np.full(7, 0.5), np.arange(7), coco)
    assert repr(many) == ("Detections(7 boxes: 1 class0, 1 class1, 1 class2, 1 class3, 1 class4, and 2 more classes; "
                          "confidence 0.50-0.50; 80 class names)")
    assert repr(Detections.empty(coco)) == "Detections(0 boxes; 80 class names)" == str(Detections.empty(coco))


def test_annotation_styles() -> None:
    img = np.full((120, 200, 3), 60, np.uint8)
    d = _det()
    full = annotate(img, d)
    bare = annotate(img, d, AnnotateStyle(hide_labels=True))
    names_only = annotate(img, d, AnnotateStyle(hide_conf=True))
    thick = annotate(img, d, AnnotateStyle(line_width=6))
    white = [int((x == 255).all(axis=2).sum()) for x in (full, bare, names_only)]
    assert white[1] == 0  # no label text drawn
    assert 0 < white[2] < white[0]  # "person" is shorter than "person 0.91"
    assert (thick != img).any(axis=2).sum() > (full != img).any(axis=2).sum()
    assert np.array_equal(img, np.full((120, 200, 3), 60, np.uint8))  # the original is untouched


def test_annotating_in_place_draws_the_same_pixels() -> None:
    """``copy=False`` (a caller done with the picture) draws on the image itself, the same pixels as on a copy; an
    image it cannot write (read-only, as from Ray's object store, or a strided view) is copied."""
    d = _det()
    img = np.random.default_rng(3).integers(0, 255, (120, 200, 3), dtype=np.uint8)
    want = annotate(img, d)
    own = img.copy()
    got = annotate(own, d, copy=False)
    assert got is own and np.array_equal(got, want)
    frozen = img.copy()
    frozen.flags.writeable = False
    assert np.array_equal(annotate(frozen, d, copy=False), want) and np.array_equal(frozen, img)
    wide = np.zeros((120, 400, 3), np.uint8)
    wide[:, ::2] = img
    view = wide[:, ::2]
    assert np.array_equal(annotate(view, d, copy=False), want) and np.array_equal(view, img)


def _save_one_box_reference(box: np.ndarray, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """YOLOv5 v7.0 save_one_box's arithmetic, step by step: xyxy2xywh, wh * 1.02 + 10, xywh2xyxy, .long(), clip."""
    x1, y1, x2, y2 = (float(v) for v in box)
    b = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
    b[2], b[3] = b[2] * 1.02 + 10, b[3] * 1.02 + 10
    xyxy = [b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2]
    q = [int(np.trunc(v)) for v in xyxy]
    h, w = shape
    return max(0, min(q[0], w)), max(0, min(q[1], h)), max(0, min(q[2], w)), max(0, min(q[3], h))


def test_crops_are_cut_as_save_one_box_cuts_them() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (120, 200, 3), dtype=np.uint8)
    for box in [*_det().xyxy, np.array([0.0, 0.0, 199.0, 119.0]), np.array([190.5, 110.2, 199.9, 119.9])]:
        a, b, c, d = _save_one_box_reference(box, (120, 200))
        crop = crop_box(img, box)
        assert crop.shape == (d - b, c - a, 3)
        assert np.array_equal(crop, img[b:d, a:c])
    encoded = encode_crops(img, _det())
    assert len(encoded) == 3 and all(e is not None for e in encoded)
    back = cv2.imdecode(np.frombuffer(encoded[0], np.uint8), cv2.IMREAD_COLOR)  # type: ignore[arg-type]
    assert back.shape == crop_box(img, _det().xyxy[0]).shape


def test_crop_names_are_numbered_per_class_and_never_collide() -> None:
    """detect.py's names (increment_path: img.jpg, img2.jpg, ...) in its order, the least confident box first (boxes
    come the most confident first): its img.jpg was yolokit's last crop of the class."""
    names = CropNames()
    assert names.assign("img", ["person", "car", "person", "person"]) == [
        "person/img3.jpg", "car/img.jpg", "person/img2.jpg", "person/img.jpg"]
    # an input whose own key is another's numbered name gets the next free one
    assert names.assign("img2", ["person", "person"]) == ["person/img23.jpg", "person/img22.jpg"]
    resumed = CropNames(["person/img.jpg", "person/img2.jpg"])
    assert resumed.assign("img", ["person"]) == ["person/img3.jpg"]
    assert CropNames().assign("sub/dir/x", ["a/b"]) == ["a_b/sub/dir/x.jpg"]


def test_boxes_are_drawn_as_detect_py_draws_them_the_most_confident_on_top() -> None:
    """Boxes were drawn the most confident first, so a less confident label covered a more confident one where
    they overlap (a cup 0.52 over a bowl 0.64); detect.py draws reversed(det)."""
    img = np.zeros((200, 200, 3), np.uint8)
    det = Detections(np.array([[20, 60, 180, 180], [20, 60, 150, 150]], np.float32), np.array([0.9, 0.3], np.float32),
                     np.array([0, 1]), {0: "person", 1: "bicycle"})
    out = annotate(img, det, AnnotateStyle(line_width=3))
    top = annotate(img, det[:1], AnnotateStyle(line_width=3))  # the most confident box alone
    label = out[45:58, 22:60]  # inside both labels, drawn at the same corner
    assert np.array_equal(label, top[45:58, 22:60])


def test_csv_rows_are_one_per_box_in_source_pixels() -> None:
    rows = csv_rows(_det().rounded(), "a.jpg", None)
    assert rows[0] == ["a.jpg", "", 0, "person", 0.91, 10.0, 20.0, 61.0, 90.0]
    assert [r[3] for r in rows] == ["person", "car", "person"]
    assert csv_rows(_det(), "v.mp4", 7)[1][:2] == ["v.mp4", 7]


def test_to_dict() -> None:
    d = _det().to_dict()
    assert d["path"] == "a.jpg" and d["shape"] == [120, 200] and len(d["boxes"]) == 3
    assert d["boxes"][1] == {"xyxy": [100.0, 30.0, 180.0, 70.0], "confidence": pytest.approx(0.55),
                             "class_id": 1, "class_name": "car"}


def test_to_pandas() -> None:
    pytest.importorskip("pandas", reason="pandas is not installed (pip install 'yolokit[pandas]')")
    df = _det().to_pandas()
    assert list(df.columns) == ["x1", "y1", "x2", "y2", "confidence", "class_id", "class_name"]
    assert len(df) == 3 and df["class_name"].tolist() == ["person", "car", "person"]
    assert np.array_equal(df[["x1", "y1", "x2", "y2"]].to_numpy(), _det().xyxy)
    assert len(Detections.empty(NAMES).to_pandas()) == 0


def test_supervision_round_trip() -> None:
    pytest.importorskip("supervision", reason="supervision is not installed (pip install 'yolokit[supervision]')")
    d = _det()
    sv = d.to_supervision()
    assert sv.xyxy.dtype == np.float32 and np.array_equal(sv.xyxy, d.xyxy)
    assert list(sv.data["class_name"]) == ["person", "car", "person"]
    back = Detections.from_supervision(sv)
    for name in ("xyxy", "confidence", "class_id"):
        got, want = getattr(back, name), getattr(d, name)
        assert got.dtype == want.dtype and np.array_equal(got, want), name
    assert back.names == d.names and back.path == d.path and back.shape == d.shape
    assert len(Detections.from_supervision(Detections.empty(NAMES).to_supervision())) == 0


@pytest.mark.parametrize(("method", "module"), [("to_pandas", "pandas"), ("to_supervision", "supervision")])
def test_a_missing_extra_is_one_clear_error(method: str, module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import now fails, as where it is not installed
    with pytest.raises(MissingExtraError, match=rf"pip install 'yolokit\[{module}\]'") as e:
        getattr(_det(), method)()
    assert isinstance(e.value, ImportError) and e.value.exit_code == 4
