"""Acceptance 1 of the core issue: `yolokit run` reproduces the official YOLOv5 v7.0 detect.py outputs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers.matching import match, read_label_file, xywhn_to_xyxy
from toolkit.cli import main


def _compare(images: Path, ref_dir: Path, got_dir: Path) -> dict[str, int]:
    totals = {"ref": 0, "matched": 0, "extra": 0, "empty_mismatch": 0}
    no_det = set((ref_dir / "_no_detections.txt").read_text().split())
    for img in sorted(images.glob("*.jpg")):
        ref = read_label_file(ref_dir / f"{img.stem}.txt")
        got = read_label_file(got_dir / f"{img.stem}.txt")
        if (img.name in no_det) != (len(got) == 0):
            totals["empty_mismatch"] += 1
        h, w = cv2.imread(str(img)).shape[:2]
        m, extra = match(xywhn_to_xyxy(ref, w, h), ref[:, 0], ref[:, 5], xywhn_to_xyxy(got, w, h), got[:, 0],
                         got[:, 5], min_iou=0.99, conf_tol=0.002)
        totals["ref"] += len(ref)
        totals["matched"] += m
        totals["extra"] += extra
    return totals


@pytest.mark.parametrize("mode", ["default", "lowconf"])
def test_run_matches_official_detect(mode: str, coco128_images: Path, reference: Path, yolov5n_pt: Path,
                                     tmp_path: Path) -> None:
    args = ["run", str(coco128_images), "--weights", str(yolov5n_pt), "--save-txt", "--save-conf", "--nosave",
            "--project", str(tmp_path), "--name", mode]
    if mode == "default":
        args += ["--conf", "0.25", "--iou", "0.45"]
        ref_dir = reference / "detect"
    else:
        args += ["--conf", "0.001", "--iou", "0.6", "--max-det", "300"]
        ref_dir = reference / "detect_lowconf"
    assert main(args) == 0
    t = _compare(coco128_images, ref_dir, tmp_path / mode / "labels")
    assert t["ref"] > 500
    if mode == "default":
        # every reference box matched (same class, IoU >= 0.99, |conf diff| <= 0.002), no extras
        assert t["matched"] == t["ref"], t
        assert t["extra"] == 0, t
        assert t["empty_mismatch"] == 0, t
    else:
        assert t["matched"] >= 0.99 * t["ref"], t


def test_summary_counts_every_image(coco128_images: Path, yolov5n_pt: Path, tmp_path: Path) -> None:
    import json

    files = sorted(coco128_images.glob("*.jpg"))[:3]
    src = tmp_path / "src"
    src.mkdir()
    for f in files:
        (src / f.name).write_bytes(f.read_bytes())
    (src / "broken.jpg").write_bytes(files[0].read_bytes()[:2000])
    (src / "empty.png").write_bytes(b"")
    (src / "notes.png").write_text("not an image")
    rc = main(["run", str(src), "--weights", str(yolov5n_pt), "--project", str(tmp_path), "--name", "r",
               "--save-txt", "--save-json"])
    assert rc == 1  # some inputs failed
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["images"] == 6 and summary["processed"] == 3
    reasons = {Path(f["path"]).name: f["reason"] for f in summary["failed"]}
    assert set(reasons) == {"broken.jpg", "empty.png", "notes.png"}
    assert "truncated" in reasons["broken.jpg"] and "empty" in reasons["empty.png"]
    lines = (tmp_path / "r" / "failures.jsonl").read_text().splitlines()
    assert len(lines) == 3
    annotated = sorted(p.name for p in (tmp_path / "r").glob("*.jpg"))
    assert annotated == sorted(f.name for f in files)
    preds = json.loads((tmp_path / "r" / "predictions.json").read_text())
    assert preds and {"image_id", "category_id", "bbox", "score"} <= set(preds[0])
    assert np.all(np.array([p["bbox"][2] for p in preds]) > 0)
