"""Live streams: each read in its own thread, only the newest frame kept, streams batched together, a dead or silent
stream listed after --stream-timeout while the others go on, Ctrl-C with the usual summary. Real servers on
127.0.0.1 only: ffmpeg in listen mode (HTTP, RTMP) and plain sockets that never answer."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.ports import ctrl_c_reaches, free_port, wait_listening
from tests.test_video import _video
from toolkit.engine.detector import Detector
from toolkit.io.sources import InputRef, list_sources
from toolkit.io.streams import StreamSet
from toolkit.jobs.run import RunOptions, run

RANDOM = "yolov5n.yaml"
FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed (apt-get install ffmpeg; "
                                                         "scripts/test.sh installs it where apt is usable)")


# What ffmpeg says when it fails on its own, whoever the client: it cannot listen, or lacks an encoder or a protocol
FFMPEG_OWN_FAILURES = ("Address already in use", "Cannot open connection", "Unknown encoder", "Encoder not found",
                       "Error while opening encoder", "Protocol not found", "Unrecognized option", "Option not found")


class _Server:
    """An ffmpeg server process and its error output (``-loglevel error``, kept in a file)."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc, self.log = proc, log

    def errors(self) -> str:
        return self.log.read_text(errors="replace").strip() if self.log.is_file() else ""

    def check(self) -> None:
        """After the client (yolokit) is done: ffmpeg exiting with an error is ffmpeg's own failure (skip) when its
        error output says so; otherwise it failed because of what the client did (fail, with ffmpeg's words)."""
        code = self.proc.poll()
        if code in (None, 0):
            return
        err = self.errors()
        if any(sign in err for sign in FFMPEG_OWN_FAILURES):
            pytest.skip(f"ffmpeg failed on its own (exit {code}): {err.splitlines()[-1]}")
        pytest.fail(f"ffmpeg exited {code} after yolokit connected to it, so yolokit's side broke the stream: "
                    f"{err or '(ffmpeg said nothing)'}")


@contextlib.contextmanager
def _serve(clip: Path, url: str, fmt: str, loop: bool = False) -> Iterator[_Server]:
    """ffmpeg streaming ``clip`` in real time as a server on 127.0.0.1 (``-listen 1``): one client, then it exits.
    ffmpeg failing before it serves (before any client connects) is its own failure: the test skips with its words."""
    codec = ["-c:v", "mpeg2video", "-q:v", "5"] if fmt == "mpegts" else ["-c:v", "libx264", "-preset",
                                                                         "ultrafast", "-tune", "zerolatency"]
    cmd = [str(FFMPEG), "-hide_banner", "-loglevel", "error", "-re", *(["-stream_loop", "-1"] if loop else []),
           "-i", str(clip), "-an", *codec, "-f", fmt, "-listen", "1", url]
    port = int(url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    log = clip.parent / f"ffmpeg_{port}.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    server = _Server(proc, log)
    try:
        # a loaded machine can take seconds to start ffmpeg: the client must not race it
        listening = wait_listening(port, timeout=30, pid=proc.pid)
        if proc.poll() is not None or (not listening and Path("/proc/net/tcp").exists()):
            how = f"exit {proc.returncode}" if proc.poll() is not None else "not listening after 30 s"
            pytest.skip(f"ffmpeg could not serve {url} ({how}, before any client connected): "
                        f"{server.errors() or '(ffmpeg said nothing)'}")
        yield server
    finally:
        proc.kill()
        proc.wait(timeout=10)


@contextlib.contextmanager
def _silent() -> Iterator[int]:
    """A TCP server that accepts connections and never says a word."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


def test_the_newest_frame_is_kept_and_the_rest_counted_as_dropped(tmp_path: Path) -> None:
    """A reader faster than its consumer: the consumer always gets the newest frame; every frame read is either
    processed or counted as dropped."""
    clip = _video(tmp_path / "clip.avi", 40)
    taken = []
    with StreamSet([InputRef(str(clip), "clip", live=True)], timeout=10) as streams:
        for frames, failed in streams.rounds():
            assert not failed
            taken += [f.ref for f in frames]
            time.sleep(0.05)
    st = streams.stats()[0]
    assert st["state"] == "ended" and st["frames_read"] == 40
    assert st["frames_processed"] == len(taken) < 40
    assert st["dropped"] == 40 - len(taken)
    assert taken[-1].frame == 39  # the last frame read is never dropped
    assert [r.key for r in taken] == [f"clip_{i}" for i in range(1, len(taken) + 1)]
    assert all(r.live and r.video == "clip" for r in taken)


def test_sources_that_are_streams(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert [r.key for r in list_sources("rtsp://127.0.0.1:8554/cam1").streams] == ["cam1"]
    assert [r.key for r in list_sources("rtmp://127.0.0.1/live/s").streams] == ["s"]
    assert [r.key for r in list_sources("0").streams] == ["webcam0"]
    # a relative file in a .streams file is read from its folder, as a .txt list's lines (from the current folder,
    # it was "not a stream address ... nor a file" run from elsewhere)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.mp4").write_bytes(b"x")
    (tmp_path / "sub" / "rel.streams").write_text("a.mp4\n0\n")
    monkeypatch.chdir(tmp_path)
    found = list_sources("sub/rel.streams")
    assert [r.path for r in found.streams] == [str(Path("sub") / "a.mp4"), "0"] and not found.failed


def test_a_stream_whose_server_cannot_be_reached_fails_at_once_naming_why(tmp_path: Path) -> None:
    from toolkit.io.streams import unreachable

    dead = free_port()
    t0 = time.monotonic()
    s = run(RunOptions.of(source=f"rtsp://127.0.0.1:{dead}/x", weights=RANDOM, imgsz=64, project=str(tmp_path),
                          name="r"))  # the default --stream-timeout: 30 s
    assert time.monotonic() - t0 < 15 and s.processed == 0
    assert s.failed[0]["reason"].startswith(f"cannot open the stream: connection refused by 127.0.0.1:{dead}")
    assert unreachable("rtsp://yolokit-test.invalid/x", 1) == ("the host yolokit-test.invalid is not known (its name "
                                                              "does not resolve); check the address")
    assert unreachable("0", 1) is None and unreachable(str(tmp_path / "clip.mp4"), 1) is None


def test_a_webcam_that_is_not_there_is_listed(tmp_path: Path) -> None:
    if Path("/dev/video0").exists():
        pytest.skip("this machine has a camera")
    s = run(RunOptions.of(source="0", weights=RANDOM, imgsz=64, stream_timeout=1, project=str(tmp_path), name="w"))
    assert s.processed == 0 and len(s.failed) == 1 and "webcam" in s.failed[0]["reason"]
    assert s.streams[0]["state"] == "failed"


@needs_ffmpeg
def test_streams_run_together_and_a_dead_or_silent_one_is_listed(tmp_path: Path) -> None:
    # 8 s: OpenCV opens streams one at a time (~1.5 s of probing each, up to --stream-timeout for a silent one)
    clip = _video(tmp_path / "clip.avi", 160, fps=20.0, size=(96, 64))
    p1, p2, dead = free_port(), free_port(), free_port()
    listing = tmp_path / "cams.streams"
    with _silent() as quiet, _serve(clip, f"http://127.0.0.1:{p1}/one", "mpegts"), \
            _serve(clip, f"http://127.0.0.1:{p2}/two", "mpegts"):
        listing.write_text(f"http://127.0.0.1:{p1}/one\nhttp://127.0.0.1:{p2}/two\n"
                           f"rtsp://127.0.0.1:{dead}/dead\nrtsp://127.0.0.1:{quiet}/silent\nnot a url\n")
        det = Detector(RANDOM, imgsz=64, conf=1e-5, max_det=3)
        sizes: list[int] = []
        infer = det.routine.runner.infer
        det.routine.runner.infer = lambda b: (sizes.append(len(b)), infer(b))[1]  # type: ignore[method-assign]
        t0 = time.monotonic()
        s = run(RunOptions.of(source=str(listing), weights=RANDOM, imgsz=64, conf=1e-5, max_det=3, save_txt=True,
                           save_csv=True, stream_timeout=3, project=str(tmp_path), name="r"), detector=det)
        assert time.monotonic() - t0 < 60
    stats = {st["key"]: st for st in s.streams}
    assert set(stats) == {"one", "two", "dead", "silent"}
    for key in ("one", "two"):
        st = stats[key]
        assert st["state"] == "ended" and st["frames_read"] == 160 and st["frames_processed"] >= 3, st
        assert st["frames_read"] == st["frames_processed"] + st["dropped"]
        assert (tmp_path / "r" / f"{key}.mp4").is_file()
        assert len(list((tmp_path / "r" / "labels").glob(f"{key}_*.txt"))) == st["frames_processed"]
    assert 2 in sizes  # frames of the two streams inferred as one batch
    reasons = {Path(f["path"]).name: f["reason"] for f in s.failed}
    assert set(reasons) == {"dead", "silent", "not a url"}
    assert "within 3 s" in reasons["silent"]
    # at once, with the cause (it waited out --stream-timeout, then said only that it could not open)
    assert reasons["dead"] == (f"cannot open the stream: connection refused by 127.0.0.1:{dead} (nothing listens "
                               f"there); check the address and that the server is running")
    assert reasons["not a url"].startswith("not a stream address")  # was tried as a stream for 3 s
    failures = (tmp_path / "r" / "failures.jsonl").read_text().splitlines()
    assert len(failures) == 3
    assert s.processed == stats["one"]["frames_processed"] + stats["two"]["frames_processed"]


@needs_ffmpeg
def test_an_rtmp_stream(tmp_path: Path) -> None:
    clip = _video(tmp_path / "clip.avi", 60, fps=20.0, size=(96, 64))
    port = free_port()
    url = f"rtmp://127.0.0.1:{port}/live/cam"
    with _serve(clip, url, "flv") as server:
        s = run(RunOptions.of(source=url, weights=RANDOM, imgsz=64, conf=1e-5, nosave=True, stream_timeout=8,
                           project=str(tmp_path), name="r"))
        try:
            server.proc.wait(timeout=30)  # the 3 s clip is over: ffmpeg ends once its one client has it all
        except subprocess.TimeoutExpired:
            pytest.fail(f"ffmpeg still serves {url} 30 s after the run ended: yolokit did not let go of it")
        server.check()
    st = s.streams[0]
    # ffmpeg's RTMP server hands over its frames in bursts: most are replaced before they are processed
    assert st["key"] == "cam" and st["frames_read"] == 60 and st["frames_processed"] >= 1, st
    assert st["frames_read"] == st["frames_processed"] + st["dropped"]


@needs_ffmpeg
def test_ffmpeg_failing_because_of_its_client_fails_the_test(tmp_path: Path) -> None:
    """The check the RTMP test relies on: a client that connects and hangs up mid-handshake makes ffmpeg exit with
    an error that is not its own, and the check fails the test instead of skipping it."""
    clip = _video(tmp_path / "clip.avi", 60, fps=20.0, size=(96, 64))
    port = free_port()
    with _serve(clip, f"rtmp://127.0.0.1:{port}/live/cam", "flv") as server:
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
        server.proc.wait(timeout=30)
        assert server.proc.returncode != 0, server.errors()
        with pytest.raises(pytest.fail.Exception, match="yolokit's side"):
            server.check()


@needs_ffmpeg
def test_ffmpeg_that_cannot_serve_is_its_own_failure(tmp_path: Path) -> None:
    """ffmpeg that exits before any client connects (here: its port is taken) skips the test with its words."""
    clip = _video(tmp_path / "clip.avi", 20, fps=20.0, size=(96, 64))
    with _silent() as taken, pytest.raises(pytest.skip.Exception, match="(?s)before any client connected.*in use"), \
            _serve(clip, f"rtmp://127.0.0.1:{taken}/live/cam", "flv"):
        pytest.fail("ffmpeg served on a port that was taken")


@needs_ffmpeg
def test_ctrl_c_stops_a_live_run_with_the_summary(tmp_path: Path) -> None:
    clip = _video(tmp_path / "clip.avi", 30, fps=10.0, size=(96, 64))
    port = free_port()
    with _serve(clip, f"http://127.0.0.1:{port}/cam", "mpegts", loop=True):
        cmd = [sys.executable, "-m", "toolkit.cli", "run", f"http://127.0.0.1:{port}/cam", "--weights", RANDOM,
               "--imgsz", "64", "--save-txt", "--stream-timeout", "10", "--project", str(tmp_path), "--name", "r",
               "--json"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=ctrl_c_reaches)
        manifest = tmp_path / "r" / "manifest.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest.is_file() and len(manifest.read_text().splitlines()) >= 5:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
    assert proc.returncode == 130, err
    summary = json.loads(out)
    assert summary["interrupted"] and summary["processed"] >= 5
    assert summary["streams"][0]["frames_processed"] >= 5
    assert (tmp_path / "r" / "cam.mp4").is_file()


def test_silence_is_judged_from_the_open_not_from_the_start() -> None:
    """OpenCV opens FFmpeg streams one at a time: a stream queued behind others' open timeouts is not failed as
    silent before its own open had a chance; once open, it gets ``timeout`` seconds from the open."""
    refs = [InputRef(f"rtsp://127.0.0.1:9/s{i}", f"s{i}", live=True) for i in range(3)]
    streams = StreamSet(refs, timeout=2)
    s = streams.streams[0]
    s.open_grace = s.timeout * (len(refs) + 1)  # what entering the set does, without starting readers
    s.check_timeout(s.started + 5)
    assert s.state not in ("failed", "ended")
    s.opened_at = s.started + 5
    s.check_timeout(s.started + 6.5)
    assert s.state not in ("failed", "ended")
    s.check_timeout(s.started + 7.5)
    assert s.state == "failed" and "never answered" in s.reason and "2 s" in s.reason
    t = streams.streams[1]
    t.open_grace = 8
    t.check_timeout(t.started + 8.5)
    assert t.state == "failed" and "cannot open" in t.reason


@contextlib.contextmanager
def _mjpeg(frames: list[bytes], then_stall: bool) -> Iterator[int]:
    """An HTTP MJPEG camera on 127.0.0.1 (multipart/x-mixed-replace) that sends ``frames`` 5 a second, then keeps
    the connection open and silent (``then_stall``) or closes it."""
    import http.server
    import threading

    stop = threading.Event()

    class Camera(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the standard library's name
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            with contextlib.suppress(OSError):
                for data in frames:
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(data)
                                     + data + b"\r\n")
                    self.wfile.flush()
                    time.sleep(0.2)
                if then_stall:
                    stop.wait(60)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Camera)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


def test_a_camera_that_goes_silent_is_failed_not_ended_and_stride_divides_the_rate(tmp_path: Path) -> None:
    """A camera that sent 10 frames and then nothing, its connection kept open, was reported "ended" (the source
    closed the stream), exit 0: a hung camera looked like a finished one. And the annotated video of a live stream
    kept the source's frame rate with --vid-stride 2 (a file video's is divided, as the guide says)."""
    import cv2
    import numpy as np

    frames = [bytes(cv2.imencode(".jpg", np.full((64, 96, 3), 20 * i, np.uint8))[1]) for i in range(10)]
    with _mjpeg(frames, then_stall=True) as port:
        s = run(RunOptions.of(source=f"http://127.0.0.1:{port}/cam", weights=RANDOM, imgsz=64, nosave=True,
                              stream_timeout=3, project=str(tmp_path), name="stall"))
    st = s.streams[0]
    assert st["state"] == "failed" and "no frame for 3 s after" in st["reason"], st
    assert [f["path"] for f in s.failed] == [f"http://127.0.0.1:{port}/cam"]
    with _mjpeg(frames, then_stall=False) as port:
        s = run(RunOptions.of(source=f"http://127.0.0.1:{port}/cam", weights=RANDOM, imgsz=64, vid_stride=2,
                              stream_timeout=3, project=str(tmp_path), name="stride"))
    assert s.streams[0]["state"] == "ended", s.streams
    video = cv2.VideoCapture(str(tmp_path / "stride" / "cam.mp4"))
    fps, source = video.get(cv2.CAP_PROP_FPS), s.streams[0]["source_fps"]
    video.release()
    assert source > 0 and abs(fps - source / 2) < 0.01, (fps, source)


def test_a_stream_address_the_http_server_refuses_fails_at_once_naming_the_status(tmp_path: Path) -> None:
    """An http address answering 404 was tried as a stream for --stream-timeout (61 requests over 30 s), then "cannot
    open the stream within 30 s"; it fails at once with the server's status."""
    import http.server
    import threading

    class Missing(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the standard library's name
            self.send_error(404, "Not Found")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Missing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/nothing-here"
        t0 = time.monotonic()
        s = run(RunOptions.of(source=url, weights=RANDOM, imgsz=64, nosave=True, stream_timeout=20,
                              project=str(tmp_path), name="r"))
        took = time.monotonic() - t0
    finally:
        server.shutdown()
        server.server_close()
    assert [f["reason"] for f in s.failed] == ["cannot open the stream: the server answered HTTP 404 Not Found; "
                                               "check the address"], s.failed
    assert took < 20  # not the whole --stream-timeout
