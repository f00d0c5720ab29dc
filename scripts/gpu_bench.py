"""GPU throughput: a seed-style PyTorch FP16 loop vs yolokit's GPU pipeline, on N generated 1920x1080 JPEGs.

(a) seed: one image at a time; cv2 decode, numpy letterbox, FP16 model on CUDA, numpy NMS, all sequential.
(b) pipeline: decode threads write straight into pinned host buffers (a ring of batches), host->device copy on a
    side stream into one of two device staging buffers (ordered by events, so copies overlap compute), letterbox on
    the GPU (:func:`toolkit.engine.cuda.letterbox_torch`), :class:`toolkit.engine.cuda.CudaGraphRunner` (FP16,
    static batch, CUDA graph), :func:`toolkit.engine.batched_nms.postprocess_batch_torch` and box scaling on the GPU.

For the whole of ``yolokit run`` on a GPU (and the seed loop beside it), use ``scripts/gpu_check.py``.

Prints img/s of both and the time per stage (ms/img and share). Needs a CUDA GPU; exits with a message without.

    python scripts/gpu_bench.py --images ../shared/datasets/coco128/images/train2017 --out bench_out/gpu \\
        --weights ../shared/weights/yolov5n.pt --n 512 --batch 16
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toolkit.engine.batched_nms import postprocess_batch_torch  # noqa: E402
from toolkit.engine.cuda import CudaGraphRunner, letterbox_torch, scale_boxes_torch  # noqa: E402
from toolkit.engine.plan import cpu_count  # noqa: E402
from toolkit.errors import YolokitError  # noqa: E402
from toolkit.model.load import load_model  # noqa: E402
from toolkit.ops import NMSOptions, letterbox, letterbox_shape, postprocess, scale_boxes, to_chw_rgb  # noqa: E402

SIZE = (1920, 1080)  # (w, h) of the generated JPEGs


def generate(images: Path, out: Path, n: int) -> list[Path]:
    """``n`` 1920x1080 JPEGs resized from the images of ``images`` in turn; reused when present."""
    sources = sorted(images.glob("*.jpg"))
    if not sources:
        raise SystemExit(f"no .jpg images in {images}")
    folder = out / f"gen_{SIZE[0]}x{SIZE[1]}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i:05d}.jpg"
        if not path.exists():
            src = cv2.imread(str(sources[i % len(sources)]))
            if src is None:
                raise SystemExit(f"cannot read {sources[i % len(sources)]}")
            cv2.imwrite(str(path), cv2.resize(src, SIZE, interpolation=cv2.INTER_LINEAR),
                        [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def _imread(path: Path) -> np.ndarray:
    img = cv2.imread(str(path))
    if img is None:
        raise SystemExit(f"cannot decode {path}")
    return img


def seed_loop(model: torch.nn.Module, paths: list[Path], imgsz: int, stride: int, opts: NMSOptions
              ) -> tuple[float, dict[str, float], int]:
    """Seed-style: sequential, FP16 on CUDA, numpy pre/post. Returns (wall s, stage seconds, detections)."""
    dev = torch.device("cuda")
    times = dict.fromkeys(("decode", "letterbox", "infer", "post"), 0.0)
    n_det = 0
    for p in paths[:3]:  # warm-up (cuDNN autotuning), not timed
        with torch.inference_mode():
            model(torch.from_numpy(to_chw_rgb(letterbox(_imread(p), imgsz, stride)[0])).to(dev)[None].half() / 255)
    torch.cuda.synchronize()
    t_start = time.perf_counter()
    for p in paths:
        t0 = time.perf_counter()
        img = _imread(p)
        t1 = time.perf_counter()
        lb, info = letterbox(img, imgsz, stride)
        chw = to_chw_rgb(lb)
        t2 = time.perf_counter()
        with torch.inference_mode():
            x = torch.from_numpy(chw).to(dev)[None].half().div_(255)
            pred = model(x).float().cpu().numpy()[0]
        t3 = time.perf_counter()
        xyxy, _, _ = postprocess(pred, opts)
        n_det += len(scale_boxes(xyxy, info))
        t4 = time.perf_counter()
        for k, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            times[k] += dt
    return time.perf_counter() - t_start, times, n_det


def gpu_pipeline(model: torch.nn.Module, paths: list[Path], imgsz: int, stride: int, opts: NMSOptions, batch: int,
                 readers: int, ring: int = 3) -> tuple[float, dict[str, float], int]:
    """decode threads -> pinned ring -> side-stream H2D -> GPU letterbox -> CUDA graph -> GPU postprocess."""
    dev = torch.device("cuda")
    h0, w0 = SIZE[1], SIZE[0]
    _, (oh, ow), _ = letterbox_shape((h0, w0), imgsz, stride, auto=True)
    runner = CudaGraphRunner(model, batch=batch, imgsz=(oh, ow), half=True)
    bufs = [torch.empty((batch, h0, w0, 3), dtype=torch.uint8, pin_memory=True) for _ in range(ring)]
    # two device staging buffers: batch k+1 is copied into one while batch k is letterboxed from the other; the copy
    # stream waits only for the event recorded after the last read of its target (no whole-stream waits)
    dev_raw = [torch.empty((batch, h0, w0, 3), dtype=torch.uint8, device=dev) for _ in range(2)]
    main = torch.cuda.current_stream(dev)
    copy_stream = torch.cuda.Stream(dev)
    copied = [torch.cuda.Event() for _ in range(ring)]
    consumed = [torch.cuda.Event() for _ in range(2)]
    for e in copied:
        e.record(copy_stream)
    for e in consumed:
        e.record(main)
    batches = [paths[i:i + batch] for i in range(0, len(paths), batch)]
    decode_s = [0.0] * len(batches)
    times = dict.fromkeys(("decode wait", "h2d", "letterbox", "infer", "post"), 0.0)

    def decode_into(k: int, j: int, path: Path) -> float:
        t0 = time.perf_counter()
        img = _imread(path)
        if img.shape[:2] != (h0, w0):
            raise SystemExit(f"{path} is {img.shape[1]}x{img.shape[0]}, the pipeline was built for {w0}x{h0}")
        bufs[k % ring][j].numpy()[...] = img
        return time.perf_counter() - t0

    n_det = 0
    ev = {name: (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
          for name in ("h2d", "letterbox", "infer")}
    gpu_ms = dict.fromkeys(ev, 0.0)
    with ThreadPoolExecutor(readers) as pool:
        def fill(k: int) -> list[Future[float]]:
            copied[k % ring].synchronize()  # the slot's previous batch has left the pinned buffer
            return [pool.submit(decode_into, k, j, p) for j, p in enumerate(batches[k])]

        torch.cuda.synchronize()
        t_start = time.perf_counter()
        pending: deque[list[Future[float]]] = deque(fill(k) for k in range(min(ring - 1, len(batches))))
        for k, group in enumerate(batches):
            if k + ring - 1 < len(batches):
                pending.append(fill(k + ring - 1))
            t0 = time.perf_counter()
            decode_s[k] = sum(f.result() for f in pending.popleft())
            times["decode wait"] += time.perf_counter() - t0
            b, slot, d = len(group), k % ring, k % 2
            copy_stream.wait_event(consumed[d])  # the letterbox of batch k-2 has read this staging buffer
            with torch.cuda.stream(copy_stream):
                ev["h2d"][0].record(copy_stream)
                dev_raw[d][:b].copy_(bufs[slot][:b], non_blocking=True)
                ev["h2d"][1].record(copy_stream)
                copied[slot].record(copy_stream)
            main.wait_event(copied[slot])
            ev["letterbox"][0].record(main)
            x, info = letterbox_torch(dev_raw[d][:b], imgsz, stride, auto=True, dtype=torch.float16, quantize=True)
            consumed[d].record(main)
            ev["letterbox"][1].record(main)
            ev["infer"][0].record(main)
            pred = runner.run(x)
            ev["infer"][1].record(main)
            t1 = time.perf_counter()
            dets = postprocess_batch_torch(pred, opts)
            boxes = [scale_boxes_torch(d[0], info).cpu() for d in dets]
            n_det += sum(len(bx) for bx in boxes)
            times["post"] += time.perf_counter() - t1  # includes waiting for the GPU work of this batch
            for name, (a, z) in ev.items():
                gpu_ms[name] += a.elapsed_time(z)
        wall = time.perf_counter() - t_start
    runner.close()
    for name, ms in gpu_ms.items():
        times[name] = ms / 1000
    times["decode (thread-s)"] = sum(decode_s)
    return wall, times, n_det


def report(name: str, n: int, wall: float, times: dict[str, float], n_det: int) -> None:
    print(f"{name}: {n} images in {wall:.2f} s = {n / wall:.1f} img/s, {n_det} detections")
    for k, v in times.items():
        print(f"    {k:18s} {1000 * v / n:8.2f} ms/img   {100 * v / wall:6.1f}% of wall")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=Path, required=True, help="folder of source .jpg images")
    ap.add_argument("--out", type=Path, default=Path("bench_out/gpu"), help="where the 1920x1080 JPEGs go")
    ap.add_argument("--weights", default="yolov5n.yaml", help=".pt checkpoint or built-in config (random init)")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--readers", type=int, default=0, help="decode threads (0: all cores)")
    ap.add_argument("--conf", type=float, default=0.25)
    ap.add_argument("--iou", type=float, default=0.45)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print(f"gpu_bench.py needs a CUDA GPU; PyTorch {torch.__version__} sees none "
              f"(CUDA build: {torch.version.cuda}). Nothing was run.", file=sys.stderr)
        return 2
    paths = generate(args.images, args.out, args.n)
    opts = NMSOptions(conf=args.conf, iou=args.iou)
    readers = args.readers or cpu_count()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {args.weights}, imgsz {args.imgsz}, "
          f"batch {args.batch}, {readers} decode threads, {len(paths)} images {SIZE[0]}x{SIZE[1]}")
    try:
        loaded = load_model(args.weights)
        stride = loaded.meta.stride
        seed_model = loaded.model.cuda().half().eval()
        wall_a, times_a, det_a = seed_loop(seed_model, paths, args.imgsz, stride, opts)
        del seed_model
        torch.cuda.empty_cache()
        wall_b, times_b, det_b = gpu_pipeline(load_model(args.weights).model, paths, args.imgsz, stride, opts,
                                              args.batch, readers)
    except YolokitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    report("(a) seed-style FP16 sequential", len(paths), wall_a, times_a, det_a)
    report("(b) GPU pipeline", len(paths), wall_b, times_b, det_b)
    print("    (pipeline stages overlap: decode runs in threads, GPU stages are CUDA-event times)")
    print(f"speed-up: {wall_a / wall_b:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
