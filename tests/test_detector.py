"""The Detector library API."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from toolkit import Detector
from toolkit.detections import Detections
from toolkit.errors import InputError
from toolkit.io.files import ImageReadError
from toolkit.tiling import TileOptions


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
    assert "text, not an image" in (results[2].error or "")


def _clip(video: Path, frames: int) -> Path:
    """A small MJPG .avi of ``frames`` grey frames."""
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (96, 64))
    for i in range(frames):
        writer.write(np.full((64, 96, 3), 40 * i, np.uint8))
    writer.release()
    return video


def test_predict_iter_gives_what_listing_refused_in_its_place(tmp_path: Path) -> None:
    """A folder and a list named among a list's paths, and a video: results in the list's order, the video's
    frames where the video is (the folder's failure came first, out of order; the video's frames never ran)."""
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    for p in (a, b):
        cv2.imwrite(str(p), np.full((64, 96, 3), 90, np.uint8))
    (tmp_path / "sub").mkdir()
    (tmp_path / "l.txt").write_text("a.jpg\n")
    video = _clip(tmp_path / "clip.avi", 2)
    det = Detector("yolov5n.yaml", imgsz=128)
    order = [str(a), str(tmp_path / "sub"), str(video), str(tmp_path / "l.txt"), str(b)]
    for mode in ("thread", "process"):
        got = [(Path(r.ref.path).name, r.ref.frame, r.ok) for r in det.predict_iter(order, mode=mode, workers=2)]
        assert got == [("a.jpg", None, True), ("sub", None, False), ("clip.avi", 0, True), ("clip.avi", 1, True),
                       ("l.txt", None, False), ("b.jpg", None, True)], mode


def test_predict_iter_tells_the_runner_how_many_inferences_come(tmp_path: Path) -> None:
    """The hint a runner may weigh (BaseRunner.expect; OpenVINO's shape models): the batches of a list of images,
    three times with test-time augmentation (its three views); None where a video makes the count unknown until it
    is decoded."""
    paths = []
    for i in range(7):
        p = tmp_path / f"{i}.jpg"
        cv2.imwrite(str(p), np.full((64, 96, 3), 20 * i, np.uint8))
        paths.append(str(p))
    video = _clip(tmp_path / "clip.avi", 3)
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


def test_what_predict_cannot_take_is_one_line_naming_it(coco128_images: Path) -> None:
    """Raw TypeErrors and IndexErrors, bytes read as paths ("255: file not found") and a division by zero before;
    an encoded file's bytes are now decoded, and each refusal names the image and the fix."""
    jpg = coco128_images / "000000000009.jpg"
    im = cv2.imread(str(jpg))
    d = Detector("yolov5n.yaml", imgsz=64, conf=0.001)
    assert len(d.predict(jpg.read_bytes())[0]) == len(d.predict(im)[0])
    for bad, reason in ((None, "got NoneType"), (5, "got int"), ({"a": 1}, "got dict"),
                        (np.zeros(10, np.uint8), "<array 0>: images must be BGR uint8"),
                        (np.zeros((0, 0, 3), np.uint8), "<array 0>: the image has no pixels"),
                        (im[:, :, 0], "COLOR_GRAY2BGR"), (np.dstack([im, im[:, :, :1]]), "COLOR_BGRA2BGR"),
                        (im.astype(np.float32) / 255, "astype"), ([im, None], "image 1: predict takes")):
        with pytest.raises(InputError, match=re.escape(reason)):
            d.predict(bad)
    for kwargs, reason in (({"batch": "2"}, "batch takes a whole number"), ({"batch": -3}, "at least 1"),
                           ({"tile": "a"}, "tile takes a tile size")):
        with pytest.raises(InputError, match=reason):
            d.predict(im, **kwargs)
    with pytest.raises(InputError, match="predict_iter takes a source"):
        next(d.predict_iter(im))  # type: ignore[arg-type]
    assert len(list(d.predict_iter([str(jpg)], batch=np.int64(2)))) == 1  # numpy's integers, as before
    for kwargs, reason in (({"batch": 2.5}, "batch takes a whole number, at least 0, got 2.5"),  # was a TypeError
                           ({"workers": -1}, "workers takes a whole number, at least 0, got -1")):
        with pytest.raises(InputError, match=re.escape(reason)):
            next(d.predict_iter([str(jpg)], **kwargs))
    for settings, reason in (({"classes": "0,2"}, None), ({"classes": 5}, None), ({"imgsz": (320,)}, None),
                             ({"classes": "a"}, "--classes takes class ids"),
                             ({"imgsz": (1, 2, 3)}, "--imgsz takes one size"),
                             ({"max_det": 1.5}, "--max-det takes a whole number"),
                             # the documented "500M" form was refused; "no" turned multi-label on, 1.5 threads and a
                             # list of options were taken (the last a TypeError at load)
                             ({"max_file_size": "500M", "max_pixels": "1G", "download_memory": "256M"}, None),
                             ({"multi_label": np.bool_(False), "threads": np.int64(1)}, None),
                             ({"max_file_size": "lots"}, "--max-file-size takes a number like 500M"),
                             ({"multi_label": "no"}, "multi_label takes True or False, got 'no'"),
                             ({"augment": 1}, "--augment takes True or False"),
                             ({"half": "no"}, "--half takes True or False"),
                             ({"threads": 1.5}, "threads takes a whole number, got 1.5"),
                             ({"options": [1]}, "options takes a mapping")):
        if reason is None:
            Detector("yolov5n.yaml", **settings)
        else:
            with pytest.raises(InputError, match=reason):
                Detector("yolov5n.yaml", **settings)


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_closing_a_detector_while_it_runs_ends_the_run_saying_so(mode: str, coco128_images: Path,
                                                                  exported: dict[str, Path]) -> None:
    """close() during a predict_iter failed each remaining input with the runtime's own words ("inference failed:
    'NoneType' object has no attribute 'run'", 127 times, in both modes): a run on the closed model now ends with
    DetectorClosedError; in process mode the workers' own models may finish the inputs instead."""
    from toolkit.errors import DetectorClosedError

    paths = [str(p) for p in sorted(coco128_images.glob("*.jpg"))[:24]]
    d = Detector(exported["onnx"])
    it = d.predict_iter(paths, mode=mode, workers=2)
    first = next(it)
    assert first.ok
    d.close()
    rest = None
    try:
        rest = list(it)
    except DetectorClosedError as e:
        assert re.search("closed while this run used it .* close it after the run", str(e)), e
    if mode == "thread":  # every inference is on the closed model
        assert rest is None
    else:
        assert rest is None or [r.error for r in rest if not r.ok] == []


def test_a_closed_detector_says_so() -> None:
    """After close() or its with-block, predict failed with the runtime's own words ("'NoneType' object is not
    callable"), and predict_iter failed every input one by one."""
    image = np.full((64, 64, 3), 127, np.uint8)
    with Detector("yolov5n.yaml", imgsz=64) as d:
        d.predict(image)
    d.close()  # a second close does nothing
    for call in (lambda: d.predict(image), lambda: next(d.predict_iter(["a.jpg"])),
                 lambda: d.predict_tiled(image, TileOptions(tile=32))):
        with pytest.raises(InputError, match="this Detector is closed .*create a new Detector"):
            call()


def test_detections_take_boxes_of_four_numbers() -> None:
    """np.zeros((4, 2)) was reshaped into two boxes without a word; one box as four numbers and no boxes stay fine."""
    with pytest.raises(ValueError, match=r"\(N, 4\) boxes .*shape \(4, 2\)"):
        Detections(np.zeros((4, 2)), [1, 1, 1, 1], [0, 0, 0, 0])
    assert len(Detections(np.array([1, 2, 3, 4]), [0.5], [0])) == 1
    assert len(Detections(np.zeros((0, 4)), [], [])) == 0 and len(Detections(np.zeros(0), [], [])) == 0


def test_detections_compare_by_value() -> None:
    """Two Detections of one image compared with == raised numpy's "truth value of an array ... is ambiguous"
    (the dataclass compared the arrays as a tuple); empty ones raised too."""
    a = Detections(np.array([[1, 2, 3, 4], [5, 6, 7, 8]]), np.array([0.9, 0.5]), np.array([0, 2]), {0: "a", 2: "c"})
    b = Detections(a.xyxy.copy(), a.confidence.copy(), a.class_id.copy(), dict(a.names))
    assert a == b and (a != b) is False and a is not b
    assert a != Detections(a.xyxy, np.array([0.9, 0.6]), a.class_id, a.names)
    assert a != a[:1] and a != "a" and a != None  # noqa: E711 - comparing with None must not raise
    assert Detections.empty() == Detections.empty() and Detections.empty() != Detections.empty(path="x.jpg")
    with pytest.raises(TypeError):
        hash(a)


def test_tiles_arrays_and_sources_are_taken_as_each_call_documents_them(coco128_images: Path,
                                                                         tmp_path: Path) -> None:
    """predict_iter(tile=320) failed each image ("'int' object has no attribute 'scales'"); predict_tiled(img, 320)
    raised that AttributeError, a grey image an IndexError and a path "'str' object has no attribute 'shape'";
    predict_iter([array]) made the array a file name ("cannot read: File name too long"); predict(URL) said "file
    not found" and predict(video) "cannot decode"."""
    from toolkit.io.files import ImageReadError

    path = str(sorted(coco128_images.glob("*.jpg"))[0])
    image = cv2.imread(path)
    with Detector("yolov5n.yaml", imgsz=64) as d:
        want = d.predict(image, tile=TileOptions(tile=320))[0]
        for got in (d.predict(image, tile=np.int64(320))[0], d.predict_tiled(image, 320),
                    d.predict_tiled(path, TileOptions(tile=320)), next(d.predict_iter([path], tile=320)).detections):
            assert got is not None and np.array_equal(got.xyxy, want.xyxy) and np.array_equal(got.class_id,
                                                                                          want.class_id)
        for call, message in ((lambda: d.predict_tiled(image[:, :, 0], 320), "array"),
                              (lambda: d.predict_tiled(image, "320"), "tile takes a tile size"),
                              (lambda: d.predict(image, tile=True), "tile takes a tile size"),
                              (lambda: list(d.predict_iter([path, image])), "item 1 is a ndarray; for arrays in "
                                                                            "memory use predict"),
                              (lambda: d.predict("https://example.org/a.jpg"), "a URL, a video or a stream use "
                                                                                "predict_iter"),
                              (lambda: d.predict(str(tmp_path / "clip.mp4")), "use predict_iter"),
                              (lambda: d.predict("0"), "use predict_iter")):
            with pytest.raises(InputError, match=message):
                call()
        from pathlib import PurePosixPath

        assert len(d.predict(PurePosixPath(path))) == 1  # any os.PathLike, as a Path
        assert next(d.predict_iter([PurePosixPath(path)])).ok
        gif = tmp_path / "still.gif"  # .gif is a video suffix to a run (detect.py's), an image to predict
        assert cv2.imwrite(str(gif), image) if cv2.haveImageWriter(str(gif)) else \
            pytest.importorskip("PIL.Image").fromarray(image[:, :, ::-1]).save(gif) is None
        assert len(d.predict(str(gif))) == 1
        (tmp_path / "7").write_bytes(Path(path).read_bytes())  # a file named 7 is a file
        assert len(d.predict(str(tmp_path / "7"))) == len(d.predict(path))
        with pytest.raises(ImageReadError):
            d.predict(str(tmp_path / "none.jpg"))


def test_numpy_numbers_and_a_gpu_index_as_an_int_are_taken(tmp_path: Path) -> None:
    """imgsz=np.int64(320) failed with IndexError; device=0 (an int: a GPU index, as the docs say) was read as not
    chosen and ran on the CPU without a word; device=False was taken for the CPU. Two Results that kept their images
    raised ValueError when compared."""
    from toolkit.engine.core import DetectorConfig
    from toolkit.errors import InputError

    assert DetectorConfig(imgsz=np.int64(320)).size == (320, 320)
    assert DetectorConfig(device=0).device == "0" and DetectorConfig(device=np.int64(1)).device == "1"
    for bad in (False, 1.5):
        with pytest.raises(InputError, match="--device takes"):
            DetectorConfig(device=bad)  # type: ignore[arg-type]
    image = tmp_path / "a.jpg"
    cv2.imwrite(str(image), np.full((64, 96, 3), 90, np.uint8))
    det = Detector("yolov5n.yaml", imgsz=128)
    a, b = (next(iter(det.predict_iter([str(image)], keep_images=True))) for _ in range(2))
    assert a == b and a.image is not None
    b.image = b.image.copy()
    b.image[0, 0, 0] += 1
    assert a != b


def test_worker_processes_run_the_detectors_own_file_after_a_chdir(tmp_path: Path, coco128_images: Path,
                                                                     exported: dict[str, Path],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Process-mode workers loaded the model again by the name it was given, from the working folder of the moment:
    after an os.chdir, ``Detector("m.onnx")`` failed every worker ("weights file not found"), and a name like
    yolov5n.pt found another file (the shared official one) and ran it without a word. They load its file."""
    import shutil

    shutil.copy(exported["onnx"], tmp_path / "m.onnx")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    det = Detector("m.onnx")
    images = [str(p) for p in sorted(coco128_images.glob("*.jpg"))[:4]]
    threads = [len(r.detections) for r in det.predict_iter(images, mode="thread") if r.detections is not None]
    monkeypatch.chdir(tmp_path / "sub")
    got = list(det.predict_iter(images, mode="process", workers=2))
    assert [r.error for r in got] == [None] * 4, got[0].error
    assert [len(r.detections) for r in got if r.detections is not None] == threads
    det.close()


def test_predict_reads_as_a_run_reads_and_names_what_it_does_not_read(tmp_path: Path, coco128_images: Path,
                                                                       exported: dict[str, Path]) -> None:
    """predict ignored fast_decode (predict_iter honoured it), decoded every image of a list before the first
    inference, read an open file as a list of lines ("<bytes 0>: truncated JPEG" for an intact photo), and said
    "file not found" for a glob and "text, not an image" for a .txt list; a folder got no fix."""
    import io

    jpgs = [str(p) for p in sorted(coco128_images.glob("*.jpg"))[:3]]
    big = tmp_path / "big.jpg"
    im = cv2.imread(jpgs[0])
    cv2.imwrite(str(big), cv2.resize(im, (im.shape[1] * 4, im.shape[0] * 4)))
    for fast in (False, True):
        det = Detector(str(exported["onnx"]), fast_decode=fast)
        want = [r.detections for r in det.predict_iter([str(big), *jpgs], batch=2)]
        got = det.predict([str(big), *jpgs], batch=2)
        assert [(d.xyxy.tolist(), d.confidence.tolist()) for d in got] == \
            [(d.xyxy.tolist(), d.confidence.tolist()) for d in want if d is not None]
        assert got[1].path == jpgs[0]
        det.close()
    det = Detector("yolov5n.yaml", imgsz=64)
    with open(jpgs[0], "rb") as f:
        for handle in (f, io.BytesIO(b"\xff\xd8")):
            with pytest.raises(InputError, match=r"not an open file .* pass its bytes \(f.read\(\)\) or its path"):
                det.predict(handle)  # type: ignore[arg-type]
    (tmp_path / "list.txt").write_text(jpgs[0] + "\n")
    with pytest.raises(ImageReadError, match="file not found"):  # a missing photo[1].jpg is no glob (review)
        det.predict(str(tmp_path / "photo[1].jpg"))
    for source in (str(coco128_images), str(coco128_images / "*.jpg"), str(tmp_path / "list.txt")):
        with pytest.raises(InputError, match="for a folder, a glob, a .txt list, a URL, a video or a stream use "
                                             "predict_iter"):
            det.predict(source)


def test_an_unknown_backend_name_is_named_as_such(yolov5n_pt: Path) -> None:
    """backend='foo' (or 'pytorch') was "yolov5n.pt: is a PyTorch .pt checkpoint ..., which the foo backend does
    not run", a ModelFileError (exit 3) blaming the file."""
    for name in ("foo", "pytorch", "TORCH"):
        with pytest.raises(InputError, match=f"unknown backend '{name}'; choose one of torch, onnx"):
            Detector(str(yolov5n_pt), backend=name)


def test_arguments_of_the_wrong_kind_are_one_line_naming_them(coco128_images: Path) -> None:
    """keep_images='yes' was taken as true, style='x' failed every input with an AttributeError in a worker, and
    Detector(DetectorConfig(...)) looked for a file named 'DetectorConfig(weights=...)'."""
    from toolkit.engine.core import DetectorConfig

    det = Detector("yolov5n.yaml", imgsz=64)
    jpg = [str(sorted(coco128_images.glob("*.jpg"))[0])]
    for kwargs, reason in (({"keep_images": "yes"}, "keep_images takes True or False, got 'yes'"),
                           ({"style": "x"}, "style takes an AnnotateStyle"),
                           ({"fast_decode": "x"}, "fast_decode takes True, False or None"),
                           ({"mode": 3}, "mode takes thread, process or auto")):
        with pytest.raises(InputError, match=re.escape(reason)):
            next(det.predict_iter(jpg, **kwargs))
    with pytest.raises(InputError, match=r"got DetectorConfig; for a DetectorConfig use Detector.from_config"):
        Detector(DetectorConfig(weights="yolov5n.yaml"))  # type: ignore[arg-type]
    with pytest.raises(InputError, match="got int"):
        Detector(5)  # type: ignore[arg-type]
