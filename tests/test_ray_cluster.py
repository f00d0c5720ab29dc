"""``--engine ray`` across several nodes that share nothing but object storage: a real 3-node Ray cluster on this
machine (``ray.cluster_utils.Cluster``: a head and two worker raylets, 1 CPU each, all on 127.0.0.1, each node with
its own weights cache) and a real S3-compatible server on loopback (moto). The inputs, the weights and the run
folder are in the store; the actors read and write it, the driver keeps the manifest there. One worker node (its
raylet and every process on it) is SIGKILLed mid-run: nothing is lost, nothing is done twice."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import s3
from toolkit.jobs.bench.serving import process_tree

pytest.importorskip("ray", reason="the ray extra is not installed: pip install 'yolokit[ray]'")

from ray.cluster_utils import Cluster  # noqa: E402

WEIGHTS = "s3://models/yolov5n.pt"


@pytest.fixture(scope="module")
def cluster(s3_store: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three raylets on 127.0.0.1 with 1 CPU each; every node caches downloaded weights in its own folder. Started
    after the S3 server, so their processes reach it through the same AWS_* settings. Ray resolves 127.0.0.1 to the
    machine's own address unless it is told that it runs no cluster across machines
    (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which only changes that): so every daemon, and the driver the tests start,
    stays on loopback."""
    caches = tmp_path_factory.mktemp("node_caches")
    common: dict[str, Any] = {"num_cpus": 1, "node_ip_address": "127.0.0.1"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        c = Cluster(initialize_head=True, head_node_args={**common, "include_dashboard": False,
                                                          "env_vars": {"YOLOKIT_CACHE_DIR": str(caches / "head")}})
        try:
            for name in ("worker1", "worker2"):
                c.add_node(**common, env_vars={"YOLOKIT_CACHE_DIR": str(caches / name)})
            c.wait_for_nodes()
            yield c
        finally:
            c.shutdown()


def _labels(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted((folder / "labels").rglob("*.txt"))}


def _store_labels(fs: Any, prefix: str) -> dict[str, bytes]:
    return {k: v for k, v in s3.objects(fs, prefix).items() if k.startswith("labels/")}


def _cmd(source: str, address: str, project: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "toolkit.cli", "run", source, "--weights", WEIGHTS, "--save-txt", "--save-csv",
            "--nosave", "--engine", "ray", "--address", address, "--workers", "3", "--project", project, "--name",
            "exp", "--json", *extra]


def _check_folder(fs: Any, prefix: str, want: dict[str, bytes], n: int, detections: int) -> None:
    """The run folder in the store holds the local run's labels, byte for byte, each input once."""
    fs.invalidate_cache()
    assert _store_labels(fs, prefix) == want
    keys = [json.loads(x)["key"] for x in fs.cat_file(f"{prefix}/manifest.jsonl").decode().splitlines()]
    assert len(keys) == len(set(keys)) == n
    rows = list(csv.reader(io.StringIO(fs.cat_file(f"{prefix}/predictions.csv").decode())))[1:]
    assert len(rows) == len({tuple(r) for r in rows}) == detections


@pytest.mark.timeout(600)
def test_coco128_from_a_bucket_on_three_nodes_equals_a_local_disk_run(cluster: Cluster, s3_store: dict[str, str],
                                                                      coco128_local_run: Path) -> None:
    proc = subprocess.run(_cmd("s3://data/coco128/", cluster.address, "s3://runs/ray3"),
                          env={**os.environ, **s3_store}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["processed"] == 128 and summary["failed"] == []
    assert summary["plan"].startswith("ray: 3 actors x 1 CPU")
    local = _labels(coco128_local_run)
    _check_folder(s3.filesystem(), "runs/ray3/exp", local, 128, summary["detections"])
    assert summary["detections"] == sum(len(v.splitlines()) for v in local.values())


def _actors_on(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"InferActor" in cmd:
            out.append(pid)
    return out


@pytest.mark.timeout(600)
def test_a_worker_node_killed_mid_run_loses_nothing(cluster: Cluster, s3_store: dict[str, str],
                                                    coco128_local_run: Path) -> None:
    """80 images on 3 nodes; one worker node's raylet and every process on it SIGKILLed once a quarter of the
    labels exist. The batches it held are retried on the surviving actors within the run: every input is processed
    exactly once, or the run exits non-zero listing what is unprocessed and one --resume completes it. Labels equal
    the local run's; no manifest line, label or CSV row twice."""
    fs = s3.filesystem()
    keys = sorted(fs.find("data/coco128"))[:80]
    fs.pipe({k.replace("data/coco128/", "data/eighty/"): fs.cat_file(k) for k in keys})
    names = {k.rsplit("/", 1)[1][:-4] for k in keys}
    want = {k: v for k, v in _labels(coco128_local_run).items() if k[len("labels/"):-4] in names}
    cmd = _cmd("s3://data/eighty/", cluster.address, "s3://runs/nodekill", "--batch", "2")
    env = {**os.environ, **s3_store}
    t0 = time.monotonic()
    job = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = next(iter(cluster.worker_nodes))
    raylet = victim.all_processes["raylet"][0].process.pid
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and job.poll() is None:
        fs.invalidate_cache()
        done = len(fs.find("runs/nodekill/exp/labels"))
        if done >= 20 and _actors_on(process_tree(raylet)):
            break
        time.sleep(0.2)
    assert job.poll() is None, "the run ended before the node could be killed"
    node = process_tree(raylet)
    assert _actors_on(node), "no inference actor on the node to kill"
    for pid in node:  # the raylet and every process on its node, at once
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    killed_at = done
    stdout, stderr = job.communicate(timeout=600)
    assert stdout.strip(), stderr[-3000:]
    summary = json.loads(stdout)
    assert 20 <= killed_at < 80, "the kill did not land mid-run"
    assert summary["images"] == 80 and summary["processed"] + len(summary["failed"]) == 80
    assert job.returncode == (1 if summary["failed"] else 0), stderr[-3000:]
    print(f"node kill: {killed_at} labels at the kill, {summary['processed']} processed in the run, "
          f"{len(summary['failed'])} listed unprocessed; plan: {summary['plan']}; {time.monotonic() - t0:.0f} s")
    if summary["failed"]:  # listed, with the reason, and one --resume completes the run
        again = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        summary = json.loads(again.stdout)
        assert summary["processed"] == 80 and summary["failed"] == []
    else:
        assert "died" in summary["plan"]  # the kill cost the actor on that node; its batches ran elsewhere
    _check_folder(fs, "runs/nodekill/exp", want, 80, summary["detections"])
