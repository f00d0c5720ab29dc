"""Nothing lost: hostile inputs are listed with reasons, killed runs resume exactly, outputs are atomic."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.helpers import hostile as corpus
from tests.helpers.avi import frames_touched
from toolkit.cli import main
from toolkit.engine.detector import Detector
from toolkit.errors import OutputError
from toolkit.io.decode import decode_image, jpeg_size, read_image
from toolkit.io.files import ImageReadError, ReadLimits
from toolkit.io.outputs import write_json
from toolkit.jobs.run import RunOptions, run

WEIGHTS = "yolov5n.yaml"  # random weights: these tests are about accounting, not accuracy


def _img(path: Path, h: int, w: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    assert cv2.imwrite(str(path), cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (3, 3), 0))
    return path


def _exif_rotated_jpeg(path: Path, image: np.ndarray | None = None) -> None:
    """A JPEG of ``image`` (default: 40x80, h x w) whose EXIF orientation 6 says: rotate 90 degrees clockwise to
    display."""
    ok, buf = cv2.imencode(".jpg", np.full((40, 80, 3), 128, np.uint8) if image is None else image)
    assert ok
    data = buf.tobytes()
    # APP1 Exif, little-endian TIFF, IFD0 with one entry: Orientation (0x0112), SHORT, 1, value 6
    tiff = b"II*\x00\x08\x00\x00\x00" + b"\x01\x00" + b"\x12\x01\x03\x00\x01\x00\x00\x00\x06\x00\x00\x00" + \
        b"\x00\x00\x00\x00"
    app1 = b"Exif\x00\x00" + tiff
    segment = b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1
    path.write_bytes(data[:2] + segment + data[2:])


def _cmyk_jpeg(path: Path) -> None:
    """A 48x64 mostly-red CMYK JPEG as Pillow (and Photoshop) write it: Adobe APP14 marker, inverted CMYK."""
    Image.new("RGB", (64, 48), (220, 30, 30)).convert("CMYK").save(path, "JPEG", quality=95)


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
    _cmyk_jpeg(d / "cmyk.jpg")
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
    assert summary["images"] == 16 and summary["processed"] == 11
    # same names in different folders do not collide; names with spaces and non-ASCII survive
    assert (out / "a" / "same.jpg").is_file() and (out / "b" / "same.jpg").is_file()
    assert (out / "name with spaces ü.jpg").is_file()
    # EXIF orientation applied: the 80x40 (w x h) JPEG is read as 40 wide, 80 tall
    rotated = cv2.imread(str(out / "rotated.jpg"))
    assert rotated is not None and rotated.shape[:2] == (80, 40)
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 16 and len({m["key"] for m in manifest}) == 16
    # the CMYK JPEG reads as red BGR, at full and at reduced (fast) decode, not inverted or 4-channel
    for reduce in (1, 2):
        bgr = read_image(str(hostile / "cmyk.jpg"), reduce)
        assert bgr.shape == (48 // reduce, 64 // reduce, 3) and bgr.dtype == np.uint8
        b, g, r = bgr.reshape(-1, 3).mean(0)
        assert r > 190 and g < 60 and b < 60, (b, g, r)


def test_a_large_exif_rotated_jpeg_keeps_its_displayed_size_when_decoded_reduced(tmp_path: Path) -> None:
    stored = cv2.resize(np.random.default_rng(0).integers(0, 255, (8, 32, 3), dtype=np.uint8), (1600, 400))
    _exif_rotated_jpeg(tmp_path / "r.jpg", stored)  # stored 400x1600 (h x w), displayed 1600 tall, 400 wide
    with Detector(WEIGHTS, imgsz=128, conf=0.00001) as det:
        (full,) = det.predict_iter(str(tmp_path / "r.jpg"), fast_decode=False)
        (fast,) = det.predict_iter(str(tmp_path / "r.jpg"), fast_decode=True)  # decoded at 1/4 size
    assert full.detections is not None and full.detections.shape == (1600, 400)
    assert fast.detections is not None and fast.detections.shape == (1600, 400)
    assert fast.detections.xyxy[:, [0, 2]].max() <= 400 and fast.detections.xyxy[:, [1, 3]].max() > 800


def test_unwritable_output_is_one_clear_error(tmp_path: Path) -> None:
    img = _img(tmp_path / "x.jpg", 32, 32)
    blocker = tmp_path / "file"
    blocker.write_text("a file where the project folder should be")
    out = subprocess.run([sys.executable, "-m", "toolkit.cli", "run", str(img), "--weights", WEIGHTS, "--project",
                          str(blocker)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 7
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "cannot write" in lines[0]


def test_a_13400x9528_jpeg_keeps_its_original_size(tmp_path: Path) -> None:
    """A 13400x9528 photo (smooth content: it encodes in a fraction of a second) is processed, decoded in full (the
    default) or at reduced size (--fast-decode); either way boxes and labels are in its own pixels."""
    h, w = 9528, 13400
    src = tmp_path / "src"
    src.mkdir()
    small = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (30, 42, 3), dtype=np.uint8), (3, 3), 0)
    assert cv2.imwrite(str(src / "huge.jpg"), cv2.resize(small, (w, h)), [cv2.IMWRITE_JPEG_QUALITY, 80])
    for name, extra in (("fast", ["--nosave", "--fast-decode"]), ("full", [])):
        rc = main(["run", str(src), "--weights", WEIGHTS, "--imgsz", "128", "--conf", "0.00001", "--save-txt",
                   "--save-json", "--project", str(tmp_path), "--name", name, *extra])
        out = tmp_path / name
        summary = json.loads((out / "summary.json").read_text())
        assert rc == 0 and summary["processed"] == 1 and not summary["failed"], summary["failed"]
        boxes = np.array([p["bbox"] for p in json.loads((out / "predictions.json").read_text())])  # x, y, w, h
        assert len(boxes) > 10
        x2, y2 = boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 3]
        assert boxes[:, :2].min() >= 0 and x2.max() <= w and y2.max() <= h
        assert x2.max() > w / 2 and y2.max() > h / 2  # in original pixels, not in the reduced decode's
        labels = np.loadtxt(out / "labels" / "huge.txt", ndmin=2)[::-1]  # class xc yc w h, normalised to (w, h);
        # detect.py's order, the JSON's reversed
        np.testing.assert_allclose(labels[:, 1:] * [w, h, w, h],
                                   np.c_[boxes[:, :2] + boxes[:, 2:] / 2, boxes[:, 2:]], atol=0.5)
    assert jpeg_size(np.fromfile(tmp_path / "full" / "huge.jpg", np.uint8)) == (h, w)  # annotated at full size
    with Detector(WEIGHTS, imgsz=128, conf=0.00001) as det:
        (res,) = det.predict_iter(str(src / "huge.jpg"), fast_decode=True)
    assert res.error is None and res.detections is not None and res.detections.shape == (h, w)


# Root reads any file whatever its mode, so a root test run drops root's two file-access capabilities
# (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) from the bounding set and re-executes Python: it stays uid 0, so the
# interpreter (which may live under a 0700 /root, out of reach of "nobody") and root's temporary folders stay
# reachable through their owner bits, while a mode-000 file or folder is refused as for any user.
_NO_DAC_OVERRIDE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
    if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
        sys.exit(f"cannot drop capability {cap}: {os.strerror(ctypes.get_errno())}")
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""

_PROBE = """
import os, sys
try:
    open(sys.argv[1], "rb").close()
    sys.exit("the mode-000 file is readable")
except PermissionError:
    pass
try:
    os.listdir(sys.argv[2])
    sys.exit("the mode-000 folder is listable")
except PermissionError:
    pass
"""


_LIST_SOURCES = """
import sys
from toolkit.errors import InputError
from toolkit.io.sources import list_sources
for source in sys.argv[1:]:
    try:
        found = list_sources(source)
        print("no error: " + " ".join(sorted(ref.path.rsplit("/", 1)[-1] for ref in found.items)) + " | "
              + " | ".join(f"{ref.path.rsplit('/', 1)[-1]}: {why}" for ref, why in found.failed))
    except InputError as e:
        print(e)
"""


def _python_bound_by_permissions(locked_file: Path, locked_dir: Path) -> list[str]:
    """The command prefix of a Python for which ``locked_file`` and ``locked_dir`` (mode 000) are unreadable;
    skips, saying why, when there is none."""
    if sys.platform != "linux":
        pytest.skip("permission checks are exercised on Linux only")
    prefix = [sys.executable, "-c", _NO_DAC_OVERRIDE] if os.geteuid() == 0 else [sys.executable]
    probe = subprocess.run([*prefix, "-c", _PROBE, str(locked_file), str(locked_dir)], capture_output=True,
                           text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a file unreadable here ({'root' if os.geteuid() == 0 else 'user'}): "
                    f"{probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else probe.returncode}")
    return prefix


def test_unreadable_file_and_folder_are_listed_as_permission_denied(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _img(src / "a.jpg", 48, 64, seed=1)
    _img(src / "b.jpg", 48, 64, seed=2)
    locked = _img(src / "locked.jpg", 48, 64, seed=3)
    _img(src / "sealed" / "c.jpg", 48, 64, seed=4)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{src / 'a.jpg'}\n")
    for p in (locked, src / "sealed", listing):
        p.chmod(0)
    try:
        python = _python_bound_by_permissions(locked, src / "sealed")
        out = subprocess.run([*python, "-m", "toolkit.cli", "run", str(src), "--weights", WEIGHTS, "--imgsz", "64",
                              "--conf", "0.00001", "--save-txt", "--nosave", "--project", str(tmp_path), "--name",
                              "r", "--json"], capture_output=True, text=True, timeout=120)
        # an unreadable SOURCE folder or list file is one clear error, not "no images" or a traceback
        as_source = subprocess.run([*python, "-c", _LIST_SOURCES, str(src / "sealed"), str(listing),
                                    str(src / "sealed" / "*.jpg"), str(src / "**" / "*.jpg"),
                                    str(src / "sealed" / "c.jpg"), str(src / "*.jpg")], capture_output=True,
                                   text=True, timeout=60)
    finally:
        for p, mode in ((locked, 0o644), (src / "sealed", 0o755), (listing, 0o644)):
            p.chmod(mode)
    # a glob: was a traceback (PermissionError from Path.exists), and its ** skipped the folder without a word
    assert as_source.stdout.splitlines() == [
        f"{src / 'sealed'}: cannot list the folder (permission denied)",
        f"{listing}: cannot read the list file (permission denied)",
        f"{src / 'sealed' / '*.jpg'}: cannot list the folder {src / 'sealed'} (permission denied)",
        "no error: a.jpg b.jpg locked.jpg | sealed: permission denied (cannot list the folder; its images were not "
        "read)",
        f"{src / 'sealed' / 'c.jpg'}: permission denied (a folder on the way cannot be searched); check its "
        f"permissions",
        "no error: a.jpg b.jpg locked.jpg | "], as_source.stderr  # a folder the pattern cannot reach is no failure
    assert out.returncode == 1, out.stderr
    summary = json.loads(out.stdout)
    failures = [json.loads(line) for line in (tmp_path / "r" / "failures.jsonl").read_text().splitlines()]
    reasons = {Path(f["path"]).name: f["reason"] for f in failures}
    assert set(reasons) == {"locked.jpg", "sealed"}  # the folder's images are not silently lost
    assert all("permission denied" in why for why in reasons.values()), reasons
    assert summary["images"] == 4 and summary["processed"] == 2
    assert sorted(p.name for p in (tmp_path / "r" / "labels").iterdir()) == ["a.txt", "b.txt"]


_FILE_SIZE_LIMIT = """
import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (48 * 1024, 48 * 1024))
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


@contextlib.contextmanager
def _small_disk(folder: Path) -> Iterator[tuple[list[str], list[list[str]]]]:
    """A 1 MB tmpfs on ``folder`` when this process may mount one (a true "no space left on device"); else a
    Python whose files cannot grow past 48 KB ("file too large"). Yields the command prefix of a Python that
    writes there with too little room, and the commands that make room afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    mount = shutil.which("mount")
    if os.geteuid() == 0 and mount and subprocess.run([mount, "-t", "tmpfs", "-o", "size=1m", "yolokit-test",
                                                       str(folder)], capture_output=True).returncode == 0:
        try:
            yield [sys.executable], [[mount, "-o", "remount,size=64m", str(folder)]]
        finally:
            if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(folder)], capture_output=True)
    else:
        yield [sys.executable, "-c", _FILE_SIZE_LIMIT], []


def test_full_disk_is_one_clear_error_and_resume_completes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(20):  # noise: each annotated image is about 70 KB, 1.4 MB in all
        assert cv2.imwrite(str(src / f"{i:02d}.jpg"), rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
    disk = tmp_path / "disk"
    args = ["-m", "toolkit.cli", "run", str(src), "--weights", WEIGHTS, "--imgsz", "64", "--conf", "0.00001",
            "--save-txt", "--project", str(disk), "--name", "r", "--json"]
    with _small_disk(disk) as (python, make_room):
        full = subprocess.run([*python, *args], capture_output=True, text=True, timeout=120)
        assert full.returncode == 7, full.stderr
        assert "Traceback" not in full.stderr
        lines = [ln for ln in full.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, full.stderr
        line = lines[0]
        assert line.startswith("yolokit: ") and str(disk / "r") in line
        assert "No space left on device" in line or "File too large" in line
        assert "free" in line and "--resume" in line
        done = (disk / "r" / "manifest.jsonl").read_text().splitlines()
        assert len(done) < 20
        for cmd in make_room:
            subprocess.run(cmd, check=True, capture_output=True)
        resumed = subprocess.run([sys.executable, *args, "--resume"], capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr
        summary = json.loads(resumed.stdout)
        assert summary["images"] == 20 and summary["processed"] == 20 and summary["settings"]["resumed"] == len(done)
        keys = [json.loads(line)["key"] for line in (disk / "r" / "manifest.jsonl").read_text().splitlines()]
        assert sorted(keys) == [f"{i:02d}" for i in range(20)]  # nothing twice, nothing missing
        assert sorted(p.name for p in (disk / "r").glob("*.jpg")) == [f"{i:02d}.jpg" for i in range(20)]
        assert not [p for p in (disk / "r").rglob("*") if p.name.endswith(".tmp")]


def test_a_disk_full_before_the_first_input_says_to_run_again_not_to_resume(tmp_path: Path) -> None:
    """A disk already full: the run folder is removed (nothing was recorded), and the message said "continue the run
    with --resume", which then answered "nothing to resume (no manifest.jsonl)"."""
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        assert cv2.imwrite(str(src / f"{i}.jpg"), rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))  # ~300 KB
    disk = tmp_path / "disk"
    args = ["-m", "toolkit.cli", "run", str(src), "--weights", WEIGHTS, "--imgsz", "64", "--conf", "0.00001",
            "--project", str(disk), "--name", "r"]
    with _small_disk(disk) as (python, make_room):
        if make_room:  # a 1 MB tmpfs: filled all but a few KB first
            (disk / "filler").write_bytes(bytes(1024 * 1024 - 16 * 1024))
        full = subprocess.run([*python, *args], capture_output=True, text=True, timeout=120)
        assert full.returncode == 7, full.stderr
        line = full.stderr.strip()
        assert "\n" not in line and "run the command again (nothing was recorded" in line, line
        assert "--resume" not in line and not (disk / "r").exists()
        if make_room:
            (disk / "filler").unlink()


def test_a_write_that_cannot_even_start_is_an_output_error(tmp_path: Path) -> None:
    """Creating the folder or the temporary file fails too on a full disk (no inodes left) or a read-only folder:
    one OutputError naming the file, never a bare OSError that reaches the user as a traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(OutputError, match=r"file/sub/summary\.json: cannot write .*--resume"):
        write_json(blocker / "sub" / "summary.json", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


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
    args = ["--weights", WEIGHTS, "--imgsz", "64", "--project", str(tmp_path), "--save-txt", "--conf", "0.00001"]
    rc = main(["run", str(src), *args, "--name", "v"])
    summary = json.loads((tmp_path / "v" / "summary.json").read_text())
    assert rc == 1 and summary["images"] == 20
    assert 15 <= summary["processed"] < 20  # the frames around the damage fail, the rest are processed
    bad = {int(f["path"].rsplit("#frame", 1)[1]) for f in summary["failed"]}  # the failed frames, by number
    assert len(bad) == len(summary["failed"]) == 20 - summary["processed"]
    intact = tmp_path / "intact"
    intact.mkdir()
    (intact / "clip.avi").write_bytes((tmp_path / "v.avi").read_bytes())
    assert main(["run", str(intact), *args, "--name", "i"]) == 0
    want = {p.name: p.read_text() for p in (tmp_path / "i" / "labels").glob("*.txt")}
    got = {p.name: p.read_text() for p in (tmp_path / "v" / "labels").glob("*.txt")}
    assert set(got) == {f"clip_{i + 1}.txt" for i in range(20) if i not in bad}  # labels for every other frame
    first = min(frames_touched((tmp_path / "v.avi").read_bytes(), len(data) // 2, len(data) // 2 + 600))
    before = {f"clip_{i + 1}.txt" for i in range(first)}  # the frames before the damage: as in the intact video
    assert {k: got[k] for k in before} == {k: want[k] for k in before}
    assert (tmp_path / "v" / "clip.mp4").is_file()  # the annotated frames make one video


def test_resume_removes_partial_writes_of_the_killed_run(tmp_path: Path) -> None:
    """A run killed inside an atomic write leaves its temporary file; --resume deletes it (and only it)."""
    img = _img(tmp_path / "src" / "x.jpg", 32, 32)
    assert main(["run", str(img.parent), "--weights", WEIGHTS, "--project", str(tmp_path), "--name", "r",
                 "--nosave", "--save-txt", "--conf", "0.00001"]) == 0
    stale = tmp_path / "r" / "labels" / ".y.txt.0123456789ab.tmp"
    stale.parent.mkdir(exist_ok=True)
    stale.write_text("half a label file")
    mine = tmp_path / "r" / "notes.tmp"  # not yolokit's: left alone
    mine.write_text("keep")
    assert main(["run", str(img.parent), "--weights", WEIGHTS, "--project", str(tmp_path), "--name", "r",
                 "--nosave", "--save-txt", "--conf", "0.00001", "--resume"]) == 0
    assert not stale.exists() and mine.exists()


# ------------------------------------------------------------------------------------------ odd real-world files


def _run_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess, bounded: an input that blocks fails the test instead of hanging the suite."""
    return subprocess.run([sys.executable, "-m", "toolkit.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def odd(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str | None]]:
    d = tmp_path_factory.mktemp("odd") / "src"
    return d, corpus.build(d)


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_odd_files_are_processed_or_refused_at_once(mode: str, odd: tuple[Path, dict[str, str | None]],
                                                     tmp_path: Path) -> None:
    """Named pipes, sockets and devices (directly or behind links) are refused without being opened; JPEGs with
    trailers are processed; truncated files, damaged PNG chunks and pixel bombs are refused from their bytes; every
    reason is one plain sentence; the run ends promptly with exit code 1."""
    src, expect = odd
    t0 = time.monotonic()
    out = _run_cli("run", str(src), "--weights", WEIGHTS, "--imgsz", "128", "--mode", mode, "--workers", "2",
                   "--project", str(tmp_path), "--name", "r", "--json")
    assert time.monotonic() - t0 < 120
    assert out.returncode == 1, out.stderr
    summary = json.loads(out.stdout)
    failed = {Path(f["path"]).name: f["reason"] for f in summary["failed"]}
    assert set(failed) == {k for k, v in expect.items() if v is not None}
    for name, fragment in expect.items():
        if fragment is not None:
            assert fragment in failed[name], (name, failed[name])
    assert summary["processed"] == sum(v is None for v in expect.values())
    assert summary["images"] == len(expect)
    lines = [json.loads(x) for x in (tmp_path / "r" / "failures.jsonl").read_text().splitlines()]
    assert {Path(x["path"]).name for x in lines} == set(failed)
    _assert_plain(failed.values())
    labels_done = {json.loads(x)["key"] for x in (tmp_path / "r" / "manifest.jsonl").read_text().splitlines()}
    assert len(labels_done) == len(expect)


def _assert_plain(reasons: Iterable[str]) -> None:
    """Every reason is one line with no library internals (source paths, assertions, error codes)."""
    for reason in reasons:
        assert reason and "\n" not in reason, reason
        assert not [leak for leak in corpus.LEAKS if re.search(leak, reason)], reason


def test_every_reason_the_readers_give_is_plain(odd: tuple[Path, dict[str, str | None]]) -> None:
    """The reader itself, file by file, and the header checks on a wider set of damage."""
    src, expect = odd
    reasons = []
    for name in expect:
        try:
            read_image(str(src / name))
        except ImageReadError as e:
            reasons.append(e.reason)
    assert len(reasons) == sum(v is not None for v in expect.values())
    good = (src / "good.jpg").read_bytes()
    for cut in range(2, len(good), max(1, len(good) // 40)):  # every kind of cut
        try:
            decode_image(np.frombuffer(good[:cut], np.uint8), "cut.jpg")
        except ImageReadError as e:
            reasons.append(e.reason)
    for data in (b"\x89PNG\r\n\x1a\n" + os.urandom(100), b"BM" + os.urandom(60), b"GIF89a" + bytes(20),
                 b"II*\x00" + os.urandom(50), b"RIFF\x00\x00\x00\x00WEBPVP8 " + os.urandom(30)):
        try:
            decode_image(np.frombuffer(data, np.uint8), "odd")
        except ImageReadError as e:
            reasons.append(e.reason)
    assert len(reasons) > 20
    _assert_plain(reasons)


def test_lists_globs_and_a_special_source_are_refused_without_blocking(
        odd: tuple[Path, dict[str, str | None]], tmp_path: Path) -> None:
    src, _ = odd
    listing = tmp_path / "list.txt"
    listing.write_text(f"{src / 'good.jpg'}\n{src / 'pipe.jpg'}\n{src / 'endless.jpg'}\n")
    out = _run_cli("run", str(listing), "--weights", WEIGHTS, "--imgsz", "128", "--project", str(tmp_path),
                   "--name", "l", "--json", "--nosave")
    s = json.loads(out.stdout)
    assert out.returncode == 1 and s["processed"] == 1
    assert {Path(f["path"]).name for f in s["failed"]} == {"pipe.jpg", "endless.jpg"}, s["failed"]
    out = _run_cli("run", str(src / "*.jpg"), "--weights", WEIGHTS, "--imgsz", "128", "--project", str(tmp_path),
                   "--name", "g", "--json", "--nosave")
    s = json.loads(out.stdout)
    names = {Path(f["path"]).name for f in s["failed"]}
    assert out.returncode == 1 and {"pipe.jpg", "endless.jpg"} <= names  # a glob lists special files too
    out = _run_cli("run", str(src / "pipe.jpg"), "--weights", WEIGHTS, "--project", str(tmp_path), "--name", "p")
    assert out.returncode == 1 and "pipe.jpg: is a named pipe" in out.stdout
    out = _run_cli("run", str(src / "pipe_target"), "--weights", WEIGHTS, "--project", str(tmp_path))
    assert out.returncode == 2 and "is a named pipe (FIFO), not an image, video, folder or list file" in out.stderr
    out = _run_cli("run", str(src / "good.jpg"), "--weights", str(src / "pipe_target"), "--project", str(tmp_path))
    assert out.returncode == 3 and "is a named pipe (FIFO), not a model file" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_file_size_and_pixel_limits_are_options(tmp_path: Path) -> None:
    small = _img(tmp_path / "src" / "small.jpg", 32, 32)
    big = tmp_path / "src" / "big.png"
    assert cv2.imwrite(str(big), np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    assert small.stat().st_size < 20_000 < big.stat().st_size
    s = run(RunOptions.of(source=str(small.parent), weights=WEIGHTS, imgsz=64, project=str(tmp_path), name="f",
                       nosave=True, max_file_size=20_000))
    assert s.processed == 1 and len(s.failed) == 1
    assert "over the 19.5 KB limit; raise it with --max-file-size" in s.failed[0]["reason"]
    s = run(RunOptions.of(source=str(small.parent), weights=WEIGHTS, imgsz=64, project=str(tmp_path), name="p",
                       nosave=True, max_pixels=100_000))
    assert s.processed == 1 and "400x300 pixels" in s.failed[0]["reason"] and "--max-pixels" in s.failed[0]["reason"]
    # the photos this tool exists for stay well inside the default
    assert ReadLimits().max_pixels > 13400 * 9528 * 3
    assert main(["run", str(small), "--weights", WEIGHTS, "--max-pixels", "2G"]) == 2
    assert main(["run", str(small), "--weights", WEIGHTS, "--max-file-size", "lots"]) == 2


def test_the_decoders_own_lines_on_a_damaged_image_do_not_reach_the_terminal(tmp_path: Path) -> None:
    """libjpeg printed "Corrupt JPEG data: 721 extraneous bytes before marker 0xd9" for a JPEG whose scan data is
    damaged (decoded with a grey patch, as OpenCV and YOLOv5 decode it), and libpng "libpng error: Not enough image
    data" for a PNG whose compressed data stops short behind valid checksums: native lines beside yolokit's own."""
    import zlib

    src = tmp_path / "src"
    src.mkdir()
    photo = corpus.photo(96, 128, seed=3)
    jpeg = bytearray(corpus.jpeg(photo))
    jpeg[len(jpeg) // 2:len(jpeg) // 2 + 200] = bytes(np.random.default_rng(0).integers(0, 255, 200, np.uint8))
    (src / "damaged.jpg").write_bytes(bytes(jpeg))
    ok, png = cv2.imencode(".png", photo)
    chunks = corpus.png_chunks(png.tobytes())
    pixels = zlib.decompress(b"".join(data for kind, data in chunks if kind == b"IDAT"))
    short = [(kind, data) for kind, data in chunks if kind != b"IDAT"]
    short.insert(-1, (b"IDAT", zlib.compress(pixels[:len(pixels) // 2])))  # half the rows, valid checksums
    (src / "short.png").write_bytes(corpus.png_from(short))
    out = subprocess.run([sys.executable, "-m", "toolkit.cli", "run", str(src), "--weights", WEIGHTS, "--imgsz", "64",
                          "--nosave", "--project", str(tmp_path), "--name", "r"], capture_output=True, text=True,
                         timeout=120)
    assert "Corrupt JPEG" not in out.stderr and "libpng" not in out.stderr, out.stderr
    assert out.returncode == 1 and "short.png: " in out.stdout and "1/2 images processed" in out.stdout, out.stdout
    assert out.stderr == "", out.stderr


_NATIVE_WRITES = """
import ctypes, os, sys
from toolkit.cli.root import decoder_lines_dropped
libc = ctypes.PyDLL(None)  # PyDLL: the GIL stays held while it writes
with decoder_lines_dropped():
    for line in (b"Corrupt JPEG data: 1 extraneous bytes before marker 0xd9\\n", b"x" * 200000 + b"\\n"):
        libc.write(2, line, len(line))
    print("python's own", file=sys.stderr)
    if sys.argv[1] == "abort":
        libc.write(2, b"last words\\n", 11)
        libc.abort()
"""


@pytest.mark.parametrize("end", ["exit", "abort"])
def test_the_stderr_filter_never_blocks_native_code_and_passes_its_last_words(end: str) -> None:
    """The first filter, a thread of this process, needed the GIL: native code writing more than a pipe holds
    (64 KiB) while holding it waited for ever, a child process holding the pipe delayed every exit by 2 s, and what
    was written just before an abort was lost."""
    out = subprocess.run([sys.executable, "-c", _NATIVE_WRITES, end], capture_output=True, timeout=60)
    assert b"x" * 200000 in out.stderr and b"python's own" in out.stderr and b"Corrupt JPEG" not in out.stderr
    assert (b"last words" in out.stderr) == (end == "abort") and (out.returncode != 0) == (end == "abort")


def test_an_output_name_too_long_for_the_file_system_fails_its_input_not_the_run(tmp_path: Path) -> None:
    """'a.png' beside 'a.jpg' is keyed 'a.png', so its label is 'a.png.txt': with a 251-byte name that is over 255.
    The run stopped with exit 7 ('File name too long; free some space ...'), the other images never processed."""
    src = tmp_path / "src"
    for name in ("p" * 251 + ".jpg", "p" * 251 + ".png", "ok.jpg"):
        _img(src / name, 48, 64, seed=len(name))
    summary = run(RunOptions.of(source=str(src), weights=WEIGHTS, imgsz=64, save_txt=True, project=str(tmp_path),
                                name="r"))
    assert summary.images == 3 and summary.processed == 2, summary.failed
    assert summary.failed[0]["reason"].startswith("its output name ppp")
    assert "is longer than the file system allows (255 bytes a name); rename the input" in summary.failed[0]["reason"]
    assert not [p for p in (tmp_path / "r").rglob("*") if ".tmp" in p.name]
