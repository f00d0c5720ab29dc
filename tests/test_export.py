"""``yolokit export`` end to end: the export API and CLI on a built-in config (always), and on the official
yolov5n.pt with coco128 (skipped where the shared data is absent): exported ONNX and OpenVINO models give the
same detections through ``yolokit run`` as the .pt checkpoint."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

import backends
from backends.base import ExportOptions
from tests.helpers.matching import match, read_label_file, xywhn_to_xyxy
from toolkit import Detector
from toolkit.cli import main
from toolkit.errors import ExportError, InputError
from toolkit.jobs.export import default_output, export, parity_check


def _need(name: str) -> None:
    if not backends.REGISTRY[name].is_available():
        pytest.skip(f"{name} runtime not installed")


# ------------------------------------------------------------------------------------------------ always


def test_export_api_default_path_and_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _need("onnx")
    monkeypatch.chdir(tmp_path)
    report = export("yolov5n.yaml", "onnx", None, ExportOptions(imgsz=(160, 192)))
    assert report.artifact == tmp_path / "yolov5n.onnx" and report.artifact.is_file()
    # dynamic by default: any batch and any stride-multiple height and width
    assert report.meta.format == "onnx" and report.meta.imgsz is None and report.meta.batch is None
    p = report.parity
    assert p.passed and p.images >= 9 and "sample photos" in p.inputs
    assert len(p.shapes) >= 2 and max(max(s) for s in p.shapes) == 192  # letterboxed as the .pt would, several shapes
    assert p.reference_detections >= 50  # a random-weights model: compared at a threshold below its top boxes
    assert p.max_abs_diff_conf < 1e-4 and p.max_abs_diff_box < 0.05
    d = report.to_dict()
    assert d["parity"]["passed"] and d["meta"]["format"] == "onnx"


def test_a_model_given_by_name_exports_into_the_current_folder(yolov5n_pt: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`yolokit export yolov5n --to onnx` wrote into the folder the name was found in (the shared data folder, or
    the weights cache), not where the user stood."""
    _need("onnx")
    monkeypatch.chdir(tmp_path)
    before = sorted(yolov5n_pt.parent.iterdir())
    report = export("yolov5n", "onnx", None, ExportOptions(imgsz=(160, 192)))
    assert report.artifact == tmp_path / "yolov5n.onnx" and report.artifact.is_file()
    assert sorted(yolov5n_pt.parent.iterdir()) == before


def test_default_output_names(tmp_path: Path) -> None:
    pt = tmp_path / "w" / "yolov5n.pt"
    assert default_output(pt, "onnx", ExportOptions()) == tmp_path / "w" / "yolov5n.onnx"
    assert default_output(pt, "onnx", ExportOptions(half=True)) == tmp_path / "w" / "yolov5n_fp16.onnx"
    assert default_output(pt, "openvino", ExportOptions()) == tmp_path / "w" / "yolov5n_openvino"
    assert default_output(pt, "openvino", ExportOptions(int8=True)) == tmp_path / "w" / "yolov5n_int8_openvino"
    assert default_output(pt, "trt", ExportOptions(half=True)) == tmp_path / "w" / "yolov5n_fp16.engine"


def test_parity_check_catches_a_wrong_model(tmp_path: Path) -> None:
    _need("onnx")
    opts = ExportOptions(imgsz=(160, 160))
    art = export("yolov5n.yaml", "onnx", tmp_path / "n.onnx", opts).artifact
    report = parity_check("yolov5s.yaml", art, "onnx", opts, None, [])  # another network's reference
    assert not report.passed and "differ" in report.reason


def test_parity_check_fails_on_detections_alone(yolov5n_pt: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Raw-output thresholds off (as for FP16/INT8): the detections by themselves make the check fail."""
    _need("onnx")
    import toolkit.jobs.export as export_mod

    opts = ExportOptions(imgsz=(320, 320))
    art = export(yolov5n_pt, "onnx", tmp_path / "n.onnx", opts).artifact
    monkeypatch.setitem(export_mod.THRESHOLDS, "fp32", (None, None, 0.97))
    good = parity_check(yolov5n_pt, art, "onnx", opts, None, [])
    assert good.passed and good.reference_detections >= export_mod.MIN_DETECTIONS and good.match_rate == 1.0
    other = export("yolov5n.yaml", "onnx", tmp_path / "random.onnx", opts).artifact  # same graph, other weights
    bad = parity_check(yolov5n_pt, other, "onnx", opts, None, [])
    assert not bad.passed and "detections agree" in bad.reason


def test_parity_check_fails_with_too_few_detections(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When even the lowest threshold leaves fewer boxes than the minimum, the check fails instead of passing."""
    _need("onnx")
    import toolkit.jobs.export as export_mod

    opts = ExportOptions(imgsz=(128, 128))
    art = export("yolov5n.yaml", "onnx", tmp_path / "n.onnx", opts).artifact
    monkeypatch.setattr(export_mod, "MIN_DETECTIONS", 10**9)
    report = parity_check("yolov5n.yaml", art, "onnx", opts, None, [])
    assert not report.passed and "a meaningful comparison needs" in report.reason


def test_an_export_that_fails_its_check_or_is_interrupted_leaves_nothing(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The artifact was written under its name before the checks: a failed parity check, a device the runtime
    lacks or a Ctrl-C left a model that loads like a good one, and replaced a good one already there."""
    _need("onnx")
    import toolkit.jobs.export as export_mod

    opts = ExportOptions(imgsz=(128, 128))
    good = export("yolov5n.yaml", "onnx", tmp_path / "n.onnx", opts).artifact
    assert good == tmp_path / "n.onnx"
    before = good.read_bytes()
    monkeypatch.setattr(export_mod, "MIN_DETECTIONS", 10**9)  # every check fails
    for target in (good, tmp_path / "new.onnx"):
        with pytest.raises(ExportError, match=f"^{target}: parity check against PyTorch FP32 failed: .*nothing was "
                                              f"written"):
            export("yolov5n.yaml", "onnx", target, opts)
    assert good.read_bytes() == before and not (tmp_path / "new.onnx").exists()
    monkeypatch.setattr(export_mod, "parity_check", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        export("yolov5n.yaml", "onnx", tmp_path / "cut.onnx", opts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.onnx"]  # no stage folder either


def test_an_export_removes_only_the_stage_folders_of_killed_exports_to_its_target(tmp_path: Path) -> None:
    """A new export removed every '.NAME.*' stage folder: a concurrent export's, and another target's (m for
    m.onnx)."""
    _need("onnx")
    import os
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()  # a process that has ended
    stale = tmp_path / f".n.onnx.{gone}.abcd1234.export-partial"
    live = tmp_path / f".n.onnx.{os.getppid()}.x.export-partial"  # a process still running: an export under way
    other = tmp_path / f".n.{gone}.abcd1234.export-partial"  # the stage of a target named n
    for folder in (stale, live, other):
        folder.mkdir()
    export("yolov5n.yaml", "onnx", tmp_path / "n.onnx", ExportOptions(imgsz=(128, 128)))
    assert not stale.exists() and live.exists() and other.exists()


def test_an_openvino_export_into_a_folder_with_another_model_is_refused_first(tmp_path: Path) -> None:
    _need("openvino")
    (tmp_path / "ov").mkdir()
    (tmp_path / "ov" / "a_fp16.xml").write_text("<net/>")
    with pytest.raises(InputError, match="ov: the folder already holds another OpenVINO model \\(a_fp16.xml\\)"):
        export("yolov5n.yaml", "openvino", tmp_path / "ov", ExportOptions(imgsz=(128, 128)))
    assert sorted(p.name for p in (tmp_path / "ov").iterdir()) == ["a_fp16.xml"]  # was written, then refused
    art = export("yolov5n.yaml", "openvino", tmp_path / "fresh", ExportOptions(imgsz=(128, 128))).artifact
    assert sorted(p.name for p in art.iterdir()) == ["fresh.bin", "fresh.xml"]


def test_metadata_that_does_not_fit_the_model_is_a_bad_model_file(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Tampered yolokit metadata in an ONNX file gave tracebacks (AttributeError on a list of names,
    ZeroDivisionError on stride 0, OpenCV's assertion text on imgsz [0, -5]), or boxes named '54' from a model of 80
    classes whose metadata named 2."""
    _need("onnx")
    onnx = pytest.importorskip("onnx", reason="the onnx package (export extra) is not installed")
    from toolkit.errors import ModelFileError
    from toolkit.meta import META_KEY

    good = export("yolov5n.yaml", "onnx", tmp_path / "n.onnx", ExportOptions(imgsz=(128, 128))).artifact
    image = np.full((96, 128, 3), 127, np.uint8)

    def tampered(name: str, **changes: object) -> Path:
        model = onnx.load(str(good))
        prop = next(p for p in model.metadata_props if p.key == META_KEY)
        prop.value = json.dumps({**json.loads(prop.value), **changes})
        onnx.save(model, str(tmp_path / name))
        return tmp_path / name

    for name, changes, reason in (("ids.onnx", {"names": {"0": "a", "5": "b"}}, "the class ids in 'names' are not"),
                                  ("stride.onnx", {"stride": 0}, "'stride' 0 is no model stride"),
                                  ("size.onnx", {"imgsz": [0, -5]}, "'imgsz' [0, -5] is no (height, width)"),
                                  ("kind.onnx", {"names": "person"}, "'names' is no list or map")):
        path = tampered(name, **changes)
        with pytest.raises(ModelFileError, match=f"the yolokit metadata is unreadable \\({re.escape(reason)}"):
            Detector(path)
        assert main(["info", str(path)]) == 3
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.count("\n") == 1, err
    listed = Detector(tampered("list.onnx", names=[str(i) for i in range(80)]))  # YOLOv5's own form of names
    assert listed.names[79] == "79" and listed.predict(image)[0] is not None
    two = tampered("two.onnx", names=["a", "b"])
    cv2.imwrite(str(tmp_path / "a.jpg"), image)
    for pipeline in ("host", "device"):  # the device pipeline (a GPU's, run on the CPU here) gave boxes named '57'
        with Detector(two, pipeline=pipeline) as det, \
                pytest.raises(ModelFileError, match="output has shape \\[1, .*, 85\\], where its metadata \\(2 "
                                                    "classes\\) says \\(batch, boxes, 7\\)"):
            det.predict(image) if pipeline == "host" else list(det.predict_iter([str(tmp_path / "a.jpg")]))
    for mode in ("thread", "process"):  # process mode listed every input as failed, 'worker error: ModelFileError'
        capsys.readouterr()
        assert main(["run", str(tmp_path / "a.jpg"), "--weights", str(two), "--mode", mode, "--workers", "2",
                     "--project", str(tmp_path / "runs"), "--exist-ok"]) == 3, mode
        assert "the model and its metadata do not belong together" in capsys.readouterr().err


def test_nms_inside_that_keeps_nothing_on_the_parity_images_says_it_was_not_compared(tmp_path: Path) -> None:
    """--nms --conf 1.0 passed its check on "0/0 matched" without a word."""
    _need("onnx")
    from toolkit.meta import BakedNMS

    report = export("yolov5n.yaml", "onnx", tmp_path / "e2e.onnx", ExportOptions(imgsz=(128, 128),
                                                                                  nms=BakedNMS(conf=1.0)))
    assert report.parity.final is not None and report.parity.final["reference"] == 0
    assert any("no box passes on the parity images, so the NMS inside was not compared" in n for n in report.notes)


def test_output_suffix_is_added_and_unknown_suffixes_are_sniffed(tmp_path: Path) -> None:
    _need("onnx")
    _need("openvino")
    assert main(["export", "yolov5n.yaml", "--to", "onnx", "-o", str(tmp_path / "mymodel"), "--imgsz", "128"]) == 0
    assert (tmp_path / "mymodel.onnx").is_file() and not (tmp_path / "mymodel").exists()
    # an artifact renamed to any suffix is recognised by its content
    (tmp_path / "mymodel.onnx").rename(tmp_path / "renamed.bin")
    assert backends.backend_for(tmp_path / "renamed.bin") == "onnx"
    assert main(["export", "yolov5n.yaml", "--to", "openvino", "-o", str(tmp_path / "ov"), "--imgsz", "128"]) == 0
    xml = next((tmp_path / "ov").glob("*.xml"))
    assert backends.backend_for(xml.rename(xml.with_suffix(".model"))) == "openvino"
    out = tmp_path / "run"
    assert main(["run", str(tmp_path / "ov"), "--weights", str(tmp_path / "renamed.bin"), "--project", str(out),
                 "--name", "r", "--nosave"]) != 3  # loads (the folder holds no images: exit 2, not a model error)


def test_an_artifact_under_another_kinds_suffix_is_known_by_its_content(tmp_path: Path, capsys: Any) -> None:
    """An ONNX file named .pt, a checkpoint named .onnx, an IR named .pt: the suffix won, and the message called a
    sound model corrupt ("truncated, corrupt or not ONNX ... re-export it"). --backend naming the wrong runtime for
    the file's content is refused in one line that says what the file is."""
    _need("onnx")
    onnx_file = tmp_path / "m.onnx"
    assert main(["export", "yolov5n.yaml", "--to", "onnx", "-o", str(onnx_file), "--imgsz", "128"]) == 0
    torch.save({"not": "a model"}, tmp_path / "ck.pt")
    (tmp_path / "ck.pt").rename(tmp_path / "ck.onnx")
    (tmp_path / "ir.pt").write_text('<?xml version="1.0"?>\n<net name="m" version="11">\n</net>\n')
    as_pt = tmp_path / "model.pt"
    as_pt.write_bytes(onnx_file.read_bytes())
    assert backends.backend_for(as_pt) == "onnx"
    assert backends.backend_for(tmp_path / "ck.onnx") == backends.checkpoint_backend()
    assert backends.backend_for(tmp_path / "ir.pt") == "openvino"
    img = tmp_path / "img.jpg"
    cv2.imwrite(str(img), np.full((96, 128, 3), 80, np.uint8))
    out = tmp_path / "run"
    assert main(["run", str(img), "--weights", str(as_pt), "--project", str(out), "--name", "r", "--nosave"]) == 0
    capsys.readouterr()
    assert main(["run", str(img), "--weights", str(onnx_file), "--backend", "openvino", "--project", str(out),
                 "--name", "r2", "--nosave"]) == 3
    err = capsys.readouterr().err
    assert "is an ONNX model, which the openvino backend does not run" in err and "--backend onnx" in err
    _need("openvino")  # a folder: the backend that claims it (it said "no such ONNX file" of an IR's folder)
    ir = tmp_path / "m_openvino"
    assert main(["export", "yolov5n.yaml", "--to", "openvino", "-o", str(ir), "--imgsz", "128"]) == 0
    capsys.readouterr()
    assert main(["run", str(img), "--weights", str(ir), "--backend", "onnx", "--project", str(out), "--name", "r3",
                 "--nosave"]) == 3
    assert "is an OpenVINO IR" in capsys.readouterr().err


def test_cli_export_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _need("openvino")
    out = tmp_path / "m_openvino"
    assert main(["export", "yolov5n.yaml", "--to", "openvino", "-o", str(out), "--imgsz", "128,160",
                 "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["artifact"] == str(out) and d["parity"]["passed"]
    assert d["meta"]["imgsz"] is None and d["meta"]["batch"] is None and d["meta"]["format"] == "openvino"
    assert len(list(out.glob("*.xml"))) == 1 and len(list(out.glob("*.bin"))) == 1
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backend"] == "openvino" and info["precision"] == "fp32"


@pytest.mark.parametrize(("args", "code", "text"), [
    (["--to", "onnx", "--imgsz", "100"], 2, "multiples of the model stride"),
    (["--to", "onnx", "--imgsz", "a,b"], 2, "--imgsz takes"),
    (["--to", "onnx", "--imgsz", "640,"], 2, "--imgsz takes 640 or H,W like 384,640, got '640,'"),  # was 640
    (["--to", "onnx", "--imgsz", "1_28"], 2, "--imgsz takes"),  # was 128
    (["--to", "onnx", "--imgsz", "99968"], 2, "at most 16384 a side"),
    (["--to", "onnx", "--int8", "--data", "x"], 2, "openvino only"),
    (["--to", "openvino", "--int8"], 2, "--data"),
    (["--to", "openvino", "--half", "--int8", "--data", "x"], 2, "one of --half and --int8"),
    (["--to", "tflite"], 2, "choose one of"),
    (["--to", "onnx", "--conf", "0.1"], 2, "add --nms"),
    (["--to", "onnx", "--nms", "--opset", "12"], 2, "--opset 13"),
    (["--to", "onnx", "--opset", "8"], 2, "--opset 8: choose an ONNX opset between 9 and 23"),  # 420 lines of graph
    (["--to", "openvino", "--batch", "4"], 2, "--batch 4 fixes a --static export's batch"),  # it was ignored
    (["--to", "onnx", "--nms", "--iou", "1.5"], 2, "must be in [0, 1]"),
    (["--to", "onnx", "--nms", "--max-det", "0"], 2, "--max-det 0"),
    (["--to", "onnx", "--max-drop", "0.01"], 2, "--max-drop applies to --int8"),
    (["--to", "onnx", "--max-batch", "0"], 2, "--max-batch 0: must be at least 1"),
    (["--to", "openvino", "--fraction", "5"], 2, "--fraction 5: must be in (0, 1]"),
    (["--to", "openvino", "--fraction", "0.5"], 2, "--fraction applies to --int8"),
    (["--to", "openvino", "--int8", "--data", "x", "--max-drop", "-1"], 2, "--max-drop -1"),
])
def test_cli_export_refusals(args: list[str], code: int, text: str, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "yolov5n.yaml", "-o", str(tmp_path / "m.onnx"), *args]) == code
    assert text in capsys.readouterr().err



@pytest.mark.parametrize(("to", "where"), [("onnx", "afile/m.onnx"), ("openvino", "afile/sub"),
                                           ("openvino", "afile"), ("onnx", "/proc/self/m.onnx")])
def test_cli_export_to_a_place_it_cannot_write_is_one_line(to: str, where: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A file where the export needs a folder (above it, or in its place) or a virtual file system: exit 7 and one
    line naming the path and the fix (tracebacks, or exit 6 in PyTorch's words, before)."""
    (tmp_path / "afile").write_text("in the way")
    out = where if where.startswith("/") else str(tmp_path / where)
    assert main(["export", "yolov5n.yaml", "--to", to, "-o", out]) == 7
    err = capsys.readouterr().err.strip()
    assert err.startswith("yolokit: ") and "\n" not in err and "choose another path with -o" in err, err

def test_cli_export_trt_without_tensorrt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if backends.REGISTRY["trt"].is_available():
        pytest.skip("TensorRT and a CUDA GPU are available here")
    assert main(["export", "yolov5n.yaml", "--to", "trt", "-o", str(tmp_path / "m.engine")]) == 4
    err = capsys.readouterr().err
    assert "yolokit[trt]" in err or "NVIDIA GPU" in err


def test_export_api_rejects_bad_target() -> None:
    with pytest.raises(InputError):
        export("yolov5n.yaml", "coreml", None, ExportOptions())


def test_torch_backend_does_not_export(tmp_path: Path) -> None:
    from toolkit.model.load import load_model

    with pytest.raises(ExportError):
        backends.REGISTRY["torch"].export(load_model("yolov5n.yaml"), tmp_path / "x", ExportOptions())


# ------------------------------------------------------------------------------------------------ shared data

N_IMAGES = 16


@pytest.fixture(scope="session")
def subset(coco128_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("coco16")
    for f in sorted(coco128_images.glob("*.jpg"))[:N_IMAGES]:
        shutil.copy(f, d / f.name)
    return d


def _run_labels(weights: Path, source: Path, project: Path, name: str) -> Path:
    rc = main(["run", str(source), "--weights", str(weights), "--save-txt", "--save-conf", "--nosave",
               "--project", str(project), "--name", name])
    assert rc == 0
    return project / name / "labels"


@pytest.fixture(scope="session")
def pt_labels(yolov5n_pt: Path, subset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run_labels(yolov5n_pt, subset, tmp_path_factory.mktemp("runs"), "pt")


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_exported_model_detects_like_pt(fmt: str, exported: dict[str, Path], pt_labels: Path, subset: Path,
                                        tmp_path: Path) -> None:
    if fmt not in exported:
        pytest.skip(f"{fmt} runtime not installed")
    got_dir = _run_labels(exported[fmt], subset, tmp_path, fmt)
    total = matched = 0
    for img in sorted(subset.glob("*.jpg")):
        ref = read_label_file(pt_labels / f"{img.stem}.txt")
        got = read_label_file(got_dir / f"{img.stem}.txt")
        arr = cv2.imread(str(img))
        assert arr is not None
        h, w = arr.shape[:2]
        m, _ = match(xywhn_to_xyxy(ref, w, h), ref[:, 0], ref[:, 5], xywhn_to_xyxy(got, w, h), got[:, 0],
                     got[:, 5], min_iou=0.98, conf_tol=None)
        total += len(ref)
        matched += m
    assert total > 50
    assert matched >= 0.99 * total, (matched, total)


def test_static_export_and_the_run_summary_says_it_letterboxes_differently(tmp_path: Path) -> None:
    _need("onnx")
    assert main(["export", "yolov5n.yaml", "--to", "onnx", "--static", "--imgsz", "160", "--batch", "2",
                 "-o", str(tmp_path / "s.onnx")]) == 0
    meta = backends.REGISTRY["onnx"].read_meta(tmp_path / "s.onnx")
    assert meta.imgsz == (160, 160) and meta.batch == 2
    src = tmp_path / "src"
    src.mkdir()
    cv2.imwrite(str(src / "wide.jpg"), np.full((90, 160, 3), 127, np.uint8))  # 16:9: the .pt would use 96x160
    cv2.imwrite(str(src / "square.jpg"), np.full((80, 80, 3), 127, np.uint8))  # letterboxed alike
    from toolkit.jobs.run import RunOptions, run

    s = run(RunOptions.of(source=str(src), weights=str(tmp_path / "s.onnx"), imgsz=160, project=str(tmp_path),
                       name="r", nosave=True))
    assert s.processed == 2 and len(s.notes) == 1
    assert "fixed 160x160 input: 1 image(s)" in s.notes[0] and "without --static" in s.notes[0]
    assert main(["export", "yolov5n.yaml", "--to", "onnx", "--imgsz", "160", "-o", str(tmp_path / "d.onnx")]) == 0
    s = run(RunOptions.of(source=str(src), weights=str(tmp_path / "d.onnx"), imgsz=160, project=str(tmp_path),
                       name="d", nosave=True))
    assert s.processed == 2 and not s.notes


def test_unknown_files_are_recognised_by_content_or_refused_in_one_line(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    torch.save({"x": torch.zeros(2)}, tmp_path / "ckpt.weights")
    assert backends.backend_for(tmp_path / "ckpt.weights") == "torch"
    (tmp_path / "notes.model").write_text("just some text\n")
    cv2.imwrite(str(tmp_path / "a.jpg"), np.full((32, 32, 3), 127, np.uint8))
    assert main(["run", str(tmp_path), "--weights", str(tmp_path / "notes.model")]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "notes.model: not a model file yolokit knows" in err


def test_an_export_given_to_export_says_it_is_one(tmp_path: Path, capsys: Any) -> None:
    """`yolokit export model.onnx --to openvino` said "is not a PyTorch checkpoint (.pt): it is neither a torch zip
    archive nor a pickle"; a folder of no model named no fix."""
    _need("onnx")
    onnx_file = tmp_path / "m.onnx"
    assert main(["export", "yolov5n.yaml", "--to", "onnx", "-o", str(onnx_file), "--imgsz", "128"]) == 0
    capsys.readouterr()
    assert main(["export", str(onnx_file), "--to", "openvino", "-o", str(tmp_path / "ov")]) == 2
    assert "is an ONNX model, an export already; yolokit export starts from the .pt" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["info", str(tmp_path / "empty")]) == 3
    assert "holds no model yolokit knows; give the model file" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "empty"), "--to", "onnx", "-o", str(tmp_path / "e.onnx")]) == 2
    assert "a folder; yolokit export starts from a .pt checkpoint" in capsys.readouterr().err  # not "an IR folder"


def test_an_export_replaces_an_earlier_export_but_nothing_else(tmp_path: Path, capsys: Any) -> None:
    """`-o mine.onnx` over a file of notes wrote the model over it, exit 0; an OpenVINO folder's IR of another
    tool was replaced the same way. What is there and is no yolokit export is refused (exit 7, nothing written); an
    earlier export is replaced (a re-export), and the report says so."""
    _need("onnx")
    notes = tmp_path / "mine.onnx"
    notes.write_text("my notes")
    assert main(["export", "yolov5n.yaml", "--to", "onnx", "-o", str(notes), "--imgsz", "128"]) == 7
    assert notes.read_text() == "my notes"
    assert "is not a yolokit export" in capsys.readouterr().err
    assert not list(tmp_path.glob(".*export-partial"))
    again = tmp_path / "m.onnx"
    assert main(["export", "yolov5n.yaml", "--to", "onnx", "-o", str(again), "--imgsz", "128"]) == 0
    assert "replaced" not in capsys.readouterr().out
    assert main(["export", "yolov5n.yaml", "--to", "onnx", "-o", str(again), "--imgsz", "128"]) == 0
    assert f"replaced the earlier export at {again}" in capsys.readouterr().out
    _need("openvino")  # an IR's .bin is written too: a file of that name was overwritten (review)
    for target, bin_file in ((tmp_path / "ov1" / "mine.xml", tmp_path / "ov1" / "mine.bin"),
                             (tmp_path / "data_openvino", tmp_path / "data_openvino" / "data.bin")):
        bin_file.parent.mkdir()
        bin_file.write_text("my notes")
        assert main(["export", "yolov5n.yaml", "--to", "openvino", "-o", str(target), "--imgsz", "128"]) == 7
        assert bin_file.read_text() == "my notes", target
