"""INT8 you control (OpenVINO + NNCF, real): which and how many images calibrate, the FP32 and INT8 mAP50-95 in the
report and the artifact's metadata (and ``yolokit info``), and accuracy-controlled quantization that fails the
export with exit code 6 when the drop cannot be met. On 32 labelled coco128 images, to keep the runtime modest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import backends
from backends.base import ExportOptions
from toolkit.cli import main
from toolkit.errors import ExportError, InputError
from toolkit.jobs.calibration import describe, int8_data, spread


@pytest.fixture(scope="module")
def labelled32(coco128: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("coco32")
    for sub in ("images", "labels"):
        (root / sub).mkdir()
    for img in sorted((coco128 / "images" / "train2017").glob("*.jpg"))[:32]:
        shutil.copy(img, root / "images" / img.name)
        label = coco128 / "labels" / "train2017" / f"{img.stem}.txt"
        if label.is_file():
            shutil.copy(label, root / "labels" / label.name)
    return root


def _need_int8() -> None:
    if not backends.REGISTRY["openvino"].is_available():
        pytest.skip("OpenVINO not installed")
    pytest.importorskip("nncf")


def test_spread_is_even_and_deterministic() -> None:
    assert spread(10, 3) == [0, 4, 9] and spread(10, 1) == [0] and spread(3, 10) == [0, 1, 2]
    assert spread(128, 16) == spread(128, 16) and len(spread(128, 16)) == 16 and spread(0, 5) == []


def test_calibration_count_fraction_and_labels(labelled32: Path, tmp_path: Path) -> None:
    d = int8_data(ExportOptions(int8=True, calib_data=str(labelled32), calib_images=300, fraction=0.25), 32, False)
    assert len(d.calibration) == 8 and d.record["calib_available"] == 32 and d.record["fraction"] == 0.25
    assert d.calibration[0].name < d.calibration[-1].name and len(d.validation) == 32 and d.metric is not None
    d = int8_data(ExportOptions(int8=True, calib_data=str(labelled32), calib_images=5), 32, False)
    assert len(d.calibration) == 5 and d.to_input(d.calibration[0]).shape == (1, 3, 640, 640)
    # a plain folder of images calibrates but has no labels: nothing to measure, and --max-drop is refused
    plain = tmp_path / "photos"
    plain.mkdir()
    for p in sorted((labelled32 / "images").glob("*.jpg"))[:6]:
        shutil.copy(p, plain / p.name)
    d = int8_data(ExportOptions(int8=True, calib_data=str(plain), calib_images=4), 32, False)
    assert len(d.calibration) == 4 and d.metric is None and not d.validation
    # an unreadable image is named and another taken in its place (it was dropped without a word, 4 of 6 for 20)
    (plain / "junk.jpg").write_text("not an image")
    d = int8_data(ExportOptions(int8=True, calib_data=str(plain), calib_images=7), 32, False)
    assert len(d.calibration) == 6 and "junk.jpg" not in {p.name for p in d.calibration}
    assert [Path(p).name for p in d.record["unreadable"]] == ["junk.jpg"]
    assert "1 unreadable image(s) left out (" in describe(d.record)
    (plain / "junk.jpg").unlink()
    # a dataset yaml with a train split alone calibrates on it (as YOLOv5's export does); only val needs 'val:'
    (labelled32 / "train.yaml").write_text(f"path: {labelled32}\ntrain: images\nnames: [a]\n")
    d = int8_data(ExportOptions(int8=True, calib_data=str(labelled32 / "train.yaml"), calib_images=4), 32, False)
    assert len(d.calibration) == 4
    (labelled32 / "train.yaml").unlink()
    with pytest.raises(InputError, match="--max-drop needs labelled images"):
        int8_data(ExportOptions(int8=True, calib_data=str(plain), max_drop=0.01), 32, False)
    for bad, text in (({"calib_images": 0}, "--calib-images 0"), ({"fraction": 0.0}, "--fraction 0.0"),
                      ({"calib_data": "/nonexistent/x"}, "does not exist")):
        with pytest.raises(InputError, match=text):
            int8_data(ExportOptions(**{"int8": True, "calib_data": str(labelled32), **bad}), 32, False)


def test_accuracy_controlled_int8_reports_fp32_and_int8_map_in_the_artifact(
        yolov5n_pt: Path, labelled32: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _need_int8()
    out = tmp_path / "q_openvino"
    assert main(["export", str(yolov5n_pt), "--to", "openvino", "--int8", "--data", str(labelled32),
                 "--calib-images", "16", "--max-drop", "0.05", "-o", str(out)]) == 0
    report = capsys.readouterr().out
    assert "INT8: 16 calibration images of 32" in report and "mAP50-95 FP32" in report and "(max 0.05)" in report
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    q = info["int8"]
    print(q)
    assert q["calib_images"] == 16 and q["val_images"] == 32 and q["max_drop"] == 0.05
    assert 0.1 < q["fp32_map50_95"] < 0.6 and q["drop"] == pytest.approx(q["fp32_map50_95"] - q["int8_map50_95"],
                                                                          abs=2e-4)
    assert q["drop"] <= 0.05 and "accuracy-controlled" in q["mode"]
    assert main(["info", str(out)]) == 0
    assert "calib_images 16" in capsys.readouterr().out


def test_a_drop_that_cannot_be_met_fails_the_export_and_writes_nothing(yolov5n_pt: Path, labelled32: Path,
                                                                       tmp_path: Path) -> None:
    """One calibration image and no layer allowed back to float (0 iterations: the drop is measured and checked):
    the INT8 model loses mAP, so a --max-drop of 0 cannot be met: exit code 6, one line with both mAPs, and no
    artifact. (NNCF's own search for layers to return to float costs minutes here; the success test above runs it.)"""
    _need_int8()
    from toolkit.jobs.export import export

    out = tmp_path / "q_openvino"
    with pytest.raises(ExportError) as e:
        export(yolov5n_pt, "openvino", out, ExportOptions(int8=True, calib_data=str(labelled32), calib_images=1,
                                                          max_drop=0.0, max_drop_iterations=0))
    print(e.value)
    assert e.value.exit_code == 6 and "more than --max-drop 0" in str(e.value) and "FP32" in str(e.value)
    assert "\n" not in str(e.value) and not out.exists()


def test_the_restorer_steps_reach_stderr_one_line_each_and_nothing_else_passes() -> None:
    """NNCF's logger writes to stdout (the export report's stream): its records are all dropped, and only the
    accuracy restorer's steps are written, as one line each, to the progress stream."""
    import io
    import logging

    from backends.openvino.int8 import RestorerProgress

    out = io.StringIO()
    progress = RestorerProgress(out)

    def record(msg: str, level: int = logging.INFO) -> logging.LogRecord:
        return logging.LogRecord("nncf", level, __file__, 1, msg, None, None)

    assert not progress.filter(record("Reverted 3 operations to the floating-point precision: \n\t/model.2/conv"))
    assert not progress.filter(record("Accuracy drop with the new quantization scope is 0.004 (DropType.ABSOLUTE)"))
    assert not progress.filter(record("Skipping quantizer for node /model.24/Mul"))  # dropped, not shown
    assert progress.filter(record("a real warning", logging.WARNING))  # warnings go through NNCF's own handler
    lines = out.getvalue().splitlines()
    assert lines == ["INT8 accuracy control: Reverted 3 operations to the floating-point precision",
                     "INT8 accuracy control: Accuracy drop with the new quantization scope is 0.004 "
                     "(DropType.ABSOLUTE)"]


def test_max_drop_steps_needs_max_drop(yolov5n_pt: Path, labelled32: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["export", str(yolov5n_pt), "--to", "openvino", "--int8", "--data", str(labelled32),
                 "--max-drop-steps", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--max-drop-steps 2: needs --max-drop" in err[0], err
