"""The seed loop: the one-image-at-a-time PyTorch loop that yolokit was started to beat, and that its benchmarks
compare against.

In one thread, for each image in turn: ``cv2.imread``, letterbox, the model (FP16 on a CUDA GPU, FP32 on a CPU),
YOLOv5's NMS at yolokit's defaults, boxes scaled back to the image. Nothing overlaps, nothing is batched. Timed in a
fresh process (start-up and model load included) with::

    python -m toolkit.jobs.bench.seed --weights yolov5n.pt SOURCE [--device cuda] [--imgsz 640]

which prints the :class:`SeedRun` as one JSON line; :func:`seed_command` builds that command. On a CUDA device the
run also reports the process's peak GPU memory (:func:`peak_gpu_memory`), read after the loop, outside its times.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from toolkit.errors import InputError, YolokitError


@dataclass
class SeedRun:
    images: int
    run_s: float  # the loop alone: from the first read to the last image's boxes
    detections: int
    ms_per_image: dict[str, float]  # read, pre (letterbox), infer, post (NMS and scaling)
    gpu_memory: dict[str, float] | None = None  # peak_gpu_memory() on a CUDA device (model load included); else None

    @property
    def img_s(self) -> float:
        return self.images / self.run_s if self.run_s > 0 else 0.0


def peak_gpu_memory(device: str | None = None) -> dict[str, float] | None:
    """The peak CUDA memory of this process on ``device`` (a torch device string; the current CUDA device when None)
    in MiB: ``peak_allocated_mib`` (by tensors) and ``peak_reserved_mib`` (held by PyTorch's caching allocator).
    None where this process never used CUDA (it does not import torch to find out)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return {"peak_allocated_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
            "peak_reserved_mib": round(torch.cuda.max_memory_reserved(device) / 2**20, 1)}


def image_paths(source: str | Path) -> list[str]:
    """The still images of ``source`` (a folder, a list file, a glob), as ``yolokit run`` lists them."""
    from toolkit.io.sources import list_sources

    paths = [r.path for r in list_sources(str(source)).items if r.frame is None]
    if not paths:
        raise InputError(f"{source}: no images for the seed loop")
    return paths


def seed_loop(weights: str | Path, paths: list[str], device: str = "cpu", imgsz: int | None = None) -> SeedRun:
    """Run the seed loop over ``paths`` with the checkpoint ``weights`` (``imgsz``: yolokit's default when None)."""
    import cv2
    import torch

    from toolkit.devices import parse_device
    from toolkit.engine.core import DetectorConfig
    from toolkit.model.load import load_model
    from toolkit.ops import NMSOptions, letterbox, postprocess, scale_boxes, to_chw_rgb

    defaults = DetectorConfig()
    size = imgsz or defaults.imgsz
    nms = NMSOptions(conf=defaults.conf, iou=defaults.iou, max_det=defaults.max_det)
    dev = torch.device(parse_device(device).torch)
    half = dev.type == "cuda"
    if half:  # the peak of this run, should an earlier one have run in this process; torch 2.11 refuses before
        # its allocator has run ("Invalid device argument", on an H200), when there is no peak yet anyway
        with contextlib.suppress(RuntimeError):
            torch.cuda.reset_peak_memory_stats(dev)
    loaded = load_model(weights)
    model = loaded.model.to(dev).eval()
    model = model.half() if half else model.float()
    stride = loaded.meta.stride
    times = dict.fromkeys(("read", "pre", "infer", "post"), 0.0)
    found = 0
    start = time.perf_counter()
    for p in paths:
        t0 = time.perf_counter()
        img = cv2.imread(p)
        if img is None:
            raise InputError(f"{p}: cannot be read as an image")
        t1 = time.perf_counter()
        lb, info = letterbox(img, size, stride)
        chw = to_chw_rgb(lb)
        t2 = time.perf_counter()
        with torch.inference_mode():
            x = torch.from_numpy(chw).to(dev)[None]
            x = (x.half() if half else x.float()).div_(255)
            pred = model(x).float().cpu().numpy()[0]
        t3 = time.perf_counter()
        xyxy, _, _ = postprocess(pred, nms)
        found += len(scale_boxes(xyxy, info))
        t4 = time.perf_counter()
        for k, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            times[k] += dt
    run_s = time.perf_counter() - start
    return SeedRun(len(paths), run_s, found, {k: 1000 * v / max(1, len(paths)) for k, v in times.items()},
                   peak_gpu_memory(str(dev)) if half else None)


def seed_command(weights: str | Path, source: str | Path, device: str = "cpu", imgsz: int | None = None) -> list[str]:
    """The command that runs the seed loop in a fresh process of this interpreter and prints its JSON line."""
    cmd = [sys.executable, "-m", "toolkit.jobs.bench.seed", "--weights", str(weights), str(source), "--device", device]
    return cmd + (["--imgsz", str(imgsz)] if imgsz else [])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m toolkit.jobs.bench.seed", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="a folder of images or a list file")
    ap.add_argument("--weights", required=True, help="a .pt checkpoint (or a built-in name such as yolov5s.yaml)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--imgsz", type=int, default=None, help="inference size (default: yolokit's)")
    args = ap.parse_args(argv)
    try:
        run = seed_loop(args.weights, image_paths(args.source), args.device, args.imgsz)
    except YolokitError as e:  # one line naming the input, as yolokit itself reports it
        raise SystemExit(f"seed loop: {e}") from None
    print(json.dumps({**asdict(run), "img_s": run.img_s}))


if __name__ == "__main__":
    main()
