"""The ``yolokit`` command line. It parses, calls the library, prints, and maps errors to exit codes.

Exit codes: 0 success; 1 some inputs failed (the rest were processed); 2 bad input or options;
3 bad model file; 4 backend or device unavailable; 5 download failed; 6 export failed; 7 output not
writable; 130 interrupted.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from toolkit.errors import InputError, YolokitError

app = typer.Typer(name="yolokit", help="Run YOLOv5 over many images: detect, validate, export, benchmark.\n\n"
                  "Quick start: `yolokit run` (sample photos, yolov5n) or `yolokit run photos/ --save-txt`.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
weights_app = typer.Typer(help="List, download and verify official YOLOv5 checkpoints.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")


def _err(msg: str) -> None:
    typer.echo(f"yolokit: {msg}", err=True)


def _parse_classes(text: str | None) -> tuple[int, ...] | None:
    try:
        return tuple(int(c) for c in text.replace(" ", "").split(",") if c) if text else None
    except ValueError:
        raise InputError(f"--classes takes class ids like 0,2,5, got {text!r}") from None


def _parse_amount(text: str, option: str, base: int) -> int:
    """``500M``, ``2G``, ``1.5k`` or a plain number; K/M/G are powers of ``base`` (1024 for sizes, 1000 for
    pixel counts)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": base, "M": base**2, "G": base**3}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale > 1 else t)
    except ValueError:
        raise InputError(f"{option} takes a number like 500M or 2G, got {text!r}") from None
    if value <= 0:
        raise InputError(f"{option} must be positive, got {text!r}")
    return int(value * scale)


def _parse_scales(text: str) -> tuple[float, ...]:
    with contextlib.suppress(ValueError):
        scales = tuple(float(c) for c in text.replace(" ", "").split(",") if c)
        if scales and all(0 < s <= 1 for s in scales):
            return scales
    raise InputError(f"--tile-scales takes scales in (0, 1] like 1,0.5, got {text!r}")


class _Progress:
    """A progress bar on stderr when it is a terminal; silent otherwise."""

    def __init__(self, enabled: bool, label: str) -> None:
        self.enabled, self.label = enabled and sys.stderr.isatty(), label
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn(self.label), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                                 console=Console(stderr=True), transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=None, rate="")
        return self

    def update(self, done: int, total: int, *_: Any) -> None:
        if self._bar is not None:
            elapsed = self._bar.tasks[0].elapsed or 0.0
            rate = f"{done / elapsed:.1f} img/s" if elapsed > 0 else ""
            self._bar.update(self._task, completed=done, total=total, rate=rate)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)


@app.command()
def run(
    source: Annotated[str | None, typer.Argument(
        help="Image, folder (recursive), glob ('imgs/*.jpg'), .txt list of paths or URLs, video, http(s) image or "
             "video URL, or a live stream: rtsp://, rtmp://, an http(s) URL naming no media file, a webcam index "
             "(0), a .streams file (one a line, batched together). Default: the four sample photos shipped with "
             "yolokit.")] = None,
    weights: Annotated[str | None, typer.Option(
        help="Model: .pt checkpoint, .onnx, OpenVINO .xml/folder, .engine, or a name (yolov5n..yolov5x). "
             "Default: $YOLOKIT_WEIGHTS, the cache, ../shared/weights, then download yolov5n.")] = None,
    backend: Annotated[str | None, typer.Option(help="Force a backend (torch, onnx, openvino, trt); "
                                                     "default: chosen from the model file.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:N, gpu or a GPU index. Default: the "
                                                    "backend's own: the CPU, a GPU for a TensorRT engine.")] = None,
    half: Annotated[bool | None, typer.Option("--half/--fp32", help="FP16 (CUDA only); default FP16 on "
                                                                    "CUDA, FP32 on the CPU.")] = None,
    imgsz: Annotated[int, typer.Option(help="Inference size: the long side, in pixels (multiple of 32).")] = 640,
    conf: Annotated[float, typer.Option(help="Confidence threshold (objectness x class score).")] = 0.25,
    iou: Annotated[float, typer.Option(help="NMS IoU threshold.")] = 0.45,
    max_det: Annotated[int, typer.Option(help="At most this many detections per image.")] = 1000,
    classes: Annotated[str | None, typer.Option(help="Keep only these class ids, e.g. 0,2.")] = None,
    agnostic_nms: Annotated[bool, typer.Option(help="Class-agnostic NMS.")] = False,
    augment: Annotated[bool, typer.Option(help="Test-time augmentation (YOLOv5's --augment): also run at 0.83 "
                                               "flipped and 0.67, joined before NMS; ~2.1x inference.")] = False,
    vid_stride: Annotated[int, typer.Option(help="Process every N-th video or stream frame.")] = 1,
    stream_timeout: Annotated[float, typer.Option(help="Seconds a URL or live stream may stay silent before it is "
                                                       "listed as failed.")] = 30.0,
    batch: Annotated[int, typer.Option(help="Images per inference batch (0: chosen by --mode auto).")] = 0,
    workers: Annotated[int, typer.Option(help="Inference workers (threads or processes; 0: auto).")] = 0,
    mode: Annotated[str, typer.Option(help="auto, thread or process. auto picks from the backend, device, "
                                           "core count and number of inputs; the summary shows the choice.")] = "auto",
    tile: Annotated[int, typer.Option(help="Sliced inference for huge images: tiles of this many source pixels "
                                           "(e.g. 640), merged so each object is reported once; 0: off.")] = 0,
    overlap: Annotated[float, typer.Option(help="With --tile: fraction of a tile shared by neighbours.")] = 0.2,
    tile_scales: Annotated[str, typer.Option(help="With --tile: grid levels, e.g. 1,0.5: at 0.5, tiles twice as "
                                                  "large, shrunk by half. Default 1: one level (the second look "
                                                  "below costs less for the same recall).")] = "1",
    tile_batch: Annotated[int, typer.Option(help="With --tile: tiles per inference call.")] = 4,
    full_frame: Annotated[bool, typer.Option("--full-frame/--no-full-frame",
                                             help="With --tile: also run the whole image letterboxed, for "
                                                  "objects larger than a tile.")] = True,
    tile_merge: Annotated[str, typer.Option(help="With --tile: how the tiles' boxes become one per object. views: "
                                                 "boxes that agree where their tiles overlap are one object (one "
                                                 "box per tile at most; sides from the views that saw them); nms: "
                                                 "class-wise NMS; nmm: greedy non-maximum merging (SAHI's "
                                                 "GREEDYNMM: union boxes).")] = "views",
    tile_refocus: Annotated[bool, typer.Option("--tile-refocus/--no-tile-refocus",
                                               help="With --tile: a second look, one window centred on each object "
                                                    "that every tile cut, so it is seen whole.")] = True,
    tile_near: Annotated[float, typer.Option(help="With --tile-refocus: also look again, centred, at boxes the tiles "
                                                  "found from this fraction of --conf up to it; only boxes above "
                                                  "--conf are kept. 0: off.")] = 0.5,
    fast_decode: Annotated[bool, typer.Option(help="Decode JPEGs at least twice the model input at reduced size "
                                                   "(with --nosave). Faster on large photos, but the model sees "
                                                   "other pixels, so detections differ from YOLOv5's detect.py; "
                                                   "off by default (see the README for the measured cost).")]
    = False,
    gpu_resize: Annotated[bool, typer.Option(help="On a GPU, resize images on the device too (less CPU work). "
                                                  "Resized pixels can differ from OpenCV's by a grey level, which "
                                                  "moves about 1 % of boxes slightly; off by default.")] = False,
    max_file_size: Annotated[str, typer.Option(help="Refuse (and list as failed) image files larger than this, "
                                                    "before reading them: bytes, or 500M, 2G. Videos are streamed "
                                                    "and have no limit.")] = "1G",
    max_pixels: Annotated[str, typer.Option(help="Refuse images whose header claims more pixels than this, before "
                                                 "decoding (pixel bombs): a number, or 500M. At most 1073741824, "
                                                 "OpenCV's own limit. A 13400x9528 photo is 128M.")] = "500M",
    save_txt: Annotated[bool, typer.Option(help="Write labels/<name>.txt: class xc yc w h, normalised "
                                                "(YOLO format).")] = False,
    save_conf: Annotated[bool, typer.Option(help="Add the confidence to each --save-txt line.")] = False,
    save_json: Annotated[bool, typer.Option(help="Write predictions.json in COCO results format.")] = False,
    save_csv: Annotated[bool, typer.Option(help="Write predictions.csv: path, frame, class_id, class_name, "
                                                "confidence, x1, y1, x2, y2 (source pixels).")] = False,
    save_crop: Annotated[bool, typer.Option(help="Write each box's crop to crops/<class>/<name>.jpg.")] = False,
    nosave: Annotated[bool, typer.Option(help="Do not write annotated images or videos.")] = False,
    line_thickness: Annotated[int, typer.Option(help="Box line width in pixels (0: from the image size).")] = 0,
    hide_labels: Annotated[bool, typer.Option(help="Draw boxes without labels.")] = False,
    hide_conf: Annotated[bool, typer.Option(help="Draw labels without confidences.")] = False,
    project: Annotated[str, typer.Option(help="Parent folder of the run folder.")] = "runs/detect",
    name: Annotated[str, typer.Option(help="Run folder name (exp, exp2, ... when it exists).")] = "exp",
    exist_ok: Annotated[bool, typer.Option(help="Reuse PROJECT/NAME (not while another run writes it).")] = False,
    resume: Annotated[bool, typer.Option(help="Continue the run in PROJECT/NAME, with its output settings: done "
                                              "inputs are skipped; new, changed and retryable failed ones processed; "
                                              "outputs of inputs gone from SOURCE removed.")] = False,
    retry_failed: Annotated[bool, typer.Option(help="With --resume: retry every failed input (damaged too).")] = False,
    engine: Annotated[str, typer.Option(help="local (this machine) or ray (a Ray cluster, through Ray Data; "
                                             "pip install 'yolokit[ray]').")] = "local",
    address: Annotated[str | None, typer.Option(help="With --engine ray: the cluster to join (auto, or HOST:PORT "
                                                     "of 'ray start --head'); default: start a local one.")] = None,
    gpus_per_worker: Annotated[float, typer.Option(help="With --engine ray: GPUs per inference actor.")] = 0.0,
    cpus_per_worker: Annotated[float, typer.Option(help="With --engine ray: CPUs per inference actor (also its "
                                                        "intra-op threads); 0: the cluster's CPUs / --workers.")] = 0.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Detect objects in images or videos and write annotated images, labels and a summary.

    Every input ends up processed or listed in failures.jsonl with its reason; the exit code is 1 when
    any input failed. manifest.jsonl records each finished input; --resume continues a killed run.

    Examples:\n
      yolokit run photos/ --save-txt --nosave\n
      yolokit run 'survey/**/*.jpg' --weights yolov5s.onnx --save-json --json\n
      yolokit run /shared/survey --engine ray --address auto --workers 8 --save-txt --nosave
    """
    from toolkit.jobs.run import RunOptions, format_summary
    from toolkit.jobs.run import run as run_job

    opts = RunOptions(source=source, weights=weights, backend=backend, device=device, half=half,
                      imgsz=imgsz, conf=conf, iou=iou, max_det=max_det, classes=_parse_classes(classes),
                      agnostic=agnostic_nms, save_txt=save_txt, save_conf=save_conf, save_json=save_json,
                      nosave=nosave, project=project, name=name, exist_ok=exist_ok, batch=batch,
                      workers=workers, mode=mode, resume=resume, retry_failed=retry_failed, tile=tile, overlap=overlap,
                      fast_decode=fast_decode, gpu_resize=gpu_resize,
                      max_file_size=_parse_amount(max_file_size, "--max-file-size", 1024),
                      max_pixels=_parse_amount(max_pixels, "--max-pixels", 1000),
                      tile_batch=tile_batch, full_frame=full_frame, tile_scales=_parse_scales(tile_scales),
                      tile_merge=tile_merge, tile_refocus=tile_refocus, tile_near=tile_near,
                      engine=engine, address=address, gpus_per_worker=gpus_per_worker,
                      cpus_per_worker=cpus_per_worker, augment=augment, vid_stride=vid_stride,
                      stream_timeout=stream_timeout, save_csv=save_csv, save_crop=save_crop,
                      line_thickness=line_thickness, hide_labels=hide_labels, hide_conf=hide_conf)
    # stdout carries only the summary: anything a runtime prints meanwhile (Ray prints its workers' errors
    # there) goes to stderr
    with _Progress(not json_out, "detecting") as bar, contextlib.redirect_stdout(sys.stderr):
        summary = run_job(opts, progress=bar.update)
    if json_out:
        typer.echo(json.dumps(summary.to_dict(), indent=1))
    else:
        typer.echo(format_summary(summary))
    if summary.interrupted:
        raise typer.Exit(130)
    if not summary.ok:
        raise typer.Exit(1)


@app.command()
def val(
    weights: Annotated[str | None, typer.Option(help="Model to evaluate (any format yolokit runs).")] = None,
    data: Annotated[str, typer.Option(help="A YOLO dataset yaml, or a folder with images/ and labels/.")] = "",
    backend: Annotated[str | None, typer.Option(help="Force a backend.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:N, gpu or a GPU index. Default: the "
                                                    "backend's own.")] = None,
    imgsz: Annotated[int, typer.Option(help="Inference size (long side).")] = 640,
    conf: Annotated[float, typer.Option(help="Confidence threshold for evaluation.")] = 0.001,
    iou: Annotated[float, typer.Option(help="NMS IoU threshold.")] = 0.6,
    max_det: Annotated[int, typer.Option(help="Detections per image kept.")] = 300,
    batch: Annotated[int, typer.Option(help="Images per inference batch.")] = 1,
    augment: Annotated[bool, typer.Option(help="Test-time augmentation (YOLOv5's --augment).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON on stdout.")] = False,
) -> None:
    """COCO-style mAP50-95 and mAP50 (pycocotools), precision and recall on a labelled dataset.

    Example: yolokit val --weights yolov5n.pt --data ../shared/datasets/coco128
    """
    from toolkit.jobs.val import ValOptions, format_metrics, validate

    if not data:
        raise InputError("--data is required: a dataset yaml or a folder with images/ and labels/")
    metrics = validate(ValOptions(weights=weights or "yolov5n", data=data, backend=backend, device=device,
                                  imgsz=imgsz, conf=conf, iou=iou, max_det=max_det, batch=batch, augment=augment))
    typer.echo(json.dumps(metrics, indent=1) if json_out else format_metrics(metrics))


@app.command()
def info(model: Annotated[str, typer.Argument(help="A .pt checkpoint, exported artifact or model name.")],
         json_out: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False) -> None:
    """Show a model's classes, stride, input size, batch, precision, parameters and GFLOPs."""
    from toolkit.jobs.info import model_info

    data = model_info(model)
    if json_out:
        typer.echo(json.dumps(data, indent=1))
        return
    for k, v in data.items():
        if k == "names":
            v = f"{len(v)} classes: " + ", ".join(list(v.values())[:10]) + (" ..." if len(v) > 10 else "")
        elif k in ("nms", "int8"):
            v = ", ".join(f"{a} {b}" for a, b in v.items())
        typer.echo(f"{k:>16}: {v}")


@app.command()
def export(
    weights: Annotated[str, typer.Argument(help="A .pt checkpoint, architecture yaml, model name (yolov5n) or "
                                                "built-in config (yolov5s.yaml, random weights).")],
    to: Annotated[str, typer.Option(help="Format: onnx, openvino or trt (TensorRT engine).")],
    output: Annotated[str | None, typer.Option("-o", "--output", help="Artifact path (default: beside the "
                                               "weights: NAME.onnx, NAME_openvino/, NAME.engine); the format's "
                                               "suffix is added when missing (-o m gives m.onnx).")] = None,
    imgsz: Annotated[str, typer.Option(help="Input size: 640, or H,W like 384,640 (multiples of the stride). "
                                            "Dynamic exports take any shape up to its long side; --static "
                                            "fixes it; TensorRT tunes its kernels for it.")]
    = "640",
    batch: Annotated[int, typer.Option(help="With --static: the fixed batch (0: 1). TensorRT: the batch its "
                                            "profile is tuned for (0: the batch a GPU run uses, 32, within "
                                            "--max-batch).")] = 0,
    dynamic: Annotated[bool, typer.Option("--dynamic/--static", help="Dynamic (default): any batch, height and "
                                          "width, so each image is letterboxed to the same rectangle as with the "
                                          ".pt and detections match it. --static: exactly --batch images at "
                                          "--imgsz (other aspect ratios are padded to it, which changes "
                                          "detections). TensorRT's default profile: batch 1 to --max-batch, "
                                          "inputs 32x32 up to the long side of --imgsz, tuned for --batch at "
                                          "--imgsz.")]
    = True,
    max_batch: Annotated[int, typer.Option(help="Largest batch of a dynamic TensorRT engine's profile.")] = 32,
    half: Annotated[bool, typer.Option(help="FP16 weights and math.")] = False,
    int8: Annotated[bool, typer.Option(help="INT8 post-training quantization (openvino; needs --data and "
                                            "yolokit[int8]).")] = False,
    data: Annotated[str | None, typer.Option(help="Calibration images for --int8: a folder, glob or list, or a "
                                                  "labelled dataset (yaml, or a folder with images/ and labels/): "
                                                  "then FP32 and INT8 mAP50-95 are measured on it.")] = None,
    calib_images: Annotated[int, typer.Option(help="With --int8: at most this many calibration images, evenly "
                                                   "spaced over the sorted images of --data.")] = 300,
    fraction: Annotated[float, typer.Option(help="With --int8: at most this fraction of the images of --data "
                                                 "calibrate (with --calib-images, the smaller count wins).")] = 1.0,
    max_drop: Annotated[float | None, typer.Option(help="With --int8 and a labelled --data: accuracy-controlled "
                                                        "quantization (NNCF) returns layers to float until mAP50-95 "
                                                        "drops by at most this much (e.g. 0.01); if it cannot, the "
                                                        "export fails (exit 6).")] = None,
    max_drop_steps: Annotated[int | None, typer.Option(help="With --max-drop: at most this many groups of layers "
                                                             "back to float (each step re-measures mAP; a strict "
                                                             "--max-drop can take an hour on a small CPU).")] = None,
    nms: Annotated[bool, typer.Option(help="NMS inside the model (end-to-end): outputs num_dets, det_boxes, "
                                           "det_scores, det_classes with --conf, --iou, --max-det and "
                                           "--agnostic-nms baked in (see the README).")] = False,
    conf: Annotated[float | None, typer.Option(help="With --nms: confidence threshold (default 0.25).")] = None,
    iou: Annotated[float | None, typer.Option(help="With --nms: NMS IoU threshold (default 0.45).")] = None,
    max_det: Annotated[int | None, typer.Option(help="With --nms: detections kept per image (default "
                                                     "1000).")] = None,
    agnostic_nms: Annotated[bool, typer.Option(help="With --nms: class-agnostic NMS.")] = False,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 17,
    simplify: Annotated[bool, typer.Option("--simplify/--no-simplify", help="Simplify the ONNX graph with "
                                           "onnxslim when it is installed.")] = True,
    workspace: Annotated[float, typer.Option(help="TensorRT builder workspace, GB.")] = 4.0,
    device: Annotated[str | None, typer.Option(help="Device for the artifact: cpu (onnx, openvino) or cuda:N "
                                               "(trt, onnx on GPU). Default: cpu, cuda for trt.")] = None,
    parity_data: Annotated[str | None, typer.Option(help="Images for the parity check (first 16 of a folder, "
                                                    "glob or list); default: the sample photos shipped with "
                                                    "yolokit, mirrored, and their mosaic.")]
    = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Export a model to ONNX, OpenVINO IR or a TensorRT engine, then check it against PyTorch FP32.

    Exports are dynamic by default, so they reproduce the .pt's detections. Every export ends with a parity check
    on real photos that compares at least 50 detections with PyTorch FP32; a failed check exits with code 6.

    Examples:\n
      yolokit export yolov5n.pt --to onnx\n
      yolokit export yolov5n.pt --to openvino --int8 --data ../shared/datasets/coco128\n
      yolokit export yolov5n.pt --to onnx --nms --conf 0.001 --iou 0.6 --max-det 300\n
      yolokit export yolov5n.pt --to onnx --static --imgsz 384,640 --batch 4\n
      yolokit export yolov5n.pt --to trt --half --batch 8 --device cuda
    """
    from backends.base import ExportOptions
    from toolkit.jobs.export import export as run_export
    from toolkit.jobs.export import format_report

    try:
        sizes = [int(v) for v in imgsz.replace(" ", "").split(",") if v]
    except ValueError:
        raise InputError(f"--imgsz takes 640 or H,W like 384,640, got {imgsz!r}") from None
    if len(sizes) not in (1, 2):
        raise InputError(f"--imgsz takes 640 or H,W like 384,640, got {imgsz!r}")
    size = (sizes[0], sizes[-1])
    parity: list[str] | None = None
    if parity_data:
        from toolkit.io.sources import list_sources

        parity = [r.path for r in list_sources(parity_data).items if r.frame is None][:16]
        if not parity:
            raise InputError(f"{parity_data}: no images for the parity check")
    given = [f for f, v in (("--conf", conf), ("--iou", iou), ("--max-det", max_det),
                            ("--agnostic-nms", agnostic_nms or None)) if v is not None]
    if given and not nms:
        raise InputError(f"{', '.join(given)} set what NMS inside the model keeps: add --nms")
    baked = None
    if nms:
        from toolkit.meta import BakedNMS

        default = BakedNMS()
        baked = BakedNMS(conf=default.conf if conf is None else conf, iou=default.iou if iou is None else iou,
                         max_det=default.max_det if max_det is None else max_det, agnostic=agnostic_nms)
    opts = ExportOptions(imgsz=size, batch=batch, dynamic=dynamic, max_batch=max_batch, half=half, int8=int8,
                         calib_data=data, opset=opset, simplify=simplify, workspace_gb=workspace,
                         device=device or "",  # "": the format's own default device (a GPU for engines)
                         nms=baked, calib_images=calib_images, fraction=fraction, max_drop=max_drop,
                         max_drop_iterations=max_drop_steps)
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the report (NNCF prints progress bars)
        report = run_export(weights, to, Path(output) if output else None, opts, parity)
    typer.echo(json.dumps(report.to_dict(), indent=1, default=str) if json_out else format_report(report))


def _csv(text: str | None, kind: type = str) -> list | None:  # type: ignore[type-arg]
    return [kind(v) for v in text.replace(" ", "").split(",") if v] if text else None


@app.command()
def bench(
    weights: Annotated[str, typer.Option(help="The .pt checkpoint to compare (artifacts are exported from it).")],
    source: Annotated[str, typer.Option(help="Folder (or glob/list) of images to run on.")],
    data: Annotated[str | None, typer.Option(help="A labelled dataset (yaml or folder): accuracy as mAP50-95 "
                                                  "on its images instead of agreement with the baseline.")] = None,
    backends_: Annotated[str | None, typer.Option("--backends", help="e.g. torch,onnx,openvino,trt "
                                                                     "(default: every installed one).")] = None,
    precision: Annotated[str | None, typer.Option(help="e.g. fp32,fp16,int8 (default: what each backend "
                                                       "supports on this device).")] = None,
    batch: Annotated[str, typer.Option(help="Batch sizes, e.g. 1,8.")] = "1",
    modes: Annotated[str, typer.Option(help="From seq,thread,process,auto.")] = "seq,auto",
    workers: Annotated[str, typer.Option(help="Worker counts for thread/process modes, e.g. 1,2 (0: auto).")] = "0",
    images: Annotated[int, typer.Option(help="How many images.")] = 100,
    repeat: Annotated[int, typer.Option(help="Fresh-process runs per configuration (median reported).")] = 3,
    out: Annotated[str, typer.Option(help="Where results.json/.csv, report.md and charts go.")] = "runs/bench",
    imgsz: Annotated[int, typer.Option(help="Inference size.")] = 640,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    fast_decode: Annotated[bool, typer.Option(help="Decode large JPEGs at reduced size in every configuration "
                                                   "(faster, changes detections; off by default).")] = False,
    nms: Annotated[bool, typer.Option("--nms/--no-nms", help="Also run every exported configuration with NMS "
                                                            "inside the model (end-to-end).")] = True,
) -> None:
    """Which backend, precision, batch and mode should I use here, and what do I lose?

    Runs each configuration in a fresh process against the PyTorch baseline (FP32 on a CPU, FP16 on a GPU),
    exporting what it needs once (cached), and writes a ranked report with speed-ups and accuracy.

    Example: yolokit bench --weights yolov5n.pt --source coco128/images/train2017 --images 100
    """
    from toolkit.jobs.bench import BenchOptions
    from toolkit.jobs.bench import bench as run_bench

    opts = BenchOptions(weights=weights, source=source, data=data, backends=_csv(backends_),
                        precisions=_csv(precision), batches=_csv(batch, int) or [1], modes=_csv(modes) or ["seq"],
                        workers=_csv(workers, int) or [0], images=images, repeat=repeat, out=out, imgsz=imgsz,
                        device=device, fast_decode=fast_decode, nms=nms)
    result = run_bench(opts, progress=lambda m: typer.echo(m, err=True))
    typer.echo((Path(out) / "report.md").read_text())
    if any("error" in r for r in result["rows"]):
        raise typer.Exit(1)


@weights_app.command("list")
def weights_list() -> None:
    """List the official checkpoints yolokit knows, and which are in the cache."""
    from toolkit.model.weights import MANIFEST, default_cache_dir, verify

    cache = default_cache_dir()
    for entry in MANIFEST.values():
        state = "cached" if verify(cache / entry.name, entry) else ""
        typer.echo(f"{entry.name:<12} {entry.size / 1e6:7.1f} MB  {entry.sha256[:12]}…  {state}")
    typer.echo(f"cache: {cache}")


@weights_app.command("download")
def weights_download(
    names: Annotated[list[str], typer.Argument(help="Names like yolov5n yolov5s.")],
    cache_dir: Annotated[str | None, typer.Option(help="Where to put them (default: the cache).")] = None,
    url: Annotated[str | None, typer.Option(help="Download from this URL instead (one name only).")] = None,
) -> None:
    """Download official checkpoints, verify size and sha256, and store them atomically in the cache."""
    from toolkit.model.weights import download

    if url and len(names) != 1:
        raise InputError("--url takes exactly one name")
    for n in names:
        path = download(n, cache_dir=Path(cache_dir) if cache_dir else None, url=url)
        typer.echo(f"{path}  (verified)")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the Typer app and map yolokit errors to exit codes."""
    from toolkit.io.decode import quiet_decoders

    quiet_decoders()  # this process is the CLI's: failures are reported by yolokit, one line each
    try:
        rc = app(args=argv, standalone_mode=False)
    except YolokitError as e:
        _err(str(e))
        return e.exit_code
    except typer.Exit as e:
        return int(e.exit_code or 0)
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except Exception as e:
        # usage errors from the command-line parser (click, vendored by recent typer): shown, exit code 2
        show = getattr(e, "show", None)
        if callable(show) and isinstance(getattr(e, "exit_code", None), int):
            show()
            return 2
        if type(e).__name__ == "Abort":
            _err("aborted")
            return 130
        raise
    return rc if isinstance(rc, int) else 0


def entry() -> None:
    """``yolokit`` and ``python -m toolkit.cli``. After an interrupt (130: summary and outputs written, workers
    stopped) the process ends at once: the interpreter's shutdown cannot turn 130 into a death by SIGINT."""
    rc = main()
    if rc == 130:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a closed pipe must not change the exit code
                stream.flush()
        os._exit(130)
    sys.exit(rc)


if __name__ == "__main__":
    entry()
