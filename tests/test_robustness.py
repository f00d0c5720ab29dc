"""Nothing lost: hostile inputs are listed with reasons, killed runs resume exactly, outputs are atomic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from toolkit.cli import main

WEIGHTS = "yolov5n.yaml"  # random weights: these tests are about accounting, not accuracy


def _img(path: Path, h: int, w: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    assert cv2.imwrite(str(path), cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (3, 3), 0))
    return path


def _exif_rotated_jpeg(path: Path) -> None:
    """A 40x80 (h x w) JPEG whose EXIF orientation 6 says: rotate 90 degrees clockwise to display."""
    ok, buf = cv2.imencode(".jpg", np.full((40, 80, 3), 128, np.uint8))
    assert ok
    data = buf.tobytes()
    # APP1 Exif, little-endian TIFF, IFD0 with one entry: Orientation (0x0112), SHORT, 1, value 6
    tiff = b"II*\x00\x08\x00\x00\x00" + b"\x01\x00" + b"\x12\x01\x03\x00\x01\x00\x00\x00\x06\x00\x00\x00" + \
        b"\x00\x00\x00\x00"
    app1 = b"Exif\x00\x00" + tiff
    segment = b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1
    path.write_bytes(data[:2] + segment + data[2:])


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hostile")
    good = _img(d / "good.jpg", 120, 160)
    (d / "truncated.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (d / "zero.jpg").write_bytes(b"")
    (d / "random.jpg").write_bytes(os.urandom(4096))
    (d / "text.png").write_text("this is not a png")
    cv2.imwrite(str(d / "alpha.png"), np.full((50, 60, 4), 200, np.uint8))
    cv2.imwrite(str(d / "deep16.png"), np.full((50, 60, 3), 40000, np.uint16))
    cv2.imwrite(str(d / "gray.jpg"), np.full((50, 60), 90, np.uint8))
    _exif_rotated_jpeg(d / "rotated.jpg")
    _img(d / "tiny_1x1.png", 1, 1)
    _img(d / "strip_10000x10.png", 10, 10000)
    _img(d / "name with spaces ü.jpg", 64, 64)
    _img(d / "a" / "same.jpg", 64, 64, seed=1)
    _img(d / "b" / "same.jpg", 64, 64, seed=2)
    (d / "dangling.jpg").symlink_to(d / "missing-target.jpg")
    return d


def test_every_hostile_input_is_processed_or_listed(hostile: Path, tmp_path: Path) -> None:
    rc = main(["run", str(hostile), "--weights", WEIGHTS, "--imgsz", "128", "--project", str(tmp_path), "--name",
               "r", "--save-txt", "--conf", "0.00001"])
    assert rc == 1
    out = tmp_path / "r"
    summary = json.loads((out / "summary.json").read_text())
    failed = {Path(f["path"]).name: f["reason"] for f in summary["failed"]}
    assert set(failed) == {"truncated.jpg", "zero.jpg", "random.jpg", "text.png", "dangling.jpg"}
    assert "truncated" in failed["truncated.jpg"] and "empty" in failed["zero.jpg"]
    assert "symbolic link" in failed["dangling.jpg"]
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert {Path(f["path"]).name for f in failures} == set(failed)
    assert summary["images"] == 15 and summary["processed"] == 10
    # same names in different folders do not collide; names with spaces and non-ASCII survive
    assert (out / "a" / "same.jpg").is_file() and (out / "b" / "same.jpg").is_file()
    assert (out / "name with spaces ü.jpg").is_file()
    # EXIF orientation applied: the 80x40 (w x h) JPEG is read as 40 wide, 80 tall
    rotated = cv2.imread(str(out / "rotated.jpg"))
    assert rotated is not None and rotated.shape[:2] == (80, 40)
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 15 and len({m["key"] for m in manifest}) == 15


def test_unwritable_output_is_one_clear_error(tmp_path: Path) -> None:
    img = _img(tmp_path / "x.jpg", 32, 32)
    blocker = tmp_path / "file"
    blocker.write_text("a file where the project folder should be")
    out = subprocess.run([sys.executable, "-m", "toolkit.cli", "run", str(img), "--weights", WEIGHTS, "--project",
                          str(blocker)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 7
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "cannot write" in lines[0]


def _labels(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*.txt"))}


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(120):
        _img(src / f"{i:03d}.jpg", 96, 128, seed=i)
    common = [sys.executable, "-m", "toolkit.cli", "run", str(src), "--weights", WEIGHTS, "--imgsz", "128",
              "--conf", "0.00001", "--max-det", "20", "--save-txt", "--save-conf", "--save-json", "--nosave",
              "--mode", "thread", "--workers", "1", "--project", str(tmp_path)]
    full = subprocess.run([*common, "--name", "full"], capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr
    proc = subprocess.Popen([*common, "--name", "cut"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = tmp_path / "cut" / "manifest.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if manifest.is_file() and len(manifest.read_text().splitlines()) >= 20:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    done_before = len(manifest.read_text().splitlines())
    assert 20 <= done_before < 120, "the run must be killed part-way through"
    resumed = subprocess.run([*common, "--name", "cut", "--resume", "--json"], capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["images"] == 120 and summary["processed"] == 120
    assert summary["settings"]["resumed"] >= 20
    assert _labels(tmp_path / "cut" / "labels") == _labels(tmp_path / "full" / "labels")
    keys = [json.loads(line)["key"] for line in manifest.read_text().splitlines()]
    assert sorted(keys) == sorted(f"{i:03d}" for i in range(120))  # nothing twice, nothing missing
    preds_full = json.loads((tmp_path / "full" / "predictions.json").read_text())
    preds_cut = json.loads((tmp_path / "cut" / "predictions.json").read_text())
    assert sorted(json.dumps(p, sort_keys=True) for p in preds_cut) == \
        sorted(json.dumps(p, sort_keys=True) for p in preds_full)
    leftovers = [p for p in (tmp_path / "cut").rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers


def test_resume_refuses_other_settings(tmp_path: Path) -> None:
    img = _img(tmp_path / "src" / "x.jpg", 32, 32)
    assert main(["run", str(img.parent), "--weights", WEIGHTS, "--project", str(tmp_path), "--name", "r",
                 "--nosave"]) == 0
    assert main(["run", str(img.parent), "--weights", WEIGHTS, "--project", str(tmp_path), "--name", "r",
                 "--nosave", "--resume", "--conf", "0.5"]) == 2
    assert main(["run", str(img.parent), "--weights", WEIGHTS, "--project", str(tmp_path), "--name", "none",
                 "--resume"]) == 2


def test_video_with_a_corrupt_stretch_reports_the_bad_frame_and_keeps_the_rest(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    writer = cv2.VideoWriter(str(tmp_path / "v.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG video")
    rng = np.random.default_rng(0)
    for _ in range(20):
        writer.write(cv2.GaussianBlur(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), (5, 5), 0))
    writer.release()
    data = bytearray((tmp_path / "v.avi").read_bytes())
    data[len(data) // 2: len(data) // 2 + 600] = bytes(600)  # a corrupt stretch in the middle
    (src / "clip.avi").write_bytes(bytes(data))
    rc = main(["run", str(src), "--weights", WEIGHTS, "--imgsz", "64", "--project", str(tmp_path), "--name", "v",
               "--save-txt", "--conf", "0.00001"])
    summary = json.loads((tmp_path / "v" / "summary.json").read_text())
    assert rc == 1 and summary["images"] == 20
    assert 15 <= summary["processed"] < 20  # the frames around the damage fail, the rest are processed
    assert all("#frame" in f["path"] for f in summary["failed"])
    assert (tmp_path / "v" / "clip_0.jpg").is_file()  # annotated frames are written per frame
