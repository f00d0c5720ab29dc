"""The run's printed summary: failures listed one line each, a video's run of failed frames folded into one."""

from __future__ import annotations

import json
from pathlib import Path

from toolkit.jobs.run import RunSummary, failure_lines, format_summary

CUT = "the video file ends before this frame (cut short)"


def _frames(video: str, frames: range | list[int], reason: str = CUT) -> list[dict[str, str]]:
    return [{"path": f"{video}#frame{k}", "reason": reason} for k in frames]


def test_a_videos_frames_that_fail_for_one_reason_are_one_line() -> None:
    failed = [{"path": "a.jpg", "reason": "empty file (0 bytes)"}, *_frames("clip.mp4", range(27, 60)),
              *_frames("other.mkv", range(3, 60, 4)), {"path": "b.png", "reason": "damaged PNG"}]
    assert failure_lines(failed) == [
        "a.jpg: empty file (0 bytes)",
        f"clip.mp4#frame27-59 (33 frames): {CUT}",
        f"other.mkv#frame3-59 (15 frames): {CUT}",  # --vid-stride 4: the frames it keeps
        "b.png: damaged PNG",
    ]


def test_another_reason_another_video_or_a_frame_out_of_order_starts_a_new_line() -> None:
    failed = [*_frames("v.avi", [5], "cannot decode this frame"), *_frames("v.avi", [6, 7]),
              *_frames("w.avi", [8]), *_frames("v.avi", [9, 2])]
    assert failure_lines(failed) == [
        "v.avi#frame5: cannot decode this frame",
        f"v.avi#frame6-7 (2 frames): {CUT}",
        f"w.avi#frame8: {CUT}",
        f"v.avi#frame9: {CUT}",
        f"v.avi#frame2: {CUT}",
    ]


def test_at_most_so_many_lines_then_how_many_inputs_more() -> None:
    failed = [{"path": f"{i}.jpg", "reason": "not an image file"} for i in range(25)] + _frames("c.mp4", range(10))
    lines = failure_lines(failed, most=20)
    assert len(lines) == 21 and lines[-1] == "... and 15 more"  # 5 images and the 10 frames not shown
    assert failure_lines(_frames("c.mp4", range(100)), most=1) == [f"c.mp4#frame0-99 (100 frames): {CUT}"]
    assert failure_lines([]) == []


def test_a_name_with_a_newline_or_other_bytes_stays_on_its_line() -> None:
    """A file name holding a newline split its failure line in two; an escape or a byte that is not UTF-8 (kept as
    a surrogate) is written as its escape too."""
    failed = [{"path": "/data/bad\nname.jpg", "reason": "truncated"},
              {"path": "/data/\x1b[31mred.jpg", "reason": "empty file"},
              {"path": "/data/\udcff.jpg", "reason": "empty file"}]
    assert failure_lines(failed) == ["/data/bad\\nname.jpg: truncated", "/data/\\x1b[31mred.jpg: empty file",
                                     "/data/\\udcff.jpg: empty file"]


def test_an_interrupted_run_says_how_much_of_it_was_done() -> None:
    """An interrupted run printed "42/42 images processed", as a complete one does."""
    summary = RunSummary("runs/detect/exp", "yolov5n.onnx", "onnx", "coco128", images=42, processed=42,
                         interrupted=True, planned=128)
    text = format_summary(summary)
    assert text.startswith("42/42 images processed (interrupted: 42 of 128 handled) in ")
    assert "INTERRUPTED: 42 of 128 inputs were handled before the stop; the same command with --resume continues" \
        in text
    done = format_summary(RunSummary("runs/detect/exp", "w", "onnx", "s", images=128, processed=128, planned=128))
    assert done.startswith("128/128 images processed in ") and "INTERRUPTED" not in done
    # a live run: --resume is refused for streams, so the summary does not offer it
    live = format_summary(RunSummary("runs/detect/exp", "w", "onnx", "cam.streams", images=207, processed=207,
                                     interrupted=True, streams=[{"source": "rtsp://cam", "frames_processed": 207,
                                                                 "frames_read": 240, "dropped": 33, "fps_read": 25.0,
                                                                 "fps_processed": 21.0, "reason": "",
                                                                 "state": "live"}]))
    assert "INTERRUPTED: 207 frames were recorded before the stop; a live run is not resumed" in live
    assert "--resume" not in live
    resumed = format_summary(RunSummary("runs/detect/exp", "w", "onnx", "s", images=768, processed=768,
                                        settings={"resumed": 119}, wall_s=21.6, img_per_s=30.0))
    assert resumed.startswith("768/768 images processed (119 processed before this resume) in 21.6 s "
                              "(30.0 img/s)"), resumed  # 30 img/s is this session's 649 images
    # a failure recorded before is not one processed before (it read "1 of them recorded before this resume")
    mixed = format_summary(RunSummary("runs/detect/exp", "w", "onnx", "s", images=3, processed=1,
                                      settings={"resumed": 2, "resumed_failed": 2}))
    assert mixed.startswith("1/3 images processed (2 failed before this resume) in "), mixed
    both = format_summary(RunSummary("runs/detect/exp", "w", "onnx", "s", images=9, processed=8,
                                     settings={"resumed": 5, "resumed_failed": 1}))
    assert both.startswith("8/9 images processed (4 processed and 1 failed before this resume) in "), both


def test_inputs_that_reached_max_det_are_told(tmp_path: Path, coco128_images: Path, yolov5n_pt: Path) -> None:
    """A 128-megapixel image tiled gave exactly 1000 boxes, the lowest at 0.52 for --conf 0.25, and nothing said
    the rest were dropped: a note now counts the inputs that reached --max-det."""
    from toolkit.cli import main

    src = tmp_path / "src"
    src.mkdir()
    for p in sorted(coco128_images.glob("*.jpg"))[:3]:
        (src / p.name).symlink_to(p)
    out = tmp_path / "out"
    assert main(["run", str(src), "--weights", str(yolov5n_pt), "--nosave", "--max-det", "1", "--project", str(out),
                 "--name", "r"]) == 0
    notes = json.loads((out / "r" / "summary.json").read_text())["notes"]
    assert any(n.startswith("3 input(s) have 1 box(es), the most --max-det keeps: any more") for n in notes), notes
    assert main(["run", str(src), "--weights", str(yolov5n_pt), "--nosave", "--project", str(out), "--name", "d"]) == 0
    assert not any("--max-det" in n for n in json.loads((out / "d" / "summary.json").read_text())["notes"])
