"""Remote inputs against hostile servers on 127.0.0.1 (``tests/helpers/hostile_http.py``): trickled bodies, headers,
chunks and TLS handshakes end at the download deadline; redirects stay on http(s); a slow URL does not hold the
inputs behind it; downloads run in a bounded pool within a memory budget.

The time bounds asserted here are generous ceilings (a trickle would otherwise go on for minutes): they check that
the deadline holds, not how fast anything is. Speed is measured in ``scripts/remote_bench.py``."""

from __future__ import annotations

import json
import os
import pickle
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers.hostile import LEAKS
from tests.helpers.hostile_http import HostileServer
from tests.test_video import _video
from toolkit.cli import main
from toolkit.engine.detector import Detector
from toolkit.engine.plan import Plan
from toolkit.io.downloads import DownloadSettings, expand_inputs
from toolkit.io.remote import MAX_REDIRECTS, fetch_image, fetch_image_bytes
from toolkit.io.sources import InputRef
from toolkit.io.transfer import Download, FetchContext, FetchError, FetchLimits, MemoryBudget

RANDOM = ["--weights", "yolov5n.yaml", "--imgsz", "64", "--conf", "0.00001", "--max-det", "3"]
DEADLINE = 2.0
CEILING = 15.0  # seconds past a deadline that would show it did not hold (the trickles last 120 s)


def _jpeg(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8), (5, 5), 0)
    return cv2.imencode(".jpg", img)[1].tobytes()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileServer]:
    clip = _video(tmp_path_factory.mktemp("clip") / "clip.avi", 4)
    with HostileServer(_jpeg(), interval=0.1, slow_delay=0.5, files={"clip.avi": clip.read_bytes()}) as server:
        yield server


def _one_sentence(text: str) -> None:
    assert "\n" not in text and text.strip() == text, text
    leaks = [x for x in LEAKS if re.search(x, text)]
    assert not leaks and "urllib" not in text and "infinite loop" not in text, text


def _refused(url: str, max_bytes: int = 1 << 20, deadline: float = 30.0) -> tuple[FetchError, float]:
    t0 = time.monotonic()
    with pytest.raises(FetchError) as err:
        fetch_image_bytes(url, max_bytes, timeout=30.0, deadline=deadline)
    _one_sentence(str(err.value))
    assert str(err.value).startswith(url + ": ")
    return err.value, time.monotonic() - t0


# ------------------------------------------------------------------------------------------- the deadline


@pytest.mark.parametrize("route", ["trickle-cl", "trickle", "trickle-chunked", "trickle-headers"])
def test_a_trickle_ends_at_the_deadline(hostile: HostileServer, route: str) -> None:
    """One byte every 0.1 s never trips the 30 s silence timeout; the 2 s deadline ends the download, with or without
    a Content-Length, in the body, its chunk sizes or the headers."""
    err, took = _refused(hostile.url(f"/{route}/slow.jpg"), deadline=DEADLINE)
    assert err.kind == "deadline" and took >= DEADLINE * 0.9 and took < DEADLINE + CEILING
    assert "took longer than 2 s" in err.reason and "--download-timeout" in err.reason
    assert re.search(r"\(\d+ bytes received in \d+\.\d s\)", err.reason), err.reason
    if route != "trickle-headers":
        assert not err.reason.startswith("the download took longer than 2 s (0 bytes"), err.reason


def test_a_trickled_tls_handshake_ends_at_the_deadline() -> None:
    """A server that starts a 16 KB TLS record and sends it a byte at a time: only the deadline, cutting the socket
    under the TLS layer, ends the handshake."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    stop = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"\x16\x03\x03\x40\x00")  # a handshake record of 16384 bytes follows...
            while not stop.is_set():
                try:
                    conn.sendall(b"\x00")
                except OSError:
                    return
                time.sleep(0.1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        err, took = _refused(f"https://127.0.0.1:{listener.getsockname()[1]}/x.jpg", deadline=DEADLINE)
    finally:
        stop.set()
        listener.close()
    assert err.kind == "deadline" and took < DEADLINE + CEILING


def test_the_deadline_bounds_a_run_and_names_its_option(hostile: HostileServer, tmp_path: Path) -> None:
    """A trickling URL first in a list, then 5 good URLs and 20 local images: every good input is processed, the
    trickle is listed with the deadline's reason, the manifest keeps the input order, and the run ends within the
    deadline plus the normal work."""
    local = tmp_path / "local"
    local.mkdir()
    for i in range(20):
        (local / f"img{i:02d}.jpg").write_bytes(_jpeg(i + 1))
    entries = [hostile.url("/trickle/first.jpg"), *(hostile.url(f"/image/good{i}.jpg") for i in range(5)),
               *(str(p) for p in sorted(local.iterdir()))]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(entries) + "\n")
    t0 = time.monotonic()
    rc = main(["run", str(listing), *RANDOM, "--download-timeout", "4", "--stream-timeout", "30", "--save-txt",
               "--project", str(tmp_path), "--name", "r"])
    took = time.monotonic() - t0
    assert rc == 1
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["images"] == 26 and summary["processed"] == 25
    [failed] = summary["failed"]
    assert failed["path"] == entries[0] and "took longer than 4 s" in failed["reason"]
    _one_sentence(failed["reason"])
    keys = [json.loads(ln)["key"] for ln in (tmp_path / "r" / "manifest.jsonl").read_text().splitlines()]
    assert keys == ["first", *(f"good{i}" for i in range(5)), *(f"img{i:02d}" for i in range(20))]
    assert took < 4 + 60  # the deadline plus the normal work (model build, 25 tiny images), with room for a busy host


@pytest.mark.parametrize("how", ["thread", "process", "tile", "device"])
def test_every_engine_keeps_the_input_order(hostile: HostileServer, tmp_path: Path, how: str) -> None:
    """A slow image URL first, a video URL, good URLs and local files: results and manifest in input order, in
    thread and process mode, tiled, and through the GPU pipeline's code on the CPU."""
    for name in ("a", "b"):
        (tmp_path / f"{name}.jpg").write_bytes(_jpeg(ord(name)))
    entries = [hostile.url("/slow/first.jpg"), str(tmp_path / "a.jpg"), hostile.url("/file/clip.avi"),
               hostile.url("/image/good.jpg"), str(tmp_path / "b.jpg")]
    want = ["first", "a", *(f"clip_{i}" for i in range(1, 5)), "good", "b"]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(entries) + "\n")
    if how == "device":
        det = Detector("yolov5n.yaml", imgsz=64, conf=1e-5, pipeline="device")
        got = [r.ref.key for r in det.predict_iter(str(listing), plan=Plan("thread", 1, 2, 1, 2, "test"))]
        assert det.last_plan is not None and det.last_plan.pipeline == "device"
        assert got == want
        return
    extra = ["--tile", "64", "--no-tile-refocus"] if how == "tile" else ["--mode", how, "--workers", "2",
                                                                         "--batch", "2"]
    if how == "process":  # downloads past the budget go to files: the workers read them there
        extra += ["--download-memory", "1K"]
    assert main(["run", str(listing), *RANDOM, *extra, "--save-txt", "--project", str(tmp_path), "--name", how]) == 0
    keys = [json.loads(ln)["key"] for ln in (tmp_path / how / "manifest.jsonl").read_text().splitlines()]
    assert keys == want


# ------------------------------------------------------------------------------------------- the pool


def test_everything_else_is_handed_on_while_a_url_trickles(hostile: HostileServer, tmp_path: Path) -> None:
    """The trickle (index 0) comes last: the good URLs and local files behind it were handed on before its
    deadline."""
    files = []
    for i in range(6):
        files.append(tmp_path / f"f{i}.jpg")
        files[-1].write_bytes(_jpeg(i))
    refs = [InputRef(hostile.url("/trickle-cl/t.jpg"), "t"),
            *(InputRef(hostile.url(f"/image/g{i}.jpg"), f"g{i}") for i in range(4)),
            *(InputRef(str(f), f.stem) for f in files)]
    items = list(expand_inputs(refs, settings=DownloadSettings(FetchLimits(deadline=3.0))))
    order = [i for i, _, _ in items]
    assert order[-1] == 0 and sorted(order) == list(range(11))
    assert isinstance(items[-1][2], str) and "--download-timeout" in items[-1][2]
    for _, ref, payload in items[:-1]:
        assert (payload is None) == (not ref.path.startswith("http")), ref
        if isinstance(payload, Download):
            assert payload.size == len(hostile.image)
            payload.close()


def test_the_run_ahead_is_bounded_by_the_window(hostile: HostileServer, tmp_path: Path) -> None:
    """With a window of 4, at most 4 inputs are handed on past the download in flight; then it is waited for."""
    files = []
    for i in range(8):
        files.append(tmp_path / f"w{i}.jpg")
        files[-1].write_bytes(b"x")
    refs = [InputRef(hostile.url("/trickle/t.jpg"), "t"), *(InputRef(str(f), f.stem) for f in files)]
    settings = DownloadSettings(FetchLimits(deadline=1.5), window=4)
    order = [i for i, _, _ in expand_inputs(refs, settings=settings)]
    assert order == [1, 2, 3, 4, 0, 5, 6, 7, 8]


def test_downloads_run_in_parallel_within_the_pool(hostile: HostileServer) -> None:
    """24 URLs that each answer after 0.5 s, 4 download workers: more than one at a time, never more than 4."""
    refs = [InputRef(hostile.url(f"/slow/s{i}.jpg"), f"s{i}") for i in range(24)]
    items = list(expand_inputs(refs, settings=DownloadSettings(workers=4)))
    assert sorted(i for i, _, _ in items) == list(range(24))
    assert all(isinstance(p, Download) for _, _, p in items)
    assert 1 < hostile.peak("slow") <= 4


def test_closing_the_run_cuts_downloads_in_progress(hostile: HostileServer, tmp_path: Path) -> None:
    local = tmp_path / "a.jpg"
    local.write_bytes(_jpeg())
    refs = [InputRef(str(local), "a"), *(InputRef(hostile.url(f"/trickle-chunked/c{i}.jpg"), f"c{i}")
                                         for i in range(3))]
    gen = expand_inputs(refs, settings=DownloadSettings(FetchLimits(deadline=600.0)))
    assert next(gen)[0] == 0
    end = time.monotonic() + 10
    while hostile.active("trickle-chunked") < 3 and time.monotonic() < end:
        time.sleep(0.05)
    assert hostile.active("trickle-chunked") == 3
    gen.close()
    end = time.monotonic() + CEILING
    while hostile.active("trickle-chunked") and time.monotonic() < end:
        time.sleep(0.05)
    assert hostile.active("trickle-chunked") == 0


# ------------------------------------------------------------------------------------------- redirects


@pytest.fixture
def ftp_port() -> Iterator[socket.socket]:
    """A listening port standing in for an FTP server: whether anything connected to it shows in its backlog."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


def _to(hostile: HostileServer, target: str) -> str:
    return hostile.url("/to/" + urllib.parse.quote(target, safe="") + "/x.jpg")


def test_a_redirect_off_http_is_refused_before_it_is_followed(hostile: HostileServer,
                                                              ftp_port: socket.socket) -> None:
    ftp = f"ftp://127.0.0.1:{ftp_port.getsockname()[1]}/x.jpg"
    for target in (ftp, "file:///etc/passwd", "data:image/png;base64,iVBORw0KGgo="):
        err, _ = _refused(_to(hostile, target))
        assert err.kind == "redirect"
        assert err.reason == f"redirected to {target}, which yolokit does not follow (only http and https)"
    with pytest.raises(BlockingIOError):
        ftp_port.accept()  # nobody connected: the ftp hop was never tried


def test_redirect_loops_and_long_chains_are_refused_in_one_sentence(hostile: HostileServer) -> None:
    err, _ = _refused(hostile.url("/loop-a/x.jpg"))
    assert err.reason == f"the server redirects in a loop (back to {hostile.url('/loop-a/x.jpg')})"
    err, _ = _refused(hostile.url("/chain/0/x.jpg"))
    assert err.reason.startswith(f"the server redirected more than {MAX_REDIRECTS} times (last to ")
    assert err.reason.endswith(f"yolokit follows at most {MAX_REDIRECTS}")
    err, _ = _refused(hostile.url("/nolocation/x.jpg"))
    assert err.reason == "the server answered HTTP 302 (a redirect) without saying where to"


def test_a_chain_within_the_bound_is_followed(hostile: HostileServer) -> None:
    data = fetch_image_bytes(hostile.url(f"/hops/{MAX_REDIRECTS}/x.jpg"), 1 << 20, 5.0, 10.0)
    assert data.tobytes() == hostile.image


def test_redirect_refusals_are_listed_by_a_run(hostile: HostileServer, tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join([_to(hostile, "ftp://127.0.0.1:1/x.jpg"), hostile.url("/loop-b/y.jpg"),
                                  hostile.url("/hops/2/z.jpg")]) + "\n")
    assert main(["run", str(listing), *RANDOM, "--nosave", "--project", str(tmp_path), "--name", "r"]) == 1
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["processed"] == 1
    reasons = [f["reason"] for f in summary["failed"]]
    assert "which yolokit does not follow" in reasons[0] and "in a loop" in reasons[1]
    for r in reasons:
        _one_sentence(r)


# ------------------------------------------------------------------------------------------- memory


def test_an_endless_body_is_cut_at_the_size_limit(hostile: HostileServer) -> None:
    err, _ = _refused(hostile.url("/endless/e.jpg"), max_bytes=2 << 20)
    assert err.kind == "size" and "passed the 2 MB limit" in err.reason and "--max-file-size" in err.reason


def test_a_download_is_sized_from_its_length_or_spilled_past_the_budget(hostile: HostileServer) -> None:
    size = len(hostile.image)
    roomy = FetchContext(FetchLimits(1 << 20), MemoryBudget(1 << 20))
    got = fetch_image(hostile.url("/image/a.jpg"), roomy)
    assert got.data is not None and got.path is None and len(got.data) == size
    assert roomy.memory.used == size and roomy.memory.peak == size  # one buffer of the announced size
    assert got.array().tobytes() == hostile.image
    got.close()
    assert roomy.memory.used == 0

    got = fetch_image(hostile.url("/image-nocl/b.jpg"), roomy)  # no length: grown within the budget
    assert got.data is not None and got.array().tobytes() == hostile.image
    got.close()

    tight = FetchContext(FetchLimits(1 << 20), MemoryBudget(size // 2))
    for route in ("image", "image-nocl"):
        got = fetch_image(hostile.url(f"/{route}/c.jpg"), tight)
        assert got.data is None and got.path is not None and os.path.getsize(got.path) == size
        assert got.array().tobytes() == hostile.image and tight.memory.used == 0
        copy = pickle.loads(pickle.dumps(got))  # as a process-mode worker gets it: reads the file, never deletes it
        assert copy.array().tobytes() == hostile.image
        path = got.path
        copy.close()
        assert os.path.exists(path)
        got.close()
        assert not os.path.exists(path)


def test_a_refused_download_leaves_no_file_and_no_memory_held(hostile: HostileServer) -> None:
    ctx = FetchContext(FetchLimits(1 << 20), MemoryBudget(64 << 10))
    before = set(os.listdir(os.environ.get("TMPDIR", "/tmp")))
    with pytest.raises(FetchError, match="passed the 1 MB limit"):
        fetch_image(hostile.url("/endless/d.jpg"), ctx)
    assert ctx.memory.used == 0
    left = {f for f in set(os.listdir(os.environ.get("TMPDIR", "/tmp"))) - before if f.startswith("yolokit-")}
    assert not left
