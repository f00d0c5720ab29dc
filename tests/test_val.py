"""``yolokit val`` reproduces YOLOv5 v7.0's ``val.py``: mAP50 and mAP50-95 within 0.001 of the shared reference
(``val_metrics.json``, ``val.txt``) for the .pt, the default ONNX and OpenVINO exports and ``--augment``; the pure
steps follow val.py's facts; ``--protocol coco``, ``--save-json``, ``--verbose``, failures and fixed-shape models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

import backends
from toolkit.cli import main
from toolkit.errors import InputError
from toolkit.jobs.val import ValOptions, format_metrics, validate
from toolkit.jobs.valdata import load_resized, native_labels, rect_batches, resized_shape, to_native
from toolkit.metrics import IOU_LEVELS, ap_per_class, compute_ap, match_levels
from toolkit.ops import letterbox

TOLERANCE = 0.001


def _reference(reference: Path, key: str = "coco128") -> dict[str, float]:
    return json.loads((reference / "val_metrics.json").read_text())[key]


def _assert_matches(m: dict[str, Any], ref: dict[str, float]) -> None:
    print(f"mAP50 {m['map50']:.6f} (val.py {ref['mAP50']:.6f}), mAP50-95 {m['map50_95']:.6f} "
          f"(val.py {ref['mAP50_95']:.6f}), P {m['precision']:.6f} ({ref['P']:.6f}), R {m['recall']:.6f} "
          f"({ref['R']:.6f})")
    assert m["protocol"] == "yolov5" and m["images"] == 128 and m["instances"] == 929 and not m["failed"]
    assert abs(m["map50"] - ref["mAP50"]) <= TOLERANCE, m
    assert abs(m["map50_95"] - ref["mAP50_95"]) <= TOLERANCE, m
    assert abs(m["precision"] - ref["P"]) <= TOLERANCE and abs(m["recall"] - ref["R"]) <= TOLERANCE, m


# -- against the shared reference ------------------------------------------------------------------------------


def test_pt_matches_val_py_and_prints_its_line(coco128: Path, yolov5n_pt: Path, reference: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pred" / "yolov5n_predictions.json"
    assert main(["val", "--weights", str(yolov5n_pt), "--data", str(coco128), "--json", "--verbose",
                 "--save-json", str(out)]) == 0
    m = json.loads(capsys.readouterr().out)
    _assert_matches(m, _reference(reference))
    assert m["rect"] is True and "rectangular batches of 32" in m["letterbox"]
    # val.py's printed line, character for character
    text = format_metrics(m)
    all_line = (reference / "val.txt").read_text().splitlines()[0]
    assert all_line in text.splitlines(), text
    # --verbose: one line per class with labels, as val.py prints them
    assert len(m["classes"]) == len({c["class"] for c in m["classes"]}) > 50
    assert sum(c["instances"] for c in m["classes"]) == 929
    assert any(line.strip().startswith("person ") for line in text.splitlines())
    # --save-json: COCO results that the official COCO annotations of these images accept
    rows = json.loads(out.read_text())
    coco = json.loads((coco128 / "annotations" / "instances_train2017.json").read_text())
    assert rows and {r["image_id"] for r in rows} <= {im["id"] for im in coco["images"]}
    assert {r["category_id"] for r in rows} <= {c["id"] for c in coco["categories"]}
    assert all(len(r["bbox"]) == 4 and r["bbox"][2] >= 0 and 0.001 <= r["score"] <= 1 for r in rows)


@pytest.mark.parametrize("to", ["onnx", "openvino"])
def test_default_exports_match_val_py(to: str, exported: dict[str, Path], coco128: Path, reference: Path) -> None:
    if to not in exported:
        pytest.skip(f"{to} not installed")
    m = validate(ValOptions(weights=str(exported[to]), data=str(coco128)))
    assert m["backend"] == to and m["rect"] is True
    _assert_matches(m, _reference(reference))


@pytest.mark.timeout(900)  # three views of 128 images: 48 s on a quiet 2-core VM, 240 s while it was shared
def test_augment_matches_val_py_augment(coco128: Path, yolov5n_pt: Path, reference: Path) -> None:
    m = validate(ValOptions(weights=str(yolov5n_pt), data=str(coco128), augment=True))
    assert m["augment"] is True
    _assert_matches(m, _reference(reference, "coco128_augment"))


def test_coco_protocol_is_pycocotools_on_detect_inputs(exported: dict[str, Path], coco128: Path,
                                                       reference: Path) -> None:
    if "onnx" not in exported:
        pytest.skip("onnx not installed")
    m = validate(ValOptions(weights=str(exported["onnx"]), data=str(coco128), protocol="coco"))
    ref = _reference(reference)
    assert m["protocol"] == "coco" and "pycocotools" in m["metric"] and m["images"] == 128
    # another protocol, so another figure, close to val.py's
    assert abs(m["map50_95"] - ref["mAP50_95"]) <= 0.01 and m["map50_95"] != pytest.approx(ref["mAP50_95"], abs=1e-4)
    assert "coco" in format_metrics(m)


# -- small datasets: fixed shapes, failures, options -----------------------------------------------------------


@pytest.fixture()
def small(coco128: Path, tmp_path: Path) -> Path:
    root = tmp_path / "small"
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    for img in sorted((coco128 / "images" / "train2017").glob("*.jpg"))[:6]:
        shutil.copy(img, root / "images" / img.name)
        shutil.copy(coco128 / "labels" / "train2017" / f"{img.stem}.txt", root / "labels" / f"{img.stem}.txt")
    return root


def test_a_fixed_shape_model_gets_square_inputs_and_says_so(small: Path, yolov5n_pt: Path, tmp_path: Path) -> None:
    if not backends.REGISTRY["onnx"].is_available():
        pytest.skip("onnx not installed")
    static = tmp_path / "static.onnx"
    assert main(["export", str(yolov5n_pt), "--to", "onnx", "--static", "--imgsz", "320", "-o", str(static)]) == 0
    m = validate(ValOptions(weights=str(static), data=str(small), batch=4))
    assert m["rect"] is False and m["images"] == 6 and not m["failed"]
    assert "square 320x320 inputs, as val.py without rect" in m["letterbox"] and "fixed input shape" in m["letterbox"]
    assert 0 < m["map50"] <= 1


def test_unreadable_images_and_bad_labels_are_listed_and_the_rest_scored(small: Path, yolov5n_pt: Path) -> None:
    (small / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    first = sorted((small / "labels").glob("*.txt"))[0]
    first.write_text("0 0.5 0.5 1.7 0.2\n")  # not normalised: val.py ignores the image as corrupt
    second = sorted((small / "labels").glob("*.txt"))[1]
    second.write_text("0 nan 0.5 0.1 0.2\n")  # val.py's (lb >= 0).all() rejects nan: it was scored here
    third = sorted((small / "labels").glob("*.txt"))[2]
    third.write_text("1e23 0.5 0.5 0.1 0.2\n")  # numpy's cast warning on stderr, and a class -9223372036854775808
    m = validate(ValOptions(weights=str(yolov5n_pt), data=str(small)))
    reasons = {Path(f["path"]).name: f["reason"] for f in m["failed"]}
    assert set(reasons) == {"broken.jpg", f"{first.stem}.jpg", f"{second.stem}.jpg", f"{third.stem}.jpg"}, reasons
    assert "not normalised" in reasons[f"{first.stem}.jpg"] and str(first) in reasons[f"{first.stem}.jpg"]
    assert "not a number" in reasons[f"{second.stem}.jpg"]
    assert "a class id is not a whole number" in reasons[f"{third.stem}.jpg"]
    assert m["images"] == 3 and m["map50"] > 0 and "4 images failed" in format_metrics(m)
    assert main(["val", "--weights", str(yolov5n_pt), "--data", str(small)]) == 1  # as a run with failed inputs


def test_a_dataset_without_labels_is_refused(small: Path, yolov5n_pt: Path) -> None:
    """val.py warns and reports zeros; yolokit val printed the zeros and exited 0."""
    shutil.rmtree(small / "labels")
    with pytest.raises(InputError, match="none of its 6 images has a label file"):
        validate(ValOptions(weights=str(yolov5n_pt), data=str(small)))


def test_a_dataset_of_another_class_count_is_refused(small: Path, yolov5n_pt: Path) -> None:
    """A yaml giving nc: 3 and no names was scored against the 80-class model without a word (val.py stops on the
    class count); with names it was refused already."""
    for extra in ("nc: 3\n", "names: [a, b, c]\n"):
        (small / "data.yaml").write_text(f"path: .\nval: images\n{extra}")
        with pytest.raises(InputError, match="the dataset has 3 classes, the model 80"):
            validate(ValOptions(weights=str(yolov5n_pt), data=str(small / "data.yaml")))
    (small / "data.yaml").write_text("path: .\nval: images\nnc: 80\n")
    got = validate(ValOptions(data=str(small / "data.yaml")))  # the default model, named in the result (was null)
    assert got["images"] == 6 and got["weights"] == str(yolov5n_pt), got["weights"]
    with pytest.raises(InputError, match="coco128.yaml: no such file or folder"):  # was "not a dataset yaml"
        validate(ValOptions(data=str(small / "coco128.yaml")))


def test_bad_options_are_one_line(small: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["val", "--data", str(small), "--protocol", "voc"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--protocol" in err and "'voc'" in err and "yolov5, coco" in err and "\n" not in err
    with pytest.raises(InputError, match="--data is required"):
        validate(ValOptions())



def test_a_broken_dataset_yaml_is_one_line_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    """Bad YAML, a yaml that is not a mapping, a split that is not text, no val split: one line naming the file,
    the reason and the fix (a traceback before); a good yaml in UTF-8 with non-ASCII class names and a val list
    saved with a byte-order mark and Windows line ends finds its images and names."""
    from toolkit.jobs.valdata import dataset_images

    cases = {"bad.yaml": ("path: x\nval: [a, b\nnames: {0: a}\n", "not valid YAML .* at line 3, column"),
             "list.yaml": ("- a\n- b\n", "not a dataset yaml \\(it holds a list\\)"),
             "num.yaml": ("val: 3\n", "must be text"),
             "url.yaml": ("path: https://x/y.zip\nval: images\n", "is a URL; yolokit val reads a dataset on this"),
             "names.yaml": ("val: images\nnames: 5\n", "names must be a list or a mapping"),
             "nc.yaml": ("val: images\nnc: abc\nnames: [a]\n", "nc 'abc' must be the number of classes .1 names."),
             # val.py measures the val split and refuses a yaml without one: not the train or test split silently
             "train.yaml": ("path: .\ntrain: images\nnames: [a]\n", "has no val split .* add 'val:'"),
             "test.yaml": ("path: .\ntrain: images\ntest: images\nval: []\nnames: [a]\n", "has no val split")}
    for name, (text, reason) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(InputError, match=reason):
            dataset_images(str(tmp_path / name))
        assert main(["val", "--data", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"yolokit: {tmp_path / name}: ") and "\n" not in err and "Traceback" not in err, err
        assert "path, train, val and names" in err or "download and unpack it" in err
    images = tmp_path / "ds" / "images"
    images.mkdir(parents=True)
    for stem in ("a", "b"):
        cv2.imwrite(str(images / f"{stem}.jpg"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "ds" / "val.txt").write_bytes(b"\xef\xbb\xbf./images/a.jpg\r\n./images/b.jpg\r\n")
    (tmp_path / "ds" / "data.yaml").write_bytes("path: .\nval: val.txt\nnames: ['птица', '鸟']\n".encode())
    found, names = dataset_images(str(tmp_path / "ds" / "data.yaml"))
    assert [p.name for p in found] == ["a.jpg", "b.jpg"] and all(p.is_file() for p in found)
    assert names == {0: "птица", 1: "鸟"}

def test_dataset_forms_are_read_as_val_py_reads_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A yaml without ``path:`` given by a relative path was looked for below its folder twice (h2/h2/...); a
    relative ``path:`` is found below the yaml's folder, else below the current folder (val.py's YOLOv5 folder:
    ``data/coco128.yaml`` with ``path: ../datasets/coco128``), and a ``../`` split without that part (val.py's
    fallback); a list of any suffix is a list, broken at any line break, images only; links to folders followed and
    hidden files left out (glob's ``**/*.*``); an image listed twice counted once."""
    from toolkit.jobs.valdata import dataset_images

    def img(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.zeros((16, 16, 3), np.uint8))

    for stem in ("a", "b"):
        img(tmp_path / "ds" / "images" / "val" / f"{stem}.jpg")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ds" / "nopath.yaml").write_text("val: images/val\nnc: 80\n")
    found, _ = dataset_images("ds/nopath.yaml")
    assert [p.name for p in found] == ["a.jpg", "b.jpg"] and all(p.is_file() for p in found)
    (tmp_path / "yolov5" / "data").mkdir(parents=True)
    (tmp_path / "yolov5" / "data" / "c.yaml").write_text("path: ../ds\nval: images/val\nnc: 80\n")
    monkeypatch.chdir(tmp_path / "yolov5")
    assert len(dataset_images("data/c.yaml")[0]) == 2  # ../ds from the current folder, as val.py from yolov5/
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ds" / "rf.yaml").write_text("val: ../images/val\nnc: 80\n")  # Roboflow's export
    assert len(dataset_images("ds/rf.yaml")[0]) == 2
    (tmp_path / "ds" / "val.list").write_bytes(b"./images/val/a.jpg\r./images/val/b.jpg\r./images/val/a.jpg\r"
                                               b"./clip.mp4\r")
    (tmp_path / "ds" / "l.yaml").write_text("path: .\nval: val.list\nnc: 80\n")
    assert [p.name for p in dataset_images("ds/l.yaml")[0]] == ["a.jpg", "b.jpg"]
    (tmp_path / "ds" / "twice.yaml").write_text("path: .\nval: [images/val, images/val]\nnc: 80\n")
    assert len(dataset_images("ds/twice.yaml")[0]) == 2
    img(tmp_path / "other" / "c.jpg")
    (tmp_path / "ds" / "images" / "val" / "more").symlink_to(tmp_path / "other")
    (tmp_path / "ds" / "images" / "val" / "loop").symlink_to(tmp_path / "ds" / "images")
    img(tmp_path / "ds" / "images" / "val" / "._a.jpg")
    img(tmp_path / "ds" / "images" / "val" / ".ipynb_checkpoints" / "a.jpg")
    assert [p.name for p in dataset_images("ds")[0]] == ["a.jpg", "b.jpg", "c.jpg"]
    (tmp_path / "ds" / "dl.yaml").write_text("path: nowhere\nval: images/val\ndownload: https://x/y.zip\n")
    with pytest.raises(InputError, match="split is not there .a 'download:' key is not run"):
        dataset_images("ds/dl.yaml")


def test_images_val_py_leaves_out_are_listed_not_scored(small: Path, yolov5n_pt: Path) -> None:
    """An 8x8 image and a GIF named .jpg (OpenCV reads both) were scored; val.py leaves them out (image size under
    10 pixels, a format outside its IMG_FORMATS). Label files with carriage returns alone are read."""
    from PIL import Image

    cv2.imwrite(str(small / "images" / "tiny.png"), np.full((8, 8, 3), 127, np.uint8))
    (small / "labels" / "tiny.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    first = sorted((small / "images").glob("*.jpg"))[0]
    Image.open(first).save(small / "images" / "gif.jpg", format="GIF")
    shutil.copy(small / "labels" / f"{first.stem}.txt", small / "labels" / "gif.txt")
    lines = (small / "labels" / f"{first.stem}.txt").read_text().split()
    (small / "labels" / f"{first.stem}.txt").write_text("\r".join(" ".join(lines[i:i + 5])
                                                                  for i in range(0, len(lines), 5)))
    m = validate(ValOptions(weights=str(yolov5n_pt), data=str(small)))
    reasons = {Path(f["path"]).name: f["reason"] for f in m["failed"]}
    assert set(reasons) == {"tiny.png", "gif.jpg"}, reasons
    assert "under 10 pixels" in reasons["tiny.png"] and "a GIF image named .jpg" in reasons["gif.jpg"]
    assert m["images"] == 6


# -- the pure steps, against val.py's facts ----------------------------------------------------------------------


def test_iou_levels_are_torch_linspace() -> None:
    torch = pytest.importorskip("torch")
    assert IOU_LEVELS.dtype == np.float32
    assert IOU_LEVELS.tobytes() == torch.linspace(0.5, 0.95, 10).numpy().tobytes()


def test_each_label_goes_to_the_first_detection_that_chose_it() -> None:
    """val.py v7.0 keeps, per detection, its best-IoU label, then per label the first such detection in NMS order
    (not the one with the highest IoU): here detection 1 overlaps label 1 better, but detection 0 came first."""
    gt = np.array([[0, 0, 10, 10], [4, 0, 14, 10]], np.float32)
    det = np.array([[3, 0, 13, 10], [4, 0, 14.5, 10]], np.float32)
    correct = match_levels(det, np.array([0, 0]), gt, np.array([0, 0]))
    iou_d0 = [7 / 13, 9 / 11]  # with label 0 and label 1: detection 0 prefers label 1
    assert iou_d0[1] > iou_d0[0] and correct[:, 0].tolist() == [True, False]
    # another class never matches; no labels, no true positives
    assert not match_levels(det, np.array([1, 1]), gt, np.array([0, 0])).any()
    assert match_levels(det, np.array([0, 0]), gt[:0], np.zeros(0)).shape == (2, 10)


def test_a_perfect_class_scores_0995_and_p_r_come_from_the_smoothed_f1() -> None:
    """101-point interpolation gives a perfect detector 0.995, not 1 (the envelope ends at recall 1 with 0)."""
    assert compute_ap(np.array([1.0]), np.array([1.0])) == pytest.approx(0.995)
    tp = np.ones((4, 10), bool)
    cm = ap_per_class(tp, np.array([0.9, 0.8, 0.7, 0.6], np.float32), np.array([0, 0, 1, 1.0]), np.array([0, 0, 1, 1]))
    assert cm.map50 == pytest.approx(0.995) and cm.map50_95 == pytest.approx(0.995)
    assert cm.mp == pytest.approx(1.0) and cm.mr == pytest.approx(1.0, abs=1e-9)
    assert cm.classes.tolist() == [0, 1] and cm.nt.tolist() == [2, 2]


def test_rect_batches_follow_val_py() -> None:
    # (h, w): three 480x640 photos, one portrait 640x427, one square
    shapes = np.array([[480, 640], [640, 427], [480, 640], [640, 640], [480, 640]])
    order, bshapes = rect_batches(shapes, 2, 640, 32, 0.5)
    ar = shapes[:, 0] / shapes[:, 1]
    assert order.tolist() == ar.argsort().tolist() and np.all(np.diff(ar[order]) >= 0)
    # landscape batch: h = ceil(0.75 * 20 + 0.5) strides, w = ceil(20.5) strides; mixed: square 672
    assert bshapes.tolist() == [[512, 672], [672, 672], [672, 448]]
    one = rect_batches(shapes[:1], 32, 640, 32, 0.5)[1]
    assert one.tolist() == [[512, 672]]


def test_load_image_resizes_the_long_side_truncating_with_area_or_linear() -> None:
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 255, (333, 1000, 3), np.uint8)
    assert resized_shape((333, 1000), 640) == (213, 640)  # int(333 * 0.64), not rounded
    assert np.array_equal(load_resized(wide, (333, 1000), 640), cv2.resize(wide, (640, 213),
                                                                          interpolation=cv2.INTER_AREA))
    small = wide[:100, :200]
    assert np.array_equal(load_resized(small, (100, 200), 640), cv2.resize(small, (640, 320),
                                                                           interpolation=cv2.INTER_LINEAR))
    same = wide[:320, :640]
    assert load_resized(same, (320, 640), 640) is same


def test_labels_and_boxes_come_back_to_the_original_image() -> None:
    img = np.zeros((480, 640, 3), np.uint8)
    lb, info = letterbox(img, (512, 672), 32, auto=False, scaleup=False)
    assert lb.shape[:2] == (512, 672) and info.pad == (16.0, 16.0) and info.ratio == 1.0
    # a box inside, one crossing the right edge (clipped)
    labels = np.array([[3, 0.5, 0.5, 0.25, 0.5], [7, 0.95, 0.5, 0.2, 0.1]], np.float32)
    cls, xyxy = native_labels(labels, (480, 640), info, 1.0, (480, 640))
    assert cls.tolist() == [3, 7]
    assert np.allclose(xyxy[0], [240, 120, 400, 360], atol=1e-3)
    assert np.allclose(xyxy[1], [544, 216, 640, 264], atol=2e-3)
    # a 1280x960 original resized to 640x480: boxes scale by the resize ratio
    back = to_native(np.array([[16 + 10, 16 + 20, 16 + 30, 16 + 40]], np.float32), info, 0.5, (960, 1280))
    assert np.allclose(back, [[20, 40, 60, 80]])
