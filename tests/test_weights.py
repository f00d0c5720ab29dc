"""Tests for toolkit.model.weights against a real local HTTP server (no mocks, no network)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import toolkit
from tests.helpers.ports import free_port
from toolkit.errors import DownloadError, InputError, ModelFileError
from toolkit.model.weights import (
    MANIFEST,
    WeightsEntry,
    default_cache_dir,
    download,
    get_entry,
    known_names,
    normalize_name,
    resolve_weights,
    sha256_file,
    verify,
)

PAYLOAD = random.Random(1234).randbytes(200_000)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
_REPO = Path(__file__).resolve().parents[1]
_REAL_SHARED = Path(os.environ.get("YOLOKIT_SHARED") or _REPO.parent / "shared")
FAST = {"timeout": 5.0, "backoff": 0.0}


# ------------------------------------------------------------------------------------------- server


@dataclass
class ServerState:
    """What the handler serves. ``plan`` holds one mode per request; its last mode repeats."""

    payload: bytes = PAYLOAD
    plan: list[str] = field(default_factory=lambda: ["full"])
    requests: list[dict[str, str | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    base: str = ""

    def entry(self, name: str = "synthetic.pt") -> WeightsEntry:
        return WeightsEntry(name=name, url=f"{self.base}/{name}", size=len(PAYLOAD), sha256=PAYLOAD_SHA)

    def ranges(self) -> list[str | None]:
        return [r["range"] for r in self.requests]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: ServerState


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - keep test output quiet
        pass

    def _start(self) -> int:
        header = self.headers.get("Range")
        if header and header.startswith("bytes=") and header.endswith("-"):
            return int(header[len("bytes=") : -1])
        return 0

    def _send(self, status: int, body: bytes, start: int, total: int, declared: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body) if declared is None else declared))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        st = self.server.state
        with st.lock:
            st.requests.append({"path": self.path, "range": self.headers.get("Range")})
            mode = st.plan.pop(0) if len(st.plan) > 1 else st.plan[0]
        data = st.payload
        start = self._start()
        if mode in ("500", "404"):
            self.send_error(int(mode))
        elif mode == "full":  # Range honoured -> 206
            if start:
                self._send(206, data[start:], start, len(data))
            else:
                self._send(200, data, 0, len(data))
        elif mode == "ignore-range":
            self._send(200, data, 0, len(data))
        elif mode == "truncate":  # declare the whole rest, send half of it, close
            rest = data[start:]
            self._send(206 if start else 200, rest[: len(rest) // 2], start, len(data), declared=len(rest))
            self.close_connection = True
        elif mode == "corrupt":  # right size, wrong bytes
            self._send(200, bytes(b ^ 0xFF for b in data[:16]) + data[16:], 0, len(data))
        elif mode == "short":  # a different (shorter) file
            self._send(200, data[:-10], 0, len(data) - 10)
        elif mode == "trickle":  # the whole length declared, then 100 bytes every 0.05 s
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(data) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            with contextlib.suppress(OSError):
                for i in range(start, len(data), 100):
                    self.wfile.write(data[i:i + 100])
                    time.sleep(0.05)
        elif mode == "to-ftp":
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1:1/synthetic.pt")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:  # pragma: no cover - test bug
            raise AssertionError(mode)


@pytest.fixture
def server() -> Iterator[ServerState]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    state = ServerState()
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.state = state
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("YOLOKIT_CACHE_DIR", "YOLOKIT_WEIGHTS", "YOLOKIT_WEIGHTS_URL", "YOLOKIT_SHARED"):
        monkeypatch.delenv(var, raising=False)


def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


# ------------------------------------------------------------------------------------------- manifest


def test_manifest_entries() -> None:
    assert known_names() == ["yolov5n", "yolov5s", "yolov5m", "yolov5l", "yolov5x"]
    n = MANIFEST["yolov5n.pt"]
    assert n.url == "https://github.com/ultralytics/yolov5/releases/download/v7.0/yolov5n.pt"
    assert n.size == 4062133
    assert n.sha256 == "4f180cf23ba0717ada0badd6c685026d73d48f184d00fc159c2641284b2ac0a3"
    assert MANIFEST["yolov5x.pt"].size == 174114333
    for e in MANIFEST.values():
        assert len(e.sha256) == 64 and e.url.endswith("/v7.0/" + e.name)
    with pytest.raises(AttributeError):
        n.size = 1  # type: ignore[misc]


def test_names_with_or_without_pt() -> None:
    assert get_entry("yolov5s") is get_entry("yolov5s.pt") is MANIFEST["yolov5s.pt"]
    assert normalize_name(" YOLOv5m.PT ") == "yolov5m.pt"
    with pytest.raises(InputError, match="yolov5n, yolov5s, yolov5m, yolov5l, yolov5x"):
        get_entry("yolov9")
    with pytest.raises(InputError):
        download("nope", cache_dir="/nonexistent-never-created")


def test_default_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YOLOKIT_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("YOLOKIT_CACHE_DIR")
    checkout = Path(toolkit.__file__).resolve().parents[1] / "weights"
    if (checkout / "README.md").is_file():
        assert default_cache_dir() == checkout
    else:
        assert default_cache_dir() == Path.home() / ".cache" / "yolokit" / "weights"


def test_sha256_and_verify(tmp_path: Path) -> None:
    f = tmp_path / "x.pt"
    f.write_bytes(PAYLOAD)
    entry = WeightsEntry("x.pt", "http://unused", len(PAYLOAD), PAYLOAD_SHA)
    assert sha256_file(f) == PAYLOAD_SHA
    assert verify(f, entry)
    assert not verify(tmp_path / "missing.pt", entry)
    f.write_bytes(PAYLOAD[:-1] + bytes([PAYLOAD[-1] ^ 1]))
    assert not verify(f, entry)
    f.write_bytes(PAYLOAD[:-1])
    assert not verify(f, entry)


# ------------------------------------------------------------------------------------------- download


def test_download_ok(server: ServerState, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    out = download(server.entry(), cache_dir=tmp_path, progress=lambda d, t: seen.append((d, t)), **FAST)
    assert out == tmp_path / "synthetic.pt"
    assert out.read_bytes() == PAYLOAD and verify(out, server.entry())
    assert _files(tmp_path) == ["synthetic.pt"]
    assert server.ranges() == [None]
    assert server.requests[0]["path"] == "/synthetic.pt"
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_existing_valid_file_reused_without_request(server: ServerState, tmp_path: Path) -> None:
    download(server.entry(), cache_dir=tmp_path, **FAST)
    assert len(server.requests) == 1
    server.plan = ["500"]
    out = download(server.entry(), cache_dir=tmp_path, **FAST)
    assert out.read_bytes() == PAYLOAD
    assert len(server.requests) == 1


def test_truncated_transfer_is_resumed_with_range(server: ServerState, tmp_path: Path) -> None:
    server.plan = ["truncate", "full"]
    out = download(server.entry(), cache_dir=tmp_path, retries=2, **FAST)
    assert verify(out, server.entry())
    half = len(PAYLOAD) // 2
    assert server.ranges() == [None, f"bytes={half}-"]
    assert _files(tmp_path) == ["synthetic.pt"]


def test_truncated_every_time_keeps_prefix_part(server: ServerState, tmp_path: Path) -> None:
    server.plan = ["truncate"]
    with pytest.raises(DownloadError, match="after 2 attempt") as err:
        download(server.entry(), cache_dir=tmp_path, retries=1, **FAST)
    assert "\n" not in str(err.value)
    part = tmp_path / "synthetic.pt.part"
    assert _files(tmp_path) == ["synthetic.pt.part"]
    assert str(part) in str(err.value)
    kept = part.read_bytes()
    assert 0 < len(kept) < len(PAYLOAD) and PAYLOAD.startswith(kept)
    assert server.ranges() == [None, f"bytes={len(PAYLOAD) // 2}-"]
    # A later call resumes from the kept prefix.
    server.plan = ["full"]
    out = download(server.entry(), cache_dir=tmp_path, retries=0, **FAST)
    assert verify(out, server.entry())
    assert server.ranges()[-1] == f"bytes={len(kept)}-"


def test_interrupted_download_resumes_from_part(server: ServerState, tmp_path: Path) -> None:
    half = len(PAYLOAD) // 2
    (tmp_path / "synthetic.pt.part").write_bytes(PAYLOAD[:half])
    out = download(server.entry(), cache_dir=tmp_path, **FAST)
    assert verify(out, server.entry())
    assert server.ranges() == [f"bytes={half}-"]
    assert _files(tmp_path) == ["synthetic.pt"]


def test_server_ignoring_range_restarts_from_zero(server: ServerState, tmp_path: Path) -> None:
    (tmp_path / "synthetic.pt.part").write_bytes(b"garbage" * 1000)
    server.plan = ["ignore-range"]
    out = download(server.entry(), cache_dir=tmp_path, **FAST)
    assert out.read_bytes() == PAYLOAD
    assert server.ranges() == ["bytes=7000-"]


def test_bad_part_prefix_is_caught_and_removed(server: ServerState, tmp_path: Path) -> None:
    (tmp_path / "synthetic.pt.part").write_bytes(b"\x00" * 1000)
    with pytest.raises(DownloadError, match="sha256"):
        download(server.entry(), cache_dir=tmp_path, **FAST)
    assert _files(tmp_path) == []
    assert download(server.entry(), cache_dir=tmp_path, **FAST).read_bytes() == PAYLOAD


def test_corrupted_payload_raises_and_leaves_nothing(server: ServerState, tmp_path: Path) -> None:
    server.plan = ["corrupt"]
    with pytest.raises(DownloadError) as err:
        download(server.entry(), cache_dir=tmp_path, retries=2, **FAST)
    msg = str(err.value)
    assert "synthetic.pt" in msg and PAYLOAD_SHA in msg and "got" in msg and "Fix" in msg
    assert _files(tmp_path) == []
    assert len(server.requests) == 1  # a checksum mismatch is not retried


def test_wrong_size_raises(server: ServerState, tmp_path: Path) -> None:
    server.plan = ["short"]
    with pytest.raises(DownloadError, match=f"expected size {len(PAYLOAD)} bytes, got {len(PAYLOAD) - 10}"):
        download(server.entry(), cache_dir=tmp_path, **FAST)
    assert _files(tmp_path) == []


def test_server_error_500_retried_then_raises(server: ServerState, tmp_path: Path) -> None:
    server.plan = ["500"]
    with pytest.raises(DownloadError, match="HTTP 500") as err:
        download(server.entry(), cache_dir=tmp_path, retries=2, **FAST)
    assert "\n" not in str(err.value)
    assert len(server.requests) == 3
    assert _files(tmp_path) == []


def test_server_error_keeps_earlier_part(server: ServerState, tmp_path: Path) -> None:
    (tmp_path / "synthetic.pt.part").write_bytes(PAYLOAD[:5000])
    server.plan = ["500"]
    with pytest.raises(DownloadError, match="HTTP 500"):
        download(server.entry(), cache_dir=tmp_path, retries=1, **FAST)
    assert (tmp_path / "synthetic.pt.part").read_bytes() == PAYLOAD[:5000]
    assert server.ranges() == ["bytes=5000-", "bytes=5000-"]


def test_404_is_not_retried(server: ServerState, tmp_path: Path) -> None:
    server.plan = ["404"]
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(server.entry(), cache_dir=tmp_path, retries=2, **FAST)
    assert len(server.requests) == 1
    assert _files(tmp_path) == []


def test_connection_refused(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    entry = WeightsEntry("synthetic.pt", f"http://127.0.0.1:{port}/synthetic.pt", len(PAYLOAD), PAYLOAD_SHA)
    with pytest.raises(DownloadError, match="cannot connect"):
        download(entry, cache_dir=tmp_path, retries=1, **FAST)
    assert _files(tmp_path) == []


def test_a_trickle_stops_at_the_deadline_and_the_part_resumes(server: ServerState, tmp_path: Path) -> None:
    """2 KB/s never trips the 5 s silence timeout; the 1 s deadline ends the call (not retried: another attempt would
    be past it too), in one sentence naming the option, and keeps the .part for the next call to resume."""
    server.plan = ["trickle"]
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match=r"took longer than 1 s \(.* received in") as err:
        download(server.entry(), cache_dir=tmp_path, retries=2, deadline=1.0, **FAST)
    assert time.monotonic() - t0 < 15  # a ceiling, not a speed: the trickle alone would last 100 s
    msg = str(err.value)
    assert "\n" not in msg and "yolokit weights download synthetic --download-timeout" in msg
    assert len(server.requests) == 1
    kept = (tmp_path / "synthetic.pt.part").read_bytes()
    assert 0 < len(kept) < len(PAYLOAD) and PAYLOAD.startswith(kept) and str(tmp_path) in msg
    server.plan = ["full"]
    assert verify(download(server.entry(), cache_dir=tmp_path, **FAST), server.entry())
    assert server.ranges()[-1] == f"bytes={len(kept)}-"


def test_a_redirect_off_http_is_refused(server: ServerState, tmp_path: Path) -> None:
    server.plan = ["to-ftp"]
    with pytest.raises(DownloadError, match="redirected to ftp://127.0.0.1:1/synthetic.pt, which yolokit does not "
                                            "follow"):
        download(server.entry(), cache_dir=tmp_path, retries=2, **FAST)
    assert len(server.requests) == 1 and _files(tmp_path) == []


def test_existing_corrupt_final_is_replaced(server: ServerState, tmp_path: Path) -> None:
    final = tmp_path / "synthetic.pt"
    final.write_bytes(b"\x01" * len(PAYLOAD))
    out = download(server.entry(), cache_dir=tmp_path, **FAST)
    assert out == final and final.read_bytes() == PAYLOAD
    assert len(server.requests) == 1
    assert _files(tmp_path) == ["synthetic.pt"]


def test_existing_corrupt_final_removed_when_download_fails(server: ServerState, tmp_path: Path) -> None:
    (tmp_path / "synthetic.pt").write_bytes(b"\x01" * 10)
    server.plan = ["500"]
    with pytest.raises(DownloadError):
        download(server.entry(), cache_dir=tmp_path, retries=0, **FAST)
    assert _files(tmp_path) == []


def test_url_override_and_env_base(
    server: ServerState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nowhere = WeightsEntry("synthetic.pt", "http://127.0.0.1:9/x/synthetic.pt", len(PAYLOAD), PAYLOAD_SHA)
    monkeypatch.setenv("YOLOKIT_WEIGHTS_URL", server.base + "/mirror/")
    download(nowhere, cache_dir=tmp_path / "a", **FAST)
    download(nowhere, cache_dir=tmp_path / "b", url=server.base + "/explicit.bin", **FAST)
    assert [r["path"] for r in server.requests] == ["/mirror/synthetic.pt", "/explicit.bin"]


# ------------------------------------------------------------------------------------------- resolve


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: ServerState) -> dict[str, object]:
    cache = tmp_path / "cache"
    shared = tmp_path / "shared"
    (shared / "weights").mkdir(parents=True)
    monkeypatch.setenv("YOLOKIT_CACHE_DIR", str(cache))
    monkeypatch.chdir(tmp_path)
    manifest = {"yolov5n.pt": server.entry("yolov5n.pt"), "yolov5s.pt": server.entry("yolov5s.pt")}
    return {"cache": cache, "shared": shared, "manifest": manifest, "server": server}


def test_resolve_existing_path_first(places: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = tmp_path / "my model.onnx"
    mine.write_bytes(b"anything")
    monkeypatch.setenv("YOLOKIT_WEIGHTS", str(tmp_path / "other.pt"))
    got = resolve_weights(str(mine), shared_dir=places["shared"], manifest=places["manifest"])
    assert got == mine


def test_resolve_env_weights(places: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / "env.pt"
    env_file.write_bytes(b"x")
    monkeypatch.setenv("YOLOKIT_WEIGHTS", str(env_file))
    assert resolve_weights(None, shared_dir=places["shared"], manifest=places["manifest"]) == env_file
    monkeypatch.setenv("YOLOKIT_WEIGHTS", str(tmp_path / "gone" / "env.pt"))
    with pytest.raises(InputError, match="YOLOKIT_WEIGHTS"):
        resolve_weights(None, shared_dir=places["shared"], manifest=places["manifest"])


def test_resolve_cache_before_shared(places: dict) -> None:
    cache, shared = places["cache"], places["shared"]
    cache.mkdir()
    (cache / "yolov5n.pt").write_bytes(PAYLOAD)
    (shared / "weights" / "yolov5n.pt").write_bytes(PAYLOAD)
    got = resolve_weights(None, allow_download=False, shared_dir=shared, manifest=places["manifest"])
    assert got == cache / "yolov5n.pt"
    got = resolve_weights("yolov5n", allow_download=False, shared_dir=shared, manifest=places["manifest"])
    assert got == cache / "yolov5n.pt"


def test_resolve_shared_and_skips_corrupt_cache(places: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    cache, shared = places["cache"], places["shared"]
    cache.mkdir()
    (cache / "yolov5s.pt").write_bytes(b"corrupt")
    (shared / "weights" / "yolov5s.pt").write_bytes(PAYLOAD)
    got = resolve_weights("yolov5s.pt", allow_download=False, shared_dir=shared, manifest=places["manifest"])
    assert got == shared / "weights" / "yolov5s.pt"
    monkeypatch.setenv("YOLOKIT_SHARED", str(shared))  # the default shared folder comes from the env
    assert resolve_weights("yolov5s", allow_download=False, manifest=places["manifest"]) == got


def test_resolve_no_download_raises(places: dict) -> None:
    with pytest.raises(ModelFileError, match="yolokit weights download yolov5n"):
        resolve_weights(None, allow_download=False, shared_dir=places["shared"], manifest=places["manifest"])
    assert places["server"].requests == []


def test_resolve_downloads_last(places: dict) -> None:
    (places["shared"] / "weights" / "yolov5n.pt").write_bytes(b"corrupt shared copy")
    got = resolve_weights(None, shared_dir=places["shared"], manifest=places["manifest"])
    assert got == places["cache"] / "yolov5n.pt" and got.read_bytes() == PAYLOAD
    assert [r["path"] for r in places["server"].requests] == ["/yolov5n.pt"]


@pytest.mark.parametrize("given", ["models/best.pt", "best.pt", "best.onnx", "yolov5n.onnx", "~/nope.pt"])
def test_resolve_missing_path_like(places: dict, given: str) -> None:
    with pytest.raises(InputError, match="weights file not found: .*name from the manifest: yolov5n"):
        resolve_weights(given, shared_dir=places["shared"], manifest=places["manifest"])
    assert places["server"].requests == []


def test_resolve_unknown_name(places: dict) -> None:
    with pytest.raises(InputError, match="unknown weights name 'yolov7'.*yolov5n, yolov5s"):
        resolve_weights("yolov7", shared_dir=places["shared"], manifest=places["manifest"])


def test_an_unknown_name_from_the_environment_says_where_it_came_from(places: dict,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YOLOKIT_WEIGHTS", "bogus")
    with pytest.raises(InputError, match=r"^\$YOLOKIT_WEIGHTS: unknown weights name 'bogus'"):
        resolve_weights(None, shared_dir=places["shared"], manifest=places["manifest"])


def test_weights_list_says_where_each_checkpoint_is_found(yolov5n_pt: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The checkpoint a run takes from the shared folder was listed with no state at all (only 'cached' showed)."""
    from toolkit.cli import main

    monkeypatch.setenv("YOLOKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("YOLOKIT_SHARED", str(yolov5n_pt.parent.parent))
    assert main(["weights", "list"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("yolov5n.pt"))
    assert line.endswith(f"found: {yolov5n_pt}"), line
    monkeypatch.chdir(tmp_path)  # a file of that name here is not what a run given the name takes (review)
    (tmp_path / "yolov5s.pt").write_text("not a model")
    assert main(["weights", "list"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("yolov5s.pt"))
    assert "found" not in line, line


def test_an_unknown_name_that_may_be_a_mistyped_export_folder_says_so(places: dict) -> None:
    # `--weights yolov5n_openvino_model` (a folder that is not there) reads as a name: the message must not suggest
    # that only .pt/.onnx files are models
    with pytest.raises(InputError, match="no file or folder has that name here.*OpenVINO folder"):
        resolve_weights("yolov5n_openvino_model", shared_dir=places["shared"], manifest=places["manifest"])


@pytest.mark.skipif(
    not (_REAL_SHARED / "weights" / "yolov5n.pt").is_file(),
    reason="no shared yolov5n.pt (set YOLOKIT_SHARED)",
)
def test_resolve_real_shared_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YOLOKIT_CACHE_DIR", str(tmp_path))
    got = resolve_weights("yolov5n", allow_download=False, shared_dir=_REAL_SHARED)
    assert got == _REAL_SHARED / "weights" / "yolov5n.pt"
    assert verify(got, MANIFEST["yolov5n.pt"])


@pytest.mark.parametrize(("args", "text"), [(["--download-timeout", "-1"], "--download-timeout must be positive"),
                                            (["--download-timeout", "nan"], "--download-timeout must be positive"),
                                            (["--url", ""], "--url is empty")])
def test_weights_download_refuses_bad_options_before_downloading(args: list[str], text: str, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """They failed later as a download error (exit 5), or fell back to the official URL without a word."""
    from toolkit.cli import main

    assert main(["weights", "download", "yolov5n", "--cache-dir", str(tmp_path), *args]) == 2
    assert text in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_cache_folder_that_cannot_be_made_is_exit_7_naming_the_option(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A file where --cache-dir must be: exit 7 (the output folder) and the option the user gave (it was exit 5, the
    raw errno text and a hint to set $YOLOKIT_CACHE_DIR)."""
    from toolkit.cli import main

    (tmp_path / "afile").write_text("in the way")
    assert main(["weights", "download", "yolov5n", "--cache-dir", str(tmp_path / "afile")]) == 7
    err = capsys.readouterr().err.strip()
    assert "a file is in the way" in err and "set --cache-dir to a writable folder" in err and "Errno" not in err


def test_an_empty_model_name_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """`yolokit info ''` (or --weights '') took the default model without a word."""
    from toolkit.cli import main

    assert main(["info", ""]) == 2
    assert "the model is empty" in capsys.readouterr().err


def test_a_web_address_as_weights_says_what_is_downloaded(tmp_path: Path) -> None:
    """--weights http://host/yolov5n.onnx was "weights file not found: http://..." as if it were a path."""
    from toolkit.model.weights import resolve_weights

    with pytest.raises(InputError, match="yolokit does not download models from web addresses .* download it and "
                                         "give its path"):
        resolve_weights("https://example.org/models/yolov5n.onnx")
