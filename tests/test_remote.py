"""Image and video URLs, served by a real http.server on 127.0.0.1: downloaded within the size limit and the timeout,
sniffed, and every failure listed with its reason."""

from __future__ import annotations

import functools
import http.server
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers.ports import free_port
from tests.test_video import _video
from toolkit.cli import main
from toolkit.io.files import ImageReadError
from toolkit.io.remote import fetch_image_bytes, sniff_media
from toolkit.io.sources import list_sources

RANDOM = ["--weights", "yolov5n.yaml", "--imgsz", "64", "--conf", "0.00001", "--max-det", "3"]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("site")
    rng = np.random.default_rng(0)
    cv2.imwrite(str(root / "photo.jpg"), cv2.GaussianBlur(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8),
                                                          (5, 5), 0))
    cv2.imwrite(str(root / "big.png"), rng.integers(0, 255, (300, 300, 3), dtype=np.uint8))
    (root / "page.jpg").write_text("<!DOCTYPE html><html><body>Not found, but 200</body></html>")
    _video(root / "clip.avi", 6)
    (root / "clip_as.jpg").write_bytes((root / "clip.avi").read_bytes())
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def silent() -> Iterator[str]:
    """A server that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/slow.jpg"
    finally:
        sock.close()


def test_sniffing() -> None:
    ok, buf = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))
    assert sniff_media(buf.tobytes()) == "image"
    assert sniff_media(b"\x00\x00\x00\x18ftypisom" + bytes(20)) == "video"
    assert sniff_media(b"RIFF\x10\x00\x00\x00AVI LIST" + bytes(20)) == "video"
    assert sniff_media(b"RIFF\x10\x00\x00\x00WAVEfmt " + bytes(20)) is None  # RIFF, but sound
    assert sniff_media(b"  <!doctype html><html>") == "html"
    assert sniff_media(b"just words\n") == "text"
    assert sniff_media(bytes(range(256))) is None


def test_url_inputs_are_listed_by_kind(site: tuple[str, Path]) -> None:
    base, _ = site
    assert [(r.key, r.frame) for r in list_sources(f"{base}/photo.jpg?size=full").items] == [("photo", None)]
    assert [(r.key, r.frame) for r in list_sources(f"{base}/clip.avi").items] == [("clip", -1)]
    live = list_sources(f"{base}/live")
    assert not live.items and [r.key for r in live.streams] == ["live"]


def test_an_image_url_gives_the_local_files_detections(site: tuple[str, Path], tmp_path: Path) -> None:
    base, root = site
    assert main(["run", f"{base}/photo.jpg", *RANDOM, "--save-txt", "--save-csv", "--project", str(tmp_path),
                 "--name", "url"]) == 0
    assert main(["run", str(root / "photo.jpg"), *RANDOM, "--save-txt", "--project", str(tmp_path),
                 "--name", "local"]) == 0
    got = (tmp_path / "url" / "labels" / "photo.txt").read_text()
    assert got and got == (tmp_path / "local" / "labels" / "photo.txt").read_text()
    assert (tmp_path / "url" / "photo.jpg").is_file()
    rows = (tmp_path / "url" / "predictions.csv").read_text().splitlines()
    assert rows[1].startswith(f"{base}/photo.jpg,,")


def test_a_video_url_runs_its_frames(site: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = site
    assert main(["run", f"{base}/clip.avi", *RANDOM, "--save-txt", "--project", str(tmp_path), "--name", "v"]) == 0
    summary = json.loads((tmp_path / "v" / "summary.json").read_text())
    assert summary["processed"] == 6 and (tmp_path / "v" / "clip.mp4").is_file()
    assert len(list((tmp_path / "v" / "labels").glob("clip_*.txt"))) == 6


def test_url_failures_are_listed_with_reasons(site: tuple[str, Path], silent: str, tmp_path: Path) -> None:
    base, root = site
    closed = free_port()
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join([f"{base}/photo.jpg", f"{base}/missing.jpg", f"{base}/page.jpg",
                                  f"{base}/clip_as.jpg", f"{base}/big.png", f"http://127.0.0.1:{closed}/x.jpg",
                                  silent, "rtsp://127.0.0.1:1/cam", f"file://{tmp_path}/a.jpg",
                                  str(root / "photo.jpg")]) + "\n")
    rc = main(["run", str(listing), *RANDOM, "--max-file-size", "100K", "--stream-timeout", "1", "--project",
               str(tmp_path), "--name", "r"])
    assert rc == 1
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    reasons = {f["path"].rsplit("/", 1)[-1]: f["reason"] for f in summary["failed"]}
    assert summary["processed"] == 2 and summary["images"] == 10
    assert "HTTP 404" in reasons["missing.jpg"]
    assert "an HTML page, not an image" in reasons["page.jpg"]
    assert "a video, not an image" in reasons["clip_as.jpg"]
    assert "over the 100 KB limit" in reasons["big.png"]
    assert "connection refused" in reasons["x.jpg"]
    assert "within 1 s" in reasons["slow.jpg"] or "for 1 s" in reasons["slow.jpg"]
    assert "live stream" in reasons["cam"] and "file not found" in reasons["a.jpg"]  # file:// is a local path


def test_fetch_refuses_bad_content_in_one_sentence(site: tuple[str, Path]) -> None:
    base, _ = site
    assert len(fetch_image_bytes(f"{base}/photo.jpg", 1 << 20, 5)) > 100
    with pytest.raises(ImageReadError, match="HTML page"):
        fetch_image_bytes(f"{base}/page.jpg", 1 << 20, 5)


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that signs itself, and its key (the cryptography package: moto's, in dev)."""
    import datetime
    import ipaddress

    x509 = pytest.importorskip("cryptography.x509", reason="cryptography is not installed (it comes with moto)")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                                       serialization.NoEncryption()))
    return folder / "cert.pem", folder / "key.pem"


def test_tls_failures_are_named_without_openssls_words(site: tuple[str, Path], tmp_path: Path) -> None:
    """Were "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)" and "[SSL: CERTIFICATE_VERIFY_FAILED]
    certificate verify failed: self-signed certificate (_ssl.c:1006)"."""
    import ssl

    base, root = site
    with pytest.raises(ImageReadError) as e:
        fetch_image_bytes(base.replace("http://", "https://") + "/photo.jpg", 1 << 20, 5)
    assert "the server does not speak TLS on this port (a plain http:// server?)" in str(e.value), str(e.value)
    cert, key = _self_signed(tmp_path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ImageReadError) as e:
            fetch_image_bytes(f"https://127.0.0.1:{server.server_address[1]}/photo.jpg", 1 << 20, 5)
    finally:
        server.shutdown()
        server.server_close()
    assert "the server's TLS certificate is not trusted (self-signed certificate)" in str(e.value), str(e.value)
    assert "_ssl.c" not in str(e.value) and "[SSL" not in str(e.value)


def test_a_url_with_letters_beyond_ascii_is_fetched(site: tuple[str, Path], tmp_path: Path) -> None:
    """http://host/ü.jpg was "not a valid URL ('ascii' codec can't encode character ...)", Python's words cut off;
    its path is sent percent-encoded, as a browser sends it."""
    import shutil

    base, root = site
    shutil.copy(root / "photo.jpg", root / "füße.jpg")
    assert main(["run", f"{base}/füße.jpg", *RANDOM, "--save-txt", "--project", str(tmp_path), "--name", "u"]) == 0
    assert (tmp_path / "u" / "labels" / "füße.txt").read_text()
