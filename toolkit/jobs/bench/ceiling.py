"""The machine's ceiling for a run: what the necessary work costs, part by part, and the fastest a whole process could
go if it did nothing else and kept every core busy.

Parts (each in core-milliseconds per image, CPU time measured on real images, so the numbers hold on a busy machine
too):

* ``decode``: reading the file and decoding it whole (``cv2.imdecode``, as detect.py);
* ``letterbox``: the resize and padding, and the channel reorder into the model's layout;
* ``model``: the model alone on letterboxed batches, at the run's plan (its workers, threads and batch), and at the
  best of the alternatives tried (:func:`model_cost`); the ceiling takes the cheapest. The runner is told how many
  images the run has, as a run tells it, so it prepares as that run would (OpenVINO's model compiled for one input
  shape, which a run of 1,000 photos pays for and one of 100 does not);
* ``post``: NMS and scaling the boxes back;
* ``save``: for the default run (annotated images saved), drawing the boxes, encoding the JPEG and writing the file;
* ``startup`` (seconds of wall time): a fresh Python process that imports numpy, OpenCV and the runtime and loads
  the model, measured by :func:`startup_seconds`.

``ceiling_seconds(n)`` = start-up + n x (sum of the per-image parts) / cores: every core busy from the moment the
model is loaded, on nothing but that work. A run's share of the ceiling is the ceiling's seconds over the run's.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.host import BLAS_THREADS, keep_freed_memory
from toolkit.options import IMGSZ

PER_IMAGE = ("decode", "letterbox", "model", "post")


@dataclass
class Parts:
    """Core-milliseconds per image of each part, the start-up seconds, and the plan the model was measured at."""

    decode: float
    letterbox: float
    model: float
    post: float
    save: float
    startup: float = 0.0
    cores: int = 1
    plan: str = ""
    model_at_plan: float = 0.0
    model_options: dict[str, float] = field(default_factory=dict)

    def per_image(self, save: bool) -> float:
        """Core-ms per image of the necessary work (annotated images saved, or not)."""
        return sum(getattr(self, k) for k in PER_IMAGE) + (self.save if save else 0.0)

    def ceiling_seconds(self, n: int, save: bool) -> float:
        return self.startup + n * self.per_image(save) / 1000 / self.cores

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cpu_ms(fn: Callable[..., Any], *args: Any, repeat: int = 1) -> float:
    """Median CPU milliseconds (this process, every thread) of ``fn(*args)`` over ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn(*args)
        times.append((time.process_time() - t0) * 1000)
    return statistics.median(times)


def model_cost(routine: Any, batch: np.ndarray, workers: int, seconds: float, images: int | None = None) -> float:
    """Core-ms per image of ``routine.infer`` on ``batch`` from ``workers`` threads at once for ``seconds``. With
    ``images``, the runner first hears what a run over that many images tells it
    (:meth:`toolkit.engine.core.BatchRoutine.expect`), so that it prepares only as far as such a run pays for (OpenVINO
    compiles a model for the one input shape of 1,000 photos, not of 100)."""
    if images is not None:
        routine.expect(images, len(batch))
    for _ in range(2):
        routine.infer(batch)  # warm: the first inferences at a shape allocate
    done = [0] * workers
    stop = time.perf_counter() + seconds

    def loop(i: int) -> None:
        while time.perf_counter() < stop:
            routine.infer(batch)
            done[i] += len(batch)

    t0 = time.process_time()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return (time.process_time() - t0) * 1000 / max(1, sum(done))


def measure_parts(model: str, paths: list[str], n_run: int, precision: str = "auto", imgsz: int = IMGSZ.default,
                  sample: int = 24, seconds: float = 3.0) -> Parts:
    """Every per-image part for ``model`` (computing in ``precision``) on ``sample`` of ``paths`` (spread over them),
    the model at the plan a run over ``n_run`` inputs gets, on letterboxed batches of the first image's shape. Runs
    in the calling process: call it in a fresh one (:func:`parts_in_fresh_process`)."""
    from toolkit.engine.detector import Detector
    from toolkit.engine.plan import cpu_count, make_plan
    from toolkit.io.decode import decode_image
    from toolkit.io.files import read_bytes
    from toolkit.io.outputs import annotate, encode_image, write_encoded
    from toolkit.io.store import LocalStore

    picked = [paths[i * len(paths) // sample] for i in range(min(sample, len(paths)))]
    probe = Detector(model, precision=precision, imgsz=imgsz)
    plan = make_plan(probe.routine, n_run)
    probe.close()
    det = Detector(model, threads=plan.threads, precision=precision, imgsz=imgsz)
    routine = det.routine
    datas = [read_bytes(p, 1 << 31) for p in picked]
    def decode_one(path: str) -> None:
        decode_image(read_bytes(path, 1 << 31), path)

    decode = statistics.median(cpu_ms(decode_one, p) for p in picked)
    images = [decode_image(d, p) for d, p in zip(datas, picked, strict=True)]
    letterbox = statistics.median(cpu_ms(routine.preprocess, im) for im in images)
    prepared = [routine.preprocess(im) for im in images]
    shape = prepared[0][0].shape
    same = [p for p in prepared if p[0].shape == shape]
    batch = np.stack([same[i % len(same)][0] for i in range(plan.batch)])
    at_plan = model_cost(routine, batch, plan.workers, seconds, n_run)
    options = {f"{plan.workers}x{plan.threads} threads, batch {plan.batch} (the plan)": at_plan}
    single = Detector(model, threads=1, precision=precision, imgsz=imgsz)
    if (plan.workers, plan.threads, plan.batch) != (cpu_count(), 1, 1):
        options[f"{cpu_count()}x1 threads, batch 1"] = model_cost(single.routine, batch[:1], cpu_count(), seconds,
                                                                  n_run)
    single.close()
    preds = [routine.infer(p[0][None])[0] for p in prepared[:8]]
    post = statistics.median(cpu_ms(routine.postprocess, preds[i], prepared[i][1], repeat=5)
                             for i in range(len(preds)))
    dets = [routine.postprocess(preds[i], prepared[i][1]).rounded() for i in range(len(preds))]
    with tempfile.TemporaryDirectory(prefix="yolokit_ceiling_") as tmp:
        store = LocalStore(tmp)

        def save(i: int) -> None:
            write_encoded(store, f"{i}.jpg", encode_image(annotate(images[i], dets[i % len(dets)]), ".jpg"))

        saving = statistics.median(cpu_ms(save, i) for i in range(len(images)))
    det.close()
    return Parts(decode, letterbox, min(options.values()), post, saving, cores=cpu_count(), plan=plan.describe(),
                 model_at_plan=at_plan, model_options=options)


STARTUP = """
import os, sys
from pathlib import Path
from toolkit.host import own_process
own_process()  # as the yolokit command sets up its process
import numpy, cv2
import backends
from backends.base import LoadOptions
runner = backends.get_backend(sys.argv[2]).load(Path(sys.argv[1]), LoadOptions(threads=int(sys.argv[3]) or None))
os._exit(0)  # without the interpreter's teardown (a runtime unloading its libraries), which a run can skip too
"""


def startup_seconds(model: str, threads: int, repeat: int = 3) -> tuple[float, float]:
    """Median (wall, CPU) seconds of a fresh Python process that imports numpy, OpenCV and the runtime and loads the
    model (its compiled form cached, as a run finds it after the first), then ends without the interpreter's
    teardown (``yolokit`` skips it: :func:`toolkit.cli.root.exit_now`): the start-up no run can avoid."""
    import backends

    name = backends.backend_for(Path(model))
    walls, cpus = [], []
    for _ in range(repeat + 1):  # the first fills the runtime's compile cache
        wall, cpu = timed([sys.executable, "-c", STARTUP, model, name, str(threads)])
        walls.append(wall)
        cpus.append(cpu)
    return statistics.median(walls[1:]), statistics.median(cpus[1:])


def timed(cmd: list[str], cwd: str | None = None, env: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall, CPU) seconds of ``cmd`` in a fresh process, its children included, with ``env`` over this process's
    environment; a failure raises."""
    before = os.times()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env={**os.environ, **env} if env else None)
    wall = time.perf_counter() - t0
    after = os.times()
    if proc.returncode not in (0,):
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed ({proc.returncode}): {proc.stderr[-600:]}")
    return wall, (after.children_user - before.children_user) + (after.children_system - before.children_system)


def load_average() -> str:
    """The 1-minute load average and the core count, as ``uptime`` reports them."""
    try:
        one = os.getloadavg()[0]
    except OSError:
        return "unknown"
    return f"{one:.2f} on {os.cpu_count()} cores"


def cpu_flags() -> list[str]:
    """The CPU features that decide bf16 and INT8 speed (from /proc/cpuinfo, Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile",
              "avx512_fp16")
    have = set(line.split(":", 1)[-1].split())
    return [f for f in wanted if f in have]


def parts_in_fresh_process(model: str, paths: list[str], n_run: int, precision: str = "auto",
                           imgsz: int = IMGSZ.default) -> Parts:
    """:func:`measure_parts` in a fresh Python process (nothing of the caller's warm state counts)."""
    import json

    with tempfile.TemporaryDirectory(prefix="yolokit_parts_") as tmp:
        listing = Path(tmp) / "images.txt"
        listing.write_text("".join(f"{p}\n" for p in paths))
        cmd = [sys.executable, "-m", "toolkit.jobs.bench.ceiling", model, str(listing), str(n_run), precision,
               str(imgsz)]
        # the process set up as the yolokit command sets up its own (toolkit.host): one OpenBLAS thread from the
        # start (the rest in _main)
        env = {**os.environ, BLAS_THREADS: os.environ.get(BLAS_THREADS, "1")}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("@@")), None)
    if proc.returncode != 0 or line is None:
        err = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise RuntimeError(f"measuring the parts of {model} failed: {err[-1] if err else proc.returncode}")
    return Parts(**json.loads(line[2:]))


def _main() -> None:
    """``python -m toolkit.jobs.bench.ceiling MODEL LIST N [PRECISION [IMGSZ]]``: the parts as JSON on the last
    line."""
    import json

    keep_freed_memory()  # as the yolokit command does (toolkit.host)
    model, listing, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    precision = sys.argv[4] if len(sys.argv) > 4 else "auto"
    imgsz = int(sys.argv[5]) if len(sys.argv) > 5 else 640
    paths = [ln.strip() for ln in Path(listing).read_text().splitlines() if ln.strip()]
    print("@@" + json.dumps(measure_parts(model, paths, n, precision, imgsz).to_dict()))


if __name__ == "__main__":
    _main()
