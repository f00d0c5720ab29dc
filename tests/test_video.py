"""Videos: --vid-stride, one annotated .mp4 per input video (source size, source fps / N), label files named as
detect.py names them, corrupt stretches failing only their frames, and resume of an unfinished video."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers.avi import frame_spans, frames_touched
from toolkit.cli import main
from toolkit.io.sources import InputRef, iter_video

RANDOM = "yolov5n.yaml"
ARGS = ["--weights", RANDOM, "--imgsz", "64", "--conf", "0.00001", "--max-det", "3", "--save-txt"]


def _video(path: Path, frames: int, fps: float = 10.0, size: tuple[int, int] = (96, 64)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG video")
    rng = np.random.default_rng(0)
    for i in range(frames):
        frame = cv2.GaussianBlur(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), (5, 5), 0)
        cv2.putText(frame, str(i), (5, 30), 0, 1.0, (255, 255, 255), 2)
        writer.write(frame)
    writer.release()
    return path


def _read_mp4(path: Path) -> tuple[int, float, tuple[int, int]]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    n = 0
    while cap.read()[0]:
        n += 1
    fps, size = cap.get(cv2.CAP_PROP_FPS), (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                                           int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    cap.release()
    return n, fps, size


def test_iter_video_keeps_every_nth_frame_numbered_like_detect_py(tmp_path: Path) -> None:
    v = _video(tmp_path / "clip.avi", 10)
    got = [(r.key, r.frame, r.video, round(r.fps, 3)) for r, f, why in iter_video(InputRef(str(v), "clip", -1), 3)]
    # detect.py reads 3 frames and keeps the last: frames 2, 5, 8, labelled _1, _2, _3
    assert got == [("clip_1", 2, "clip", 3.333), ("clip_2", 5, "clip", 3.333), ("clip_3", 8, "clip", 3.333)]
    all_frames = list(iter_video(InputRef(str(v), "clip", -1)))
    assert [r.key for r, _, _ in all_frames] == [f"clip_{i}" for i in range(1, 11)]
    assert np.array_equal(all_frames[5][1], [f for r, f, _ in iter_video(InputRef(str(v), "clip", -1), 3)][1])


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_vid_stride_writes_one_mp4_at_source_fps_over_n(mode: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    _video(src / "clip.avi", 25, fps=10.0, size=(96, 64))
    cv2.imwrite(str(src / "still.jpg"), np.full((48, 64, 3), 90, np.uint8))
    rc = main(["run", str(src), *ARGS, "--vid-stride", "3", "--mode", mode, "--workers", "2", "--project",
               str(tmp_path), "--name", "r"])
    assert rc == 0
    out = tmp_path / "r"
    n, fps, size = _read_mp4(out / "clip.mp4")
    assert (n, size) == (8, (96, 64)) and abs(fps - 10 / 3) < 0.01
    assert sorted(p.name for p in (out / "labels").glob("clip_*.txt")) == sorted(f"clip_{i}.txt" for i in range(1, 9))
    assert (out / "still.jpg").is_file() and not list(out.glob("clip_*.jpg"))
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    frames = [m for m in manifest if m.get("video") == "clip"]
    assert [m["key"] for m in frames] == [f"clip_{i}" for i in range(1, 9)]
    assert [bool(m.get("video_done")) for m in frames] == [False] * 7 + [True]


def test_a_corrupt_stretch_fails_only_its_frames_and_the_video_keeps_the_rest(tmp_path: Path) -> None:
    v = _video(tmp_path / "v.avi", 20)
    data = bytearray(v.read_bytes())
    data[len(data) // 2: len(data) // 2 + 600] = bytes(600)
    src = tmp_path / "src"
    src.mkdir()
    (src / "clip.avi").write_bytes(bytes(data))
    rc = main(["run", str(src), *ARGS, "--project", str(tmp_path), "--name", "v"])
    summary = json.loads((tmp_path / "v" / "summary.json").read_text())
    assert rc == 1 and summary["images"] == 20
    assert 15 <= summary["processed"] < 20
    assert all("cannot decode" in f["reason"] for f in summary["failed"]), summary["failed"]
    bad = {int(f["path"].rsplit("#frame", 1)[1]) for f in summary["failed"]}  # 0-based frame numbers, by name
    assert len(bad) == 20 - summary["processed"] == len(summary["failed"])
    touched = frames_touched(v.read_bytes(), len(data) // 2, len(data) // 2 + 600)
    assert bad <= touched, (bad, touched)  # only frames whose bytes were damaged fail
    intact = tmp_path / "intact"
    intact.mkdir()
    (intact / "clip.avi").write_bytes(v.read_bytes())
    assert main(["run", str(intact), *ARGS, "--project", str(tmp_path), "--name", "i"]) == 0
    want = {p.name: p.read_text() for p in (tmp_path / "i" / "labels").glob("*.txt")}
    got = {p.name: p.read_text() for p in (tmp_path / "v" / "labels").glob("*.txt")}
    assert set(got) == {f"clip_{i + 1}.txt" for i in range(20) if i not in bad}  # the failed frames have no labels
    untouched = {k for k in got if int(k[5:-4]) - 1 not in touched}
    assert {k: got[k] for k in untouched} == {k: want[k] for k in untouched}  # the intact video's detections
    assert _read_mp4(tmp_path / "v" / "clip.mp4")[0] == summary["processed"]


@pytest.mark.xfail(strict=True, reason="found, not fixed: a frame whose chunk header is damaged is dropped by "
                   "OpenCV's demuxer, and the frames after it are numbered one too low (frame k+1's detections are "
                   "written as frame k's) while the last frame number is reported as the one that failed")
def test_a_frame_the_demuxer_drops_is_reported_as_itself(tmp_path: Path) -> None:
    v = _video(tmp_path / "v.avi", 20)
    data = bytearray(v.read_bytes())
    start, _ = frame_spans(bytes(data))[8]
    data[start:start + 16] = bytes(16)  # frame 8's chunk header (and the start of its JPEG)
    src = tmp_path / "src"
    src.mkdir()
    (src / "clip.avi").write_bytes(bytes(data))
    assert main(["run", str(src), *ARGS, "--project", str(tmp_path), "--name", "v"]) == 1
    intact = tmp_path / "intact"
    intact.mkdir()
    (intact / "clip.avi").write_bytes(v.read_bytes())
    assert main(["run", str(intact), *ARGS, "--project", str(tmp_path), "--name", "i"]) == 0
    summary = json.loads((tmp_path / "v" / "summary.json").read_text())
    assert [f["path"].rsplit("#", 1)[1] for f in summary["failed"]] == ["frame8"]
    want = {p.name: p.read_text() for p in (tmp_path / "i" / "labels").glob("*.txt")}
    got = {p.name: p.read_text() for p in (tmp_path / "v" / "labels").glob("*.txt")}
    assert got == {k: v for k, v in want.items() if k != "clip_9.txt"}


def test_resume_redoes_an_unfinished_video_and_skips_a_finished_one(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _video(src / "a.avi", 6)
    _video(src / "b.avi", 7)
    args = ["run", str(src), *ARGS, "--project", str(tmp_path), "--name", "r", "--mode", "thread"]
    assert main(args) == 0
    out = tmp_path / "r"
    manifest = out / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    assert len(lines) == 13
    # as a kill during b would leave it: a's records, b's half-written video, none of b's records
    manifest.write_text("".join(line + "\n" for line in lines[:6]))
    (out / "b.mp4").unlink()
    (out / ".b.mp4.0123456789ab.tmp.mp4").write_bytes(b"half a video")
    a_before = (out / "a.mp4").stat().st_mtime_ns
    assert main([*args, "--resume"]) == 0
    keys = [json.loads(line)["key"] for line in manifest.read_text().splitlines()]
    assert sorted(keys) == sorted([f"a_{i}" for i in range(1, 7)] + [f"b_{i}" for i in range(1, 8)])
    assert _read_mp4(out / "b.mp4")[0] == 7 and (out / "a.mp4").stat().st_mtime_ns == a_before
    assert not list(out.glob(".*.tmp*"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 13 and summary["processed"] == 13 and summary["settings"]["resumed"] == 6


def test_resume_redoes_a_changed_video_and_removes_a_vanished_one(tmp_path: Path) -> None:
    """A video replaced by another clip is done again (its .mp4 and labels replaced, frames it no longer has
    removed); a deleted video's .mp4 and labels are removed; the summary counts what the folder holds."""
    src = tmp_path / "src"
    _video(src / "a.avi", 6)
    _video(src / "b.avi", 7)
    cv2.imwrite(str(src / "still.jpg"), np.full((48, 64, 3), 90, np.uint8))
    args = ["run", str(src), *ARGS, "--project", str(tmp_path), "--mode", "thread"]
    assert main([*args, "--name", "r"]) == 0
    out = tmp_path / "r"
    (src / "a.avi").unlink()
    _video(src / "b.avi", 4, size=(64, 48))  # a shorter, smaller clip under the same name
    assert main([*args, "--name", "r", "--resume"]) == 0
    assert not (out / "a.mp4").exists() and not list((out / "labels").glob("a_*"))
    assert _read_mp4(out / "b.mp4")[0::2] == (4, (64, 48))
    assert sorted(p.name for p in (out / "labels").glob("b_*")) == [f"b_{i}.txt" for i in range(1, 5)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == summary["processed"] == 5
    assert summary["resume"] == {"changed": [str(src / "b.avi")], "retried": [], "removed": [str(src / "a.avi")]}
    assert main([*args, "--name", "fresh"]) == 0
    assert sorted(json.loads(x)["key"] for x in (out / "manifest.jsonl").read_text().splitlines()) == \
        sorted(json.loads(x)["key"] for x in (tmp_path / "fresh" / "manifest.jsonl").read_text().splitlines())
