"""``--engine ray``: a real local Ray cluster (``ray start --head``, 2 CPUs) running yolov5n over coco128."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import hostile
from tests.helpers.ports import free_port
from toolkit.errors import BackendUnavailableError, InputError, ModelFileError
from toolkit.jobs.manifest import RETRY_NOTE
from toolkit.jobs.run import RunOptions, run

pytest.importorskip("ray", reason="the ray extra is not installed: pip install 'yolokit[ray]'")

from toolkit.jobs.ray import LOST_REASON, VIDEO_REASON  # noqa: E402

ACTOR = "ray::InferActor"  # the process title Ray gives yolokit's inference actors


def _ray_bin() -> str:
    found = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if found is None:
        pytest.skip("the ray command is not on PATH")
    return found


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, dict[str, str]]]:
    """A one-machine Ray cluster with 2 CPUs and token authentication (Ray's default), as a user starts one."""
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    ray = _ray_bin()
    start = subprocess.run([ray, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                            "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=180)
    if start.returncode != 0:
        pytest.fail(f"ray start failed:\n{start.stdout}\n{start.stderr}")
    try:
        yield f"127.0.0.1:{port}", env
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def local_labels(coco128_local_run: Path) -> dict[str, str]:
    """Label files of the same job run by the local engine."""
    return _labels(coco128_local_run)


def _labels(out_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(out_dir / "labels")): p.read_text() for p in sorted((out_dir / "labels").rglob("*.txt"))}


def _yolokit_ray(coco128: Path, weights: Path, address: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "toolkit.cli", "run", str(coco128 / "images" / "train2017"), "--weights",
            str(weights), "--save-txt", "--nosave", "--engine", "ray", "--address", address, "--workers", "2",
            "--project", str(out), "--name", "ray", "--json", *extra]


def test_ray_run_on_a_local_cluster_equals_the_local_run(cluster: tuple[str, dict[str, str]], coco128: Path,
                                                         yolov5n_pt: Path, local_labels: dict[str, str],
                                                         tmp_path: Path) -> None:
    address, env = cluster
    proc = subprocess.run(_yolokit_ray(coco128, yolov5n_pt, address, tmp_path, "--save-csv"), env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["processed"] == 128 and summary["failed"] == []
    rows = (Path(summary["out_dir"]) / "predictions.csv").read_text().splitlines()
    assert len(rows) - 1 == summary["detections"] == sum(len(t.splitlines()) for t in local_labels.values())
    assert summary["plan"].startswith("ray: 2 actors x 1 CPU")
    assert summary["settings"]["engine"] == "ray"
    assert (summary["settings"]["conf"], summary["settings"]["max_det"]) == (0.25, 1000)  # what the actors ran
    out = Path(summary["out_dir"])
    assert _labels(out) == local_labels  # byte for byte, file for file
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    # in input order, as the local run writes them (they came in the order the actors finished their batches)
    assert [r["key"] for r in manifest] == sorted(p.stem for p in (coco128 / "images" / "train2017").iterdir())
    assert "Traceback" not in proc.stderr


def test_sigterm_ends_a_ray_run_with_its_summary_and_exit_143(cluster: tuple[str, dict[str, str]], coco128: Path,
                                                              yolov5n_pt: Path, tmp_path: Path) -> None:
    """ray.init replaced yolokit's SIGTERM handler: `timeout`, `docker stop` or Kubernetes aborted a Ray run with
    Ray's crash dump (exit 134; 15 or 1 against a running cluster, 1 reading as "some inputs failed"), no summary."""
    address, env = cluster
    proc = subprocess.Popen(_yolokit_ray(coco128, yolov5n_pt, address, tmp_path), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    manifest = tmp_path / "ray" / "manifest.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not (manifest.is_file() and manifest.read_text()):
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert summary["interrupted"] and 0 < summary["processed"] < 128
    assert "SIGTERM received" not in err and "Traceback" not in err


def _actor_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if ACTOR in cmd:
            pids.append(int(entry.name))
    return pids


def test_a_killed_actor_loses_nothing(cluster: tuple[str, dict[str, str]], coco128: Path, yolov5n_pt: Path,
                                      local_labels: dict[str, str], tmp_path: Path) -> None:
    """SIGKILL to one inference actor mid-run: its batches are retried on the other actor (and a new one started
    where the CPU it freed is), within the run: every image processed, each exactly once."""
    address, env = cluster
    job = subprocess.Popen(_yolokit_ray(coco128, yolov5n_pt, address, tmp_path, "--batch", "2"), env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    labels = tmp_path / "ray" / "labels"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and job.poll() is None:
        if labels.is_dir() and len(list(labels.iterdir())) >= 3 and len(_actor_pids()) >= 2:
            break
        time.sleep(0.1)
    assert job.poll() is None, "the run ended before an actor could be killed"
    victim = _actor_pids()[0]
    os.kill(victim, signal.SIGKILL)
    manifest = tmp_path / "ray" / "manifest.jsonl"
    done_at_kill = len(manifest.read_text().splitlines()) if manifest.exists() else 0
    assert done_at_kill < 128, "the kill did not land mid-run"
    stdout, stderr = job.communicate(timeout=600)
    assert job.returncode == 0 and stdout.strip(), stderr[-3000:]
    summary = json.loads(stdout)
    assert summary["images"] == summary["processed"] == 128 and summary["failed"] == []
    assert "1 actor(s) died" in summary["plan"]
    out = Path(summary["out_dir"])
    assert _labels(out) == local_labels
    keys = [json.loads(line)["key"] for line in manifest.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 128  # each image exactly once
    assert victim not in _actor_pids()
    again = subprocess.run(_yolokit_ray(coco128, yolov5n_pt, address, tmp_path, "--resume"), env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["processed"] == 128
    assert _labels(out) == local_labels


def test_ray_engine_checks_options_and_model_before_starting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cv2
    import numpy as np

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")  # nothing listens: trying to reach a cluster would fail

    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((64, 64, 3), np.uint8))
    images = str(tmp_path / "a.jpg")
    with pytest.raises(InputError, match="--tile"):
        run(RunOptions.of(source=images, engine="ray", tile=640, project=str(tmp_path)))
    with pytest.raises(InputError, match="--save-crop"):
        run(RunOptions.of(source=images, engine="ray", save_crop=True, project=str(tmp_path)))
    with pytest.raises(InputError, match="live streams run with the local engine"):
        run(RunOptions.of(source="rtsp://127.0.0.1:9/cam", engine="ray", project=str(tmp_path)))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(ModelFileError, match="bad.onnx"):  # found on the driver, before any cluster starts
        run(RunOptions.of(source=images, weights=str(bad), engine="ray", project=str(tmp_path)))
    with pytest.raises(InputError, match="--mode process applies to the local engine only"):  # it was ignored
        run(RunOptions.of(source=images, engine="ray", mode="process", project=str(tmp_path)))
    # an address nothing answers at: one line at once (ray.init tried it for ever, logging every few seconds)
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailableError, match=r"cannot reach Ray at 127\.0\.0\.1:9 .*nothing answers"):
        run(RunOptions.of(source=images, engine="ray", address="127.0.0.1:9", project=str(tmp_path)))
    assert time.monotonic() - t0 < 60
    # an address that answers, but not as Ray (the dashboard's port given for the cluster's): ray.init waited for ever
    port = free_port()
    web = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(0.1)
        with pytest.raises(BackendUnavailableError, match="answers, but not as a Ray cluster does"):
            run(RunOptions.of(source=images, engine="ray", address=f"127.0.0.1:{port}", project=str(tmp_path)))
    finally:
        web.kill()
        web.wait()


def test_videos_are_reported_not_dropped_by_the_ray_engine(tmp_path: Path) -> None:
    import cv2
    import numpy as np

    video = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"MJPG"), 5, (64, 48))
    for _ in range(3):
        w.write(np.zeros((48, 64, 3), np.uint8))
    w.release()
    s = run(RunOptions.of(source=str(video), weights="yolov5n.yaml", engine="ray", project=str(tmp_path), nosave=True))
    assert s.images == 1 and s.processed == 0
    assert s.failed == [{"path": str(video), "reason": f"{VIDEO_REASON}; {RETRY_NOTE}"}]


def test_odd_files_are_processed_or_refused_by_the_actors(cluster: tuple[str, dict[str, str]],
                                                          tmp_path: Path) -> None:
    """The hostile corpus (named pipes, devices, trailers, truncation, damaged chunks, pixel bombs) through Ray
    actors: every good image processed, every bad input listed with its plain reason, promptly, exit code 1."""
    address, env = cluster
    src = tmp_path / "src"
    expect = hostile.build(src)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "toolkit.cli", "run", str(src), "--weights", "yolov5n.yaml",
                           "--imgsz", "128", "--engine", "ray", "--address", address, "--workers", "2",
                           "--project", str(tmp_path), "--name", "r", "--json"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert time.monotonic() - t0 < 300
    assert proc.returncode == 1, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    failed = {Path(f["path"]).name: f["reason"] for f in summary["failed"]}
    assert set(failed) == {k for k, v in expect.items() if v is not None}
    for name, fragment in expect.items():
        if fragment is not None:
            assert fragment in failed[name] or (name.endswith(".mp4") and failed[name].startswith(VIDEO_REASON)), \
                failed[name]
    assert summary["processed"] == sum(v is None for v in expect.values())
    for reason in failed.values():
        assert "\n" not in reason and not [x for x in hostile.LEAKS if re.search(x, reason)], reason


def test_ray_resume_retries_lost_inputs_and_follows_a_changed_input_set(cluster: tuple[str, dict[str, str]],
                                                                        coco128_images: Path, yolov5n_pt: Path,
                                                                        tmp_path: Path) -> None:
    """Issue 25 with --engine ray: on a 3-node cluster with a node killed, 44 inputs were lost ("Run again with
    --resume to retry it") and --resume said "nothing to run". One machine cannot lose a node, so two inputs are
    recorded as a lost node leaves them (failed with the Ray engine's reason, no outputs); the input set changes
    too. --resume retries the lost inputs, redoes the changed one, removes the vanished one's outputs, and the folder
    ends as the local engine leaves it over the new inputs."""
    address, env = cluster
    images = sorted(coco128_images.glob("*.jpg"))
    src = tmp_path / "src"
    src.mkdir()
    for f in images[:8]:
        shutil.copy(f, src / f.name)
    cmd = [sys.executable, "-m", "toolkit.cli", "run", str(src), "--weights", str(yolov5n_pt), "--save-txt",
           "--save-csv", "--nosave", "--engine", "ray", "--address", address, "--workers", "2", "--project",
           str(tmp_path), "--name", "ray", "--json"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    out = tmp_path / "ray"
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    lost = {r["key"] for r in lines[2:4]}
    for r in lines:
        if r["key"] in lost:
            for name in r.get("files") or ():
                (out / name).unlink()
            for k in ("n", "classes", "files"):
                r.pop(k, None)
            r.update(ok=False, reason=f"{LOST_REASON}; {RETRY_NOTE}", retry=True)
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    preds = [x for x in (out / "predictions.jsonl").read_text().splitlines() if json.loads(x)["key"] not in lost]
    (out / "predictions.jsonl").write_text("".join(x + "\n" for x in preds))
    (src / images[0].name).unlink()  # gone
    shutil.copy(images[9], src / images[1].name)  # another photo under the same name
    os.utime(src / images[1].name, ns=(time.time_ns(), time.time_ns() + 2_000_000_000))
    shutil.copy(images[8], src / images[8].name)  # new
    # a changed setting is refused before the cluster is used
    refused = subprocess.run([*cmd, "--resume", "--conf", "0.5"], env=env, capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 2 and "--conf 0.25 -> 0.5" in refused.stderr, refused.stderr[-2000:]
    again = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads(again.stdout)
    assert summary["images"] == summary["processed"] == 8 and summary["failed"] == []
    assert summary["resume"]["removed"] == [str(src / images[0].name)]
    assert summary["resume"]["changed"] == [str(src / images[1].name)]
    assert sorted(summary["resume"]["retried"]) == sorted(str(src / f"{k}.jpg") for k in lost)
    local = run(RunOptions.of(source=str(src), weights=str(yolov5n_pt), save_txt=True, save_csv=True, nosave=True,
                           project=str(tmp_path), name="local"))
    assert _labels(out) == _labels(Path(local.out_dir))
    rows = sorted((out / "predictions.csv").read_text().splitlines())
    assert rows == sorted((Path(local.out_dir) / "predictions.csv").read_text().splitlines())
    keys = [json.loads(x)["key"] for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 8


def test_ray_runs_check_the_settings_and_the_lock_before_starting(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A resume with another output setting, or into a folder another run holds, is refused before any cluster is
    reached (nothing listens at RAY_ADDRESS here)."""
    import cv2
    import numpy as np

    from toolkit.jobs.lock import FolderLock

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    (tmp_path / "src").mkdir()
    cv2.imwrite(str(tmp_path / "src" / "a.jpg"), np.zeros((64, 64, 3), np.uint8))
    opts: dict[str, Any] = dict(source=str(tmp_path / "src"), weights="yolov5n.yaml", imgsz=64, nosave=True,
                                project=str(tmp_path), name="r")
    assert run(RunOptions.of(**opts)).processed == 1  # a local run: the engine is no output setting
    with pytest.raises(InputError, match="--classes unset -> 0"):
        run(RunOptions.of(**opts, engine="ray", resume=True, classes=(0,)))
    with FolderLock(tmp_path / "r"), pytest.raises(InputError, match=rf"another yolokit run \(process {os.getpid()}"):
        run(RunOptions.of(**opts, engine="ray", resume=True))
