"""Concurrency: every mode gives the sequential detections, in order; failures are contained."""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers.ports import ctrl_c_reaches
from toolkit import Detector
from toolkit.devices import GPU_BATCH
from toolkit.engine.plan import make_plan
from toolkit.engine.processes import ProcessPool, TaskSpec
from toolkit.io.sources import list_sources


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """14 images of mixed sizes (two letterbox shapes), one broken, one large enough for reduced decode."""
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i in range(12):
        h, w = (120, 200) if i % 3 else (200, 120)
        img = cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (5, 5), 0)
        cv2.imwrite(str(d / f"{i:02d}.jpg"), img)
    cv2.imwrite(str(d / "12_big.jpg"), cv2.resize(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8), (1280, 960)))
    (d / "13_broken.jpg").write_bytes(b"\xff\xd8garbage\xff\xd9")
    return d


def _det() -> Detector:
    return Detector("yolov5n.yaml", imgsz=128, conf=1e-6, max_det=50)


def _key(results: list) -> list:  # type: ignore[type-arg]
    out = []
    for r in results:
        if r.ok:
            out.append((r.ref.path, r.detections.class_id.tolist(), np.round(r.detections.xyxy, 2).tolist()))
        else:
            out.append((r.ref.path, r.error))
    return out


@pytest.mark.parametrize(("mode", "workers", "batch", "parent_works"), [
    ("thread", 2, 1, True), ("thread", 2, 3, True), ("process", 2, 1, True), ("process", 2, 3, False),
    ("auto", 0, 0, True)])
def test_modes_equal_sequential_and_keep_order(images: Path, mode: str, workers: int, batch: int,
                                               parent_works: bool) -> None:
    det = _det()
    seq = list(det.predict_iter(images, mode="thread", workers=1, batch=1))
    assert [Path(r.ref.path).name for r in seq] == sorted(p.name for p in images.iterdir())
    assert sum(len(r.detections) for r in seq if r.ok) > 0
    assert [Path(r.ref.path).name for r in seq if not r.ok] == ["13_broken.jpg"]
    # parent_works=False: the worker processes run every task (else the parent may finish these few itself)
    plan = replace(make_plan(det, 14, mode=mode, workers=workers, batch=batch), parent_works=parent_works)
    got = list(det.predict_iter(images, plan=plan))
    assert _key(got) == _key(seq)


@pytest.fixture(scope="module")
def three_shapes(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """30 images whose letterboxed shapes (at 128) cycle through three, in input order."""
    d = tmp_path_factory.mktemp("shapes")
    sizes = [(120, 200), (200, 120), (60, 240)]
    rng = np.random.default_rng(1)
    paths = []
    for i in range(30):
        h, w = sizes[i % 3]
        cv2.imwrite(str(d / f"{i:02d}.jpg"), cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8),
                                                              (5, 5), 0))
        paths.append(str(d / f"{i:02d}.jpg"))
    return paths


def _scheduler(det: Detector, paths: list[str], workers: int, affinity: bool = True) -> ProcessPool:
    """A process pool over ``paths`` for driving its scheduling by hand (next_items, done): no process starts."""
    plan = replace(make_plan(det, len(paths), mode="process", workers=workers, batch=1), shape_affinity=affinity)
    return ProcessPool(det.routine, lambda c: det.routine, list_sources(paths).items, plan,
                       TaskSpec(batch=1, fast_decode=False))


def test_process_mode_gives_each_worker_the_shapes_it_has_met(three_shapes: list[str]) -> None:
    """With shape affinity (a runtime whose first inference at a new shape is costly), each worker is handed the
    inputs of shapes it has met; every input is handed out once, and none waits more than a bounded number of tasks
    behind its turn. The scheduling alone: no process is started."""
    det = _det()
    true_shape = {p: tuple(det.routine.preprocess(cv2.imread(p))[0].shape[1:]) for p in three_shapes}
    assert len(set(true_shape.values())) == 3
    for affinity in (False, True):
        pool = _scheduler(det, three_shapes, 2, affinity)
        handed: list[int] = []
        pairs: set[tuple[int, tuple[int, ...]]] = set()  # (worker, shape) met
        turn = 0
        while (task := pool.next_items(turn % 2)) is not None:  # the two workers ask in turn
            for index, ref, _ in task[1]:
                handed.append(index)
                pairs.add((turn % 2, true_shape[ref.path]))
            turn += 1
        assert sorted(handed) == list(range(30))
        if affinity:
            assert len(pairs) <= 4, sorted(pairs)  # 3 shapes over 2 workers: each set up about once
            # no input waits more than 2 tasks per worker (of 2 inputs each) behind its turn
            assert max(pos - index for pos, index in enumerate(handed)) <= (2 * 2 + 1) * 2
            assert all(pool._shape((i, ref, None)) == true_shape[ref.path]  # the header's hint is right
                       for i, ref in enumerate(list_sources(three_shapes).items))
        else:
            assert handed == list(range(30)) and len(pairs) == 6  # input order: every worker meets every shape


def test_each_process_hears_its_share_of_the_inputs(three_shapes: list[str], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner's hint (BaseRunner.expect; OpenVINO compiles a shape only where the work ahead pays for it) in
    process mode: each process, the parent and the workers, hears its share of the run's inputs (30 over 2: 15), as
    a thread-mode run's one model hears them all. A worker hears it as soon as it has loaded the model."""
    from tests.helpers.recording import recording_load

    log = tmp_path / "expect.log"
    monkeypatch.setenv("YOLOKIT_TEST_EXPECT_LOG", str(log))
    det = Detector("yolov5n.yaml", imgsz=128)
    det.routine = recording_load(det.config)
    # the workers do every task (the parent only hands them out), so at least one worker has loaded and heard
    plan = replace(make_plan(det, len(three_shapes), mode="process", workers=2, batch=1), parent_works=False)
    assert plan.mode == "process" and plan.workers == 2
    spec = TaskSpec(batch=1, fast_decode=False, each=-(-len(three_shapes) // plan.workers))
    results = list(ProcessPool(det.routine, recording_load, list_sources(three_shapes).items, plan, spec).results())
    assert len(results) == 30 and all(r.ok for r in results)
    told = [line.split() for line in log.read_text().splitlines()]
    assert {n for _, n in told} == {"15"}, told
    pids = {pid for pid, _ in told}
    assert str(os.getpid()) in pids and len(pids) >= 2, told  # the parent and a worker process


def test_the_shape_hint_turns_with_a_photos_exif_orientation(tmp_path: Path) -> None:
    """A phone photo stored 120x200 with EXIF orientation 6 decodes as 200x120 (OpenCV applies it, as detect.py
    reads it); the process pool's shape hint, read from the header before decoding, says the decoded shape."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6
    rng = np.random.default_rng(2)
    path = tmp_path / "phone.jpg"
    Image.fromarray(rng.integers(0, 255, (120, 200, 3), np.uint8)).save(path, "JPEG", exif=exif.tobytes())
    det = _det()
    pool = _scheduler(det, [str(path)], 2)
    item = (0, list_sources([str(path)]).items[0], None)
    decoded = cv2.imread(str(path))
    assert decoded.shape[:2] == (200, 120)
    assert pool._shape(item) == tuple(det.routine.preprocess(decoded)[0].shape[1:])


def test_a_full_reorder_buffer_still_sends_the_input_it_waits_for(three_shapes: list[str]) -> None:
    """Shape affinity lets inputs go ahead of older ones, whose results the run then holds (a bounded reorder
    buffer). Once that buffer is full, the input every held result waits for must still go out, or the run would
    wait for ever. The scheduling alone, with a buffer of 6 results and tasks that finish at once."""
    pool = _scheduler(_det(), three_shapes, 2)
    pool.held = 6
    out: list[int] = []
    most = 0
    for step in range(200):
        if (task := pool.next_items(step % 2)) is not None:
            for index, _, _ in task[1]:
                pool.done[index] = index  # type: ignore[assignment]
        most = max(most, len(pool.done))
        out.extend(pool.released())  # type: ignore[arg-type]  # input indexes stand for results
    assert out == list(range(30))
    assert most <= pool.held + pool.chunk  # a task goes out only while the buffer has room, or to unblock it


@pytest.mark.parametrize("seed", range(6))
def test_a_full_reorder_buffer_unblocks_with_late_inputs_and_retries(three_shapes: list[str], seed: int) -> None:
    """The input every held result waits for need not head the window: a remote image comes late from its download
    (the source yields it out of order), and a dead worker's inputs wait as retries. With the buffer full, that input
    must still go out wherever it waits. Four simulated workers finish their tasks in a random order; one dies once
    while the buffer is full; every input comes out, in order."""
    import random

    rng = random.Random(seed)
    pool = _scheduler(_det(), three_shapes, 4)
    items = list(pool.source)
    for i in (0, 9, 17):  # three inputs come five places late
        items.insert(i + 5, items.pop(i))
    pool.source = iter(items)
    pool.held = 6
    inflight: dict[int, list[list]] = {w: [] for w in range(4)}  # type: ignore[type-arg]
    out: list[int] = []
    died = False
    for _ in range(2000):
        for w in range(4):
            while len(inflight[w]) < 2 and (task := pool.next_items(w)) is not None:
                inflight[w].append(task[1])
        busy = [w for w in range(4) if inflight[w]]
        if not busy:
            break
        w = rng.choice(busy)
        if not died and pool._full():  # worker w dies: its inputs are retried one by one
            died = True
            pool.retry.extend((1, [entry]) for task in inflight[w] for entry in task)
            inflight[w] = []
            continue
        for index, _, _ in inflight[w].pop(0):
            pool.done[index] = index  # type: ignore[assignment]
        out.extend(pool.released())  # type: ignore[arg-type]  # input indexes stand for results
    assert out == list(range(30)) and not pool._more()


def test_a_result_a_worker_cannot_send_fails_its_task_and_the_worker_goes_on() -> None:
    """A worker's results go out from its sender thread; one that cannot be pickled becomes an error for its task
    (as an error inside the task would), and the next result still goes out."""
    from toolkit.engine.processes import _Sender

    recv_end, send_end = mp.Pipe(duplex=False)
    sender = _Sender(send_end)
    sender.send(("done", 0, 7, [lambda: None]))  # not picklable
    sender.send(("done", 0, 8, []))
    first, second = recv_end.recv(), recv_end.recv()
    assert first[:3] == ("error", 0, 7) and "cannot send the result" in first[3]
    assert second == ("done", 0, 8, []) and not sender.broken


def test_process_mode_with_shape_affinity_gives_the_sequential_results_in_order(images: Path) -> None:
    det = _det()
    seq = list(det.predict_iter(images, mode="thread", workers=1, batch=1))
    plan = replace(make_plan(det, 14, mode="process", workers=2, batch=1), shape_affinity=True, parent_works=False)
    assert _key(list(det.predict_iter(images, plan=plan))) == _key(seq)


def test_process_mode_starts_no_process_for_a_job_done_within_one_task(images: Path) -> None:
    det = _det()
    two = [str(images / "00.jpg"), str(images / "01.jpg")]
    got = []
    for r in det.predict_iter(two, mode="process", workers=2, batch=1):  # a task holds max(batch, 2) inputs
        assert not mp.active_children()
        got.append(r)
    assert _key(got) == _key(list(det.predict_iter(two, mode="thread", workers=1)))


def test_auto_plan_rules() -> None:
    det = _det()
    few = make_plan(det, 5, cores=2)
    assert few.mode == "thread" and few.workers == 1 and few.threads == 2
    many = make_plan(det, 1000, cores=2)  # PyTorch, >= 250 inputs per core
    assert many.mode == "process" and many.workers == 2 and many.threads == 1
    some = make_plan(det, 200, cores=2)
    assert (some.mode, some.workers, some.threads) == ("thread", 2, 1)
    det.routine.config = replace(det.config, backend="onnx")  # ONNX Runtime: threads for few inputs, processes for many
    assert make_plan(det, 100, cores=2).mode == "thread"
    onnx_many = make_plan(det, 128, cores=2)
    assert (onnx_many.mode, onnx_many.workers, onnx_many.threads, onnx_many.batch) == ("process", 2, 1, 1)
    det.routine.config = replace(det.config, backend="openvino")  # OpenVINO: threads whatever the count; batch 1,
    ov = make_plan(det, 100000, cores=2)  # and 4 for an INT8 model (measured: backends/openvino/backend.py);
    # two workers per core, as it infers on threads of its own: one per core decodes while the other's input infers
    assert (ov.mode, ov.workers, ov.threads, ov.batch) == ("thread", 4, 1, 1)
    assert make_plan(det, 100000, cores=2, workers=3).workers == 3  # an explicit count is kept
    # ... but process mode starts no more workers than the images make batches for (64 workers for 3 images
    # started 63 processes; 2 for 18 images in batches of 32 said "1 started" where none was)
    few_images = make_plan(det, 3, mode="process", workers=64, cores=2, whole=True)
    assert few_images.workers == 3 and "give no more work" in few_images.reason
    assert make_plan(det, 18, mode="process", workers=2, batch=32, cores=2, whole=True).workers == 1
    assert make_plan(det, 3, mode="process", workers=64, cores=2).workers == 64  # a video's frames: not known
    from backends.openvino.backend import OpenVinoBackend
    from toolkit.engine.plan import plan_for
    from toolkit.meta import ModelMeta

    int8 = plan_for(ModelMeta(names={}, precision="int8"), OpenVinoBackend.PLANNING, "cpu", None, 100000, cores=2)
    assert (int8.mode, int8.workers, int8.batch) == ("thread", 4, 4)
    # OpenVINO sets kernels up per input shape: its process mode sends each worker the shapes it has met
    ov_processes = plan_for(ModelMeta(names={}), OpenVinoBackend.PLANNING, "cpu", None, 1000, "process", cores=2)
    assert ov_processes.shape_affinity and "shapes it has met" in ov_processes.describe()
    assert not int8.shape_affinity and not onnx_many.shape_affinity and not many.shape_affinity
    assert make_plan(det, 100000, cores=2, batch=2).batch == 2  # an explicit batch is kept
    det.routine.config = replace(det.config, backend="torch")
    assert make_plan(det, 1000, cores=8, mode="process", workers=2).threads == 4  # workers x threads <= cores
    assert make_plan(det, 1000, cores=1).mode == "thread"
    # on a CPU, decode threads only get the cores that inference leaves free
    assert few.readers == 0
    assert make_plan(det, 1000, cores=8, mode="thread", workers=2).readers == 0
    det.routine.config = replace(det.config, threads=2)  # an explicit intra-op budget: 8 - 2 x 2 cores to decoding
    assert make_plan(det, 1000, cores=8, mode="thread", workers=2).readers == 4
    det.routine.config = replace(det.config, threads=None, device="cuda")  # the CUDA rule (planning only)
    gpu = make_plan(det, 1000, cores=8)
    assert (gpu.mode, gpu.workers, gpu.batch, gpu.readers, gpu.gpu) == ("thread", 2, GPU_BATCH, 8, True)
    for spelling in ("gpu", "0", "cuda:1"):  # one reading of device strings
        det.routine.config = replace(det.config, device=spelling)
        assert make_plan(det, 1000, cores=8).gpu


def _digest(x: np.ndarray) -> str:
    """One model input (a CHW image of a batch), by content."""
    return f"{x.shape}:{hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest()}"


class _FlakyRunner:
    """Fault injection: the real runner, except that the call on a batch of 3 (or every call, or none) raises. It
    records the inputs of every call, and of every call it failed, by content."""

    def __init__(self, inner: object, fail: str = "batch of 3") -> None:
        self.inner = inner
        self.meta = inner.meta  # type: ignore[attr-defined]
        self.fail = fail
        self.seen: list[str] = []
        self.failed: list[str] = []

    def infer(self, batch: np.ndarray) -> np.ndarray:
        digests = [_digest(x) for x in batch]
        self.seen += digests
        if self.fail == "always" or (self.fail == "batch of 3" and len(batch) == 3):
            self.failed += digests
            raise RuntimeError("simulated runtime failure")
        return self.inner.infer(batch)  # type: ignore[attr-defined]

    def close(self) -> None:
        pass


def _names_by_input(det: Detector, seq: list) -> dict[str, str]:  # type: ignore[type-arg]
    """Which image each model input is: every image read on its own through a recording runner."""
    inner, recorder = det.routine.runner, _FlakyRunner(det.routine.runner, fail="never")
    det.routine.runner = recorder  # type: ignore[assignment]
    names = {}
    for r in seq:
        if r.ok:
            recorder.seen.clear()
            assert all(x.ok for x in det.predict_iter([r.ref.path], mode="thread", workers=1, batch=1))
            assert len(recorder.seen) == 1
            names[recorder.seen[0]] = Path(r.ref.path).name
    det.routine.runner = inner
    return names


def _check_failures_named(results: list, seq: list, failed: set[str]) -> None:  # type: ignore[type-arg]
    """Every input once, in order; exactly the inputs in ``failed`` fail with the simulated runtime failure and the
    broken file with its read error; every other input has the sequential run's detections."""
    name = {id(r): Path(r.ref.path).name for r in [*results, *seq]}
    assert [name[id(r)] for r in results] == [name[id(r)] for r in seq]
    simulated = {name[id(r)] for r in results if "simulated runtime failure" in (r.error or "")}
    assert simulated == failed, f"failed: {sorted(simulated)}, expected: {sorted(failed)}"
    assert {name[id(r)] for r in results if not r.ok} == failed | {"13_broken.jpg"}
    rest = [r for r in results if name[id(r)] not in failed]
    assert _key(rest) == _key([r for r in seq if name[id(r)] not in failed])  # the broken file's error included


def test_a_failing_batch_is_reported_and_the_rest_processed(images: Path) -> None:
    det = _det()
    seq = list(det.predict_iter(images, mode="thread", workers=1, batch=1))
    names = _names_by_input(det, seq)
    flaky = _FlakyRunner(det.routine.runner)
    det.routine.runner = flaky  # type: ignore[assignment]
    results = list(det.predict_iter(images, mode="thread", workers=2, batch=3))
    failed = {names[d] for d in flaky.failed}
    assert failed and len(flaky.failed) % 3 == 0  # some batches of 3 were run, and failed whole
    assert len(failed) < len(names)  # and a smaller batch went through
    _check_failures_named(results, seq, failed)


def test_a_failure_in_the_parents_own_task_is_reported_and_the_run_goes_on(images: Path) -> None:
    det = _det()
    seq = list(det.predict_iter(images, mode="thread", workers=1, batch=1))
    names = _names_by_input(det, seq)
    # only the parent's model fails; the worker processes load their own
    flaky = _FlakyRunner(det.routine.runner, fail="always")
    det.routine.runner = flaky  # type: ignore[assignment]
    results = list(det.predict_iter(images, mode="process", workers=2, batch=3))
    failed = {names[d] for d in flaky.failed}
    assert {Path(r.ref.path).name for r in results[:3]} <= failed  # the parent's first task
    assert len(failed) < len(names)  # the workers ran the rest
    _check_failures_named(results, seq, failed)


def test_killed_worker_process_is_replaced_and_its_images_retried(images: Path) -> None:
    det = _det()
    results = []
    killed = False
    plan = replace(make_plan(det, 14, mode="process", workers=2, batch=1), parent_works=False)
    for r in det.predict_iter(images, plan=plan):  # every result comes from a worker process
        results.append(r)
        if not killed:
            victim = mp.active_children()[0]
            os.kill(victim.pid, signal.SIGKILL)  # type: ignore[arg-type]
            killed = True
    assert killed and len(results) == 14
    assert det.last_deaths == 1  # told in the run's plan, as Ray's actors' deaths are (it said nothing)
    assert [Path(r.ref.path).name for r in results if not r.ok] == ["13_broken.jpg"]  # only the broken file
    assert _key(results) == _key(list(det.predict_iter(images, mode="thread")))
    assert det.last_deaths == 0


def test_reduced_decode_maps_boxes_to_original_pixels(images: Path) -> None:
    det = _det()
    big = images / "12_big.jpg"
    assert det.routine.reduce_factor((960, 1280)) == 8  # 1280 / 8 = 160 is still >= the 128 input
    assert det.routine.reduce_factor((500, 1000)) == 4  # 1000 / 8 = 125 would be < 128
    assert det.routine.reduce_factor((100, 200)) == 1
    fast = next(iter(det.predict_iter([str(big)], fast_decode=True)))
    assert fast.detections is not None and fast.detections.shape == (960, 1280)
    if len(fast.detections):
        assert fast.detections.xyxy[:, 2].max() <= 1280 and fast.detections.xyxy[:, 3].max() <= 960


def _long_process_run(tmp_path: Path) -> subprocess.Popen[str]:
    """`yolokit run` in process mode (2 workers) over 400 images with yolov5s: long enough to interrupt."""
    src = tmp_path / "src"
    src.mkdir()
    img = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    for i in range(400):
        cv2.imwrite(str(src / f"{i:03d}.jpg"), img)
    return subprocess.Popen([sys.executable, "-m", "toolkit.cli", "run", str(src), "--weights", "yolov5s.yaml",
                             "--mode", "process", "--workers", "2", "--nosave", "--save-txt", "--project",
                             str(tmp_path), "--name", "r", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_own_group)


def _own_group() -> None:
    """Ctrl-C's default action (:func:`ctrl_c_reaches`), in a process group of its own (a signal to the group
    reaches the run and its workers, not the test)."""
    ctrl_c_reaches()
    os.setpgrp()


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_stops_a_process_run_within_seconds_with_a_summary(sig: int, code: int, tmp_path: Path) -> None:
    """Ctrl-C, and SIGTERM (timeout, docker stop, Kubernetes: it killed the run with no summary at all; to the
    whole process group, as `timeout` sends it), end the run with its summary, exit 130 and 143."""
    proc = _long_process_run(tmp_path)
    labels = tmp_path / "r" / "failures.jsonl"
    deadline = time.monotonic() + 120
    while not labels.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(4)  # let it get going
    assert proc.poll() is None, proc.communicate()
    t0 = time.monotonic()
    if sig == signal.SIGTERM:
        os.killpg(proc.pid, sig)  # its workers too
    else:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 15
    assert proc.returncode == code, err
    summary = json.loads(out)
    assert summary["interrupted"] is True and summary["images"] < 400 and summary["planned"] == 400
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["interrupted"] is True
    assert not mp.active_children()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find the worker processes")
def test_worker_processes_exit_when_their_parent_is_killed(tmp_path: Path) -> None:
    proc = _long_process_run(tmp_path)
    children: list[int] = []
    deadline = time.monotonic() + 120
    while not children and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        with contextlib.suppress(OSError):
            children = [int(c) for c in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    assert children, "the run started no worker process"
    time.sleep(3)  # the worker has loaded its model and is working
    assert proc.poll() is None
    proc.send_signal(signal.SIGSTOP)  # the worker finishes its tasks and waits, idle, for more (a busy one would
    time.sleep(3)  # die anyway, on a broken pipe, when it sends its next result)
    proc.kill()  # SIGKILL: the parent cannot stop its workers
    proc.wait()
    deadline = time.monotonic() + 15
    while any(_alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(c) for c in children)
    proc.communicate(timeout=10)  # the workers held the output pipes too: they are closed now


def test_ctrl_c_while_the_model_loads_still_ends_with_a_summary(tmp_path: Path, coco128_images: Path) -> None:
    """Ctrl-C before the first result (yolov5x.yaml takes seconds to build) still writes and prints the summary."""
    proc = subprocess.Popen([sys.executable, "-m", "toolkit.cli", "run", str(coco128_images), "--weights",
                             "yolov5x.yaml", "--project", str(tmp_path), "--name", "r", "--json", "--nosave"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_reaches)
    deadline = time.monotonic() + 60
    while not (tmp_path / "r" / "failures.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    summary = json.loads(out)
    assert summary["interrupted"] is True and summary["processed"] == 0
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["interrupted"] is True


def test_partial_batches_run_one_image_at_a_time_on_a_cpu() -> None:
    from toolkit.engine.core import batch_sizes

    assert batch_sizes(11, 4) == [4, 4, 1, 1, 1]  # the model sees batch 4 and batch 1 only
    assert batch_sizes(11, 4, whole=False) == [4, 4, 3]  # a GPU takes the partial batch whole
    assert batch_sizes(3, 1) == [1, 1, 1] and batch_sizes(0, 4) == [] and batch_sizes(8, 4) == [4, 4]


class _Sizes:
    """The real runner, recording the batch size of every call."""

    def __init__(self, inner: object) -> None:
        self.inner, self.meta, self.sizes = inner, inner.meta, []  # type: ignore[attr-defined]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.sizes.append(len(batch))
        return self.inner.infer(batch)  # type: ignore[attr-defined]

    def close(self) -> None:
        pass


def test_a_run_of_mixed_shapes_calls_the_model_at_two_batch_sizes(images: Path) -> None:
    det = _det()
    ref = _key(list(det.predict_iter(images, mode="thread", workers=1, batch=1)))
    for mode, workers in (("thread", 2), ("thread", 1)):
        spy = _Sizes(det.routine.runner)
        det.routine.runner = spy  # type: ignore[assignment]
        got = _key(list(det.predict_iter(images, mode=mode, workers=workers, batch=4)))
        det.routine.runner = spy.inner  # type: ignore[assignment]
        assert set(spy.sizes) <= {1, 4} and 4 in spy.sizes and sum(spy.sizes) == 13, spy.sizes
        assert got == ref  # the grouping changes no answer
    spy = _Sizes(det.routine.runner)
    det.routine.runner = spy  # type: ignore[assignment]
    det.predict([str(p) for p in sorted(images.glob("0*.jpg"))], batch=4)  # 10 images, two shapes
    assert set(spy.sizes) <= {1, 4}, spy.sizes


def test_an_openvino_model_runs_one_stream_per_concurrent_inference(yolov5n_pt: Path, tmp_path: Path) -> None:
    """Requests of one OpenVINO stream run one after another: a model loaded at t intra-op threads gets
    cores // t streams, so that the plan's inference threads run at once."""
    import backends

    if not backends.REGISTRY["openvino"].is_available():
        pytest.skip("OpenVINO not installed")
    from backends.base import ExportOptions
    from backends.openvino.runner import cpu_count
    from toolkit.jobs.export import export

    model = export(yolov5n_pt, "openvino", tmp_path / "m_openvino", ExportOptions(imgsz=(128, 128))).artifact
    with Detector(model, threads=1) as det:
        compiled = det.routine.runner.compiled  # type: ignore[attr-defined]
        assert int(compiled.get_property("NUM_STREAMS")) == cpu_count()
        assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == cpu_count()


FIRST_INFERENCES = """
import sys, threading
import numpy as np
import backends
from backends.base import LoadOptions

runner = backends.REGISTRY["openvino"].load(__import__("pathlib").Path(sys.argv[1]), LoadOptions(threads=1))
start = threading.Barrier(4)
x = np.zeros((1, 3, 128, 128), np.uint8)

def first() -> None:
    start.wait()
    runner.infer(x)

threads = [threading.Thread(target=first) for _ in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
print("done")
"""


def test_concurrent_first_inferences_of_an_openvino_model_do_not_hang(yolov5n_pt: Path, tmp_path: Path) -> None:
    """Four threads making their first inference at once, in fresh processes (the thread plan's workers do just
    that): before the runner read one tensor's data itself (first_tensor_access), OpenVINO's binding deadlocked
    about one process in nine, for good (the run hung with no CPU used). 16 processes: a return of the deadlock
    fails this test with a probability of about 0.85."""
    import backends

    if not backends.REGISTRY["openvino"].is_available():
        pytest.skip("OpenVINO not installed")
    from backends.base import ExportOptions
    from toolkit.jobs.export import export

    model = export(yolov5n_pt, "openvino", tmp_path / "m_openvino", ExportOptions(imgsz=(128, 128))).artifact
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    hung = 0
    for _ in range(8):  # two processes at a time
        procs = [subprocess.Popen([sys.executable, "-c", FIRST_INFERENCES, str(model)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        for proc in procs:
            try:
                out, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                hung += 1
                continue
            assert proc.returncode == 0 and "done" in out, err[-2000:]
    assert hung == 0, f"{hung} of 16 processes hung in their first concurrent inferences"


def test_a_run_gets_the_intra_op_threads_of_its_plan(exported: dict[str, Path], images: Path) -> None:
    """ONNX Runtime and OpenVINO fix their thread count at load: yolokit run loads the model at the plan's count
    (load_threads), and a thread-mode run of a model loaded otherwise gets a copy at the plan's count (two inference
    threads sharing one two-thread session oversubscribe the cores: 4.2-5.0 instead of 3.4 core-s for 100 photos)."""
    if "onnx" not in exported:
        pytest.skip("onnxruntime not installed")
    from toolkit.engine.core import DetectorConfig
    from toolkit.engine.plan import load_threads

    config = DetectorConfig(weights=str(exported["onnx"]))
    assert load_threads(config, 1000, cores=2) == 1  # auto: two workers x one thread
    assert load_threads(config, 1000, "thread", 2, cores=2) == 1
    assert load_threads(config, 4, cores=2) == 2  # few inputs: one worker with both cores
    assert load_threads(replace(config, threads=3), 1000, cores=2) == 3  # asked for: kept
    with Detector(exported["onnx"]) as det:
        assert det.config.threads is None
        results = list(det.predict_iter(images, mode="thread", workers=2, batch=1))
        plan = det.last_plan
        assert plan is not None and len(results) == 14
        copy = det.routine._copies.get(plan.threads)
        assert copy is not None and copy.config.threads == plan.threads and copy.times is det.routine.times
        assert det.times.images >= 13  # the copy's work is counted in the detector's stage times
    with Detector(exported["onnx"], threads=plan.threads) as det:
        list(det.predict_iter(images, mode="thread", workers=2, batch=1))
        assert det.routine._copies == {}  # loaded at the plan's count: no copy
    with Detector(exported["onnx"]) as det:  # one worker on every core: the runtime's own choice serves it
        list(det.predict_iter(images, mode="thread", workers=1, batch=1))
        assert det.last_plan is not None and det.last_plan.workers == 1 and det.routine._copies == {}


def test_openvino_s_two_workers_per_core_give_the_sequential_answers_in_order(exported: dict[str, Path],
                                                                              images: Path) -> None:
    """OpenVINO's thread plan has two workers per core (its streams infer while the calling threads wait): twice as
    many threads as streams share the model, and the results are the sequential ones, in input order."""
    if "openvino" not in exported:
        pytest.skip("OpenVINO not installed")
    with Detector(exported["openvino"], threads=1) as det:
        plan = make_plan(det, 1000, cores=2)
        assert (plan.mode, plan.workers, plan.threads) == ("thread", 4, 1)
        seq = _key(list(det.predict_iter(images, mode="thread", workers=1, batch=1)))
        got = _key(list(det.predict_iter(images, plan=plan)))
    assert len(seq) == 14 and got == seq


def test_stage_times_count_what_new_input_shapes_cost() -> None:
    from toolkit.engine.core import StageTimes

    t = StageTimes()
    t.add_shape((1, 3, 384, 640), 0.060)  # first call at a shape: kernels compiled for it
    t.add_shape((1, 3, 384, 640), 0.010)
    t.add_shape((1, 3, 384, 640), 0.012)
    t.add_shape((4, 3, 384, 640), 0.090)
    t.add_shape((4, 3, 384, 640), 0.044)
    t.add_shape((1, 3, 480, 640), 0.050)  # met once: beyond the typical repeat (0.011 or 0.044, the median's pick)
    shapes, cost = t.first_call_cost()
    assert shapes == 3 and cost == pytest.approx((0.060 - 0.011) + (0.090 - 0.044) + (0.050 - 0.044))


def test_the_image_sizes_a_run_reads_ahead_from_headers(tmp_path: Path) -> None:
    """The sizes of the first images (as displayed: EXIF rotation counted), scaled to the whole list; videos, URLs
    and unreadable files are not read ahead."""
    from toolkit.engine.core import image_sizes
    from toolkit.io.sources import InputRef

    for i in range(6):
        cv2.imwrite(str(tmp_path / f"w{i}.jpg"), np.zeros((48, 64, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "t.png"), np.zeros((64, 48, 3), np.uint8))
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    refs = [InputRef(str(p), p.stem) for p in sorted(tmp_path.iterdir())]
    refs += [InputRef(str(tmp_path / "v.mp4"), "v", frame=-1), InputRef("https://example.com/a.jpg", "a")]
    assert image_sizes(refs) == {(48, 64): 6, (64, 48): 1}
    assert image_sizes(refs * 4, sample=len(refs)) == {(48, 64): 24, (64, 48): 4}  # the first ones, scaled
    assert image_sizes([]) == {}
    wide = [r for r in refs if r.key.startswith("w")]
    assert image_sizes(wide * 4, budget=0) == {(48, 64): 24}  # out of time after the first header: scaled from it


def _photos(folder: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(7)
    folder.mkdir(exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / (f"{i:02d}.jpg" if i % 2 else f"{i:02d}.png")
        cv2.imwrite(str(path), rng.integers(0, 255, (60 + i, 80, 3), np.uint8))
        paths.append(path)
    return paths


def test_a_head_start_decodes_the_first_images_as_a_worker_would(tmp_path: Path) -> None:
    """The images decoded while the model loads are the pixels a worker gets from the file, handed to their own
    inputs (in order, a duplicate name once), their decoding counted in the read stage; the head start ends at the
    first file it cannot read (its worker reads it and says why), and nothing is kept after stop()."""
    from toolkit.engine.ahead import HeadStart
    from toolkit.engine.core import StageTimes, expand
    from toolkit.io.decode import decode_image
    from toolkit.io.files import ReadLimits, read_bytes
    from toolkit.io.sources import InputRef

    paths = _photos(tmp_path, 6)
    paths[4].write_bytes(b"not an image")
    refs = [InputRef(str(p), p.stem) for p in paths]
    refs.insert(1, refs[0])  # the same file twice
    ahead = HeadStart(refs, ReadLimits())
    ahead._thread.join(10)
    assert ahead.stop() == 4  # 00, 01, 02, 03 (00 once); 04 is not an image: the head start ends there
    times = StageTimes()
    items = list(ahead.fill(expand(refs), times))
    assert [i for i, _, _ in items] == list(range(len(refs)))
    given = [(ref.path, payload) for _, ref, payload in items if payload is not None]
    assert [Path(p).name for p, _ in given] == ["00.png", "01.jpg", "02.png", "03.jpg"]
    for path, image in given:
        assert np.array_equal(image, decode_image(read_bytes(path, 1 << 20), path))
    assert items[1][2] is None  # the second 00.png is read by its worker
    assert times.read > 0 and times.images == 0  # the images are counted where they are prepared

    limited = HeadStart(refs, ReadLimits(), most=2)
    limited._thread.join(10)
    assert limited.stop() == 1  # the first two inputs are the same file
    small = HeadStart(refs[2:], ReadLimits(), budget=1)
    small._thread.join(10)
    assert small.stop() == 1  # past the budget after the first image
    bombs = HeadStart(refs[2:], ReadLimits(max_pixels=100))
    bombs._thread.join(10)
    assert bombs.stop() == 0  # a refused image ends it: its worker says why
    video = HeadStart([InputRef(str(tmp_path / "v.mp4"), "v", frame=-1), *refs], ReadLimits())
    video._thread.join(10)
    assert video.stop() == 0  # only the first inputs, in the order the run takes them
    stopped = HeadStart(refs, ReadLimits())
    kept = stopped.stop()
    stopped._thread.join(10)
    assert len(stopped._done) <= kept + 1  # nothing started after stop(): the one being decoded then is finished


def test_an_image_being_decoded_ahead_when_the_model_loads_is_not_decoded_twice(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A huge image still decoding in the head start when the model had loaded was dropped, and its worker decoded
    it again beside it: two decodes at once, twice the memory (4.8 GB for a 20000x20000 PNG) and the time. Its
    worker now waits for that decode and takes its pixels."""
    from toolkit.engine import ahead as ahead_module
    from toolkit.engine.core import expand
    from toolkit.io.files import ReadLimits, read_bytes
    from toolkit.io.sources import InputRef

    paths = _photos(tmp_path, 2)
    refs = [InputRef(str(p), p.stem) for p in paths]
    calls: list[str] = []
    decode, started = ahead_module.decode_image, threading.Event()

    def slow(data: bytes, path: str, *args: object) -> np.ndarray:
        calls.append(path)
        started.set()
        time.sleep(0.5)
        return decode(data, path, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(ahead_module, "decode_image", slow)
    ahead = ahead_module.HeadStart(refs, ReadLimits())
    assert started.wait(10)  # the first image is being decoded: the model "loads" now
    items = list(ahead.fill(expand(refs)))
    assert calls == [str(paths[0])]  # the second was never started
    assert items[0][2] is not None and items[1][2] is None
    assert np.array_equal(items[0][2], decode(read_bytes(str(paths[0]), 1 << 20), str(paths[0])))


def test_a_run_decodes_its_first_images_while_the_model_loads(exported: dict[str, Path], coco128_images: Path,
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`yolokit run` starts decoding its first images before loading the model (one thread, the core a load
    leaves idle; one image for each worker to start with); the results are those of a run without it. Not where an
    image is not decoded whole and letterboxed alone (--batch, --fast-decode, --augment, --tile, --pipeline
    device)."""
    from toolkit.engine import ahead as ahead_module
    from toolkit.io.store import LocalStore
    from toolkit.jobs.run import LocalEngine, RunOptions

    if "onnx" not in exported:
        pytest.skip("onnxruntime is not installed: pip install 'yolokit[onnx]'")
    src = tmp_path / "src"
    src.mkdir()
    for photo in sorted(coco128_images.glob("*.jpg"))[:8]:
        (src / photo.name).symlink_to(photo)
    sources = list_sources(str(src))
    handed: list[str] = []
    fill = ahead_module.HeadStart.fill

    def counted(self: ahead_module.HeadStart, items, times=None):  # type: ignore[no-untyped-def]
        for item in fill(self, items, times):
            if item[2] is not None:
                handed.append(item[1].path)
            yield item

    weights = str(exported["onnx"])
    plain = Detector(weights)
    want = [(r.ref.path, r.detections.xyxy.tolist(), r.detections.class_id.tolist())
            for r in plain.predict_iter(sources)]
    plain.close()
    started: list[ahead_module.HeadStart] = []
    init, load = ahead_module.HeadStart.__init__, Detector.from_config

    def noted(self: ahead_module.HeadStart, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        init(self, *args, **kwargs)
        started.append(self)

    def slow_load(config, sizes=None):  # type: ignore[no-untyped-def]
        if started:  # a model that loads slower than the head start decodes: every image is handed over
            started[-1]._thread.join(10)
        return load(config, sizes)

    monkeypatch.setattr(ahead_module.HeadStart, "fill", counted)
    monkeypatch.setattr(ahead_module.HeadStart, "__init__", noted)
    monkeypatch.setattr(Detector, "from_config", staticmethod(slow_load))
    for settings, starts in (({}, True), ({"batch": 4}, False), ({"fast_decode": True}, False),
                             ({"augment": True}, False), ({"tile": 640}, False)):
        opts = RunOptions.of(source=str(src), weights=weights, nosave=True, **settings)
        engine = LocalEngine(opts, LocalStore(tmp_path / "out"), refs=sources.items)
        assert (engine.ahead is not None) is starts, settings
        if not settings:
            assert engine.ahead is not None
            most = engine.ahead.most
            got = [(r.ref.path, r.detections.xyxy.tolist(), r.detections.class_id.tolist())
                   for r in engine.results(sources)]
            assert got == want and sum(len(cls) for _, _, cls in got) >= 20
            assert engine.ahead is None  # the first pass only
            assert engine.det.last_plan is not None and most == engine.det.last_plan.workers  # one each
        engine.close()
    assert handed == [r.path for r in sources.items][:most]  # decoded ahead, each used once


def test_a_run_whose_model_fails_to_load_leaves_no_decoding_behind(coco128_images: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A model that fails to load ends the run at once: the head start is stopped and waited for, so that no thread
    is still decoding when a program's interpreter tears down (a daemon thread inside OpenCV aborted it)."""

    from toolkit.engine import ahead as ahead_module
    from toolkit.errors import YolokitError
    from toolkit.io.store import LocalStore
    from toolkit.jobs.run import LocalEngine, RunOptions

    src = tmp_path / "src"
    src.mkdir()
    for photo in sorted(coco128_images.glob("*.jpg"))[:4]:
        (src / photo.name).symlink_to(photo)
    decode = ahead_module.decode_image

    def slow(*args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(0.5)  # still decoding when the load fails
        return decode(*args, **kwargs)

    monkeypatch.setattr(ahead_module, "decode_image", slow)
    started: list[ahead_module.HeadStart] = []
    init = ahead_module.HeadStart.__init__

    def noted(self: ahead_module.HeadStart, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        init(self, *args, **kwargs)
        started.append(self)

    monkeypatch.setattr(ahead_module.HeadStart, "__init__", noted)
    bad = tmp_path / "broken.onnx"  # planned for (its backend known from its name), fails as it loads
    bad.write_bytes(b"not a model")
    opts = RunOptions.of(source=str(src), weights=str(bad), nosave=True)
    with pytest.raises(YolokitError):
        LocalEngine(opts, LocalStore(tmp_path / "out"), refs=list_sources(str(src)).items)
    assert len(started) == 1 and not started[0]._thread.is_alive()


def test_a_run_whose_process_ends_after_it_releases_its_model_in_the_background(
        exported: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """run(release=False), as the yolokit command calls it, returns without waiting for the model's release (a
    thread of its own does it); by default the run releases it before returning."""
    import threading

    from tests.helpers.releases import note_releases, wait_for_releases
    from toolkit.jobs.run import RunOptions, run

    if "onnx" not in exported:
        pytest.skip("onnxruntime is not installed: pip install 'yolokit[onnx]'")
    src = tmp_path / "src"
    _photos(src, 2)
    closed_on = note_releases(monkeypatch)
    for release in (False, True):
        opts = RunOptions.of(source=str(src), weights=str(exported["onnx"]), nosave=True,
                             project=str(tmp_path / "runs"), name=f"r{release}")
        assert run(opts, release=release).ok
        wait_for_releases()
    assert closed_on == ["yolokit-release", threading.current_thread().name]


def test_a_run_tells_the_loading_model_the_sizes_of_its_images(exported: dict[str, Path], tmp_path: Path) -> None:
    """`yolokit run` reads the first images' headers before the model loads, so that OpenVINO compiles the shape
    most of them take as it loads, and not the dynamic model (LoadOptions.expected); not where the inputs are not
    letterboxed one at a time as decoded (--batch, --augment, --fast-decode)."""
    import backends
    from backends.openvino.runner import SHAPE_AHEAD
    from toolkit.io.store import LocalStore
    from toolkit.jobs.run import LocalEngine, RunOptions

    if not backends.REGISTRY["openvino"].is_available():
        pytest.skip("openvino is not installed: pip install 'yolokit[openvino]'")
    src = tmp_path / "src"
    src.mkdir()
    for i in range(SHAPE_AHEAD + 2):
        cv2.imwrite(str(src / f"{i:03d}.png"), np.full((96, 128, 3), i, np.uint8))
    refs = list_sources(str(src)).items
    weights = str(exported["openvino"])
    for settings, compiles in (({}, True), ({"batch": 4}, False), ({"augment": True}, False),
                               ({"fast_decode": True}, False)):
        opts = RunOptions.of(source=str(src), weights=weights, nosave=True, **settings)
        engine = LocalEngine(opts, LocalStore(tmp_path / "out"), refs=refs)
        runner = engine.det.routine.runner
        assert (list(runner.shapes._ready) == [(1, 3, 480, 640)]) is compiles, settings
        assert (runner._dynamic is None) is compiles, settings
        engine.close()


def test_a_worker_starts_with_ctrl_c_blocked_and_ends_quietly_when_its_parent_is_gone(
        images: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C while a worker's interpreter imported printed its KeyboardInterrupt traceback (or "Fatal Python
    error: init_import_site"): the worker starts with SIGINT blocked (the mask is inherited) and ignores it before
    unblocking. A worker whose parent was killed while it loaded printed a BrokenPipeError traceback."""
    import signal as sig

    from toolkit.engine import processes

    det = Detector("yolov5n.yaml", imgsz=64)
    pool = _scheduler(det, sorted(str(p) for p in images.glob("*.jpg")), workers=2)
    masks: list[set[int]] = []

    class Recording:
        def __init__(self, **kwargs: object) -> None:
            self.pid = 0

        def start(self) -> None:
            masks.append(set(sig.pthread_sigmask(sig.SIG_BLOCK, [])))

    monkeypatch.setattr(pool.ctx, "Process", Recording)
    pool.start_worker()
    assert masks and sig.SIGINT in masks[0]  # blocked while the worker starts
    assert sig.SIGINT not in sig.pthread_sigmask(sig.SIG_BLOCK, [])  # and this process's mask as it was

    class Gone:
        def send(self, message: object) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    before, cv_threads = sig.getsignal(sig.SIGINT), cv2.getNumThreads()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):  # a worker sets them: put back after
        monkeypatch.setenv(var, os.environ.get(var, ""))
    try:
        for factory in (lambda config: det.routine, lambda config: 1 / 0):  # loads, or fails to: nobody to tell
            processes.worker_main(0, factory, det.routine.config, TaskSpec(1, False), None, Gone())
    finally:
        sig.signal(sig.SIGINT, before)
        cv2.setNumThreads(cv_threads)


def test_process_mode_from_a_script_without_a_main_guard_is_one_error(exported: dict[str, Path],
                                                                      coco128_images: Path, tmp_path: Path) -> None:
    """Each spawned worker ran the unguarded script again and tried to start workers of its own: ten of
    multiprocessing's tracebacks (675 lines) and 13 s before the one line that says why."""
    if "onnx" not in exported:
        pytest.skip("onnxruntime is not installed: pip install 'yolokit[onnx]'")
    script = tmp_path / "noguard.py"
    script.write_text("from toolkit import Detector\n"
                      f"d = Detector({str(exported['onnx'])!r})\n"
                      f"for r in d.predict_iter({str(coco128_images)!r}, mode='process', workers=2, batch=1):\n"
                      "    pass\n")
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          cwd=str(tmp_path))
    assert done.returncode != 0 and time.monotonic() - t0 < 120
    assert "without `if __name__ == '__main__':`" in done.stderr
    assert done.stderr.count("Traceback") == 1 and "bootstrapping phase" not in done.stderr, done.stderr[-3000:]
