"""The command line: help, exit codes, outputs, info, and the default first run."""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from toolkit.cli import main


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "toolkit.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_help_teaches() -> None:
    out = _cli("run", "--help")
    assert out.returncode == 0
    for flag in ("--weights", "--save-txt", "--save-json", "--conf", "--json", "Examples"):
        assert flag in out.stdout


EXIT_NOW = """
import atexit, sys, threading, time
from pathlib import Path
from toolkit.cli.root import exit_now

out = Path(sys.argv[1])
def late() -> None:  # a thread still writing when the command returns
    time.sleep(0.3)
    (out / "thread").write_text("done")
threading.Thread(target=late).start()
atexit.register(lambda: (out / "atexit").write_text("done"))
print("printed", end="")  # unflushed when exit_now is called
exit_now(3)
"""


def test_the_fast_exit_still_does_what_pythons_own_shutdown_does(tmp_path: Path) -> None:
    """exit_now skips only the interpreter's final teardown: a thread still at work is waited for, atexit handlers
    run, buffered output is flushed, and the exit code is kept."""
    proc = subprocess.run([sys.executable, "-c", EXIT_NOW, str(tmp_path)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "printed"
    assert (tmp_path / "thread").read_text() == "done" and (tmp_path / "atexit").read_text() == "done"


BLAS = """
import atexit, os, sys
import toolkit.cli
print("numpy before entry:", "numpy" in sys.modules)
atexit.register(lambda: print("numpy:", "numpy" in sys.modules, "threads:", os.environ.get("OPENBLAS_NUM_THREADS")))
sys.argv = ["yolokit", "info", sys.argv[1]]
toolkit.cli.entry()
"""


@pytest.mark.parametrize("given", [None, "3"])
def test_the_command_starts_numpy_with_one_blas_thread_unless_told(given: str | None, tmp_path: Path) -> None:
    """Importing toolkit.cli loads no numpy, so the command can set OPENBLAS_NUM_THREADS before numpy reads it (its
    idle thread spun on the other core at every start); a value in the environment is the user's and is kept."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if given is not None:
        env["OPENBLAS_NUM_THREADS"] = given
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not a model")
    proc = subprocess.run([sys.executable, "-c", BLAS, str(model)], capture_output=True, text=True, timeout=120,
                          env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert "numpy before entry: False" in proc.stdout, proc.stdout + proc.stderr
    assert f"numpy: True threads: {given or '1'}" in proc.stdout, proc.stdout + proc.stderr


COMMAND_MODULES = """
import sys
from toolkit.cli import commands
root = commands(sys.argv[1:2])
loaded = sorted(m for m in sys.modules if m.startswith(("toolkit.cli.", "toolkit.jobs.bench", "toolkit.jobs.val")))
print(" ".join(loaded))
sys.exit(root.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("argv, loads, skips", [
    (["run", "--help"], "toolkit.cli.run", ("toolkit.cli.tools", "toolkit.cli.serve", "toolkit.cli.export",
                                            "toolkit.jobs.bench", "toolkit.jobs.val")),
    (["weights", "list"], "toolkit.cli.tools", ("toolkit.cli.run", "toolkit.cli.serve", "toolkit.cli.export")),
    (["--help"], "toolkit.cli.tools", ()),
])
def test_a_command_loads_only_its_own_modules(argv: list[str], loads: str, skips: tuple[str, ...]) -> None:
    out = subprocess.run([sys.executable, "-c", COMMAND_MODULES, *argv], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = out.stdout.splitlines()[0].split()
    assert loads in loaded and not set(skips) & set(loaded), loaded
    if argv == ["--help"]:  # the help lists every command
        for name in ("run", "export", "serve", "val", "info", "bench", "weights"):
            assert f" {name} " in out.stdout


def test_a_misspelt_command_is_named_with_the_nearest_one() -> None:
    out = _cli("rnu", "photos/")
    assert out.returncode == 2
    assert out.stderr == "yolokit: no such command 'rnu'; did you mean 'run'? See 'yolokit --help'\n", out.stderr


def test_missing_source_is_one_line_and_exit_2(tmp_path: Path) -> None:
    out = _cli("run", str(tmp_path / "nope"), "--weights", "yolov5n.yaml", "--project", str(tmp_path))
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "nope" in lines[0] and "no such file" in lines[0]


def test_usage_error_exit_code() -> None:
    assert main(["run", "--no-such-option"]) == 2
    assert main(["run", "x.jpg", "--conf", "not-a-number"]) == 2


def test_missing_weights_exit_code(tmp_path: Path) -> None:
    img = tmp_path / "a.jpg"
    cv2.imwrite(str(img), np.zeros((32, 32, 3), np.uint8))
    assert main(["run", str(img), "--weights", str(tmp_path / "missing.pt"), "--project", str(tmp_path)]) == 2


def test_corrupt_model_file_exit_code(tmp_path: Path) -> None:
    img = tmp_path / "a.jpg"
    cv2.imwrite(str(img), np.zeros((32, 32, 3), np.uint8))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    assert main(["run", str(img), "--weights", str(bad), "--project", str(tmp_path)]) == 3


class _NotFound(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - keep test output quiet
        pass


@pytest.fixture
def empty_mirror(tmp_path: Path) -> Iterator[str]:
    """A weights mirror on loopback that has no file: every download fails with 404."""
    root = tmp_path / "mirror"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_NotFound, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("model", ["missing", "corrupt", "undownloadable"])
def test_a_run_whose_model_cannot_load_leaves_no_run_folder(model: str, tmp_path: Path, empty_mirror: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing was read, so nothing is left: no runs/detect/exp, and no runs/detect made for it either."""
    img = tmp_path / "a.jpg"
    cv2.imwrite(str(img), np.zeros((32, 32, 3), np.uint8))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    monkeypatch.setenv("YOLOKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("YOLOKIT_SHARED", str(tmp_path / "no-shared"))
    monkeypatch.setenv("YOLOKIT_WEIGHTS_URL", empty_mirror)
    weights, code = {"missing": (str(tmp_path / "missing.pt"), 2), "corrupt": (str(bad), 3),
                     "undownloadable": ("yolov5s", 5)}[model]
    project = tmp_path / "runs" / "detect"
    assert main(["run", str(img), "--weights", weights, "--project", str(project)]) == code
    assert not (tmp_path / "runs").exists()
    (project / "exp").mkdir(parents=True)  # an existing project keeps its folders; only this run's exp2 goes
    assert main(["run", str(img), "--weights", weights, "--project", str(project)]) == code
    assert sorted(p.name for p in project.iterdir()) == ["exp"]


def test_json_summary_and_outputs_with_random_model(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in ("a.jpg", "sub/b.png"):
        cv2.imwrite(str(src / name), rng.integers(0, 255, (120, 200, 3), dtype=np.uint8))
    out = _cli("run", str(src), "--weights", "yolov5n.yaml", "--conf", "0.0001", "--project", str(tmp_path),
               "--name", "j", "--save-txt", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["images"] == 2 and summary["processed"] == 2 and not summary["failed"]
    assert summary["detections"] > 0
    run_dir = Path(summary["out_dir"])
    assert (run_dir / "a.jpg").is_file() and (run_dir / "sub" / "b.png").is_file()
    assert (run_dir / "labels" / "sub" / "b.txt").is_file()
    # a second run does not overwrite: exp -> exp2 style increment
    out2 = _cli("run", str(src), "--weights", "yolov5n.yaml", "--project", str(tmp_path), "--name", "j", "--json",
                "--nosave")
    assert json.loads(out2.stdout)["out_dir"].endswith("j2")


def test_default_run_on_sample_photos(yolov5n_pt: Path, tmp_path: Path) -> None:
    """The README's main command: no SOURCE, no --weights (the official yolov5n found via the lookup order)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("YOLOKIT_")}
    env["YOLOKIT_SHARED"] = str(yolov5n_pt.parents[1])
    env["YOLOKIT_CACHE_DIR"] = str(tmp_path / "empty-cache")
    out = subprocess.run([sys.executable, "-m", "toolkit.cli", "run", "--project", str(tmp_path), "--json",
                          "--nosave"], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    assert s["processed"] == 4
    # real photos: the astronaut is a person, chelsea a cat, and there is a cup of coffee
    assert {"person", "cat", "cup"} <= set(s["per_class"])
    assert Path(s["weights"]).resolve() == yolov5n_pt.resolve()


def test_info_on_checkpoint(yolov5n_pt: Path) -> None:
    out = _cli("info", str(yolov5n_pt), "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["parameters"] == 1867405 and info["stride"] == 32
    assert abs(info["gflops_640"] - 4.5) < 0.1
    assert info["names"]["0"] == "person"
    text = _cli("info", str(yolov5n_pt)).stdout  # None was printed for a size or batch the model leaves open
    assert "imgsz: any (dynamic)" in text and "batch: any (dynamic)" in text and "None" not in text, text


def test_info_on_a_static_export_says_its_size_is_fixed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A static export (one size, one batch) was shown with "max_imgsz: no limit"."""
    pytest.importorskip("onnx", reason="the export extra is not installed: pip install 'yolokit[export]'")
    model = tmp_path / "st.onnx"
    assert main(["export", "yolov5n.yaml", "--to", "onnx", "--static", "--imgsz", "128,160", "-o", str(model)]) == 0
    capsys.readouterr()
    assert main(["info", str(model)]) == 0
    text = capsys.readouterr().out
    assert "max_imgsz: fixed (static)" in text and "no limit" not in text, text
    img = tmp_path / "img.jpg"
    cv2.imwrite(str(img), np.full((64, 96, 3), 128, np.uint8))
    assert main(["run", str(img), "--weights", str(model), "--imgsz", "120", "--nosave", "--project",
                 str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out  # it ran at the export's fixed size, not 120 rounded up (review)
    assert "1/1 images processed" in out and "not a multiple of the model's stride" not in out, out


def test_weights_list() -> None:
    out = _cli("weights", "list")
    assert out.returncode == 0 and "yolov5x.pt" in out.stdout


def test_run_without_weights_takes_yolokit_weights(tmp_path: Path, yolov5n_pt: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`yolokit run` with no --weights loads $YOLOKIT_WEIGHTS (its help says so), here a copy under another name."""
    model = tmp_path / "my-model.pt"
    model.write_bytes(yolov5n_pt.read_bytes())
    img = tmp_path / "img.jpg"
    cv2.imwrite(str(img), np.full((64, 96, 3), 128, np.uint8))
    monkeypatch.setenv("YOLOKIT_WEIGHTS", str(model))
    out = subprocess.run([sys.executable, "-m", "toolkit.cli", "run", str(img), "--json", "--nosave", "--project",
                          str(tmp_path / "runs")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert Path(json.loads(out.stdout)["weights"]).name == "my-model.pt"
    monkeypatch.setenv("YOLOKIT_WEIGHTS", str(tmp_path / "absent.pt"))
    out = subprocess.run([sys.executable, "-m", "toolkit.cli", "run", str(img), "--nosave", "--project",
                          str(tmp_path / "runs")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "absent.pt" in out.stderr and "YOLOKIT_WEIGHTS" in out.stderr, out.stderr


def test_only_a_process_that_ends_after_the_command_leaves_the_models_release_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`yolokit` (entry: the process ends by exit_now after the command) does not wait for the model's release;
    main() called by a program or a test releases it before returning (a release left running when the interpreter
    tears down killed such a process: "terminate called without an active exception")."""
    from tests.helpers.releases import note_releases, wait_for_releases

    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((64, 64, 3), np.uint8))
    closed_on = note_releases(monkeypatch)
    argv = ["run", str(image), "--weights", "yolov5n.yaml", "--imgsz", "64", "--nosave", "--project",
            str(tmp_path / "runs")]
    assert main(argv) == 0
    assert closed_on == [threading.current_thread().name]
    assert main(argv, exits=True) == 0
    wait_for_releases()
    assert closed_on[1:] == ["yolokit-release"]


@pytest.mark.parametrize(("argv", "line"), [
    (["run", "a.jpg", "b.jpg"], "yolokit run: got unexpected extra argument(s) (b.jpg); give one SOURCE (a folder, a "
                                ".txt list, or a glob in quotes, 'photos/*.jpg', which the shell otherwise expands "
                                "into many names); see 'yolokit run --help'"),
    (["run", "--source", "x"], "yolokit run: SOURCE is an argument, not an option (detect.py's --source): yolokit run "
                               "photos/; see 'yolokit run --help'"),
    (["info"], "yolokit info: missing argument 'MODEL'; see 'yolokit info --help'"),
    (["nope"], "yolokit: no such command 'nope'; see 'yolokit --help'"),
    (["run", "--imgsz"], "yolokit run: option '--imgsz' requires an argument; see 'yolokit run --help'"),  # no ctx
])
def test_a_command_line_the_parser_refuses_is_one_line(argv: list[str], line: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The parser's own refusal was four lines ("Usage: ...", "Try ...", "", "Error: ...")."""
    assert main(argv) == 2
    assert capsys.readouterr().err == line + "\n"
    assert main(["run", "--sourcedir", "x"]) == 2  # not taken for detect.py's --source
    assert "no such option: --sourcedir" in capsys.readouterr().err


def test_a_bare_command_prints_its_help_and_no_empty_error(capsys: pytest.CaptureFixture[str]) -> None:
    """`yolokit` and `yolokit weights` alone printed their help, then the line "yolokit: ; see 'yolokit --help'"."""
    for argv in ([], ["weights"]):
        assert main(argv) == 2
        got = capsys.readouterr()
        assert "Usage" in got.out + got.err and ": ; see" not in got.err, got.err


def test_help_and_messages_read_as_english(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """`--nosave / --no-nosave` offered a double negative; the --name refusal read "not empty, an absolute path, or
    a path with . or .." (the opposite of what it meant)."""


    main(["run", "--help"])
    out = capsys.readouterr().out
    assert "--nosave" in out and "--no-nosave" not in out
    assert main(["run", str(tmp_path), "--name", "../x", "--project", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not empty, not an absolute path, no . or .. part that leaves --project" in err


def test_classes_as_detect_py_users_give_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--classes 0 --classes 2`` kept class 2 alone (the parser's last value wins), ``--classes 0 2`` said to give
    one SOURCE, ``--classes ""`` kept every class where the library refuses an empty list; and ``--imgsz 70`` ran at
    96 without the word detect.py says."""
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(3)
    assert cv2.imwrite(str(src / "a.jpg"), rng.integers(0, 255, (64, 80, 3), dtype=np.uint8))
    common = ["run", str(src), "--weights", "yolov5n.yaml", "--imgsz", "64", "--conf", "0.00001", "--nosave",
              "--project", str(tmp_path), "--exist-ok", "--json"]
    assert main([*common, "--name", "one", "--classes", "0", "--classes", "2"]) == 0
    assert json.loads((tmp_path / "one" / "run.json").read_text())["classes"] == [0, 2]
    rest = [a for a in common if a != str(src)]  # SOURCE after "--": the joined --classes goes before it (review)
    assert main([*rest, "--name", "one", "--classes", "0", "--classes", "2", "--", str(src)]) == 0
    assert main([*common, "--name", "two", "--classes", "0", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--classes takes its class ids as one list: --classes 0,2" in err and "\n" not in err, err
    assert main([*common, "--name", "three", "--classes", ""]) == 2
    assert "--classes is empty, which would keep no detection" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["run", str(src), "--weights", "yolov5n.yaml", "--imgsz", "70", "--nosave", "--project",
                 str(tmp_path), "--name", "four"]) == 0
    assert "--imgsz 70x70 is not a multiple of the model's stride: it ran at 96x96" in capsys.readouterr().out


def test_timeouts_past_a_day_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--stream-timeout inf failed every object ("timestamp out of range for platform time_t") and --download-timeout
    1e300 killed the deadline thread with a traceback; both are one line, exit 2."""
    for flag, value in (("--stream-timeout", "inf"), ("--download-timeout", "1e300")):
        assert main(["run", str(tmp_path), flag, value, "--project", str(tmp_path / "p")]) == 2
        err = capsys.readouterr().err.strip()
        assert f"{flag} must be in (0, 86400]" in err and "\n" not in err, err
