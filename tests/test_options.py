"""Options declared once: the CLI's flags and defaults are the library's, values outside their limits and unknown
names are refused in one line, a run's identity holds exactly the settings that change its outputs, and the
generated options reference is up to date."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer

from toolkit.cli import app, main
from toolkit.cli.params import collect
from toolkit.cli.reference import PAGE, options_reference
from toolkit.engine.core import DetectorConfig
from toolkit.errors import InputError
from toolkit.jobs.bench import BenchOptions, nms_settings
from toolkit.jobs.records import EngineOptions, RunOptions
from toolkit.jobs.val import ValOptions
from toolkit.options import CONF, IMGSZ, IOU, MAX_DET, build, class_ids, keys, option, walk
from toolkit.tiling import TileOptions


def _parsed(command: str, args: list[str]) -> dict[str, Any]:
    """What Typer hands the command function for ``args`` (the command line's parsing, without running it)."""
    group: Any = typer.main.get_command(app)
    cmd = group.commands[command]
    return dict(cmd.make_context(command, list(args)).params)


def test_the_options_reference_is_up_to_date() -> None:
    assert PAGE.is_file(), f"{PAGE} is missing: run python -m toolkit.cli.reference"
    assert PAGE.read_text() == options_reference(), "docs/guide/options.md is stale: python -m toolkit.cli.reference"


def test_the_command_lines_defaults_are_the_librarys() -> None:
    assert collect(RunOptions, _parsed("run", [])) == RunOptions()
    assert RunOptions().tiling is None  # --tile 0: off
    assert collect(ValOptions, _parsed("val", [])) == ValOptions()
    bench = collect(BenchOptions, _parsed("bench", ["--weights", "w.pt", "--source", "s"]))
    assert bench == BenchOptions(weights="w.pt", source="s")


def test_flags_reach_their_groups() -> None:
    opts = collect(RunOptions, _parsed("run", [
        "imgs", "--conf", "0.5", "--classes", "0,2", "--agnostic-nms", "--half", "--max-file-size", "2G",
        "--max-pixels", "1.5k", "--stream-timeout", "3", "--save-txt", "--hide-conf", "--line-thickness", "3",
        "--tile", "320", "--tile-merge", "nms", "--tile-scales", "1,0.5", "--no-tile-refocus", "--workers", "3",
        "--engine", "ray", "--resume"]))
    d = opts.detector
    assert opts.source == "imgs" and (d.conf, d.classes, d.agnostic, d.half) == (0.5, (0, 2), True, True)
    assert (d.max_file_size, d.max_pixels, d.timeout) == (2 << 30, 1500, 3.0)
    assert opts.save.save_txt and opts.draw.hide_conf and opts.draw.line_width == 3
    assert opts.tiling == TileOptions(tile=320, merge="nms", scales=(1.0, 0.5), refocus=False)
    assert (opts.engine.workers, opts.engine.name, opts.folder.resume) == (3, "ray", True)
    assert opts == RunOptions.of(source="imgs", conf=0.5, classes=(0, 2), agnostic_nms=True, half=True,
                                 max_file_size=2 << 30, max_pixels=1500, stream_timeout=3.0, save_txt=True,
                                 hide_conf=True, line_thickness=3, tile=320, tile_merge="nms", tile_scales=(1, 0.5),
                                 tile_refocus=False, workers=3, engine="ray", resume=True)


def test_the_shared_defaults_are_the_declared_ones() -> None:
    from backends.base import ExportOptions
    from toolkit.meta import BakedNMS
    from toolkit.ops import NMSOptions

    for nms in (DetectorConfig(), NMSOptions(), BakedNMS()):
        assert (nms.conf, nms.iou, nms.max_det) == (CONF.default, IOU.default, MAX_DET.default)
    assert DetectorConfig().imgsz == IMGSZ.default and ExportOptions().imgsz == (IMGSZ.default, IMGSZ.default)
    val = ValOptions()  # YOLOv5's val.py defaults, declared once, read by bench
    assert (val.conf, val.iou, val.max_det) == (0.001, 0.6, 300)
    assert nms_settings(True) == {"conf": val.conf, "iou": val.iou, "max_det": val.max_det}
    assert nms_settings(False) == {"conf": CONF.default, "iou": IOU.default, "max_det": val.max_det}


@pytest.mark.parametrize(("make", "message"), [
    (lambda: DetectorConfig(conf=1.5), "--conf must be in [0, 1], got 1.5"),
    (lambda: DetectorConfig(max_det=0), "--max-det must be at least 1"),
    (lambda: DetectorConfig(imgsz=99999), "--imgsz must be in [1, 16384], got 99999"),  # 120 GB: killed silently
    (lambda: DetectorConfig(imgsz=(640, 99999)), "--imgsz must be in [1, 16384], got 99999"),  # the element
    (lambda: DetectorConfig(classes=(0, -1)), "--classes must be at least 0, got -1"),  # was "got (0, -1)"
    (lambda: DetectorConfig(vid_stride=0), "--vid-stride must be at least 1"),
    (lambda: DetectorConfig(timeout=0), "--stream-timeout must be in (0, 86400]"),
    (lambda: DetectorConfig(pipeline="gpu"), "pipeline must be one of auto, host, device"),
    (lambda: TileOptions(overlap=1.0), "--overlap must be in [0, 1)"),
    (lambda: TileOptions(scales=(1.0, 1.5)), "--tile-scales must be in [0.01, 1]"),
    (lambda: TileOptions(merge="union"), "--tile-merge must be one of views, nms, nmm"),
    (lambda: EngineOptions(mode="fast"), "--mode must be one of auto, thread, process"),
    (lambda: EngineOptions(name="spark"), "--engine must be one of local, ray"),
    (lambda: BenchOptions(weights="w", source="s", modes=["seq", "turbo"]), "--modes must be one of"),
    (lambda: BenchOptions(weights="w", source="s", modes=["seq", "turbo"]), "--modes must be one of seq, thread, "
                                                                           "process, auto, got 'turbo'"),
    # found after the PyTorch baseline had run (unknown backend), or benchmarked under that name (fp7)
    (lambda: BenchOptions(weights="w", source="s", backends=["foo"]), "--backends foo: no such backend"),
    (lambda: BenchOptions(weights="w", source="s", precisions=["fp7"]), "--precision fp7: no such precision"),
])
def test_values_outside_their_limits_are_refused_naming_the_flag(make: Any, message: str) -> None:
    with pytest.raises(InputError) as e:
        make()
    assert str(e.value).startswith(message)


@pytest.mark.parametrize(("value", "message"), [
    ("0,,2", "--classes takes class ids like 0,2"),  # read as 0,2 (a slip for 0,1,2?)
    ("0,", "--classes takes class ids like 0,2"),
    ("1_0", "--classes takes class ids like 0,2"),  # int() read 10
    ("\u0663", "--classes takes class ids like 0,2"),  # int() read an Arabic-Indic 3 as 3
    ("zero", "--classes takes class ids like 0,2"),
    ([], "--classes is empty, which would keep no detection; leave it out"),  # kept no detection, silently
    ((True,), "--classes takes class ids"),
    (1.0, "--classes takes class ids"),
])
def test_class_ids_are_read_strictly(value: Any, message: str) -> None:
    with pytest.raises(InputError) as e:
        DetectorConfig(classes=value)
    assert str(e.value).startswith(message)
    assert class_ids(" 0 , 2 ") == class_ids([0, np.int64(2)]) == class_ids(np.array([0, 2])) == (0, 2)
    assert class_ids("4 5") == class_ids("4,\t5") == (4, 5)  # "4 5" was class 45: the spaces were dropped
    assert class_ids(3) == (3,)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "1e300G", "1_0M", "\u0665M", "ten"])
def test_amounts_that_are_no_number_are_refused_in_one_line(value: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """nan and inf were a traceback (ValueError, OverflowError from int()); 1_0M was 10M."""
    for flag in ("--max-pixels", "--max-file-size", "--download-memory"):
        assert main(["run", str(tmp_path), flag, value, "--project", str(tmp_path / "p")]) == 2
        err = capsys.readouterr().err
        assert f"{flag} takes a number like 500M or 2G, got {value!r}" in err and "Traceback" not in err, err


def test_classes_on_the_command_line_are_the_librarys_reading(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                              ) -> None:
    assert main(["run", str(tmp_path), "--classes", "0,,2", "--project", str(tmp_path / "p")]) == 2
    assert "--classes takes class ids like 0,2 (or a list of them), got '0,,2'" in capsys.readouterr().err
    for empty in ("", " "):  # refused, as the library refuses classes=[] (it kept every class without a word)
        with pytest.raises(InputError, match="--classes is empty"):
            collect(RunOptions, _parsed("run", ["--classes", empty]))


def test_a_bad_option_on_the_command_line_creates_nothing(tmp_path: Path) -> None:
    assert main(["run", str(tmp_path), "--mode", "fast", "--project", str(tmp_path / "p")]) == 2
    assert not (tmp_path / "p").exists()


def test_unknown_names_are_refused_naming_the_nearest() -> None:
    from toolkit.engine.detector import Detector

    with pytest.raises(InputError, match=r"Detector\(\) has no setting 'conf_thres'; did you mean 'conf'\?"):
        Detector("yolov5n.yaml", conf_thres=0.5)  # refused before any model is loaded
    with pytest.raises(InputError, match="did you mean 'agnostic'"):
        Detector("yolov5n.yaml", agnostic_nms=True)  # the library's name is the field's
    with pytest.raises(InputError, match="RunOptions has no setting 'save_text'; did you mean 'save_txt'"):
        RunOptions.of(save_text=True)
    with pytest.raises(InputError, match="did you mean 'agnostic_nms'"):
        RunOptions.of(agnostic=True)  # flat settings take the command line's names


def test_a_runs_identity_holds_what_changes_its_outputs() -> None:
    base = RunOptions().identity()
    assert json.loads(json.dumps(base)) == base  # plain values: compared with what a run folder holds
    for how_fast in ({"workers": 4}, {"mode": "process"}, {"batch": 8}, {"device": "cuda"}, {"project": "x"},
                     {"name": "y"}, {"resume": True}, {"engine": "ray"}, {"save_workers": 2}):
        assert RunOptions.of(**how_fast).identity() == base, how_fast
    for what in ({"conf": 0.5}, {"imgsz": 320}, {"classes": (0,)}, {"weights": "yolov5s"}, {"save_txt": True},
                 {"nosave": True}, {"hide_labels": True}, {"line_thickness": 2}, {"augment": True},
                 {"vid_stride": 2}, {"fast_decode": True}, {"source": "elsewhere"}, {"tile": 640}):
        assert RunOptions.of(**what).identity() != base, what
    assert base["tile"] == 0 and "tile_merge" not in base  # tiling off: its other settings do not matter
    tiled = RunOptions.of(tile=640).identity()
    assert tiled["tile_merge"] == "views" and tiled["tile_scales"] == [1.0]
    assert RunOptions.of(tile=640, tile_batch=16).identity() == tiled  # tiles per call: speed only
    # every declared option of a run is either in its identity or declared as not changing outputs
    assert {k for k, e in keys(RunOptions).items() if e.option.affects_output} == set(tiled)


def test_two_options_with_one_flat_name_are_a_declaration_error() -> None:
    @dataclass(frozen=True)
    class Twice:
        conf: float = option(0.5, "one")
        threshold: float = option(0.5, "two", cli_name="conf")

    with pytest.raises(TypeError, match="two options named 'conf'"):
        keys(Twice)
    assert [e.key for e in walk(Twice)] == ["conf", "conf"]


def test_build_leaves_an_optional_group_off_unless_switched_on() -> None:
    assert build(RunOptions, {"tile_merge": "views"}).tiling is None  # its default: says nothing
    for values in ({"tile_merge": "nms"}, {"tile": 0, "tile_merge": "nms"}):  # another value: refused, not ignored
        with pytest.raises(InputError, match="--tile-merge works with --tile only"):
            build(RunOptions, values)
    assert build(RunOptions, {"tile": 512}).tiling == TileOptions(tile=512)
