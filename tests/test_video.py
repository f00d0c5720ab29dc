"""Videos: --vid-stride, one annotated .mp4 per input video (source size, source fps / N), label files named as
detect.py names them, corrupt stretches failing only their frames, and resume of an unfinished video."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers.avi import frame_spans, frames_touched
from tests.helpers.videos import ffmpeg
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


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_the_progress_counts_a_videos_frames_toward_its_total(mode: str, tmp_path: Path) -> None:
    """The total was the count of inputs, a video one of them: 20/1 on the bar for a video of 20 frames."""
    from toolkit.jobs.run import RunOptions, run

    src = tmp_path / "src"
    _video(src / "clip.avi", 25, fps=10.0)
    cv2.imwrite(str(src / "still.jpg"), np.full((48, 64, 3), 90, np.uint8))
    seen: list[tuple[int, int]] = []
    events: list[tuple[str, int, int]] = []
    summary = run(RunOptions.of(source=str(src), weights=RANDOM, imgsz=64, vid_stride=3, mode=mode, workers=2,
                                nosave=True, project=str(tmp_path), name="r"),
                  progress=lambda done, total, _: (seen.append((done, total)), events.append(("rec", done, total))),
                  ticks=lambda done, total: events.append(("tick", done, total)))
    assert summary.images == 9 and [d for d, _ in seen] == list(range(1, 10))  # 8 frames (25 // 3) and the still
    assert all(done <= total for done, total in seen)
    first_frame = next(i for i, (_, total) in enumerate(seen) if total != 2)  # until then: two inputs
    assert {total for _, total in seen[first_frame:]} == {9}, seen
    # a video's frames are recorded together once its .mp4 is complete: the ticks move while it is inferred
    ticks = [done for kind, done, _ in events if kind == "tick"]
    assert ticks == list(range(1, 10)) and all(done <= total for _, done, total in events)
    before = [done for kind, done, _ in events[:next(i for i, e in enumerate(events) if e[0] == "rec")]]
    assert before[:8] == list(range(1, 9)), events


def test_a_video_shorter_than_the_stride_is_listed(tmp_path: Path) -> None:
    """--vid-stride 31 over a video of 30 frames left it out of every list (exit 0, or 'no inputs' alone)."""
    v = _video(tmp_path / "src" / "short.avi", 5)
    got = list(iter_video(InputRef(str(v), "short", -1), 6))
    assert [(r.key, why) for r, _, why in got] == [("short", "the video has fewer frames than --vid-stride 6, so no "
                                                              "frame of it is kept; lower --vid-stride")]
    assert [r.key for r, _, _ in iter_video(InputRef(str(v), "short", -1), 5)] == ["short_1"]


def test_an_image_named_as_a_videos_frame_keeps_its_own_outputs(tmp_path: Path) -> None:
    """a_1.jpg beside a.avi: the video's first frame is a_1 too (detect.py's naming), and both wrote labels/a_1.txt,
    one's boxes lost without a word."""
    src = tmp_path / "src"
    _video(src / "a.avi", 3)
    cv2.imwrite(str(src / "a_1.jpg"), np.full((48, 64, 3), 90, np.uint8))
    assert main(["run", str(src), *ARGS, "--nosave", "--project", str(tmp_path), "--name", "r"]) == 0
    labels = sorted(p.name for p in (tmp_path / "r" / "labels").iterdir())
    assert labels == ["a_1.jpg.txt", "a_1.txt", "a_2.txt", "a_3.txt"], labels
    keys = [json.loads(line)["key"] for line in (tmp_path / "r" / "manifest.jsonl").read_text().splitlines()]
    assert sorted(keys) == ["a_1", "a_1.jpg", "a_2", "a_3"]


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


def test_a_frame_the_demuxer_drops_is_reported_as_itself(tmp_path: Path) -> None:
    """OpenCV's reader skips an AVI frame whose chunk header is damaged and hands on the next in its place: the
    damaged frame fails under its own number, and every other frame keeps its number and its detections."""
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
    assert "chunk in the AVI file is damaged" in summary["failed"][0]["reason"]
    assert summary["images"] == 20 and summary["processed"] == 19
    want = {p.name: p.read_text() for p in (tmp_path / "i" / "labels").glob("*.txt")}
    got = {p.name: p.read_text() for p in (tmp_path / "v" / "labels").glob("*.txt")}
    assert got == {k: v for k, v in want.items() if k != "clip_9.txt"}
    assert _read_mp4(tmp_path / "v" / "clip.mp4")[0] == 19
    # with --vid-stride 3 (frames 2, 5, 8, ... kept): the damaged frame is a kept one, clip_3
    assert main(["run", str(src), *ARGS, "--vid-stride", "3", "--project", str(tmp_path), "--name", "s"]) == 1
    strided = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert [f["path"].rsplit("#", 1)[1] for f in strided["failed"]] == ["frame8"]
    got = {p.name: p.read_text() for p in (tmp_path / "s" / "labels").glob("*.txt")}
    assert sorted(got) == sorted(f"clip_{k}.txt" for k in (1, 2, 4, 5, 6))
    assert all(got[f"clip_{k}.txt"] == want[f"clip_{3 * k}.txt"] for k in (1, 2, 4, 5, 6))


def test_frames_the_demuxer_drops_in_an_interleaved_avi_keep_their_numbers(tmp_path: Path) -> None:
    """An AVI as FFmpeg writes it (video and audio chunks interleaved, MPEG-4 Part 2 with P-frames): two damaged
    video chunk headers fail those two frames, and every other frame keeps its number (where its pixels are those
    of the intact file, its detections are too)."""
    v = tmp_path / "ff.avi"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x120:rate=10", "-f", "lavfi", "-i", "sine=f=440:sample_rate=8000",
           "-t", "3", "-c:v", "mpeg4", "-g", "5", "-c:a", "pcm_s16le", str(v))
    data = bytearray(v.read_bytes())
    spans = frame_spans(bytes(data))
    assert len(spans) == 30
    for k in (4, 17):
        data[spans[k][0]:spans[k][0] + 8] = bytes(8)
    for name, blob in (("v", bytes(data)), ("i", v.read_bytes())):
        (tmp_path / name).mkdir()
        (tmp_path / name / "clip.avi").write_bytes(blob)
        main(["run", str(tmp_path / name), *ARGS, "--project", str(tmp_path / "out"), "--name", name])
    summary = json.loads((tmp_path / "out" / "v" / "summary.json").read_text())
    assert sorted(f["path"].rsplit("#", 1)[1] for f in summary["failed"]) == ["frame17", "frame4"]
    got = {p.name for p in (tmp_path / "out" / "v" / "labels").glob("*.txt")}
    want = {p.name: p.read_text() for p in (tmp_path / "out" / "i" / "labels").glob("*.txt")}
    assert got <= set(want) and not got & {"clip_5.txt", "clip_18.txt"} and len(got) >= 20
    # keyframes every 5 frames: frames 5-16 and 20-29 (0-based) decode as in the intact file, so under their own
    # numbers they have its detections; frames 18 and 19 lost their reference
    same = [k for k in [*range(0, 4), *range(5, 17), *range(20, 30)] if f"clip_{k + 1}.txt" in want]
    assert len(same) >= 20
    assert [(tmp_path / "out" / "v" / "labels" / f"clip_{k + 1}.txt").read_text() for k in same] == \
        [want[f"clip_{k + 1}.txt"] for k in same]


def _packets(path: Path) -> list[tuple[int, int]]:
    """(offset, size) of each video packet, as ffprobe finds them."""
    import subprocess

    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries", "packet=pos,size",
                          "-of", "csv=p=0", str(path)], capture_output=True, text=True, check=True).stdout
    return [(int(pos), int(size)) for size, pos in (line.split(",")[:2] for line in out.split())]


def _frames(path: Path) -> list[tuple[int, np.ndarray | None]]:
    return [(r.frame, f) for r, f, _ in iter_video(InputRef(str(path), "clip", -1))]


def test_frames_a_decoder_drops_after_a_damaged_one_fail_as_themselves(tmp_path: Path) -> None:
    """An H.264 frame filled with garbage: OpenCV's reader fails it, then its decoder drops the frames that
    depended on it without a word and hands on a later one. The later frame's timestamp tells its number: the
    dropped frames fail as themselves, and every frame from the next keyframe on is the intact file's frame under
    its own number (before, each was numbered as the one before it, and the video's last frames failed)."""
    v = tmp_path / "h264.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x120:rate=10", "-t", "3", "-c:v", "libx264", "-g", "5", "-bf",
           "0", "-pix_fmt", "yuv420p", str(v), skip_if_it_cannot=True)
    intact = _frames(v)
    assert len(intact) == 30 and all(f is not None for _, f in intact)
    data = bytearray(v.read_bytes())
    pos, size = _packets(v)[10]
    data[pos:pos + size] = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    got = _frames(bad)
    assert [k for k, _ in got] == list(range(30))  # every frame accounted for, once, in order
    failed = {k for k, f in got if f is None}
    assert 10 in failed and failed <= set(range(10, 15)), failed
    assert all(np.array_equal(f, intact[k][1]) for k, f in got if k < 10 or k >= 15)


def test_a_variable_frame_rate_video_is_numbered_as_its_frames_come(tmp_path: Path) -> None:
    """Timestamps that leave the frame rate (a gap of exactly three frames in an intact video) are not taken for
    lost frames: the frames are numbered as the reader hands them on, as detect.py numbers them, and none fails."""
    v = tmp_path / "vfr.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x120:rate=10:duration=2", "-vf", "setpts='(N+3*gte(N,8))/10/TB'",
           "-fps_mode", "vfr", "-c:v", "mpeg4", "-g", "5", str(v), skip_if_it_cannot=True)
    cap = cv2.VideoCapture(str(v))
    stamps = []
    while cap.grab():
        stamps.append(round(cap.get(cv2.CAP_PROP_POS_MSEC)))
    cap.release()
    assert len(stamps) == 20 and stamps[8] - stamps[7] == 400  # the gap is in the file as the reader sees it
    got = _frames(v)
    assert [k for k, _ in got] == list(range(20)) and all(f is not None for _, f in got)


@pytest.mark.parametrize("suffix", [".mkv", ".ts", ".wmv"])
def test_sound_that_outlasts_the_pictures_is_no_missing_frame(suffix: str, tmp_path: Path) -> None:
    """In Matroska, MPEG-TS and ASF (.wmv) OpenCV's frame count is an estimate from the file's duration, the longest
    stream's: a 2 s clip with 3 s of sound "has" 30 frames at 10 fps. Its 20 frames are processed and none fails
    (before, the ten it never had failed and the run exited 1)."""
    src = tmp_path / "src"
    src.mkdir()
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x120:rate=10:duration=2", "-f", "lavfi", "-i",
           "sine=f=440:sample_rate=8000:duration=3", "-c:v", "mpeg4", "-c:a", "mp2", str(src / f"clip{suffix}"),
           skip_if_it_cannot=True)
    assert cv2.VideoCapture(str(src / f"clip{suffix}")).get(cv2.CAP_PROP_FRAME_COUNT) > 20  # the estimate
    assert main(["run", str(src), *ARGS, "--project", str(tmp_path), "--name", "r"]) == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert (summary["images"], summary["processed"], summary["failed"]) == (20, 20, [])


@pytest.mark.parametrize("suffix, extra", [(".mp4", ["-movflags", "+faststart"]), (".mkv", []), (".avi", [])])
def test_every_frame_missing_from_a_cut_video_fails(suffix: str, extra: list[str], tmp_path: Path) -> None:
    """A video cut off (an interrupted copy or download) misses its frames up to the count, each failing as cut
    short and the run exiting 1: MP4 and AVI record their count (before, at most ten failed, the rest went
    unlisted), and a Matroska file declares its size (before, its missing frames went unlisted and the run exited
    0). With --vid-stride, the frames it keeps."""
    v = tmp_path / f"whole{suffix}"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x120:rate=10:duration=6", "-c:v", "mpeg4", "-g", "5", *extra,
           str(v), skip_if_it_cannot=True)
    data = v.read_bytes()
    src = tmp_path / "src"
    src.mkdir()
    (src / f"cut{suffix}").write_bytes(data[: len(data) // 2])
    for stride in (1, 4):
        name = f"r{stride}"
        assert main(["run", str(src), *ARGS, "--vid-stride", str(stride), "--project", str(tmp_path),
                     "--name", name]) == 1
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        frames = sorted(int(f["path"].rsplit("#frame", 1)[1]) for f in summary["failed"])
        kept = [k for k in range(60) if (k + 1) % stride == 0]
        assert summary["images"] == len(kept) and summary["processed"] + len(frames) == len(kept)
        assert frames == kept[summary["processed"]:] and len(frames) > 10 // stride
        assert all("cut short" in f["reason"] for f in summary["failed"])


def test_a_video_cut_before_its_index_says_it_is_cut_short(tmp_path: Path) -> None:
    """An MP4 whose index (moov) came last cannot be opened once cut: the one failure says why, not "corrupt or
    unsupported codec"."""
    v = tmp_path / "whole.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x120:rate=10:duration=3", "-c:v", "mpeg4", str(v),
           skip_if_it_cannot=True)
    data = v.read_bytes()
    assert data.rfind(b"moov") > len(data) // 2  # the index last
    src = tmp_path / "src"
    src.mkdir()
    (src / "cut.mp4").write_bytes(data[: len(data) // 2])
    assert main(["run", str(src), *ARGS, "--project", str(tmp_path), "--name", "r"]) == 1
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert [f["path"].rsplit("/", 1)[-1] for f in summary["failed"]] == ["cut.mp4"]
    assert "cannot open the video: the file ends before its declared end" in summary["failed"][0]["reason"]



def test_a_video_that_gives_no_frame_fails_as_a_whole(tmp_path: Path) -> None:
    """A GIF whose header says 65535x65535 opens and gives no frame: it is listed as failed (it was in no list, the
    image beside it processed and the run ending 1/2 without a word)."""
    import struct

    src = tmp_path / "src"
    src.mkdir()
    cv2.imwrite(str(src / "a.jpg"), np.zeros((32, 32, 3), np.uint8))
    side = 65535
    (src / "big.gif").write_bytes(b"GIF89a" + struct.pack("<HHBBB", side, side, 0, 0, 0) + b","
                                  + struct.pack("<HHHHB", 0, 0, side, side, 0) + bytes([2, 2, 0x4C, 0x01, 0]) + b";")
    assert main(["run", str(src), *ARGS, "--project", str(tmp_path), "--name", "r"]) == 1
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert [f["path"].rsplit("/", 1)[-1] for f in summary["failed"]] == ["big.gif"]
    assert "gives no frame that can be decoded" in summary["failed"][0]["reason"]
    assert summary["processed"] == 1


def test_a_video_named_in_bytes_that_are_not_utf8_is_read(tmp_path: Path) -> None:
    """OpenCV's reader crashed the process (SIGSEGV) on a file name that is not UTF-8 text: the video is read
    through a link with a plain name, every frame processed. In a child process, so that a crash fails this test
    alone."""
    import os
    import subprocess
    import sys

    src = tmp_path / "src"
    _video(src / "plain.avi", 4)
    os.rename(src / "plain.avi", os.path.join(os.fsencode(src), b"\xff clip.avi"))
    code = ("import sys; from toolkit.cli import main; "
            f"sys.exit(main(['run', sys.argv[1], *{ARGS!r}, '--project', sys.argv[2], '--name', 'r']))")
    done = subprocess.run([sys.executable, "-c", code, str(src), str(tmp_path)], capture_output=True, text=True,
                          errors="replace", timeout=300)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["processed"] == 4 and not summary["failed"]

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


@pytest.mark.parametrize("stride", [1, 4])
def test_a_gif_cut_short_lists_the_frame_where_it_ends(stride: int, tmp_path: Path) -> None:
    """A GIF cut at half its bytes: OpenCV's reader gives the frames before the cut and ends, its count only
    those frames (for some writers' GIFs: the run ended 10/10, exit 0). Now the frames after the cut that can be
    named fail as cut short: the first one kept where the count ends with the cut."""
    from PIL import Image

    frames = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8))
              for i in range(20)]
    whole = tmp_path / "whole.gif"
    frames[0].save(whole, save_all=True, append_images=frames[1:], duration=100)
    data = whole.read_bytes()
    src = tmp_path / "src"
    src.mkdir()
    (src / "cut.gif").write_bytes(data[: len(data) // 2])
    got = list(iter_video(InputRef(str(src / "cut.gif"), "cut", -1), stride))
    read = [r.frame for r, f, why in got if why is None]
    bad = [(r.frame, r.key, why) for r, f, why in got if why is not None]
    assert read and bad and all("cut short" in why for _, _, why in bad), bad
    assert min(k for k, _, _ in bad) > max(read) and all((k + 1) % stride == 0 for k, _, _ in bad)
    assert len({r.key for r, _, _ in got}) == len(got)  # every frame, read or failed, a key of its own
    whole_run = list(iter_video(InputRef(str(whole), "whole", -1), stride))
    assert all(why is None for _, _, why in whole_run) and len(whole_run) == 20 // stride


def test_ctrl_c_in_a_file_video_leaves_no_finished_looking_video(tmp_path: Path) -> None:
    """Ctrl-C in the middle of a video left its annotated .mp4 under its final name with the frames done so far
    (it looked finished; the records did not list it). The unfinished file is dropped; --resume makes the video."""
    import signal
    import subprocess
    import sys
    import time

    from tests.helpers.ports import ctrl_c_reaches

    clip = _video(tmp_path / "long.avi", 300, size=(160, 120))
    args = [sys.executable, "-m", "toolkit.cli", "run", str(clip), "--weights", "yolov5n.yaml", "--imgsz", "256",
            "--conf", "0.00001", "--save-txt", "--project", str(tmp_path), "--name", "r", "--workers", "1"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=ctrl_c_reaches)
    labels = tmp_path / "r" / "labels"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and len(list(labels.glob("*.txt"))) < 20:
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.skip("the video was done before it could be interrupted")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    assert not (tmp_path / "r" / "long.mp4").exists()
    assert not [p for p in (tmp_path / "r").iterdir() if p.name.endswith(".tmp.mp4")]
    done = subprocess.run([*args, "--resume"], capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    video = cv2.VideoCapture(str(tmp_path / "r" / "long.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 300
    video.release()
