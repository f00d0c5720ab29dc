"""`yolokit bench` on a tiny grid, for real."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from toolkit.errors import InputError, OutputError
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
                        precisions=["fp32"], modes=["seq"], images=4, repeat=1, out=str(tmp_path / "b"),
                        ceiling=False)
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
    # a second run writes into a new folder beside the first, and reuses the first's exported artifacts
    artifacts = sorted((tmp_path / "b" / "artifacts").iterdir())
    mtimes = [p.stat().st_mtime for p in artifacts]
    again = bench(BenchOptions(**{**opts.__dict__, "backends": ["onnx"]}))
    assert again["out"] == str(tmp_path / "b2") and (tmp_path / "b2" / "report.md").is_file()
    assert [p.stat().st_mtime for p in sorted((tmp_path / "b" / "artifacts").iterdir())] == mtimes
    assert not any((tmp_path / "b2" / "artifacts").iterdir())
    assert again["rows"][1]["plan"] and "error" not in again["rows"][1]


def test_failed_configuration_is_recorded_and_the_bench_goes_on(tmp_path: Path) -> None:
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(3):
        cv2.imwrite(str(src / f"{i}.jpg"), np.full((64, 64, 3), 50 * i, np.uint8))
    (src / "bad.jpg").write_bytes(b"garbage")  # counted as processed at no cost (136 % of the ceiling): left out
    import backends

    if backends.REGISTRY["trt"].is_available():
        pytest.skip("TensorRT runs here: this test needs a configuration that fails (an unknown backend is refused "
                    "up front)")
    opts = BenchOptions(weights="yolov5n.yaml", source=str(src), backends=["torch", "trt"], nms=False,
                        precisions=["fp32"], modes=["seq"], images=4, repeat=1, out=str(tmp_path / "b"), imgsz=64)
    result = bench(opts)
    assert "error" not in result["rows"][0] and "tensorrt" in result["rows"][1]["error"], result["rows"]
    base = result["rows"][0]  # the machine's ceiling for the model, and the configuration's share of it
    assert base["ceiling_img_s"] > 0 and base["ceiling_share"] == pytest.approx(base["img_s"] / base["ceiling_img_s"])
    assert "| ceiling img/s (share) |" in (tmp_path / "b" / "report.md").read_text()
    data = json.loads((tmp_path / "b" / "results.json").read_text())
    assert data["machine"]["cores"] and data["images"] == 3
    assert [Path(b["path"]).name for b in data["left_out"]] == ["bad.jpg"]
    assert "1 image(s) could not be read and are left out of every figure: " in (tmp_path / "b" / "report.md"
                                                                                    ).read_text()
    _check_outputs(tmp_path / "b", 2)


def test_an_out_folder_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    """--out under a file, or on a read-only file system, ended in a PermissionError/NotADirectoryError traceback."""
    src = tmp_path / "imgs"
    src.mkdir()
    cv2.imwrite(str(src / "a.jpg"), np.full((64, 64, 3), 50, np.uint8))
    (tmp_path / "precious.txt").write_text("mine")
    opts = BenchOptions(weights="yolov5n.yaml", source=str(src), backends=["torch"], nms=False, precisions=["fp32"],
                        modes=["seq"], images=1, repeat=1, out=str(tmp_path / "precious.txt" / "sub"), imgsz=64)
    with pytest.raises(OutputError, match=r"precious.txt/sub: cannot write the bench's report there .*--out"):
        bench(opts)
    assert (tmp_path / "precious.txt").read_text() == "mine"


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


def test_the_default_grid_runs_bf16_from_the_fp32_export() -> None:
    from toolkit.jobs.bench import exported_precision, run_precision

    configs = grid(BenchOptions(weights="w", source="s", backends=["openvino", "onnx"], modes=["auto"], nms=False))
    names = [c.name for c in configs]
    assert "openvino bf16 b1 auto" in names and not any(n.startswith("onnx bf16") for n in names)
    bf16 = next(c for c in configs if c.precision == "bf16")
    assert (exported_precision(bf16), run_precision(bf16)) == ("fp32", "bf16")
    fp32 = next(c for c in configs if c.backend == "openvino" and c.precision == "fp32")
    assert (exported_precision(fp32), run_precision(fp32)) == ("fp32", "auto")


def test_bf16_in_the_bench_with_its_parity_and_map(yolov5n_pt: Path, coco128_images: Path, tmp_path: Path) -> None:
    import backends

    if not backends.REGISTRY["openvino"].is_available():
        pytest.skip("OpenVINO not installed")
    opts = BenchOptions(weights=str(yolov5n_pt), source=str(coco128_images), backends=["openvino"],
                        precisions=["fp32", "bf16"], modes=["seq"], images=6, repeat=1, out=str(tmp_path / "b"),
                        nms=False, ceiling=False)
    rows = bench(opts)["rows"]
    base, fp32, bf16 = rows
    assert fp32["config"] == "openvino fp32 b1 seq" and fp32["agree_parity"] > 0.97  # FP32 keeps the .pt's boxes
    assert len(list((tmp_path / "b" / "artifacts").iterdir())) == 1  # bf16 runs the FP32 export
    if "error" in bf16:  # a CPU without bf16: the one-line refusal is the row's error
        assert "--precision bf16" in bf16["error"] and "no bf16 arithmetic" in bf16["error"]
        return
    assert bf16["map50_95"] > 0.2 and 0 < bf16["agree_parity"] <= 1 and bf16["agree_f1"] > 0.8
    report = (tmp_path / "b" / "report.md").read_text()
    assert "openvino bf16 b1 seq" in report and "| parity |" in report


def test_without_matplotlib_the_report_says_how_to_get_charts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    from toolkit.jobs.bench import plots as charts
    from toolkit.jobs.bench.report import report

    rows = [{"config": "torch fp32 b1 seq", "img_s": 10.0, "img_s_min": 9.0, "img_s_max": 11.0, "steady_img_s": 10.0,
             "raw_img_s": 20.0, "p50_ms": 1.0, "p95_ms": 2.0, "startup_s": 0.5, "peak_rss_mb": 100.0, "mode": "seq",
             "map50_95": 0.3, "pareto": True}]
    result = {"machine": {"processor": "x", "cores": 2, "device": "cpu", "platform": "p", "versions": {}},
              "options": {"repeat": 1}, "images": 1, "rows": rows}
    pytest.importorskip("matplotlib")
    assert charts.draw(rows, tmp_path, lambda r: (r["map50_95"], "mAP50-95"), 1) == [
        "speed_vs_accuracy.png", "throughput.png"]
    assert "Charts: ![speed_vs_accuracy.png]" in report({**result, "charts": ["speed_vs_accuracy.png"]})
    monkeypatch.setattr(charts, "available", lambda: False)
    assert charts.draw(rows, tmp_path / "none", lambda r: (r["map50_95"], "mAP50-95")) == []
    assert "pip install 'yolokit[charts]'" in report({**result, "charts": []})


def test_an_export_as_weights_is_refused_before_anything_runs(tmp_path: Path, exported: dict[str, Path],
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """--weights yolov5n.onnx ran the ONNX file as the "torch fp32" baseline, then failed every other
    configuration ("is not a PyTorch checkpoint") and still wrote a ranked report."""
    from toolkit.cli import main

    src = tmp_path / "imgs"
    src.mkdir()
    cv2.imwrite(str(src / "a.jpg"), np.full((64, 64, 3), 90, np.uint8))
    assert main(["bench", "--weights", str(exported["onnx"]), "--source", str(src), "--images", "1",
                 "--out", str(tmp_path / "b")]) == 2
    assert "compares the artifacts it exports from a .pt checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "b" / "report.md").exists()


def test_a_bad_label_or_an_unsafe_checkpoint_is_found_before_the_grid_runs(tmp_path: Path) -> None:
    """A label with x = 1.5 threw away every measurement after the whole grid had run (exit 2, no report); an unsafe
    checkpoint failed every configuration in turn (exit 1, an empty report)."""
    import pickle

    from toolkit.errors import ModelFileError

    data = tmp_path / "ds"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    for i in range(3):
        cv2.imwrite(str(data / "images" / f"{i}.jpg"), np.full((64, 64, 3), 60 * i, np.uint8))
        (data / "labels" / f"{i}.txt").write_text("0 0.5 0.5 0.2 0.2\n" if i else "0 1.5 0.5 0.2 0.2\n")
    opts = BenchOptions(weights="yolov5n.yaml", source="", data=str(data), backends=["torch"], nms=False,
                        precisions=["fp32"], modes=["seq"], images=3, repeat=1, out=str(tmp_path / "b"), imgsz=64)
    result = bench(opts)
    assert [Path(b["path"]).name for b in result["left_out"]] == ["0.jpg"]
    assert "coordinates" in result["left_out"][0]["reason"] and "error" not in result["rows"][0]

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    fake = tmp_path / "fake.pt"  # an ONNX model named .pt: refused as an export, not with --backend's words
    onnx_head = b"\x08\x08\x12\x07pytorch" + bytes(64)
    fake.write_bytes(onnx_head)
    with pytest.raises(InputError, match="give the checkpoint"):
        bench(BenchOptions(weights=str(fake), source=str(data / "images"), backends=["torch"], nms=False,
                           precisions=["fp32"], modes=["seq"], images=1, repeat=1, out=str(tmp_path / "f")))
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"model": Evil()}))
    with pytest.raises(ModelFileError):
        bench(BenchOptions(weights=str(evil), source=str(data / "images"), backends=["torch"], nms=False,
                           precisions=["fp32"], modes=["seq"], images=1, repeat=1, out=str(tmp_path / "e")))
    assert not (tmp_path / "e" / "results.json").exists()


def test_a_report_without_charts_says_why() -> None:
    """Every configuration failed: the report said "No charts: they are drawn with matplotlib (pip install ...)"
    with matplotlib installed (review)."""
    from toolkit.jobs.bench.plots import available
    from toolkit.jobs.bench.report import report

    result = {"rows": [{"config": "torch fp32 seq", "error": "failed"}], "images": 3, "options": {"repeat": 1},
              "machine": {"processor": "x", "cores": 2, "device": "cpu", "platform": "p", "versions": "v"},
              "charts": []}
    text = report(result)
    assert ("No charts: no configuration ran." in text) is available(), text
    assert "with 5 or fewer, it is the whole run's rate" in text


def _dataset(root: Path, labels: list[str | None]) -> Path:
    """A YOLO dataset folder (images/, labels/) of 64x64 images, one per entry of ``labels``: the label file's text,
    or None for a background image (no label file)."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i, text in enumerate(labels):
        cv2.imwrite(str(root / "images" / f"{i}.jpg"), np.full((64, 64, 3), 40 + 60 * i, np.uint8))
        if text is not None:
            (root / "labels" / f"{i}.txt").write_text(text)
    return root


def _tiny(**kw: object) -> BenchOptions:
    """A one-configuration bench of the built-in yolov5n.yaml at 64 px: the PyTorch baseline once."""
    opts: dict[str, object] = {"weights": "yolov5n.yaml", "source": "", "backends": ["torch"], "nms": False,
                               "precisions": ["fp32"], "modes": ["seq"], "repeat": 1, "imgsz": 64, "ceiling": False}
    return BenchOptions(**{**opts, **kw})  # type: ignore[arg-type]


def test_background_images_do_not_turn_map_off(tmp_path: Path) -> None:
    """An image without a label file among the first five (a background image, normal in YOLO datasets) made the
    bench report "F1 vs baseline" with mAP None and exit 0, with --data too; a --data without any label file was
    scored as agreement instead of refused as yolokit val refuses it."""
    data = _dataset(tmp_path / "ds", [None, "0 0.5 0.5 0.2 0.2\n", None])
    rows = bench(_tiny(data=str(data), images=3, out=str(tmp_path / "d")))["rows"]
    assert rows[0]["map50_95"] is not None and rows[0]["map_delta"] == 0.0, rows[0]
    rows = bench(_tiny(source=str(data / "images"), images=3, out=str(tmp_path / "s")))["rows"]
    assert rows[0]["map50_95"] is not None, rows[0]  # without --data: labelled, as some image has a label file
    bare = _dataset(tmp_path / "bare", [None, None])
    with pytest.raises(InputError, match=r"bare: none of the 2 images benchmarked has a label file .*layout"):
        bench(_tiny(data=str(bare), images=2, out=str(tmp_path / "b")))
    assert not (tmp_path / "b").exists()
    rows = bench(_tiny(source=str(bare / "images"), images=2, out=str(tmp_path / "a")))["rows"]
    assert rows[0].get("map50_95") is None and rows[0]["agree_f1"] == 1.0  # no labels anywhere: agreement


def test_a_bad_label_under_source_is_left_out_before_the_grid_runs(tmp_path: Path) -> None:
    """Labels were checked up front with --data only: a labelled --source with one bad label file ran the whole
    grid, then threw every measurement away (exit 2, no results.json) when the mAP read that file."""
    data = _dataset(tmp_path / "ds", ["0 0.5 0.5 0.2 0.2\n", "0 1.5 0.5 0.2 0.2\n", None])
    result = bench(_tiny(source=str(data / "images"), images=3, out=str(tmp_path / "b")))
    assert [Path(b["path"]).name for b in result["left_out"]] == ["1.jpg"]
    assert "coordinates above 1" in result["left_out"][0]["reason"] and result["images"] == 2
    assert result["rows"][0]["map50_95"] is not None
    assert json.loads((tmp_path / "b" / "results.json").read_text())["left_out"] == result["left_out"]


def test_a_bench_writes_over_neither_an_earlier_bench_nor_a_users_files(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """--out DIR wrote over results.csv and report.md there without a word, a user's own or the last bench's; the
    CLI then printed DIR's report.md. A bench now makes DIR2, DIR3... beside a DIR that holds files, as yolokit run
    numbers its run folders, and --exist-ok writes into DIR."""
    from toolkit.cli import main

    data = _dataset(tmp_path / "ds", [None])
    out = tmp_path / "b"
    out.mkdir()
    (out / "results.csv").write_text("mine\n")
    (out / "report.md").write_text("my notes\n")
    first = bench(_tiny(source=str(data / "images"), images=1, out=str(out)))
    assert (out / "results.csv").read_text() == "mine\n" and (out / "report.md").read_text() == "my notes\n"
    assert first["out"] == str(tmp_path / "b2") and (tmp_path / "b2" / "report.md").is_file()
    earlier = (tmp_path / "b2" / "results.json").read_text()
    assert main(["bench", "--weights", "yolov5n.yaml", "--source", str(data / "images"), "--images", "1",
                 "--backends", "torch", "--precision", "fp32", "--modes", "seq", "--no-nms", "--no-ceiling",
                 "--repeat", "1", "--imgsz", "64", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert (tmp_path / "b3" / "report.md").read_text() in printed.out and "my notes" not in printed.out
    assert f"this bench writes into {tmp_path / 'b3'}" in printed.err
    assert (tmp_path / "b2" / "results.json").read_text() == earlier
    again = bench(_tiny(source=str(data / "images"), images=1, out=str(tmp_path / "b2"), exist_ok=True))
    assert again["out"] == str(tmp_path / "b2") and (tmp_path / "b2" / "results.json").read_text() != earlier
    assert not (tmp_path / "b22").exists()


def test_the_report_says_what_it_measured(tmp_path: Path) -> None:
    """With --data ds1 --source ds4/images the images were ds1's and --source was silently not benchmarked; neither
    report.md nor results.json said which images, by which protocol the mAP was measured, or at which conf."""
    ds1 = _dataset(tmp_path / "ds1", ["0 0.5 0.5 0.2 0.2\n", None])
    ds4 = _dataset(tmp_path / "ds4", [None])
    result = bench(_tiny(data=str(ds1), source=str(ds4 / "images"), images=2, out=str(tmp_path / "b")))
    assert result["images"] == 2  # ds1's two, not ds4's one
    what = json.loads((tmp_path / "b" / "results.json").read_text())["measured"]
    assert what["data"] == str(ds1) and what["source_benchmarked"] is False and what["accuracy"] == "mAP50-95"
    assert (what["conf"], what["iou"], what["max_det"], what["multi_label"]) == (0.001, 0.6, 300, True)
    assert "yolokit val --protocol coco" in what["protocol"]
    text = (tmp_path / "b" / "report.md").read_text()
    assert f"Images: 2 from the dataset --data {ds1}" in text
    assert f"--source {ds4 / 'images'} is not benchmarked with --data" in text
    assert "pycocotools COCOeval" in text and "yolokit val --protocol coco" in text and "conf 0.001" in text
    bench(_tiny(source=str(ds4 / "images"), images=1, out=str(tmp_path / "a")))
    text = (tmp_path / "a" / "report.md").read_text()
    assert f"Images: 1 from --source {ds4 / 'images'}." in text and "Accuracy: agreement with the baseline" in text
    assert "conf 0.25, NMS IoU 0.45" in text and "single-label" in text


def test_images_left_out_make_the_exit_code_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bench that left images out (listed in its report) exited 0, where yolokit run and val exit 1 when inputs
    failed (the README's exit codes)."""
    from toolkit.cli import main

    data = _dataset(tmp_path / "ds", [None])
    args = ["bench", "--weights", "yolov5n.yaml", "--source", str(data / "images"), "--images", "2", "--backends",
            "torch", "--precision", "fp32", "--modes", "seq", "--no-nms", "--no-ceiling", "--repeat", "1",
            "--imgsz", "64", "--out"]
    assert main([*args, str(tmp_path / "ok")]) == 0
    (data / "images" / "bad.jpg").write_bytes(b"garbage")
    assert main([*args, str(tmp_path / "b")]) == 1
    assert "1 image(s) could not be read and are left out of every figure: " in capsys.readouterr().out
    assert (tmp_path / "b" / "results.json").is_file()
