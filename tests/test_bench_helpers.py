"""What the benchmark scripts share (toolkit.jobs.bench): the generated JPEG sets, interleaved timing and the seed
loop they are compared against."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from toolkit import Detector
from toolkit.errors import InputError, YolokitError
from toolkit.jobs.bench.inputs import list_file, photo_set
from toolkit.jobs.bench.seed import seed_command
from toolkit.jobs.bench.timing import interleaved, medians, raw_rate, run_timed


def _photos(folder: Path, n: int) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        img = cv2.GaussianBlur(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8), (9, 9), 0)
        img[:, :20] = 255  # a white left edge: mirrored images have it on the right
        cv2.imwrite(str(folder / f"p{i}.jpg"), img)
    return folder


def test_photo_set_is_made_once_mirrored_on_the_second_pass_and_trimmed(tmp_path: Path) -> None:
    photos = _photos(tmp_path / "photos", 3)
    out = tmp_path / "set"
    made = photo_set(photos, out, 5, size=(64, 36))
    assert [p.name for p in made] == [f"{i:05d}.jpg" for i in range(5)]
    imgs = [cv2.imread(str(p)) for p in made]
    assert all(im is not None and im.shape == (36, 64, 3) for im in imgs)
    left = [float(im[:, :8].mean()) for im in imgs]
    right = [float(im[:, -8:].mean()) for im in imgs]
    assert all(left[i] > 240 > right[i] for i in range(3))  # the first pass as the photos are
    assert all(right[i] > 240 > left[i] for i in (3, 4))  # the second pass mirrored
    assert np.abs(imgs[3].astype(int) - imgs[0][:, ::-1]).mean() < 4  # photo 0 again, mirrored
    stamps = [p.stat().st_mtime_ns for p in made]
    assert [p.stat().st_mtime_ns for p in photo_set(photos, out, 5, size=(64, 36))] == stamps  # reused
    two = photo_set(photos, out, 2, size=(64, 36))
    assert sorted(p.name for p in out.glob("*.jpg")) == [p.name for p in two]  # the surplus is removed
    bigger = photo_set(photos, out, 2, size=(96, 54))  # another recipe: made again
    assert cv2.imread(str(bigger[0])).shape == (54, 96, 3)
    lst = list_file(bigger, tmp_path / "lists" / "two.txt")
    assert lst.read_text().splitlines() == [str(p.resolve()) for p in bigger]


def test_photo_set_past_twice_the_photos_stays_distinct(tmp_path: Path) -> None:
    """From the third pass on, each pass crops the photo a little more, so a set of many passes over few photos
    holds no two equal images (a server benchmark must not be able to cache an answer)."""
    photos = _photos(tmp_path / "photos", 2)
    made = photo_set(photos, tmp_path / "set", 10, size=(64, 36))
    imgs = [cv2.imread(str(p)).astype(int) for p in made]
    closest = min(np.abs(imgs[i] - imgs[j]).mean() for i in range(10) for j in range(i))
    assert closest > 1.0 and len({p.read_bytes() for p in made}) == 10
    right = [float(im[:, -8:].mean()) for im in imgs]
    assert right[6] > 240 and right[4] < 240  # pass 3 (images 6, 7) mirrored, pass 2 (4, 5) not


def test_photo_set_without_photos_names_the_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: no .jpg photos"):
        photo_set(tmp_path / "empty", tmp_path / "set", 2)


def test_configurations_are_interleaved_and_their_medians_taken() -> None:
    calls: list[str] = []

    def run(name: str, value: float) -> dict[str, float]:
        calls.append(name)
        return {"s": value + len(calls), "n": 1.0}

    got = interleaved({"a": lambda: run("a", 0), "b": lambda: run("b", 100)}, 3)
    assert calls == ["a", "b"] * 3  # A B A B A B, never A A A B B B
    assert [r["s"] for r in got["a"]] == [1, 3, 5] and [r["s"] for r in got["b"]] == [102, 104, 106]
    assert medians(got["a"]) == {"s": 3.0, "n": 1.0} and medians([]) == {}


def test_run_timed_returns_the_output_and_raises_on_failure_or_timeout() -> None:
    wall, out = run_timed([sys.executable, "-c", "print('done')"])
    assert out == "done\n" and wall > 0
    with pytest.raises(YolokitError, match="failed: .*boom"):
        run_timed([sys.executable, "-c", "import sys; sys.exit('boom')"])
    with pytest.raises(YolokitError, match="did not finish in 0.5 s"):
        run_timed([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)


def test_raw_rate_takes_the_batches_in_turn_and_counts_images() -> None:
    sizes: list[int] = []
    batches = [np.zeros((n, 3, 8, 8), np.uint8) for n in (1, 2, 4)]
    rate = raw_rate(lambda b: sizes.append(len(b)), batches, seconds=0.0, warmup=1, min_calls=6)
    assert sizes == [1, 1, 2, 4, 1, 2, 4] and rate > 0  # one warm-up call, then every batch twice


def test_the_seed_loop_finds_what_yolokit_finds(yolov5n_pt: Path, coco128_images: Path, tmp_path: Path) -> None:
    """The baseline does the same work: on the same images, the seed loop (in its own process, as the scripts time
    it) reports as many boxes as yolokit's detector at its defaults."""
    paths = sorted(coco128_images.glob("*.jpg"))[:3]
    lst = list_file(paths, tmp_path / "three.txt")
    proc = subprocess.run(seed_command(yolov5n_pt, lst), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    run = json.loads(proc.stdout.strip().splitlines()[-1])
    assert run["images"] == 3 and run["run_s"] > 0 and set(run["ms_per_image"]) == {"read", "pre", "infer", "post"}
    assert run["gpu_memory"] is None  # measured on a CUDA device only (scripts/gpu_check.py reports it there)
    with Detector(yolov5n_pt, backend="torch") as det:
        want = sum(len(r.detections) for r in det.predict_iter([str(p) for p in paths]) if r.detections is not None)
    assert run["detections"] == want > 0


# ----------------------------------------------------------------------------------------------- serving
def test_serving_summary_counts_answers_until_the_last_one() -> None:
    """Throughput counts the answers 200 over the phase or until the last answer, whichever is longer (an open loop
    past capacity is still answering after its last request went out); latencies are of the answers 200 only."""
    from toolkit.jobs.bench.serving import Sample, summary

    samples = [Sample(0.1 * i, 0.05, 200) for i in range(10)] + [Sample(0.5, 0.01, 503), Sample(0.6, 3.4, 200),
                                                                  Sample(0.7, 0.2, 500), Sample(0.8, 0.3, 0)]
    s = summary(samples, 2.0)
    assert s["elapsed_s"] == 4.0 and s["throughput"] == 11 / 4.0 and s["requests"] == 14
    assert s["p50_ms"] == 50.0 and s["p99_ms"] > 3000 and s["p99_503_ms"] == 10.0
    assert (s["share_503"], s["share_errors"], s["connection_errors"]) == (round(1 / 14, 4), round(1 / 14, 4), 1)
    quick = summary([Sample(0.0, 0.1, 200)], 2.0)
    assert quick["elapsed_s"] == 2.0 and quick["throughput"] == 0.5 and quick["p99_503_ms"] is None


@pytest.mark.timeout(300)
def test_the_per_request_server_under_both_loads_answers_as_the_detector(tmp_path: Path, yolov5n_pt: Path,
                                                                         coco128_images: Path) -> None:
    """The per-request baseline, started as the benchmarks start it (its own process on 127.0.0.1), answers a
    closed and an open loop with nothing but 200s, gives the Detector's own boxes, refuses bytes that are no image
    with 400, and its process tree's CPU time and memory are seen; SIGTERM stops it."""
    import httpx

    from toolkit.jobs.bench import serving as sv

    photos = sorted(coco128_images.glob("*.jpg"))[:4]
    port = sv.free_port()
    server = sv.start_server(sv.server_command(sv.PER_REQUEST, str(yolov5n_pt), port, "--imgsz", "320"),
                             f"http://127.0.0.1:{port}", "/health", tmp_path / "server.log")
    try:
        url = server.url + "/detect"
        bodies = [sv.raw_body(p.read_bytes()) for p in photos]
        with sv.ProcessWatch(server.proc.pid) as watch:
            closed = sv.summary(sv.closed_loop(url, bodies, 3, 2.0), 2.0)
        assert closed["requests"] >= 3 and closed["throughput"] > 0 and closed["share_errors"] == 0
        assert closed["share_503"] == 0 and closed["connection_errors"] == 0
        report = watch.report()
        assert report["server_cpu_cores"] > 0 and report["server_rss_mib_max"] >= report["server_rss_mib_start"] > 50
        opened = sv.open_loop(url, bodies, 5.0, 1.0)
        assert len(opened) == 5 and {s.status for s in opened} == {200}
        got = httpx.post(url, content=photos[0].read_bytes(), timeout=60).json()
        det = Detector(str(yolov5n_pt), imgsz=320).predict(cv2.imread(str(photos[0])))[0]
        assert got == det.to_detect_json() and got["detections"]
        assert httpx.post(url, content=b"no image", timeout=60).status_code == 400
    finally:
        assert server.stop() in (0, -15)


def test_the_torchvision_stand_in_for_detect_py_keeps_the_boxes_yolokits_nms_keeps(tmp_path: Path) -> None:
    """scripts/ceiling.py --torchvision-stand-in times YOLOv5's detect.py with this package in torchvision's place:
    its NMS must keep what torchvision's keeps, which yolokit's own NMS reproduces (the parity tests against the
    official outputs), ties in score included; and YOLOv5's imports of it must work."""
    import importlib.util

    import torch

    from toolkit.jobs.bench.detectpy import write_torchvision_stand_in
    from toolkit.ops import nms

    root = write_torchvision_stand_in(tmp_path / "stand_in")
    spec = importlib.util.spec_from_file_location("stand_in_ops", root / "torchvision" / "ops.py")
    assert spec is not None and spec.loader is not None
    ops = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ops)
    rng = np.random.default_rng(0)
    for trial in range(40):
        n = int(rng.integers(0, 250))
        xy = rng.uniform(0, 400, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(1, 150, (n, 2))], 1).astype(np.float32)
        scores = (rng.choice([0.3, 0.5, 0.9], n) if trial % 2 else rng.uniform(0, 1, n)).astype(np.float32)
        for thres in (0.45, 0.6):
            got = ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), thres)
            assert got.tolist() == nms(boxes, scores, thres).tolist(), (trial, thres)
    probe = ("import torchvision, torchvision.transforms as T, torchvision.transforms.functional as TF\n"
             "class Dataset(torchvision.datasets.ImageFolder): pass\n"
             "print(torchvision.ops.nms.__module__)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and out.stdout.strip() == "torchvision.ops", out.stderr


def test_the_ceilings_model_hears_the_runs_image_count_as_a_run_tells_it() -> None:
    """model_cost tells the runner how many inferences a run over ``images`` has (BaseRunner.expect), so that the
    ceiling times the model as such a run gets it (OpenVINO: a shape's own model for 1,000 photos, not for 100)."""
    from toolkit.jobs.bench.ceiling import model_cost

    det = Detector("yolov5n.yaml", imgsz=64)
    told: list[int | None] = []
    det.routine.runner.expect = told.append
    batch = np.zeros((2, 3, 64, 64), np.float32)
    assert model_cost(det.routine, batch, 1, 0.05, images=101) > 0
    assert model_cost(det.routine, batch, 1, 0.05) > 0
    assert told == [51]  # 101 images in batches of 2; nothing told without a count
