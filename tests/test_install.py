"""An install without PyTorch runs exported models.

* In this environment, with ``torch`` made unimportable: ``yolokit run``, ``info`` and ``val`` work on an ONNX export;
  a ``.pt`` says in one line to ``pip install 'yolokit[torch]'``, ``export`` to ``pip install 'yolokit[export]'``
  (exit 4).
* In a fresh virtual environment, ``pip install "yolokit[onnx]"`` (from this checkout, dependencies from the
  package index): no torch is installed, and ``yolokit run`` on an ONNX export works. The environment is kept in
  pytest's cache folder (``.pytest_cache``) and reused while ``pyproject.toml`` is unchanged (yolokit itself is
  reinstalled every time); the test skips, with pip's reason, only when pip met a network error (connection refused
  or reset, a name that does not resolve, a timeout). Anything else, an unsatisfiable requirement included, fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NO_TORCH = """
import sys
sys.modules["torch"] = None  # `import torch` now raises ImportError, and find_spec("torch") is None
sys.modules["torchvision"] = None
from toolkit.cli import main
sys.exit(main(sys.argv[1:]))
"""
# What pip (urllib3) says when the network fails: its retry warnings name the cause. "Could not find a version" and
# "No matching distribution" are not among them: pip says those for an unsatisfiable requirement too.
NETWORK_SIGNS = ("Connection refused", "Connection reset", "Connection aborted", "Failed to establish a new connection",
                 "Temporary failure in name resolution", "Name or service not known", "nodename nor servname",
                 "Network is unreachable", "No route to host", "timed out", "Cannot connect to proxy")


def _network_error(pip_output: str) -> str | None:
    """The line of pip's output that shows a network error, or None when nothing in it does."""
    return next((ln.strip() for ln in pip_output.splitlines() if any(s in ln for s in NETWORK_SIGNS)), None)


def _yolokit_without_torch(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


@pytest.fixture(scope="module")
def small_labelled(coco128: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("coco8")
    for sub in ("images", "labels"):
        (root / sub).mkdir()
    for img in sorted((coco128 / "images" / "train2017").glob("*.jpg"))[:8]:
        shutil.copy(img, root / "images" / img.name)
        label = coco128 / "labels" / "train2017" / f"{img.stem}.txt"
        if label.is_file():
            shutil.copy(label, root / "labels" / label.name)
    return root


def test_run_info_and_val_need_no_torch(exported: dict[str, Path], small_labelled: Path, yolov5n_pt: Path,
                                         tmp_path: Path) -> None:
    if "onnx" not in exported:
        pytest.skip("onnxruntime not installed")
    onnx = str(exported["onnx"])
    r = _yolokit_without_torch("run", str(small_labelled / "images"), "--weights", onnx, "--save-txt", "--nosave",
                               "--project", str(tmp_path), "--name", "r", "--mode", "thread", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "r" / "labels").glob("*.txt"))) >= 5
    r = _yolokit_without_torch("info", onnx, "--json", cwd=tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout)["backend"] == "onnx", r.stderr
    r = _yolokit_without_torch("val", "--weights", onnx, "--data", str(small_labelled), "--json", cwd=tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout)["map50_95"] > 0.1, r.stderr
    for args in (["run", str(small_labelled / "images"), "--weights", str(yolov5n_pt), "--nosave"],
                 ["export", str(yolov5n_pt), "--to", "onnx", "-o", str(tmp_path / "x.onnx")],
                 ["info", str(yolov5n_pt)]):
        r = _yolokit_without_torch(*args, "--project", str(tmp_path), cwd=tmp_path) if args[0] == "run" else \
            _yolokit_without_torch(*args, cwd=tmp_path)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        extra = "export" if args[0] == "export" else "torch"  # exporting needs the export tools too
        assert r.returncode == 4 and len(lines) == 1 and f"pip install 'yolokit[{extra}]'" in lines[0], (args, r.stderr)


# ------------------------------------------------------------------------------------------ a fresh environment


def _sources(dest: Path) -> Path:
    """What a wheel is built from, copied (building in the checkout would write build/ and *.egg-info there)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, dest / name)
    for pkg in ("toolkit", "backends"):
        shutil.copytree(REPO / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def _pip(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=3600)


@pytest.fixture(scope="session")
def onnx_only(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with ``pip install "yolokit[onnx]"`` and nothing else; its bin folder."""
    store = getattr(request.config, "cache", None)  # pytest's cache (absent with -p no:cacheprovider): reused
    cache = Path(store.mkdir("yolokit_onnx_only")) if store is not None else tmp_path_factory.mktemp("onnx_only")
    venv, stamp = cache / "venv", cache / "venv" / ".yolokit-pyproject"
    want = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()
    src = _sources(tmp_path_factory.mktemp("yolokit_src") / "yolokit")
    python = venv / "bin" / "python"
    if python.is_file() and stamp.is_file() and stamp.read_text() == want:
        r = _pip(python, "--no-deps", "--force-reinstall", str(src))  # this checkout's code, same dependencies
    else:
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=600)
        r = _pip(python, f"{src}[onnx]")
    if r.returncode != 0:
        text = f"{r.stdout}\n{r.stderr}".strip()
        network = _network_error(text)
        if network:
            shutil.rmtree(venv, ignore_errors=True)
            pytest.skip(f"pip could not reach the package index to build a fresh environment: {network}")
        pytest.fail(f"pip install yolokit[onnx] failed: {text[-2000:]}")
    stamp.write_text(want)
    return venv / "bin"


@pytest.mark.timeout(1800)  # a first run downloads and installs yolokit[onnx]'s dependencies from the index
def test_a_fresh_onnx_install_has_no_torch_and_runs_an_onnx_export(onnx_only: Path, exported: dict[str, Path],
                                                                    coco128_images: Path, yolov5n_pt: Path,
                                                                    tmp_path: Path) -> None:
    if "onnx" not in exported:
        pytest.skip("onnxruntime not installed here to export the model")
    python = onnx_only / "python"
    r = subprocess.run([str(python), "-c", "import torch"], capture_output=True, text=True)
    assert r.returncode != 0 and "No module named 'torch'" in r.stderr
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format", "json"], capture_output=True, text=True,
                            check=True).stdout
    names = {p["name"].lower() for p in json.loads(listed)}
    assert "torch" not in names and not any(n.startswith("nvidia-") for n in names), sorted(names)
    assert {"yolokit", "onnxruntime", "numpy", "opencv-python-headless", "pycocotools"} <= names
    # run-only: the export tools (and sympy, which onnxslim brings) are in the export extra
    assert not names & {"onnx", "onnxslim", "sympy", "ml-dtypes"}, sorted(names)
    site = next((onnx_only.parent / "lib").glob("python*/site-packages"))
    size = sum(p.stat().st_size for p in site.rglob("*") if p.is_file() and not p.is_symlink())
    assert size < 400e6, f"yolokit[onnx] takes {size / 1e6:.0f} MB of site-packages"
    src = tmp_path / "images"
    src.mkdir()
    for p in sorted(coco128_images.glob("*.jpg"))[:4]:
        shutil.copy(p, src / p.name)
    yolokit = str(onnx_only / "yolokit")
    r = subprocess.run([yolokit, "run", str(src), "--weights", str(exported["onnx"]), "--save-txt", "--nosave",
                        "--project", str(tmp_path), "--name", "r"], capture_output=True, text=True, timeout=600,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "r" / "labels").glob("*.txt"))) >= 3
    r = subprocess.run([yolokit, "info", str(exported["onnx"])], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and "onnx" in r.stdout, r.stderr
    r = subprocess.run([yolokit, "run", str(src), "--weights", str(yolov5n_pt), "--nosave", "--project",
                        str(tmp_path)], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 4 and "pip install 'yolokit[torch]'" in r.stderr, r.stderr
    r = subprocess.run([yolokit, "export", str(yolov5n_pt), "--to", "onnx", "-o", str(tmp_path / "m.onnx")],
                       capture_output=True, text=True, cwd=tmp_path)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 4 and len(lines) == 1 and "pip install 'yolokit[export]'" in lines[0], r.stderr
    assert "torch, onnx, onnxslim" in lines[0], r.stderr


# --------------------------------------------------------------- what counts as a network error (real pip, loopback)


@contextlib.contextmanager
def _index(kind: str, root: Path) -> Iterator[str]:
    """A package index URL on 127.0.0.1 that refuses connections, resets them, never answers, or answers with one
    project, ``yolokit-pin-test``, in version 1.0 only."""
    if kind == "refused":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # closed again: nothing listens there
        yield f"http://127.0.0.1:{port}/simple/"
        return
    if kind == "answers":
        page = root / "simple" / "yolokit-pin-test"
        page.mkdir(parents=True)
        (page / "index.html").write_text('<a href="yolokit_pin_test-1.0-py3-none-any.whl">'
                                         "yolokit_pin_test-1.0-py3-none-any.whl</a>\n")

        class Quiet(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/simple/"
        finally:
            server.shutdown()
            server.server_close()
        return
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                if kind == "reset":  # read the request, then close with a reset (RST, not FIN)
                    conn.recv(1024)
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    conn.close()
                else:  # silent: hold the connection, never answer
                    held.append(conn)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/simple/"
    finally:
        listener.close()
        for conn in held:
            conn.close()


@pytest.mark.parametrize(("kind", "network"), [("refused", True), ("reset", True), ("silent", True),
                                               ("answers", False)])
def test_only_a_network_error_counts_as_offline(kind: str, network: bool, tmp_path: Path) -> None:
    """pip against indexes on 127.0.0.1: a refused or reset connection and a read timeout are network errors (the
    fresh-environment test skips); an index that answers, for a pin it cannot satisfy, is not (the test fails)."""
    with _index(kind, tmp_path / "index") as url:
        r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--isolated", "--disable-pip-version-check",
                            "--no-cache-dir", "--retries", "1", "--timeout", "2", "--index-url", url,
                            "--target", str(tmp_path / "target"), "yolokit-pin-test==0.0.1"],
                           capture_output=True, text=True, timeout=120)
    text = f"{r.stdout}\n{r.stderr}"
    assert r.returncode != 0 and "No matching distribution found for yolokit-pin-test==0.0.1" in text, text
    assert (_network_error(text) is not None) == network, text
    if kind == "answers":
        assert "from versions: 1.0" in text, text  # the index answered: the pin is what cannot be met
