"""Run folders you can trust: ``--resume`` checks every setting that shapes the outputs and every input, retries what
can now succeed, and one run holds a run folder at a time. The first four tests reproduce, in thread and in process
mode, the four failures found on main 9b70c88 (each failed there); tests/test_ray_engine.py runs the same cases
with the Ray engine."""

from __future__ import annotations

import contextlib
import csv
import functools
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from toolkit.cli import main
from toolkit.errors import InputError
from toolkit.jobs.run import RunOptions, run

RANDOM = "yolov5n.yaml"  # random weights: many boxes of many classes, for accounting tests
COMMON = ["--weights", RANDOM, "--imgsz", "64", "--conf", "0.00001", "--max-det", "4"]
MODES = ["thread", "process"]
RETRIED = "; --resume retries it"
LASTING = "; --resume retries it only once the file changes, or with --retry-failed"
BOOKKEEPING = {"manifest.jsonl", "failures.jsonl", "predictions.jsonl", "predictions.csv", "summary.json", "run.json",
               ".yolokit.lock"}


def _img(path: Path, seed: int, h: int = 48, w: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    assert cv2.imwrite(str(path), cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (3, 3), 0))
    return path


def _outputs(folder: Path) -> dict[str, Any]:
    """Every output file's bytes, and the CSV's rows in a stable order (a resumed run appends its rows)."""
    out: dict[str, Any] = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
                           if p.is_file() and p.name not in BOOKKEEPING}
    if (folder / "predictions.csv").is_file():
        with (folder / "predictions.csv").open(newline="") as f:
            rows = list(csv.reader(f))
        out["predictions.csv"] = [rows[0], *sorted(rows[1:])]
    return out


def _manifest_keys(folder: Path) -> list[str]:
    return [json.loads(line)["key"] for line in (folder / "manifest.jsonl").read_text().splitlines()]


def _workers(mode: str) -> list[str]:
    return ["--mode", mode, "--workers", "2" if mode == "process" else "1"]


# ------------------------------------------------------------------ 1. every output setting is part of the identity


@pytest.mark.parametrize("mode", MODES)
def test_resume_refuses_changed_output_settings_naming_each(mode: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 25, case 1: a run with --classes 0, resumed with --agnostic-nms --save-conf and no --classes, mixed two
    settings in one folder and exited 0."""
    src = tmp_path / "src"
    for i in range(6):
        _img(src / f"{i}.jpg", seed=i)
    base = ["run", str(src), *COMMON, "--save-txt", "--save-csv", "--project", str(tmp_path), "--name", "r"]
    assert main([*base, *_workers(mode), "--classes", "0"]) == 0
    before = _outputs(tmp_path / "r")
    capsys.readouterr()
    assert main([*base, *_workers(mode), "--resume", "--agnostic-nms", "--save-conf"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1, err
    for change in ("--classes 0 -> unset", "--agnostic-nms off -> on", "--save-conf off -> on"):
        assert change in err[0], err[0]
    assert _outputs(tmp_path / "r") == before  # nothing written
    for flag in (["--hide-labels"], ["--line-thickness", "3"], ["--nosave"], ["--save-json"], ["--iou", "0.5"],
                 ["--fast-decode"], ["--max-pixels", "1M"], ["--vid-stride", "2"]):
        assert main([*base, *_workers(mode), "--classes", "0", "--resume", *flag]) == 2, flag
        assert f"{flag[0]} " in capsys.readouterr().err, flag
    # settings that change no output may differ: the other mode, other workers and batch; --fp32 is the default
    # (it was refused: "--half unset -> off")
    other = "thread" if mode == "process" else "process"
    assert main([*base, "--mode", other, "--workers", "2", "--batch", "2", "--classes", "0", "--resume"]) == 0
    assert main([*base, *_workers(mode), "--classes", "0", "--resume", "--fp32"]) == 0
    assert _outputs(tmp_path / "r") == before


def test_resume_compares_the_model_by_content_and_source_as_a_path(yolov5n_pt: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """--weights was compared as text: ./yolov5n.pt for yolov5n.pt was refused, and another file under the same
    name, run from another folder, was taken (one run folder, two models). SOURCE src/ was refused for src."""
    for where in ("a", "b"):
        (tmp_path / where).mkdir()
        shutil.copy(yolov5n_pt, tmp_path / where / "yolov5n.pt")
        for i in range(2):
            _img(tmp_path / where / "src" / f"{i}.jpg", seed=i)
    with (tmp_path / "b" / "yolov5n.pt").open("ab") as f:
        f.write(b"another model")  # refused before it is loaded: what matters is that its bytes differ
    common = ["--imgsz", "64", "--nosave", "--save-txt", "--project", str(tmp_path / "runs"), "--name", "r"]
    monkeypatch.chdir(tmp_path / "a")
    assert main(["run", "src", "--weights", "yolov5n.pt", *common]) == 0
    (tmp_path / "a" / "src" / "2.jpg").write_bytes((tmp_path / "a" / "src" / "0.jpg").read_bytes())
    capsys.readouterr()
    assert main(["run", "./src/", "--weights", "./yolov5n.pt", *common, "--resume"]) == 0  # the same model and SOURCE
    assert "changed since they were recorded" not in capsys.readouterr().out  # ./src/0.jpg is src/0.jpg: not redone
    assert len(_manifest_keys(tmp_path / "runs" / "r")) == 3
    # a byte-identical copy under another name: the same model (refused: "--weights ... -> copy.pt (another model)")
    shutil.copy(yolov5n_pt, tmp_path / "a" / "copy.pt")
    assert main(["run", "src", "--weights", "copy.pt", *common, "--resume"]) == 0
    # SOURCE by another path is refused: a relative SOURCE recorded is not known to be today's folder (a resume from
    # another folder with the same relative name removed the run's outputs as inputs gone)
    assert main(["run", str(tmp_path / "a" / "src"), "--weights", "copy.pt", *common, "--resume"]) == 2
    monkeypatch.chdir(tmp_path / "b")
    capsys.readouterr()
    assert main(["run", "src", "--weights", "yolov5n.pt", *common, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--weights copy.pt -> yolov5n.pt (another model: the file's content differs from the run's)" in err, err


def test_resume_knows_the_default_model_by_any_name(yolov5n_pt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A run started with no --weights (the default yolov5n, found in the shared folder) was refused on --resume
    given that file's path or the name yolov5n ("--weights unset -> yolov5n"), and the other way round."""
    for i in range(2):
        _img(tmp_path / "src" / f"{i}.jpg", seed=i)
    common = ["--imgsz", "64", "--nosave", "--save-txt", "--project", str(tmp_path / "runs")]
    assert main(["run", str(tmp_path / "src"), *common, "--name", "a"]) == 0
    assert main(["run", str(tmp_path / "src"), "--weights", "yolov5n", *common, "--name", "b"]) == 0
    capsys.readouterr()
    for name, weights in (("a", ["--weights", str(yolov5n_pt)]), ("a", ["--weights", "yolov5n"]), ("b", []),
                          ("b", ["--weights", str(yolov5n_pt)])):
        assert main(["run", str(tmp_path / "src"), *weights, *common, "--name", name, "--resume"]) == 0, \
            capsys.readouterr().err
    (tmp_path / "other.pt").write_bytes(yolov5n_pt.read_bytes() + b"another model")  # refused before it loads
    assert main(["run", str(tmp_path / "src"), "--weights", str(tmp_path / "other.pt"), *common, "--name", "a",
                 "--resume"]) == 2
    assert "another model: the file's content differs" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "src"), *common, "--name", "c"]) == 0
    monkeypatch.setenv("YOLOKIT_WEIGHTS", str(tmp_path / "other.pt"))  # the default names another file now
    capsys.readouterr()
    assert main(["run", str(tmp_path / "src"), *common, "--name", "c", "--resume"]) == 2
    assert ("--weights unset names another model than the run's now (its file's content differs; $YOLOKIT_WEIGHTS "
            "chooses the default)") in capsys.readouterr().err


def test_an_output_that_would_land_on_an_input_in_the_run_folder_is_refused(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """``--exist-ok`` into a subfolder of SOURCE that holds a photo named as another input's annotated image
    (photos/a.jpg's goes to photos/sub/a.jpg, itself a photo) overwrote that photo with exit 0. Refused in one line
    before anything is written, as is an input in the run folder's crops folder; a run folder whose photos no
    output names runs."""
    monkeypatch.chdir(tmp_path)
    _img(tmp_path / "ph" / "a.jpg", seed=1)
    _img(tmp_path / "ph" / "sub" / "a.jpg", seed=2)
    _img(tmp_path / "ph" / "v" / "clip.jpg", seed=3)
    before = {p: p.read_bytes() for p in (tmp_path / "ph").rglob("*.jpg")}
    for name, why in (("sub", "ph/sub/a.jpg, where the annotated image of ph/a.jpg goes"),
                      ("v", None)):
        capsys.readouterr()
        rc = main(["run", "ph", *COMMON, "--project", "ph", "--name", name, "--exist-ok"])
        err = capsys.readouterr().err.strip()
        if why is None:
            assert rc == 0, err
            continue
        assert rc == 2 and why in err and "give another --name or --project" in err and "\n" not in err, err
        assert {p: p.read_bytes() for p in (tmp_path / "ph").rglob("*.jpg") if p in before} == before
    _img(tmp_path / "q" / "b.jpg", seed=4)
    _img(tmp_path / "q" / "r" / "crops" / "person" / "x.jpg", seed=5)
    assert main(["run", "q", *COMMON, "--project", "q", "--name", "r", "--exist-ok", "--save-crop"]) == 2
    assert "holds SOURCE's input q/r/crops/person/x.jpg in its crops folder" in capsys.readouterr().err
    # what is not written lands on nothing: no crops without --save-crop, no annotated image with --nosave
    assert main(["run", "q", *COMMON, "--project", "q", "--name", "r", "--exist-ok", "--nosave"]) == 0
    assert main(["run", "ph", *COMMON, "--project", "ph", "--name", "sub", "--exist-ok", "--nosave",
                 "--save-txt"]) == 0
    assert {p: p.read_bytes() for p in (tmp_path / "ph").rglob("*.jpg") if p in before} == before


def test_run_folders_inside_source_have_their_outputs_set_aside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """``--project photos/runs`` (the documented layout) run twice: the second run read the first's annotated images
    and crops as photos (13 inputs for 2), and more each time. Every run folder below a SOURCE folder or a glob's
    fixed part has the outputs its records list set aside, with a note; a user's photo put in it is still read."""
    monkeypatch.chdir(tmp_path)
    for i in range(2):
        _img(tmp_path / "pin" / f"{i}.jpg", seed=i)
    for n, source in enumerate(("pin", "pin", "pin/**/*.jpg", "pin")):
        capsys.readouterr()
        assert main(["run", source, *COMMON, "--project", "pin/runs", "--save-crop"]) == 0, source
        out = capsys.readouterr().out
        assert "2/2 images processed" in out, (source, out)
        assert ("records as outputs were not read as inputs" in out) == (n > 0), out
    _img(tmp_path / "pin" / "runs" / "exp" / "mine.jpg", seed=9)  # not an output: an input like any
    assert main(["run", "pin", *COMMON, "--project", "pin/runs", "--nosave"]) == 0
    assert "3/3 images processed" in capsys.readouterr().out
    assert main(["run", "pin/runs/exp", *COMMON, "--project", "other"]) == 0  # a run folder as SOURCE: its files
    assert len(_manifest_keys(tmp_path / "other" / "exp")) > 2


def test_a_run_folder_is_never_read_as_inputs_nor_written_over_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """``--exist-ok`` into SOURCE's own folder wrote each annotated image over its input (the photos lost), and a
    run folder inside SOURCE had its outputs read as inputs on --resume (13 inputs for 3, outputs of outputs
    written deeper each time). The first is refused before anything is written; the outputs the run folder records
    are set aside, however the folder is reached (a link, a glob from inside it); other files are inputs."""
    monkeypatch.chdir(tmp_path)
    for i in range(2):
        _img(tmp_path / "proj" / f"{i}.jpg", seed=i)
    before = {p.name: p.read_bytes() for p in (tmp_path / "proj").iterdir()}
    (tmp_path / "list.txt").write_text("proj/0.jpg\n")
    for source in ("proj", "proj/", "list.txt", "proj/1.jpg", "proj/*.jpg"):
        capsys.readouterr()
        assert main(["run", source, *COMMON, "--project", ".", "--name", "proj", "--exist-ok"]) == 2, source
        err = capsys.readouterr().err.strip()
        assert "the run folder holds SOURCE's inputs (proj/" in err and "give another --name or --project" in err, err
        assert "\n" not in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "proj").iterdir()} == before  # nothing written or overwritten
    # a run folder that holds SOURCE, or one holding the user's own photos: nothing lands on an input, so both run
    _img(tmp_path / "top" / "imgs" / "0.jpg", seed=5)
    assert main(["run", "top/imgs", *COMMON, "--project", ".", "--name", "top", "--exist-ok"]) == 0
    _img(tmp_path / "data" / "day1" / "a.jpg", seed=6)
    _img(tmp_path / "data" / "b.jpg", seed=7)
    assert main(["run", "data", *COMMON, "--project", "data", "--name", "day1", "--exist-ok"]) == 0
    assert sorted(_manifest_keys(tmp_path / "data" / "day1")) == ["b", "day1/a"]
    # the run folder inside SOURCE, reached directly or through a link: its outputs are set aside on --resume
    (tmp_path / "disk").mkdir()
    (tmp_path / "proj" / "links").symlink_to(tmp_path / "disk")
    for project in ("proj/runs", "proj/links"):
        shutil.rmtree(tmp_path / "proj" / "runs", ignore_errors=True)  # another run folder's outputs are inputs
        assert main(["run", "proj", *COMMON, "--save-crop", "--project", project, "--name", "e"]) == 0
        first = _outputs(tmp_path / project / "e")
        capsys.readouterr()
        for _ in range(2):
            assert main(["run", "proj", *COMMON, "--save-crop", "--project", project, "--name", "e", "--resume"]) == 0
            out = capsys.readouterr().out
            assert "2/2 images processed" in out and "records as outputs were not read as inputs" in out, out
        assert sorted(_manifest_keys(tmp_path / project / "e")) == ["0", "1"]
        assert _outputs(tmp_path / project / "e") == first  # no outputs of outputs
    (tmp_path / "proj" / "links").unlink()
    # a glob with no fixed part, run twice from SOURCE's folder into a run folder below it
    monkeypatch.chdir(tmp_path / "proj")
    for _ in range(2):
        assert main(["run", "*.jpg", *COMMON, "--project", "out", "--name", "g", "--exist-ok"]) == 0
        assert main(["run", "**/*.jpg", *COMMON, "--project", "out", "--name", "h", "--exist-ok"]) == 0
    assert sorted(_manifest_keys(tmp_path / "proj" / "out" / "g")) == ["0", "1"]


def test_run_identity_takes_every_output_setting_and_no_other() -> None:
    """Every option declared as changing outputs is checked by --resume, each on its own line; no other option is
    (so an option added later is checked once its declaration says it changes outputs)."""
    from toolkit.jobs.records import identity_changes
    from toolkit.options import keys

    base = RunOptions.of(tile=640).identity()
    for key, entry in keys(RunOptions).items():
        opt = entry.option
        value = getattr(RunOptions.of(tile=640), entry.path[0])
        for part in entry.path[1:]:
            value = getattr(value, part)
        if opt.choices:
            other: Any = next(c for c in opt.choices if c != value)
        elif key == "classes":
            other = (0,)
        elif key == "half":
            other = True
        elif key == "imgsz":
            other = 320
        elif value is None:
            other = 2 if opt.lo is not None else "other"
        elif isinstance(value, dict):
            other = {"k": 1}
        else:
            other = {bool: lambda v: not v, int: lambda v: v + 3, float: lambda v: min(v + 0.125, 1.0) if v <= 1
                     else v + 0.125, str: lambda v: v + "x", tuple: lambda v: (*v, 0.5)}.get(
                type(value), lambda v: "other")(value)
        if key == "tile":
            other = 320
        changed = RunOptions.of(**{"tile": 640, key: other}).identity()
        if opt.affects_output:
            diff = identity_changes(base, changed)
            assert len(diff) == 1 and " -> " in diff[0], (key, diff)
        else:
            assert changed == base, key
    # an option newer than the run folder counts as its default
    older = {k: v for k, v in base.items() if k != "round_boxes"}
    assert identity_changes(older, base) == []
    assert identity_changes(older, {**base, "round_boxes": False}) == ["--round-boxes on -> off"]


def test_a_run_folder_of_an_earlier_yolokit_is_refused_in_one_sentence(tmp_path: Path) -> None:
    _img(tmp_path / "src" / "a.jpg", 0)
    old = tmp_path / "r"
    old.mkdir()
    (old / "run.json").write_text(json.dumps({"source": str(tmp_path / "src"), "weights": RANDOM, "conf": 0.25}))
    (old / "manifest.jsonl").write_text(json.dumps({"key": "a", "path": str(tmp_path / "src" / "a.jpg"), "ok": True,
                                                    "n": 0, "classes": {}}) + "\n")
    with pytest.raises(InputError, match="made by an earlier yolokit.*start a new run without --resume"):
        run(RunOptions.of(source=str(tmp_path / "src"), weights=RANDOM, project=str(tmp_path), name="r", resume=True))


# ------------------------------------------------------------------------------- 2. failed inputs on --resume


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _site(root: Path) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 serving ``root``."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("mode", MODES)
def test_failed_inputs_are_retried_when_they_can_now_succeed(mode: str, tmp_path: Path) -> None:
    """Issue 25, case 2: three broken JPEGs said "re-copy or re-export the file"; once they were replaced, --resume
    read nothing and printed the same failures. Here: damaged files are retried once they change (or with
    --retry-failed), a server's failure on every resume, and each reason says which."""
    src, fixed, served = tmp_path / "src", tmp_path / "fixed", tmp_path / "served"
    served.mkdir()
    for i in range(8):
        _img(src / f"{i:02d}.jpg", seed=i)
    broken = []
    for i, name in enumerate(("b1", "b2", "b3")):
        data = _img(fixed / f"{name}.jpg", seed=20 + i, h=96, w=128).read_bytes()
        broken.append(src / f"{name}.jpg")
        broken[-1].write_bytes(data[: len(data) // 2])
    with _site(served) as site:
        url = f"{site}/remote.jpg"  # not there yet: HTTP 404
        listing = tmp_path / "list.txt"
        listing.write_text("".join(f"{p}\n" for p in sorted(src.iterdir())) + url + "\n")
        opts: dict[str, Any] = dict(source=str(listing), weights=RANDOM, imgsz=64, conf=1e-5, max_det=4,
                                    save_txt=True, nosave=True, mode=mode, workers=2 if mode == "process" else 1,
                                    project=str(tmp_path), name="r")
        s = run(RunOptions.of(**opts))
        assert s.images == 12 and s.processed == 8
        reasons = {f["path"]: f["reason"] for f in s.failed}
        assert set(reasons) == {*map(str, broken), url}
        assert all(reasons[str(p)].endswith(LASTING) and "truncated" in reasons[str(p)] for p in broken), reasons
        assert reasons[url].endswith(RETRIED) and "404" in reasons[url], reasons[url]
        failures = [json.loads(x) for x in (tmp_path / "r" / "failures.jsonl").read_text().splitlines()]
        assert {f["reason"] for f in failures} == set(reasons.values())

        seen: list[str] = []

        def progress(done: int, total: int, oc: Any) -> None:
            seen.append(oc.path)

        # nothing changed: the damaged files are not read again, the URL is
        s = run(RunOptions.of(**opts, resume=True), progress=progress)
        assert seen == [url] and s.images == 12 and len(s.failed) == 4
        assert s.resume["retried"] == [url]
        # --retry-failed: every failed input again
        seen.clear()
        s = run(RunOptions.of(**opts, resume=True, retry_failed=True), progress=progress)
        assert sorted(seen) == sorted([*map(str, broken), url]) and s.images == 12 and len(s.failed) == 4
        # the files replaced by good copies, the image now on the server: --resume completes the run
        for p in broken:
            shutil.copy(fixed / p.name, p)
        shutil.copy(fixed / "b1.jpg", served / "remote.jpg")
        seen.clear()
        s = run(RunOptions.of(**opts, resume=True), progress=progress)
    assert sorted(seen) == sorted([*map(str, broken), url])
    assert s.images == 12 and s.processed == 12 and not s.failed
    assert sorted(s.resume["changed"]) == sorted(map(str, broken)) and s.resume["retried"] == [url]
    out = tmp_path / "r"
    assert (out / "failures.jsonl").read_text() == ""
    keys = _manifest_keys(out)
    assert len(keys) == len(set(keys)) == 12
    assert {"b1.txt", "b2.txt", "b3.txt", "remote.txt"} <= {p.name for p in (out / "labels").iterdir()}


def test_reasons_say_what_resume_does(tmp_path: Path) -> None:
    from toolkit.jobs.manifest import retried_on_resume
    from toolkit.jobs.ray import LOST_REASON, VIDEO_REASON

    fp = "1234:5678"
    for reason in ("truncated JPEG: the image data stops before its end; re-copy or re-export the file",
                   "empty file (0 bytes)", "is a named pipe (FIFO), not an image file; it was not read",
                   "not an image or video file type (.txt)", "cannot decode this frame",
                   "the file is 2 MB, over the 1 MB limit; raise it with --max-file-size if this is a real image",
                   "the header says 20000x20000 pixels (400 megapixels), over the 1-megapixel limit; raise it with "
                   "--max-pixels if this image is real",
                   # an object's (its ETag the fingerprint), a video shorter than the stride, a name too long: were
                   # retried on every resume
                   "the object is empty", "the object holds an HTML page, not an image",
                   "the video has fewer frames than --vid-stride 31, so no frame of it is kept; lower --vid-stride",
                   "its output name ppp... is longer than the file system allows (255 bytes a name); rename the "
                   "input"):
        assert not retried_on_resume(reason, fp), reason
        assert retried_on_resume(reason, ""), reason  # no fingerprint (a URL): nothing says it is unchanged
    for reason in (LOST_REASON, VIDEO_REASON, "permission denied (cannot read the file)", "file not found",
                   "cannot read: Input/output error", "worker error: BrokenProcessPool", "inference failed: oom",
                   "the server answered HTTP 503 Service Unavailable", "no answer within 30 s (--stream-timeout)",
                   "broken symbolic link", "cannot list the folder (permission denied)"):
        assert retried_on_resume(reason, fp), reason


# ---------------------------------------------------------------------------------- 3. a changed input set


@pytest.mark.parametrize("mode", MODES)
def test_resume_follows_a_changed_input_set(mode: str, tmp_path: Path) -> None:
    """Issue 25, case 3: after deleting 2 images, adding 3 and overwriting 1, --resume reported 13/13 for a folder
    of 11; the deleted images kept their labels and CSV rows, the overwritten one its old labels. Now the folder
    ends as a fresh run over the new inputs would leave it."""
    src = tmp_path / "src"
    for i in range(10):
        _img(src / f"{i:02d}.jpg", seed=i)
    args = ["run", str(src), *COMMON, "--save-txt", "--save-csv", "--save-crop", *_workers(mode), "--project",
            str(tmp_path)]
    assert main([*args, "--name", "r"]) == 0
    for gone in ("03.jpg", "07.jpg"):
        (src / gone).unlink()
    for i in (20, 21, 22):
        _img(src / f"{i:02d}.jpg", seed=i)
    overwritten = _img(src / "05.jpg", seed=99)  # another photo under the same name
    st = overwritten.stat()
    os.utime(overwritten, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))  # as a later copy would have
    assert main([*args, "--name", "r", "--resume"]) == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["images"] == 11 and summary["processed"] == 11, summary
    assert summary["resume"]["removed"] == [str(src / "03.jpg"), str(src / "07.jpg")]
    assert summary["resume"]["changed"] == [str(src / "05.jpg")]
    assert main([*args, "--name", "fresh"]) == 0
    got, want = _outputs(tmp_path / "r"), _outputs(tmp_path / "fresh")
    assert sorted(got) == sorted(want)  # no file of a deleted input left, none missing
    assert got == want  # labels, annotated images, crops and CSV rows of the new content, each once
    assert sorted(_manifest_keys(tmp_path / "r")) == sorted(_manifest_keys(tmp_path / "fresh"))


# ----------------------------------------------------------------------- 4. one run at a time in a run folder


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "toolkit.cli", "run", *args]


def _wait_for_lines(proc: subprocess.Popen[str], manifest: Path, n: int) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.is_file() and len(manifest.read_text().splitlines()) >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"the run wrote no {n} manifest lines: {proc.poll()}")


@pytest.mark.parametrize("mode", MODES)
def test_one_run_holds_a_run_folder(mode: str, tmp_path: Path) -> None:
    """Issue 25, case 4: runs A (300 images) and B (11) shared a folder through --exist-ok, both exited 0, and the
    folder ended with B's records and A's rows gone. Now B is refused at once, naming A's process, exit 2; A
    finishes whole. A run killed with SIGKILL leaves no lock behind."""
    src, other = tmp_path / "src", tmp_path / "other"
    for i in range(60):
        _img(src / f"{i:03d}.jpg", seed=i, h=96, w=128)
    for i in range(3):
        _img(other / f"o{i}.jpg", seed=100 + i)
    common = [*COMMON, "--imgsz", "128", "--save-txt", "--nosave", *_workers(mode), "--project", str(tmp_path)]
    a = subprocess.Popen(_cli(str(src), *common, "--name", "r", "--exist-ok", "--json"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_lines(a, tmp_path / "r" / "manifest.jsonl", 1)
        os.kill(a.pid, signal.SIGSTOP)  # A holds the folder for as long as the test needs
        assert a.poll() is None, "A ended before the test could hold it"
        for extra in (["--exist-ok"], ["--resume"]):
            b = subprocess.run(_cli(str(other), *common, "--name", "r", *extra), capture_output=True, text=True,
                               timeout=120)
            lines = [ln for ln in b.stderr.splitlines() if ln.strip()]
            assert b.returncode == 2 and len(lines) == 1, b.stderr
            assert f"another yolokit run (process {a.pid} on " in lines[0] and str(tmp_path / "r") in lines[0]
        # without --exist-ok a run takes a new folder, as always
        c = subprocess.run(_cli(str(other), *common, "--name", "r", "--json"), capture_output=True, text=True,
                           timeout=300)
        assert c.returncode == 0, c.stderr
        assert json.loads(c.stdout)["out_dir"] == str(tmp_path / "r2")
    finally:
        os.kill(a.pid, signal.SIGCONT)
    out, err = a.communicate(timeout=300)
    assert a.returncode == 0, err
    summary = json.loads(out)
    assert summary["images"] == summary["processed"] == 60
    assert sorted(_manifest_keys(tmp_path / "r")) == [f"{i:03d}" for i in range(60)]
    assert json.loads((tmp_path / "r" / "run.json").read_text())["source"] == str(src)
    # SIGKILL: the kernel drops the lock with the process; --resume starts at once and completes the run
    k = subprocess.Popen(_cli(str(src), *common, "--name", "k"), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    _wait_for_lines(k, tmp_path / "k" / "manifest.jsonl", 1)
    os.kill(k.pid, signal.SIGKILL)
    k.wait(timeout=30)
    resumed = subprocess.run(_cli(str(src), *common, "--name", "k", "--resume", "--json"), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["processed"] == 60
    keys = _manifest_keys(tmp_path / "k")
    assert len(keys) == len(set(keys)) == 60


def test_a_held_folder_is_refused_before_the_model_loads(tmp_path: Path) -> None:
    from toolkit.jobs.lock import FolderLock

    _img(tmp_path / "src" / "a.jpg", 0)
    (tmp_path / "r").mkdir()
    held = pytest.raises(InputError, match=rf"another yolokit run \(process {os.getpid()} on ")
    with FolderLock(tmp_path / "r"), held:
        run(RunOptions.of(source=str(tmp_path / "src"), weights=str(tmp_path / "no-such-model.pt"),
                       project=str(tmp_path), name="r", exist_ok=True))
    s = run(RunOptions.of(source=str(tmp_path / "src"), weights=RANDOM, imgsz=64, project=str(tmp_path), name="r",
                       exist_ok=True, nosave=True))
    assert s.processed == 1  # released: the folder is free again


def test_inputs_below_a_folder_that_cannot_be_listed_now_are_kept(tmp_path: Path) -> None:
    """A sub-folder that cannot be listed (its permissions changed) is a failed input of its own; the inputs below
    it may still be there, so a resume keeps their outputs instead of taking them for gone. (As root, this machine
    cannot make a folder unlistable, so the records are reconciled directly.)"""
    from toolkit.jobs.manifest import Manifest

    out = tmp_path / "r"
    out.mkdir()
    for name in ("sub/a.jpg", "b.jpg", "c.jpg"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(b"annotated")
    lines = [{"key": k, "path": f"/src/{k}.jpg", "fp": "1:2", "ok": True, "n": 0, "classes": {},
              "files": [f"{k}.jpg"]} for k in ("sub/a", "b", "c")]
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    identity = RunOptions.of(source="/src").identity()
    (out / "run.json").write_text(json.dumps({**identity, "run_format": 2}))
    now = {"sub" + os.sep: ("/src/sub", ""), "b": ("/src/b.jpg", "1:2")}  # c.jpg deleted, sub/ unlistable
    found = Manifest(out).open(identity, True, now)
    assert found.removed == ["/src/c.jpg"] and found.changed == [] and found.retried == []
    assert sorted(_manifest_keys(out)) == ["b", "sub/a"]
    assert (out / "sub" / "a.jpg").is_file() and (out / "b.jpg").is_file() and not (out / "c.jpg").exists()


def test_retry_failed_needs_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _img(tmp_path / "src" / "a.jpg", 0)
    assert main(["run", str(tmp_path / "src"), *COMMON, "--project", str(tmp_path), "--retry-failed"]) == 2
    assert "add --resume" in capsys.readouterr().err
    assert not list(tmp_path.glob("exp*"))  # refused before any folder is made


@pytest.mark.parametrize("name", ["/abs", "../../escape", "a/../b", ".", "", " "])
def test_a_run_name_stays_inside_the_project(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--name is a folder inside --project: an absolute path or one with . or .. (a run wrote to /abs and beside
    the project) and an empty name are refused in one line; a nested name is fine."""
    project = tmp_path / "p"
    assert main(["run", str(tmp_path), "--weights", "yolov5n.yaml", "--nosave", "--project", str(project),
                 "--name", name]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"yolokit: --name {name!r}: ") and "\n" not in err
    assert not project.exists()


def test_ray_options_without_the_ray_engine_are_refused(tmp_path: Path) -> None:
    """--address (or the per-actor resources) with the local engine did nothing, without a word."""
    with pytest.raises(InputError, match="--address applies to --engine ray only; add --engine ray, or drop it"):
        run(RunOptions.of(source=str(tmp_path), weights="yolov5n.yaml", address="auto", project=str(tmp_path / "p")))
    assert not (tmp_path / "p").exists()


def test_coco_image_ids_never_name_two_files(tmp_path: Path) -> None:
    """predictions.json gave day1/0001.jpg, day2/0001.jpg and 1.jpg the same image_id 1 (val.py's number of a
    stem): their boxes could not be told apart. A number that names two files becomes each one's key; a number that
    names one file stays a number; one file listed twice keeps its number."""
    _img(tmp_path / "ids" / "day1" / "0001.jpg", seed=1)
    _img(tmp_path / "ids" / "day2" / "0001.jpg", seed=2)
    _img(tmp_path / "ids" / "1.jpg", seed=3)
    _img(tmp_path / "ids" / "000000000009.jpg", seed=4)
    assert main(["run", str(tmp_path / "ids"), *COMMON, "--project", str(tmp_path), "--name", "r", "--nosave",
                 "--save-json"]) == 0
    preds = json.loads((tmp_path / "r" / "predictions.json").read_text())
    assert {p["image_id"] for p in preds} == {"1", "day1/0001", "day2/0001", 9}
    (tmp_path / "twice.txt").write_text("ids/000000000009.jpg\nids/000000000009.jpg\n")
    assert main(["run", str(tmp_path / "twice.txt"), *COMMON, "--project", str(tmp_path), "--name", "t", "--nosave",
                 "--save-json"]) == 0
    preds = json.loads((tmp_path / "t" / "predictions.json").read_text())
    assert len(preds) == 8 and {p["image_id"] for p in preds} == {9}


def test_what_a_file_named_as_an_image_is_counts_as_lasting() -> None:
    """Text, an HTML page or a video named .jpg was retried at every --resume while the file was unchanged (its
    reason was missing from the lasting ones); every reason the decoder gives for what bytes are is lasting."""
    from toolkit.io.decode import decode_image
    from toolkit.io.files import ImageReadError
    from toolkit.jobs.manifest import retried_on_resume

    video = b"\x00\x00\x00\x18ftypmp42" + bytes(64)
    for data in (b"hello, these are notes\n" * 4, b"<!DOCTYPE html><html><body>404</body></html>", video,
                 b"\x01\x02garbage" * 8):
        with pytest.raises(ImageReadError) as got:
            decode_image(np.frombuffer(data, np.uint8), "x.jpg")
        reason = got.value.reason
        assert not retried_on_resume(reason, "x.jpg:100:0") and retried_on_resume(reason, ""), reason


def test_an_output_the_run_folder_cannot_hold_fails_its_input_alone_and_leaves_nothing(
        tmp_path: Path, yolov5n_pt: Path, coco128_images: Path) -> None:
    """One input's label file where another input's label folder goes (``e.jpg`` beside a folder ``e.txt/``) stopped
    the whole run (exit 7, the images after it never read, and --resume stopped there again); an input whose second
    crop's name was too long left its annotated image, label and first crop behind, unrecorded, for ever. Each now
    fails its own input, with nothing of it left, and the run goes on."""
    src = tmp_path / "src"
    (src / "e.txt").mkdir(parents=True)
    shutil.copy(coco128_images / "000000000009.jpg", src / "e.jpg")
    shutil.copy(coco128_images / "000000000036.jpg", src / "e.txt" / "in.jpg")
    long = src / ("N" * 251 + ".jpg")  # 255 bytes: its second crop of a class, N...2.jpg, is 256
    shutil.copy(coco128_images / "000000000049.jpg", long)
    shutil.copy(coco128_images / "000000000030.jpg", src / "z.jpg")
    assert main(["run", str(src), "--weights", str(yolov5n_pt), "--project", str(tmp_path), "--name", "r",
                 "--save-txt", "--save-crop"]) == 1
    out = tmp_path / "r"
    rows = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    failures = {r["path"]: r["reason"] for r in rows}
    assert set(failures) == {str(src / "e.txt" / "in.jpg"), str(long)}, failures
    assert "(a file is in the way of its folder); rename the input, or move what is in the way" in \
        failures[str(src / "e.txt" / "in.jpg")]
    assert "is longer than the file system allows" in failures[str(long)]
    assert sorted(_manifest_keys(out)) == sorted(["e", "e.txt/in", "z", "N" * 251])
    assert not [p for p in out.rglob("N*")], "the failed input's outputs are removed"
    assert (out / "z.jpg").is_file() and (out / "labels" / "z.txt").is_file()  # read after the failures


def test_what_run_folders_hold_is_read_only_from_a_yolokit_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A folder with a run.json and a manifest.jsonl of its own ('files': 5) was a TypeError traceback; a manifest
    naming ../photo.jpg would have set a photo outside it aside; a SOURCE whose images were all a run's outputs said
    "no inputs to process" without the reason."""
    monkeypatch.chdir(tmp_path)
    _img(tmp_path / "p2" / "a.jpg", seed=1)
    (tmp_path / "p2" / "sub").mkdir()
    (tmp_path / "p2" / "sub" / "run.json").write_text("{}")
    (tmp_path / "p2" / "sub" / "manifest.jsonl").write_text('{"key": "x", "files": 5}\n')
    assert main(["run", "p2", *COMMON, "--project", "o", "--nosave"]) == 0
    (tmp_path / "p2" / "sub" / "run.json").write_text('{"run_format": 2}')
    (tmp_path / "p2" / "sub" / "manifest.jsonl").write_text('{"key": "x", "files": ["../a.jpg", "b.jpg"]}\n')
    capsys.readouterr()
    assert main(["run", "p2", *COMMON, "--project", "o", "--nosave"]) == 0
    assert "1/1 images processed" in capsys.readouterr().out  # ../a.jpg is not the run folder's to set aside
    _img(tmp_path / "pin" / "0.jpg", seed=2)
    assert main(["run", "pin", *COMMON, "--project", "pin/runs"]) == 0
    capsys.readouterr()
    assert main(["run", "pin/runs", *COMMON, "--project", "o"]) == 2
    err = capsys.readouterr().err.strip()
    assert "are all outputs that the run folder pin/runs/exp records; give a run folder itself as SOURCE" in err, err
