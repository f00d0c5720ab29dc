"""``yolokit export``: a model to ONNX, OpenVINO IR or a TensorRT engine, then checked against PyTorch FP32. Its
options are the export's own (backends.base.ExportOptions); the NMS it can bake in takes the declared detection
defaults (:data:`toolkit.options.CONF` and the others)."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from toolkit.cli.root import app
from toolkit.errors import InputError
from toolkit.options import CONF, IMGSZ, IOU, MAX_DET, ascii_digits


@app.command()
def export(
    weights: Annotated[str, typer.Argument(metavar="WEIGHTS", help="A .pt checkpoint, architecture yaml, model name "
                                                "(yolov5n) or built-in config (yolov5s.yaml, random weights).")],
    to: Annotated[str, typer.Option(help="Format: onnx, openvino or trt (TensorRT engine).")],
    output: Annotated[str | None, typer.Option("-o", "--output", help="Artifact path (default: beside the "
                                               "weights: NAME.onnx, NAME_openvino/, NAME.engine); the format's "
                                               "suffix is added when missing (-o m gives m.onnx).")] = None,
    imgsz: Annotated[str, typer.Option(help="Input size: 640, or H,W like 384,640 (multiples of the stride). "
                                            "Dynamic exports take any shape up to its long side; --static "
                                            "fixes it; TensorRT tunes its kernels for it.")]
    = str(IMGSZ.default),
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
                                            "yolokit\\[int8]).")] = False,
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
    max_drop_steps: Annotated[int | None, typer.Option(help="With --max-drop: return at most this many groups of "
                                                             "layers to float (each step re-measures mAP on --data, "
                                                             "and a step that makes it worse re-ranks the rest: a "
                                                             "strict --max-drop can take an hour on a small CPU). "
                                                             "Default: no limit.")] = None,
    nms: Annotated[bool, typer.Option(help="NMS inside the model (end-to-end): outputs num_dets, det_boxes, "
                                           "det_scores, det_classes with --conf, --iou, --max-det and "
                                           "--agnostic-nms baked in. A run can then raise --conf and lower "
                                           "--max-det, not the reverse.")] = False,
    conf: Annotated[float | None, typer.Option(help=f"With --nms: {CONF.help} Default {CONF.default:g}.")] = None,
    iou: Annotated[float | None, typer.Option(help=f"With --nms: {IOU.help} Default {IOU.default:g}.")] = None,
    max_det: Annotated[int | None, typer.Option(help=f"With --nms: detections kept per image, the most confident. "
                                                     f"Default {MAX_DET.default}.")] = None,
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

    parts = imgsz.replace(" ", "").split(",")
    if not all(ascii_digits(p) for p in parts):  # "640," or "1_0" were taken
        raise InputError(f"--imgsz takes 640 or H,W like 384,640, got {imgsz!r}")
    sizes = [int(p) for p in parts]
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
