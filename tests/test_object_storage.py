"""Object storage as a source, a run folder and for weights, against a real S3-compatible server on loopback (moto's
server mode, reached by s3fs and botocore through AWS_ENDPOINT_URL): every guarantee of a local run holds."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from tests.helpers import hostile, s3
from toolkit.errors import InputError, OutputError
from toolkit.io.store import LocalStore, ObjectStore, Store, list_objects
from toolkit.jobs.run import RunOptions, run

WEIGHTS = "s3://models/yolov5n.pt"


@pytest.fixture()
def store_env(s3_store: dict[str, str]) -> dict[str, str]:
    return s3_store


@pytest.fixture()
def local_run(coco128_local_run: Path) -> Path:
    return coco128_local_run


def _local_labels(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted((folder / "labels").rglob("*.txt"))}


def _store_labels(fs: Any, prefix: str) -> dict[str, bytes]:
    return {k: v for k, v in s3.objects(fs, prefix).items() if k.startswith("labels/")}


def _csv_rows(text: str) -> list[tuple[str, ...]]:
    """predictions.csv rows without their path column (a local path there, an object's URL here), sorted."""
    rows = list(csv.reader(io.StringIO(text)))
    return sorted(tuple(r[1:]) for r in rows[1:])


def _cli(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "toolkit.cli", "run", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------------------ the seam


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_the_store_seam_behaves_the_same_on_disk_and_in_a_bucket(kind: str, store_env: dict[str, str],
                                                                  tmp_path: Path) -> None:
    store: Store = LocalStore(tmp_path / "root") if kind == "local" else ObjectStore("s3://seam/root")
    assert store.empty()
    store.put("a/b.txt", b"one")
    store.put("c.txt", b"two")
    assert store.read("a/b.txt") == b"one" and store.exists("c.txt") and not store.exists("d.txt")
    assert sorted(store.names()) == ["a/b.txt", "c.txt"] and list(store.names("a/")) == ["a/b.txt"]
    store.put("c.txt", b"three")  # overwritten whole
    assert store.read("c.txt") == b"three"
    with pytest.raises(FileExistsError):
        store.put("c.txt", b"four", create=True)  # the run folder's guard: only when absent
    assert store.read("c.txt") == b"three"
    store.put("e.txt", b"five", create=True)
    assert store.exclusive  # s3fs sends If-None-Match: *, which moto (like S3) enforces
    with pytest.raises(OutputError, match="not a name inside the run folder"):
        store.put("../escape.txt", b"x")
    store.delete("a/b.txt")
    store.delete("missing.txt")  # nothing to delete is fine
    with pytest.raises(FileNotFoundError):
        store.read("a/b.txt")
    assert sorted(store.names()) == ["c.txt", "e.txt"]
    child = store.child("sub")
    child.put("x.txt", b"x")
    assert store.read("sub/x.txt") == b"x" and not child.empty()


def test_a_listing_streams_a_page_at_a_time(store_env: dict[str, str]) -> None:
    """A prefix's listing is asked of the store a page (1000 keys) at a time, as it is used, and nothing of it is
    cached: a million keys never sit in memory together."""
    fs = s3.filesystem()
    fs.pipe({f"odd/many/{i:05d}.jpg": b"x" for i in range(2100)})
    calls = s3.Calls(fs)
    try:
        listing = list_objects("s3://odd/many/")
        first = next(listing)
        assert first.url == "s3://odd/many/00000.jpg" and first.size == 1 and first.content_id.startswith("etag:")
        asked = calls["ListObjectsV2"]  # the first page (and the check that the prefix is no object)
        assert asked <= 2
        rest = [o.url for _, o in zip(range(1000), listing, strict=False)]
        assert rest[-1] == "s3://odd/many/01000.jpg" and calls["ListObjectsV2"] == asked + 1
        assert sum(1 for _ in listing) == 1099 and calls["ListObjectsV2"] == asked + 2
        assert not fs.dircache  # nothing of the listing was kept
    finally:
        calls.close()
        fs.rm("odd/many", recursive=True)


# ------------------------------------------------------------------------------------------- acceptance


def test_coco128_from_a_bucket_into_the_bucket_equals_a_local_disk_run(store_env: dict[str, str],
                                                                       local_run: Path) -> None:
    proc = _cli(store_env, "s3://data/coco128/", "--weights", WEIGHTS, "--save-txt", "--save-csv", "--nosave",
                "--project", "s3://runs/acceptance", "--name", "exp", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["processed"] == 128 and summary["failed"] == [] and summary["out_dir"] == "s3://runs/acceptance/exp"
    fs = s3.filesystem()
    fs.invalidate_cache()
    assert _store_labels(fs, "runs/acceptance/exp") == _local_labels(local_run)  # byte for byte
    manifest = [json.loads(x) for x in fs.cat_file("runs/acceptance/exp/manifest.jsonl").decode().splitlines()]
    keys = [r["key"] for r in manifest]
    assert len(keys) == len(set(keys)) == 128
    assert all(r["fp"].startswith("etag:") for r in manifest)  # an object's ETag is its fingerprint
    rows = fs.cat_file("runs/acceptance/exp/predictions.csv").decode()
    assert _csv_rows(rows) == _csv_rows((local_run / "predictions.csv").read_text())
    assert not fs.exists("runs/acceptance/exp/.yolokit.lock")  # released
    # --resume from the store's manifest: nothing to do, nothing twice
    again = _cli(store_env, "s3://data/coco128/", "--weights", WEIGHTS, "--save-txt", "--save-csv", "--nosave",
                 "--project", "s3://runs/acceptance", "--name", "exp", "--resume", "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["processed"] == 128
    fs.invalidate_cache()
    assert _csv_rows(fs.cat_file("runs/acceptance/exp/predictions.csv").decode()) == _csv_rows(rows)


def _lock_age(fs: Any, path: str, seconds: float) -> None:
    lock = json.loads(fs.cat_file(path))
    lock["time"] -= seconds
    fs.pipe_file(path, json.dumps(lock).encode())


def test_a_killed_run_resumes_from_the_stores_manifest(store_env: dict[str, str], local_run: Path) -> None:
    """SIGKILL mid-run: every manifest line in the store has its outputs, every output object is whole, no
    temporary object is left; the lock object keeps a second run out until its lease runs out; --resume then
    completes the run as an uninterrupted one, with no row twice."""
    fs = s3.filesystem()
    keys = sorted(fs.find("data/coco128"))[:80]  # enough work that the kill lands mid-run on a fast machine too
    fs.pipe({k.replace("data/coco128/", "data/eighty/"): fs.cat_file(k) for k in keys})
    args = ["s3://data/eighty/", "--weights", WEIGHTS, "--save-txt", "--save-csv", "--nosave", "--mode", "thread",
            "--workers", "1", "--batch", "1", "--project", "s3://runs/killed", "--name", "exp", "--json"]
    job = subprocess.Popen([sys.executable, "-m", "toolkit.cli", "run", *args], env={**os.environ, **store_env},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and job.poll() is None:
        fs.invalidate_cache()
        # killed once outputs exist and records of some have reached the store: the journal is flushed about once
        # a second after the outputs, so on a fast machine the labels run ahead of it
        journal = [k for k in fs.find("runs/killed/exp/.yolokit/manifest") if not k.endswith(".reset.jsonl")]
        if len(fs.find("runs/killed/exp/labels")) >= 8 and journal:
            break
        time.sleep(0.2)
    assert job.poll() is None, "the run ended before it could be killed"
    job.send_signal(signal.SIGKILL)
    job.communicate(timeout=60)
    fs.invalidate_cache()
    left = s3.objects(fs, "runs/killed/exp")
    labels = {k: v for k, v in left.items() if k.startswith("labels/")}
    assert 8 <= len(labels) < 80, "the kill did not land mid-run"
    local = _local_labels(local_run)
    assert all(v == local[k] for k, v in labels.items())  # every object whole, none cut short
    assert not [k for k in left if k.rsplit("/", 1)[-1].startswith(".") and k != ".yolokit.lock"
                and not k.startswith(".yolokit/")]
    recorded = [json.loads(line) for k, v in left.items() if k.startswith(".yolokit/manifest/")
                for line in v.decode().splitlines()]
    assert recorded and all(f in labels for r in recorded for f in r["files"])  # a line only once its outputs exist
    # the lock of the killed run holds until its lease runs out
    held = _cli(store_env, *args, "--resume")
    assert held.returncode == 2 and "another yolokit run" in held.stderr and "last seen" in held.stderr, held.stderr
    _lock_age(fs, "runs/killed/exp/.yolokit.lock", 3600)  # as if its lease had run out
    again = _cli(store_env, *args, "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads(again.stdout)
    assert summary["processed"] == 80 and summary["failed"] == []
    assert any("taken over" in n for n in summary["notes"])
    fs.invalidate_cache()
    assert _store_labels(fs, "runs/killed/exp") == {k: v for k, v in local.items()
                                                    if k[len("labels/"):-4] + ".jpg" in {x.rsplit("/", 1)[1]
                                                                                         for x in keys}}
    manifest = [json.loads(x)["key"] for x in fs.cat_file("runs/killed/exp/manifest.jsonl").decode().splitlines()]
    assert len(manifest) == len(set(manifest)) == 80
    rows = list(csv.reader(io.StringIO(fs.cat_file("runs/killed/exp/predictions.csv").decode())))[1:]
    assert len(rows) == len({tuple(r) for r in rows}) == summary["detections"]


def test_objects_get_the_limits_and_refusals_of_local_files(store_env: dict[str, str], tmp_path: Path) -> None:
    """The hostile corpus's files as objects, an HTML page named .jpg, and an object over --max-file-size, which is
    refused from its size before any of its bytes is read."""
    fs = s3.filesystem()
    src = tmp_path / "src"
    expect = hostile.build(src)
    regular = {p.name: p.read_bytes() for p in src.iterdir() if p.is_file() and not p.is_symlink()}
    objects = {f"odd/hostile/{name}": data for name, data in regular.items()}
    objects["odd/hostile/page.jpg"] = b"<!doctype html><html><body>Not Found</body></html>"
    objects["odd/hostile/huge.jpg"] = regular["good.jpg"] + bytes(300_000)
    fs.pipe(objects)
    calls = s3.Calls(fs)
    try:
        s = run(RunOptions.of(source="s3://odd/hostile/", weights="yolov5n.yaml", imgsz=128, nosave=True,
                              max_file_size=200_000, project=str(tmp_path), name="r"))
    finally:
        calls.close()
    failed = {f["path"].rsplit("/", 1)[1]: f["reason"] for f in s.failed}
    want = {name: frag for name, frag in expect.items() if name in regular and frag is not None}
    assert set(failed) == {*want, "page.jpg", "huge.jpg"}
    for name, fragment in want.items():
        assert fragment in failed[name], failed[name]
    assert "the object holds an HTML page, not an image" in failed["page.jpg"]
    assert "over the 195 KB limit" in failed["huge.jpg"]
    assert s.processed == sum(1 for n in regular if expect[n] is None)
    assert calls["GetObject"] == len(objects) - 1  # every object read once, in one request, but the huge one
    for reason in failed.values():
        assert "\n" not in reason and "Traceback" not in reason


def test_an_object_key_with_dot_dot_parts_is_failed_not_written_outside(store_env: dict[str, str],
                                                                          tmp_path: Path) -> None:
    """A video object under the key v/../../x.mp4 had its annotated video written outside the run folder (anywhere
    on disk, folders made as needed), and an image's such key stopped the whole run with exit 7 ("not a name inside
    the run folder"). The object is listed as failed; the others run."""
    import boto3

    client = boto3.client("s3")
    image = cv2.imencode(".jpg", np.full((48, 64, 3), 90, np.uint8))[1].tobytes()
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"mp4v"), 5, (64, 48))
    for i in range(3):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    client.put_object(Bucket="odd", Key="esc/a/1.jpg", Body=image)
    client.put_object(Bucket="odd", Key="esc/a/../../../escaped/x.mp4", Body=video.read_bytes())
    client.put_object(Bucket="odd", Key="esc/a/../up.jpg", Body=image)
    (tmp_path / "runs").mkdir()
    s = run(RunOptions.of(source="s3://odd/esc/a/", weights="yolov5n.yaml", imgsz=64, save_txt=True,
                          project=str(tmp_path / "runs" / "p"), name="r"))
    assert s.processed == 1 and len(s.failed) == 2, s.failed
    assert all("its key has a '..' part" in f["reason"] for f in s.failed)
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and "runs" not in p.parts and p != video]
    assert outside == [], outside  # nothing beside the run folder


def test_objects_a_pattern_names_carry_their_etags(store_env: dict[str, str], tmp_path: Path) -> None:
    """A store glob recorded no fingerprint, so a resume kept the old results of an object replaced since."""
    fs = s3.filesystem()
    image = cv2.imencode(".jpg", np.full((48, 64, 3), 90, np.uint8))[1].tobytes()
    other = cv2.imencode(".jpg", np.full((48, 64, 3), 10, np.uint8))[1].tobytes()
    fs.pipe({"odd/pat/a.jpg": image, "odd/pat/b.jpg": image})
    common = {"source": "s3://odd/pat/*.jpg", "weights": "yolov5n.yaml", "imgsz": 64, "nosave": True,
              "project": str(tmp_path), "name": "r"}
    run(RunOptions.of(**common))
    fps = [json.loads(line)["fp"] for line in (tmp_path / "r" / "manifest.jsonl").read_text().splitlines()]
    assert len(fps) == 2 and all(fps), fps  # were ""
    fs.pipe({"odd/pat/b.jpg": other})
    again = run(RunOptions.of(**common, resume=True))
    assert [Path(p).name for p in again.resume["changed"]] == ["b.jpg"], again.resume


def test_the_store_clients_own_words_are_replaced() -> None:
    """'Could not connect to the endpoint URL: "http://127.0.0.1:5598/out?list-type=2&prefix=..."' and 'Unable to
    locate credentials' (no fix) were the reasons."""
    exceptions = pytest.importorskip("botocore.exceptions", reason="botocore (the cloud extra) is not installed")
    from toolkit.io.store import store_reason

    far = exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:5598/out?list-type=2&prefix=a")
    assert store_reason(far) == ("cannot connect to the store at http://127.0.0.1:5598; check its endpoint "
                                 "(AWS_ENDPOINT_URL) and that it is running")
    assert store_reason(exceptions.NoCredentialsError()).startswith("no credentials for the store; set "
                                                                    "AWS_ACCESS_KEY_ID")


# ------------------------------------------------------------------------------------------- the guard


def test_the_lock_object_guards_a_run_folder_in_a_bucket(store_env: dict[str, str]) -> None:
    from toolkit.jobs.lock import StoreLock, claim_store_folder

    first, lock, new = claim_store_folder("s3://runs/guard", "exp", False, False)
    assert new and first.root == "s3://runs/guard/exp"
    try:
        with pytest.raises(InputError, match=r"another yolokit run \(process \d+ on .*last seen \d+ s ago"):
            StoreLock(first).acquire()
        # two runs starting together on new folders never get the same one
        got: list[str] = []
        locks: list[Any] = []

        def claim() -> None:
            store, held, _ = claim_store_folder("s3://runs/guard", "exp", False, False)
            got.append(store.root)
            locks.append(held)

        threads = [threading.Thread(target=claim) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(got) == ["s3://runs/guard/exp2", "s3://runs/guard/exp3", "s3://runs/guard/exp4"]
        for held in locks:
            held.release()
    finally:
        lock.release()
    assert not first.exists(".yolokit.lock")
    # a lock whose holder stopped renewing it is taken over once its lease ran out
    stale = StoreLock(first, lease=1.0, beat=60.0)
    stale.acquire()
    stale._stop.set()  # the holder is gone (killed): no more renewals
    time.sleep(1.5)
    taker = StoreLock(first)
    taker.acquire()
    assert "taken over" in taker.note
    taker.release()
    # an empty lock object (no run's: a store writes an object whole) blocked the folder for ever
    first.put(".yolokit.lock", b"")
    foreign = StoreLock(first)
    foreign.acquire()
    assert "a lock object that is not a yolokit run's" in foreign.note
    foreign.release()


def test_weights_in_a_bucket_are_cached_by_their_etag(store_env: dict[str, str], tmp_path: Path) -> None:
    from toolkit.model.weights import fetch_stored_model

    fs = s3.filesystem()
    fs.pipe_file("models/tiny.onnx", b"version one")
    calls = s3.Calls(fs)
    try:
        got = fetch_stored_model("s3://models/tiny.onnx", tmp_path)
        assert got.read_bytes() == b"version one"
        assert fetch_stored_model("s3://models/tiny.onnx", tmp_path) == got and calls["GetObject"] == 1  # cached
        fs.pipe_file("models/tiny.onnx", b"version two")
        assert fetch_stored_model("s3://models/tiny.onnx", tmp_path).read_bytes() == b"version two"
    finally:
        calls.close()
    from toolkit.errors import ModelFileError

    with pytest.raises(ModelFileError, match="no such model object"):
        fetch_stored_model("s3://models/missing.pt", tmp_path)


def test_a_run_that_fails_before_any_input_leaves_nothing_in_the_bucket(store_env: dict[str, str]) -> None:
    from toolkit.errors import ModelFileError

    fs = s3.filesystem()
    with pytest.raises(ModelFileError, match=r"s3://models/missing\.pt: no such model object"):
        run(RunOptions.of(source="s3://data/coco128/000000000009.jpg", weights="s3://models/missing.pt",
                          project="s3://runs/failed", name="exp"))
    fs.invalidate_cache()
    assert not fs.find("runs/failed")  # no run folder, no lock, no records
    with pytest.raises(OutputError, match=r"s3://no-such-bucket/runs/exp: cannot list \(no such object, prefix or "
                                          r"bucket\); check the store's credentials"):
        run(RunOptions.of(source="s3://data/coco128/000000000009.jpg", weights="yolov5n.yaml",
                          project="s3://no-such-bucket/runs", name="exp"))


def test_missing_store_packages_and_unknown_schemes_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nosuchscheme:// is not a file system yolokit can read"):
        run(RunOptions.of(source="nosuchscheme://bucket/x/", project=str(tmp_path)))
    assert not list(tmp_path.iterdir())
    shutil.rmtree(tmp_path, ignore_errors=True)


# ------------------------------------------------------------------------------------------- the deadline


class _Trickle:
    """What the two hostile file systems below serve: a JPEG's size, then a byte at a time (or nothing at all)."""

    size = 50_000
    stall = False

    @classmethod
    def info(cls, path: str) -> dict[str, Any]:
        return {"name": path, "size": cls.size, "type": "file", "ETag": '"abc"'}


def _hostile_filesystems() -> None:
    import asyncio

    import fsspec
    from fsspec.asyn import AsyncFileSystem
    from fsspec.spec import AbstractFileSystem

    class TrickleFS(AbstractFileSystem):  # a file system without async reads: read in a thread of its own
        protocol = "trickle"

        def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
            return _Trickle.info(path)

        def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
            time.sleep(3600 if _Trickle.stall else 0.2)
            return b"\xff"

    class StallFS(AsyncFileSystem):  # an async one (as s3fs is), whose reads never answer
        protocol = "stall"

        async def _info(self, path: str, **kwargs: Any) -> dict[str, Any]:
            return _Trickle.info(path)

        async def _cat_file(self, path: str, start: int | None = None, end: int | None = None,
                            **kwargs: Any) -> bytes:
            await asyncio.sleep(3600)
            return b""

    fsspec.register_implementation("trickle", TrickleFS, clobber=True)
    fsspec.register_implementation("stall", StallFS, clobber=True)


@pytest.mark.parametrize(("url", "stall", "timeout", "reason"), [
    ("trickle://bucket/a.jpg", False, 30.0, "the download took longer than 2 s"),
    ("trickle://bucket/a.jpg", True, 30.0, "the download took longer than 2 s"),
    ("stall://bucket/a.jpg", False, 30.0, "the download took longer than 2 s"),
    ("stall://bucket/a.jpg", False, 1.0, "the server stopped sending for 1 s"),
])
def test_an_object_read_ends_at_its_deadline(url: str, stall: bool, timeout: float, reason: str,
                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store that trickles a byte at a time (under the silence timeout) or stops answering: the object's download
    ends at --download-timeout, its wait cut by the deadline's timer, as an http(s) download does; the other inputs
    of the run are done meanwhile."""
    import cv2
    import numpy as np

    _hostile_filesystems()
    monkeypatch.setattr(_Trickle, "stall", stall)
    cv2.imwrite(str(tmp_path / "local.jpg"), np.zeros((64, 64, 3), np.uint8))
    listed = tmp_path / "list.txt"
    listed.write_text(f"{url}\n{tmp_path / 'local.jpg'}\n")
    t0 = time.monotonic()
    s = run(RunOptions.of(source=str(listed), weights="yolov5n.yaml", imgsz=64, nosave=True, download_timeout=2.0,
                          stream_timeout=timeout, project=str(tmp_path), name="r"))
    assert time.monotonic() - t0 < 30
    assert s.processed == 1 and len(s.failed) == 1
    assert s.failed[0]["path"] == url and reason in s.failed[0]["reason"], s.failed[0]["reason"]


def test_run_folders_below_a_bucket_source_are_not_read_as_photos(store_env: dict[str, str]) -> None:
    """``--project s3://data/photos/runs`` run twice: the second run read the first's annotated images as photos
    (4 inputs for 2, outputs of outputs below runs/exp2/runs/exp/). Objects below a run folder in the SOURCE prefix
    are set aside with a note; the run folder given as SOURCE is read whole."""
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket="runfolders")
    for i in range(2):
        image = cv2.imencode(".jpg", np.full((48, 64, 3), 60 + 40 * i, np.uint8))[1].tobytes()
        client.put_object(Bucket="runfolders", Key=f"photos/{i}.jpg", Body=image)
    common = dict(weights="yolov5n.yaml", imgsz=64, conf=1e-5, project="s3://runfolders/photos/runs")
    first = run(RunOptions.of(source="s3://runfolders/photos/", **common))
    assert first.processed == 2
    second = run(RunOptions.of(source="s3://runfolders/photos/", **common))
    assert second.images == 2 and any("below 1 yolokit run folder(s) in SOURCE" in n for n in second.notes), \
        second.notes
    whole = run(RunOptions.of(source="s3://runfolders/photos/runs/exp/", weights="yolov5n.yaml", imgsz=64,
                              project="s3://runfolders/other"))
    assert whole.images == 2  # its annotated images, given as SOURCE


def test_a_bucket_run_never_writes_over_its_photos_nor_two_keys_into_one_output(store_env: dict[str, str]) -> None:
    """``--project s3://b --name photos --exist-ok`` on SOURCE s3://b/photos/ replaced each photo by its annotated
    image (exit 0); keys c.jpg and ./c.jpg, a/b.jpg and a//b.jpg got one output name each pair (the store spells
    them alike), one overwriting the other, both recorded."""
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket="overwrite")
    image = cv2.imencode(".jpg", np.full((48, 64, 3), 90, np.uint8))[1].tobytes()
    for key in ("photos/0.jpg", "photos/1.jpg", "col/c.jpg", "col/./c.jpg", "col/a/b.jpg", "col/a//b.jpg"):
        client.put_object(Bucket="overwrite", Key=key, Body=image)
    before = client.head_object(Bucket="overwrite", Key="photos/0.jpg")["ETag"]
    with pytest.raises(InputError, match="the run folder holds SOURCE's input s3://overwrite/photos/0.jpg"):
        run(RunOptions.of(source="s3://overwrite/photos/", weights="yolov5n.yaml", imgsz=64,
                          project="s3://overwrite", name="photos", exist_ok=True))
    assert client.head_object(Bucket="overwrite", Key="photos/0.jpg")["ETag"] == before
    s = run(RunOptions.of(source="s3://overwrite/col/", weights="yolov5n.yaml", imgsz=64, conf=1e-5, save_txt=True,
                          project="s3://overwrite/out", name="r"))
    assert s.processed == 4
    labels = {k for k in s3.objects(s3.filesystem(), "overwrite/out/r") if k.startswith("labels/")}
    assert len(labels) == 4, labels


def test_odd_names_in_a_bucket_are_read_as_on_disk(store_env: dict[str, str], tmp_path: Path) -> None:
    """An object named photo[1].jpg given as SOURCE was "the pattern matches no objects"; a file:// line in a list
    object was "not a URL yolokit reads" (a list on disk reads it as its path); a key with a '..' part was retried at
    every --resume though it can never pass."""
    import boto3

    from toolkit.io.sources import list_sources
    from toolkit.jobs.manifest import retried_on_resume

    client = boto3.client("s3")
    client.create_bucket(Bucket="oddnames")
    image = cv2.imencode(".jpg", np.full((48, 64, 3), 90, np.uint8))[1].tobytes()
    client.put_object(Bucket="oddnames", Key="br/photo[1].jpg", Body=image)
    local = tmp_path / "here.jpg"
    local.write_bytes(image)
    client.put_object(Bucket="oddnames", Key="lists/l.txt", Body=f"file://{local}\n../br/photo[1].jpg\n".encode())
    found = list_sources("s3://oddnames/br/photo[1].jpg")
    assert [r.path for r in found.items] == ["s3://oddnames/br/photo[1].jpg"]
    listed = list_sources("s3://oddnames/lists/l.txt")
    assert str(local) in [r.path for r in listed.items], (listed.items, listed.failed)
    assert not retried_on_resume("its key has a '..' part, which would name its outputs outside the run folder; "
                                 "rename the object (or copy it to a key without '..')", "etag")


def test_a_project_url_without_a_bucket_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--project s3:// was "s3:///exp: cannot list (Parameter validation failed:)", exit 7."""
    from toolkit.cli import main

    image = tmp_path / "a.jpg"
    cv2.imwrite(str(image), np.full((48, 64, 3), 90, np.uint8))
    assert main(["run", str(image), "--weights", "yolov5n.yaml", "--project", "s3://", "--nosave"]) == 2
    assert "--project s3://: names no bucket; give s3://BUCKET/PREFIX" in capsys.readouterr().err


def test_a_lock_the_run_cannot_delete_is_said(tmp_path: Path) -> None:
    """A store that lets a run write but not delete (a bucket policy without DeleteObject) left the run's lock behind
    without a word: the next --resume was refused as "another yolokit run ... is writing", then exit 7. The run's
    summary says so. (The store here is a folder that refuses deletes: yolokit's own Store interface.)"""
    from toolkit.jobs.lock import LOCK_NAME, StoreLock

    class NoDelete(LocalStore):
        def delete(self, name: str) -> None:
            raise OSError(13, "Access Denied")

    store = NoDelete(tmp_path)
    lock = StoreLock(store, lease=60.0, beat=30.0)
    lock.acquire()
    lock.release()
    assert (tmp_path / LOCK_NAME).exists()
    assert "could not be deleted" in lock.problem and "a --resume waits 60 s" in lock.problem, lock.problem
