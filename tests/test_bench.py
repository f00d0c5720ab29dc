"""`yolokit bench` on a tiny grid, for real."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from toolkit.jobs.bench import BenchOptions, bench, grid
from toolkit.jobs.bench.report import COLUMNS


def _check_outputs(out: Path, n_rows: int) -> list[dict[str, str]]:
    for name in ("results.json", "results.csv", "report.md", "throughput.png"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert list(rows[0].keys()) == COLUMNS and len(rows) == n_rows
    assert cv2.imread(str(out / "throughput.png")) is not None
    return rows


@pytest.mark.timeout(900)  # fresh processes and an export: 35 s on a 2-core VM at a load of 3, 179 s at 10
def test_tiny_grid_on_official_weights(yolov5n_pt: Path, coco128_images: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    opts = BenchOptions(weights=str(yolov5n_pt), source=str(coco128_images), backends=["torch", "onnx"],
                        precisions=["fp32"], modes=["seq"], images=4, repeat=1, out=str(tmp_path / "b"))
    result = bench(opts)
    rows = _check_outputs(tmp_path / "b", 3)
    base, onnx, e2e = result["rows"]
    assert base["config"] == "torch fp32 b1 seq" and "error" not in onnx
    assert e2e["config"] == "onnx fp32 +nms b1 seq" and "error" not in e2e and e2e["nms"] is True
    # coco128 has labels: accuracy is mAP, and the baseline agrees with itself exactly
    assert base["agree_f1"] == 1.0 and base["speedup"] == 1.0 and base["map_delta"] == 0.0
    assert onnx["agree_f1"] > 0.95 and abs(onnx["map_delta"]) < 0.02
    # NMS inside the model, exported at the bench's val settings: single label, where the baseline's val-style NMS is
    # multi-label; with 300 boxes per image at conf 0.001 the two keep different low-confidence boxes (agreement is
    # low by design), but the mAP is close (measured on these 4 images: +0.019; on coco128, -0.002)
    assert e2e["map50_95"] > 0.5 and abs(e2e["map_delta"]) < 0.05
    assert any(r["pareto"] for r in result["rows"])
    assert cv2.imread(str(tmp_path / "b" / "speed_vs_accuracy.png")) is not None
    for r in result["rows"]:
        assert r["img_s"] > 0 and r["raw_img_s"] > 0 and r["peak_rss_mb"] > 50 and r["startup_s"] > 0
    report = (tmp_path / "b" / "report.md").read_text()
    assert "torch fp32 b1 seq" in report and "onnx fp32 b1 seq" in report and "Pareto front" in report
    assert rows[0]["config"] == "torch fp32 b1 seq"
    # a second run reuses the exported artifact
    artifacts = sorted((tmp_path / "b" / "artifacts").iterdir())
    mtimes = [p.stat().st_mtime for p in artifacts]
    bench(BenchOptions(**{**opts.__dict__, "backends": ["onnx"]}))
    assert [p.stat().st_mtime for p in sorted((tmp_path / "b" / "artifacts").iterdir())] == mtimes


def test_failed_configuration_is_recorded_and_the_bench_goes_on(tmp_path: Path) -> None:
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(3):
        cv2.imwrite(str(src / f"{i}.jpg"), np.full((64, 64, 3), 50 * i, np.uint8))
    opts = BenchOptions(weights="yolov5n.yaml", source=str(src), backends=["torch", "nonexistent"],
                        precisions=["fp32"], modes=["seq"], images=3, repeat=1, out=str(tmp_path / "b"), imgsz=64)
    result = bench(opts)
    assert "error" not in result["rows"][0] and "nonexistent" in result["rows"][1]["error"]
    data = json.loads((tmp_path / "b" / "results.json").read_text())
    assert data["machine"]["cores"] and data["images"] == 3
    _check_outputs(tmp_path / "b", 2)


def test_default_grid_has_the_baseline_first() -> None:
    configs = grid(BenchOptions(weights="w", source="s", backends=["onnx"], modes=["auto"]))
    assert configs[0].name == "torch fp32 b1 seq" and configs[1].backend == "onnx"


def test_pareto_front() -> None:
    from toolkit.jobs.bench.report import mark_pareto, pareto_front

    # (img/s, accuracy): the fastest, the most accurate and one in between are on the front; the dominated are not
    pts = [(10.0, 0.30), (20.0, 0.28), (15.0, 0.25), (5.0, 0.31), (20.0, 0.20), (10.0, 0.30)]
    assert pareto_front(pts) == [0, 1, 3, 5]  # equal points do not beat each other
    rows = [{"img_s": 10.0, "map50_95": 0.3}, {"img_s": 30.0, "map50_95": 0.1}, {"img_s": 9.0, "map50_95": 0.29},
            {"config": "x", "error": "failed"}, {"img_s": 50.0, "agree_f1": None}]
    mark_pareto(rows)
    assert [r.get("pareto") for r in rows] == [True, True, False, None, None]
