"""Run outputs: --save-crop, --save-csv, the annotation options, and the output pool that writes them off the
critical path while keeping the resume guarantees (nothing twice, nothing missing after SIGKILL and --resume)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers.matching import read_label_file
from toolkit.cli import main
from toolkit.io.outputs import crop_box

RANDOM = "yolov5n.yaml"  # random weights: many boxes of many classes, for accounting tests


def _img(path: Path, h: int, w: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    assert cv2.imwrite(str(path), cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (3, 3), 0))


def _csv(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


@pytest.fixture(scope="module")
def photos(coco128_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("photos")
    for f in sorted(coco128_images.glob("*.jpg"))[:6]:
        shutil.copy(f, d / f.name)
    return d


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_crops_and_csv_follow_the_detections(mode: str, photos: Path, yolov5n_pt: Path, tmp_path: Path) -> None:
    rc = main(["run", str(photos), "--weights", str(yolov5n_pt), "--save-txt", "--save-conf", "--save-crop",
               "--save-csv", "--mode", mode, "--workers", "2", "--project", str(tmp_path), "--name", "r"])
    assert rc == 0
    out = tmp_path / "r"
    rows = _csv(out / "predictions.csv")
    assert rows[0] == ["path", "frame", "class_id", "class_name", "confidence", "x1", "y1", "x2", "y2"]
    summary = json.loads((out / "summary.json").read_text())
    assert len(rows) - 1 == summary["detections"] > 10
    crops = sorted(p.relative_to(out / "crops").as_posix() for p in (out / "crops").rglob("*.jpg"))
    assert len(crops) == summary["detections"]
    assert {c.split("/")[0]: 0 for c in crops}.keys() == summary["per_class"].keys()
    for img in sorted(photos.glob("*.jpg")):
        image = cv2.imread(str(img))
        h, w = image.shape[:2]
        mine = [r for r in rows[1:] if r[0] == str(img)]
        labels = read_label_file(out / "labels" / f"{img.stem}.txt")[::-1]  # detect.py's order: the CSV's reversed
        assert len(mine) == len(labels)
        for r, lab in zip(mine, labels, strict=True):  # the same boxes as the label files, in source pixels
            x1, y1, x2, y2 = map(float, r[5:])
            assert int(r[2]) == int(lab[0]) and r[1] == ""
            assert abs((x1 + x2) / 2 / w - lab[1]) < 1e-4 and abs((y2 - y1) / h - lab[4]) < 1e-4
            assert abs(float(r[4]) - lab[5]) < 1e-4
        per_class: dict[str, int] = {}
        counts = {c: sum(r[3] == c for r in mine) for c in {r[3] for r in mine}}
        for r in mine:  # each crop is save_one_box's cut of the original image, named in detect.py's order
            k = per_class[r[3]] = per_class.get(r[3], 0) + 1
            n = counts[r[3]] - k + 1  # the least confident first
            name = f"{img.stem}.jpg" if n == 1 else f"{img.stem}{n}.jpg"
            crop = cv2.imread(str(out / "crops" / r[3] / name))
            want = crop_box(image, np.array([float(v) for v in r[5:]]))
            assert crop is not None and crop.shape == want.shape
            assert np.abs(crop.astype(int) - want).mean() < 6  # JPEG quality 95


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_a_crop_never_overwrites_an_input_s_annotated_image(mode: str, photos: Path, yolov5n_pt: Path,
                                                            tmp_path: Path) -> None:
    """An input below SOURCE/crops/<class>/ has its annotated image where crops of that class go: the crop of
    img.jpg's first person overwrote crops/person/img.jpg, the annotated image of crops/person/img.jpg, and the
    manifest listed the lost file. The crop now takes the next free name."""
    src = tmp_path / "src"
    first, second = photos / "000000000036.jpg", photos / "000000000025.jpg"  # people; giraffes
    (src / "crops" / "person").mkdir(parents=True)
    shutil.copy(first, src / "img.jpg")
    shutil.copy(second, src / "crops" / "person" / "img.jpg")
    assert main(["run", str(src), "--weights", str(yolov5n_pt), "--save-crop", "--mode", mode, "--workers", "2",
                 "--project", str(tmp_path), "--name", "r"]) == 0
    out = tmp_path / "r"
    records = {json.loads(line)["key"]: json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()}
    assert "person/img.jpg" not in records["img"]["crops"], records["img"]  # another free name
    annotated = cv2.imread(str(out / "crops" / "person" / "img.jpg"))
    assert annotated is not None and annotated.shape == cv2.imread(str(second)).shape  # the whole photo, annotated
    for name in records["img"]["crops"]:
        assert (out / "crops" / name).is_file()


def test_coco_results_keep_coco_image_ids_for_an_image_listed_twice(photos: Path, yolov5n_pt: Path, tmp_path: Path,
                                                                      coco128: Path) -> None:
    """A list naming one photo twice: its second entry (output key ``000000000009.jpg``) had the image id
    "000000000009.jpg" in predictions.json, which pycocotools' loadRes refused ("Results do not correspond to
    current coco set"). The id comes from the file's stem, as val.py takes it; a stem of other digits than 0-9
    (``²``, which int() refuses) is no number."""
    from pycocotools.coco import COCO

    from toolkit.io.outputs import coco_image_id

    first, second = photos / "000000000009.jpg", photos / "000000000025.jpg"
    (tmp_path / "list.txt").write_text(f"{first}\n{second}\n{first}\n")
    assert main(["run", str(tmp_path / "list.txt"), "--weights", str(yolov5n_pt), "--save-json", "--nosave",
                 "--project", str(tmp_path), "--name", "r"]) == 0
    preds = json.loads((tmp_path / "r" / "predictions.json").read_text())
    assert {p["image_id"] for p in preds} == {9, 25}
    gt = COCO(str(coco128 / "annotations" / "instances_train2017.json"))
    assert len(gt.loadRes(str(tmp_path / "r" / "predictions.json")).getAnnIds()) == len(preds)
    assert coco_image_id("a/\u00b2") == "a/\u00b2" and coco_image_id("x_2", "0042") == 42


def test_annotation_options_change_the_annotated_images(photos: Path, yolov5n_pt: Path, tmp_path: Path) -> None:
    one = sorted(photos.glob("*.jpg"))[0]
    outs = {}
    for name, flags in (("plain", []), ("bare", ["--hide-labels"]), ("names", ["--hide-conf"]),
                        ("thick", ["--line-thickness", "9"])):
        assert main(["run", str(one), "--weights", str(yolov5n_pt), "--project", str(tmp_path), "--name", name,
                     *flags]) == 0
        outs[name] = cv2.imread(str(tmp_path / name / one.name)).astype(int)
    original = cv2.imread(str(one)).astype(int)
    changed = {k: int((np.abs(v - original).max(axis=2) > 40).sum()) for k, v in outs.items()}
    assert changed["bare"] < changed["names"] < changed["plain"] < changed["thick"], changed


def _kill_part_way(cmd: list[str], manifest: Path, at: int, total: int) -> int:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.is_file() and len(manifest.read_text().splitlines()) >= at:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    done = len(manifest.read_text().splitlines())
    assert at <= done < total, "the run must be killed part-way through"
    return done


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_annotated_images_keep_their_format_and_the_records_name_them(mode: str, tmp_path: Path) -> None:
    """The records named every annotated image .jpg (Path(".png").suffix is ""), so a resume that removed a vanished
    input's outputs left its .png behind, and process mode wrote PNG data into a file named .jpg. A suffix keeps its
    spelling, as detect.py names its output (``IMG_0001.JPG`` was written as ``IMG_0001.jpg``)."""
    src = tmp_path / "src"
    for i, name in enumerate(("a.png", "b.jpeg", "c.jpg", "d.tif", "e.bmp", "F.JPG", "g.Png", "h.TIFF")):
        _img(src / name, 48, 64, seed=i)
    common = ["--weights", RANDOM, "--imgsz", "64", "--project", str(tmp_path), "--name", "r", "--mode", mode,
              "--workers", "2"]
    assert main(["run", str(src), *common]) == 0
    out = tmp_path / "r"
    want = {"a.png": b"\x89PNG", "b.jpeg": b"\xff\xd8", "c.jpg": b"\xff\xd8", "d.jpg": b"\xff\xd8", "e.bmp": b"BM",
            "F.JPG": b"\xff\xd8", "g.Png": b"\x89PNG", "h.jpg": b"\xff\xd8"}
    assert {p.name for p in out.iterdir() if p.suffix not in (".jsonl", ".json", ".lock")} == set(want)
    for name, magic in want.items():
        assert (out / name).read_bytes().startswith(magic), name
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(f for m in manifest for f in m["files"]) == sorted(want)
    (src / "a.png").unlink()
    (src / "b.jpeg").unlink()
    assert main(["run", str(src), *common, "--resume"]) == 0
    assert not (out / "a.png").exists() and not (out / "b.jpeg").exists() and (out / "c.jpg").is_file()


def test_sigkill_then_resume_keeps_csv_and_crops_exact(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(80):
        _img(src / f"{i:03d}.jpg", 96, 128, seed=i)
    common = [sys.executable, "-m", "toolkit.cli", "run", str(src), "--weights", RANDOM, "--imgsz", "128",
              "--conf", "0.00001", "--max-det", "5", "--save-csv", "--save-crop", "--save-txt", "--mode", "thread",
              "--workers", "1", "--project", str(tmp_path)]
    full = subprocess.run([*common, "--name", "full"], capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr
    manifest = tmp_path / "cut" / "manifest.jsonl"
    _kill_part_way([*common, "--name", "cut"], manifest, 15, 80)
    resumed = subprocess.run([*common, "--name", "cut", "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    rows_full, rows_cut = _csv(tmp_path / "full" / "predictions.csv"), _csv(tmp_path / "cut" / "predictions.csv")
    assert len(rows_full) > 80
    assert sorted(map(tuple, rows_cut)) == sorted(map(tuple, rows_full))  # no row twice, none missing

    def crops(run: str) -> dict[str, bytes]:
        root = tmp_path / run / "crops"
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    assert crops("cut") == crops("full")
    keys = [json.loads(line)["key"] for line in manifest.read_text().splitlines()]
    assert sorted(keys) == [f"{i:03d}" for i in range(80)]


def test_manifest_lines_come_in_input_order_after_their_outputs(tmp_path: Path) -> None:
    """The output pool writes in parallel, but records inputs in order, each after its files exist."""
    src = tmp_path / "src"
    for i in range(30):
        _img(src / f"{i:02d}.jpg", 64 + 8 * (i % 3), 96, seed=i)
    from toolkit.jobs.run import RunOptions, run

    seen: list[str] = []

    def progress(done: int, total: int, oc: object) -> None:
        key = oc.key  # type: ignore[attr-defined]
        assert (tmp_path / "r" / f"{key}.jpg").is_file() and (tmp_path / "r" / "labels" / f"{key}.txt").is_file()
        seen.append(key)

    s = run(RunOptions.of(source=str(src), weights=RANDOM, imgsz=96, conf=1e-5, save_txt=True, project=str(tmp_path),
                       name="r", mode="process", workers=2, save_workers=3), progress=progress)
    assert s.processed == 30 and seen == [f"{i:02d}" for i in range(30)]


def test_a_file_name_that_is_not_utf8_reaches_the_csv_as_its_bytes(tmp_path: Path, coco128_images: Path,
                                                                   yolov5n_pt: Path) -> None:
    """A photo named in Latin-1 (b'caf\\xe9.jpg', as old cameras and Windows shares write names) crashed --save-csv
    with a UnicodeEncodeError traceback, exit 1, no summary: its rows name the file by its own bytes now."""
    src = tmp_path / "src"
    src.mkdir()
    with open(os.path.join(os.fsencode(src), b"caf\xe9.jpg"), "wb") as f:
        f.write((coco128_images / "000000000009.jpg").read_bytes())
    out = tmp_path / "out"
    assert main(["run", str(src), "--weights", str(yolov5n_pt), "--nosave", "--save-csv", "--save-json",
                 "--project", str(out), "--name", "r"]) == 0
    rows = (out / "r" / "predictions.csv").read_text(encoding="utf-8").splitlines()  # UTF-8 as a whole (review)
    assert len(rows) > 2 and all("caf\\udce9.jpg" in row for row in rows[1:])  # escaped as in predictions.json
    assert "caf\\udce9" in (out / "r" / "predictions.json").read_text(encoding="utf-8")
    assert json.loads((out / "r" / "summary.json").read_text())["images"] == 1
