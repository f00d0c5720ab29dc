"""``yolokit val``, ``info``, ``bench`` and ``weights``: what one does with a model besides running it. val's and
bench's options are built from the declarations of :class:`toolkit.jobs.val.ValOptions` and
:class:`toolkit.jobs.bench.BenchOptions` (which take the detector's own declarations for the settings they share)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from toolkit.cli.params import collect, command, flag
from toolkit.cli.root import app, weights_app
from toolkit.engine.core import DetectorConfig
from toolkit.errors import InputError
from toolkit.jobs.bench import BenchOptions
from toolkit.jobs.val import ValOptions
from toolkit.options import declared

DOWNLOAD_TIMEOUT = declared(DetectorConfig, "download_timeout").default


def val(**kwargs: Any) -> None:
    """mAP50-95, mAP50, P and R on a labelled dataset, as YOLOv5's val.py computes them (or --protocol coco).

    The defaults are YOLOv5's val.py's (--conf 0.001 --iou 0.6 --max-det 300, multi-label NMS, rectangular batches
    of 32), so the numbers are the ones val.py prints.

    Images or label files that cannot be used are listed with their reasons and the rest scored; the exit code is
    then 1, as for a run with failed inputs.

    Example: yolokit val --weights yolov5n.pt --data ../shared/datasets/coco128
    """
    from toolkit.jobs.val import format_metrics, validate

    json_out = kwargs.pop("json_out")
    opts = collect(ValOptions, kwargs)
    metrics = validate(opts)
    typer.echo(json.dumps(metrics, indent=1) if json_out else format_metrics(metrics))
    if metrics.get("failed"):
        raise typer.Exit(1)


app.command()(command(val, ValOptions, [flag("json_out", "Print the metrics as JSON on stdout.", ("--json",))]))


@app.command()
def info(model: Annotated[str, typer.Argument(metavar="MODEL",
                                              help="A .pt checkpoint, exported artifact or model name.")],
         json_out: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False) -> None:
    """Show a model's classes, stride, input size, batch, precision and how it was made (parameters and GFLOPs for a
    .pt checkpoint)."""
    from toolkit.jobs.info import model_info

    data = model_info(model)
    if json_out:
        typer.echo(json.dumps(data, indent=1))
        return
    for k, v in data.items():
        if k == "names":
            v = f"{len(v)} classes: " + ", ".join(list(v.values())[:10]) + (" ..." if len(v) > 10 else "")
        elif k in ("nms", "int8", "runtime_versions") and isinstance(v, dict):
            v = ", ".join(f"{a} {b}" for a, b in v.items()) or "-"
        elif v is None and k in ("max_batch", "max_imgsz") and data.get(k.removeprefix("max_")) is not None:
            v = "fixed (static)"  # a static model takes its one size and batch: 'no limit' said the opposite
        elif v is None and k in ("imgsz", "batch", "max_batch", "max_imgsz"):
            v = "any (dynamic)" if k in ("imgsz", "batch") else "no limit"  # None read as a missing value
        typer.echo(f"{k:>16}: {v}")


def bench(**kwargs: Any) -> None:
    """Which backend, precision, batch and mode should I use here, and what do I lose?

    Runs each configuration in a fresh process against the PyTorch baseline (FP32 on a CPU, FP16 on a GPU),
    exporting what it needs once (cached), and writes a ranked report with speed-ups and accuracy into --out, or into
    a new folder beside it (runs/bench2, ...) when --out holds files.

    Images (or label files) that cannot be used are listed in the report with their reasons and the rest measured;
    the exit code is then 1, as it is when a configuration failed and for a run with failed inputs.

    Example: yolokit bench --weights yolov5n.pt --source coco128/images/train2017 --images 100
    """
    from toolkit.jobs.bench import bench as run_bench

    opts = collect(BenchOptions, kwargs)
    result = run_bench(opts, progress=lambda m: typer.echo(m, err=True))
    typer.echo((Path(result["out"]) / "report.md").read_text())
    if result["left_out"] or any("error" in r for r in result["rows"]):  # as run and val when inputs failed
        raise typer.Exit(1)


app.command()(command(bench, BenchOptions))


@weights_app.command("list")
def weights_list() -> None:
    """List the official checkpoints yolokit knows, and where each is found here (the cache, $YOLOKIT_SHARED or a
    shared folder beside this one), checksum checked, without downloading."""
    from toolkit.model.weights import MANIFEST, default_cache_dir, found_locally

    cache = default_cache_dir()
    for entry in MANIFEST.values():
        path = found_locally(entry.name)
        state = "" if path is None else "cached" if path.parent == cache else f"found: {path}"
        typer.echo(f"{entry.name:<12} {entry.size / 1e6:7.1f} MB  {entry.sha256[:12]}…  {state}".rstrip())
    typer.echo(f"cache: {cache}")


@weights_app.command("download")
def weights_download(
    names: Annotated[list[str], typer.Argument(metavar="NAMES...", help="Names like yolov5n yolov5s.")],
    cache_dir: Annotated[str | None, typer.Option(help="Where to put them (default: the cache).")] = None,
    url: Annotated[str | None, typer.Option(help="Download from this URL instead (one name only).")] = None,
    download_timeout: Annotated[float, typer.Option(help="Seconds one checkpoint's download may take in all, however "
                                                         "slowly its bytes arrive (an interrupted download resumes "
                                                         "from its .part file).")] = DOWNLOAD_TIMEOUT,
) -> None:
    """Download official checkpoints, verify size and sha256, and store them atomically in the cache."""
    from toolkit.model.weights import download

    if url is not None and len(names) != 1:
        raise InputError("--url takes exactly one name")
    if url is not None and not url.strip():
        raise InputError("--url is empty; give the checkpoint's address, or leave --url out for the official one")
    if not download_timeout > 0 or download_timeout == float("inf"):  # nan is not > 0
        raise InputError(f"--download-timeout must be positive, got {download_timeout:g}")
    for n in names:
        path = download(n, cache_dir=Path(cache_dir) if cache_dir else None, url=url, deadline=download_timeout)
        typer.echo(f"{path}  (verified)")
