"""``yolokit bench``: every backend, precision, batch and concurrency mode side by side, with accuracy.

Each configuration runs in a fresh subprocess (clean start-up time and peak memory), over the same images,
``repeat`` times; the median is reported with min-max. The baseline is the checkpoint run by its own backend
(PyTorch), sequentially, at that backend's default precision: FP32 on a CPU, FP16 on a GPU. Accuracy: mAP50-95
when any image has a YOLO label file (one without is a background image), else agreement with the baseline's boxes
(precision / recall / F1 at IoU 0.5, same class). Exported artifacts are cached by checkpoint hash and options.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from toolkit.devices import is_gpu
from toolkit.engine.core import PRECISIONS, DetectorConfig
from toolkit.errors import InputError, OutputError, first_line
from toolkit.io.files import os_reason
from toolkit.jobs.bench.ceiling import Parts, parts_in_fresh_process, startup_seconds
from toolkit.jobs.bench.child import MODE_ARGS
from toolkit.jobs.bench.report import agreement, charts, map50_95, mark_pareto, report, versions, write_csv
from toolkit.jobs.val import ValOptions
from toolkit.options import REQUIRED, check, declared, option


@dataclass
class BenchOptions:
    """``yolokit bench``'s options; the model and detection settings are the detector's own declarations."""

    weights: str = declared(DetectorConfig, "weights").field(
        default=REQUIRED, help="The .pt checkpoint to compare (artifacts are exported from it).")
    source: str = option(REQUIRED, "Folder (or glob/list) of images to run on.")
    data: str | None = option(None, "A labelled dataset (yaml or folder): its images are benchmarked instead of "
                              "--source's (which then only calibrates INT8 exports), accuracy as mAP50-95.")
    backends: list[str] | None = option(None, "e.g. torch,onnx,openvino,trt (default: every installed one).",
                                        text="strs")
    precisions: list[str] | None = option(None, "e.g. fp32,fp16,int8 (default: what each backend supports on this "
                                          "device).", cli_name="precision", text="strs")
    batches: list[int] = option([1], "Batch sizes, e.g. 1,8.", cli_name="batch", text="ints", lo=1)
    modes: list[str] = option(["seq", "auto"], "From seq,thread,process,auto.", text="strs", choices=tuple(MODE_ARGS))
    workers: list[int] = option([0], "Worker counts for thread/process modes, e.g. 1,2 (0: auto).", text="ints", lo=0)
    images: int = option(100, "How many images.", lo=1)
    repeat: int = option(3, "Fresh-process runs per configuration (median reported).", lo=1)
    out: str = option("runs/bench", "Where results.json/.csv, report.md and charts go: a new folder beside it "
                      "(runs/bench2, runs/bench3, ...) when it holds files.")
    exist_ok: bool = option(False, "Write into --out even when it holds files (a previous bench's results there are "
                            "replaced).")
    imgsz: int = declared(DetectorConfig, "imgsz").field()
    device: str = declared(DetectorConfig, "device").field(default="cpu", help="cpu or cuda.")
    fast_decode: bool = declared(DetectorConfig, "fast_decode").field(
        help="Decode large JPEGs at reduced size in every configuration (faster, changes detections; off by default).")
    nms: bool = option(True, "Also run every exported configuration with NMS inside the model (end-to-end).",
                       decls=("--nms/--no-nms",))
    ceiling: bool = option(True, "Also measure the machine's ceiling for each model (decode, letterbox, the model, "
                           "NMS and start-up, as scripts/ceiling.py does) and give each configuration's share of it.",
                           decls=("--ceiling/--no-ceiling",))

    def __post_init__(self) -> None:
        check(self)
        import backends

        unknown = [b for b in self.backends or () if b not in backends.REGISTRY]
        if unknown:  # found after the PyTorch baseline had run, in the report
            raise InputError(f"--backends {unknown[0]}: no such backend; choose from {', '.join(backends.REGISTRY)}")
        known = {p for b in backends.REGISTRY.values() for ps in b.PRECISIONS.values() for p in ps} | set(RUN_ONLY)
        odd = [p for p in self.precisions or () if p not in known]
        if odd:  # "fp7" was benchmarked, under that name
            raise InputError(f"--precision {odd[0]}: no such precision; choose from {', '.join(sorted(known))}")
        if Path(self.out).exists() and not Path(self.out).is_dir():
            raise OutputError(f"--out {self.out}: is a file, where the bench writes a folder; choose another --out")


RUN_ONLY = tuple(p for p in PRECISIONS if p not in ("auto", "fp32"))  # computed in, not exported: bf16


@dataclass
class Config:
    backend: str
    precision: str
    batch: int
    mode: str
    workers: int
    nms: bool = False  # an artifact with NMS inside (exported at the bench's NMS settings)

    @property
    def name(self) -> str:
        w = f" w{self.workers}" if self.workers else ""
        return f"{self.backend} {self.precision}{' +nms' if self.nms else ''} b{self.batch} {self.mode}{w}"


def _kind(device: str) -> str:
    return "cuda" if is_gpu(device) else "cpu"


def _available(device: str) -> list[str]:
    """Installed backends that run on this device."""
    import backends

    return [n for n, b in backends.REGISTRY.items() if b.is_available() and _kind(device) in b.PRECISIONS]


def _baseline(opts: BenchOptions) -> Config:
    """The checkpoint run by its own backend, sequentially: plain PyTorch as people run it, FP32 on a CPU and FP16
    on a GPU where the backend runs FP16 there (its fastest plain precision; yolokit's own default is FP32)."""
    import backends

    name = backends.checkpoint_backend()
    runs = backends.REGISTRY[name].PRECISIONS[_kind(opts.device)]
    return Config(name, "fp16" if _kind(opts.device) != "cpu" and "fp16" in runs else runs[0], 1, "seq", 0)


def grid(opts: BenchOptions) -> list[Config]:
    import backends

    names = opts.backends or _available(opts.device)
    baseline = _baseline(opts)
    out = []
    for b in names:
        module = backends.REGISTRY.get(b)  # an unknown name is recorded as that configuration's error
        defaults = module.PRECISIONS.get(_kind(opts.device), ()) if module is not None else ()
        if b == baseline.backend:
            defaults = defaults[:1]  # the checkpoint's own backend: its default precision
        elif module is not None and _kind(opts.device) == "cpu":  # and what it can compute in besides (bf16)
            defaults = (*defaults, *(p for p in module.RUN_PRECISIONS if p not in ("auto", "fp32", *defaults)))
        for p in opts.precisions or defaults or ("fp32",):
            for batch in opts.batches:
                for mode in opts.modes:
                    if mode not in MODE_ARGS:
                        raise InputError(f"unknown mode {mode!r}; choose from {', '.join(MODE_ARGS)}")
                    for w in opts.workers if mode in ("thread", "process") else [0]:
                        out.append(Config(b, p, batch, mode, w))
                        if opts.nms and module is not None and module.EXPORTS and b != baseline.backend:
                            out.append(Config(b, p, batch, mode, w, nms=True))
    if not any(asdict(c) == asdict(baseline) for c in out):
        out.insert(0, baseline)
    else:
        out.sort(key=lambda c: asdict(c) != asdict(baseline))
    return out


def nms_settings(labelled: bool) -> dict[str, Any]:
    """The NMS every configuration runs with (and an end-to-end artifact is exported with): yolokit val's on
    labelled images, detect.py's otherwise; val's detections per image (300)."""
    val, run = ValOptions(), DetectorConfig()
    return {"conf": val.conf if labelled else run.conf, "iou": val.iou if labelled else run.iou,
            "max_det": val.max_det}


def measured(opts: BenchOptions, labelled: bool) -> dict[str, Any]:
    """What the figures are of, for the report and results.json: where the images came from (with --data its val
    split; --source is then not benchmarked), the accuracy measure and its protocol, and the NMS every configuration
    ran with (val's conf 0.001 on labelled images, detect.py's 0.25 otherwise): none of it was stated."""
    if labelled:
        accuracy = "mAP50-95"
        protocol = (f"pycocotools COCOeval bbox, IoU 0.50:0.95, area all, maxDets {ValOptions().max_det}, on each "
                    f"configuration's detections with each image letterboxed alone, as yolokit val --protocol coco "
                    f"scores them (yolokit val's default protocol, val.py's rectangular batches, is another); an "
                    f"image without a label file has no objects")
    else:
        accuracy = "agreement with the baseline"
        protocol = ("precision, recall and F1 of each configuration's boxes against the baseline's (IoU 0.5, same "
                    "class, one to one): no image has a label file")
    return {"data": opts.data or None, "source": opts.source or None, "source_benchmarked": not opts.data,
            "accuracy": accuracy, "protocol": protocol, **nms_settings(labelled), "multi_label": labelled,
            "end_to_end": opts.nms}


def exported_precision(cfg: Config) -> str:
    """The precision of the artifact a configuration runs: its own, or FP32 for one the runtime computes in from
    an FP32 model (``--precision bf16``)."""
    return "fp32" if cfg.precision in RUN_ONLY else cfg.precision


def run_precision(cfg: Config) -> str:
    """The ``--precision`` a configuration runs its artifact at: bf16, or the model's own (auto)."""
    return cfg.precision if cfg.precision in RUN_ONLY else "auto"


def artifact(opts: BenchOptions, cfg: Config, cache: Path, calib: str, labelled: bool = False,
             reuse: Sequence[Path] = ()) -> str:
    """The model file for a configuration, exported once and cached by checkpoint hash and options: into
    ``cache``, unless one of the folders ``reuse`` (earlier benches' caches) has it."""
    import backends
    from backends.base import ExportOptions
    from toolkit.jobs.export import export
    from toolkit.meta import BakedNMS
    from toolkit.model.weights import sha256_file

    module = backends.get_backend(cfg.backend)  # an unknown name is a clear InputError
    if cfg.backend == _baseline(opts).backend:
        return opts.weights
    precision = exported_precision(cfg)
    weights = Path(opts.weights)
    digest = sha256_file(weights)[:12] if weights.is_file() else hashlib.sha256(opts.weights.encode()).hexdigest()[:12]
    nms = BakedNMS(**nms_settings(labelled)) if cfg.nms else None
    tag = f"_nms{nms.conf:g}_{nms.iou:g}_{nms.max_det}" if nms else ""
    name = module.default_name(f"{digest}_{precision}_{opts.imgsz}{tag}", "_dyn")
    path = next((d / name for d in reuse if (d / name).exists()), cache / name)
    if not path.exists():
        eo = ExportOptions(imgsz=(opts.imgsz, opts.imgsz), dynamic=True, half=precision == "fp16",
                           int8=precision == "int8", calib_data=calib if precision == "int8" else None,
                           device=opts.device, nms=nms)
        export(opts.weights, cfg.backend, path, eo)
    return str(path)



# ------------------------------------------------------------------------------------------- parent side
def bench(opts: BenchOptions, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the grid and write results.json, results.csv, report.md and charts into ``opts.out``."""
    from toolkit.io.sources import list_sources

    say = progress or (lambda _msg: None)
    import backends
    from toolkit.model.configs import is_builtin_config, resolve_model

    source = resolve_model(opts.weights)
    found = backends.content_backend(source)  # an ONNX file ran as "torch"; one named .pt was refused as --backend's
    if (source.suffix not in (".pt", ".pth") and not is_builtin_config(source.name)) or \
            found not in (None, backends.checkpoint_backend()):
        raise InputError(f"--weights {opts.weights}: yolokit bench compares the artifacts it exports from a .pt "
                         f"checkpoint with the .pt itself; give the checkpoint (yolov5n.pt), not an export")
    from toolkit.engine.detector import Detector

    # the baseline, loaded once before the grid: an unsafe checkpoint or a device that is not there is one line
    # (exit 3, exit 4), where every configuration failed in turn and the run ended with exit 1 and an empty report
    with Detector(str(source), backend=backends.checkpoint_backend(), device=opts.device):
        pass
    if opts.data:  # a labelled dataset: its images, so accuracy is mAP
        from toolkit.jobs.valdata import dataset_images

        paths = [str(p.resolve()) for p in dataset_images(opts.data)[0][: opts.images]]
    else:
        refs = [r for r in list_sources(opts.source).items if r.frame is None][: opts.images]
        paths = [str(Path(r.path).resolve()) for r in refs]
    labelled = labelled_images(paths, opts.data)
    if opts.data and opts.source:  # the images are the dataset's: --source was silently not benchmarked
        say(f"--data {opts.data}: benchmarking its images; --source {opts.source} is not benchmarked (only INT8 "
            f"exports are calibrated on it)")
    paths, left_out = _readable(paths, labelled)  # whenever labels are scored: one bad file ended the bench
    if not paths:
        raise InputError(f"{opts.data or opts.source}: no images to benchmark"
                         + (f" ({len(left_out)} could not be read: {left_out[0]['path']}: {left_out[0]['reason']})"
                            if left_out else ""))
    out = claim_folder(Path(opts.out), opts.exist_ok)
    if out != Path(opts.out):
        say(f"{opts.out} holds files: this bench writes into {out} (--exist-ok writes into {opts.out})")
    reuse = [f / "artifacts" for f in series(Path(opts.out)) if f != out]  # earlier benches' exports
    rows: list[dict[str, Any]] = []
    ceilings: dict[tuple[str, str], Parts] = {}
    configs = grid(opts)
    for i, cfg in enumerate(configs, 1):
        say(f"[{i}/{len(configs)}] {cfg.name}")
        row: dict[str, Any] = {"config": cfg.name, **asdict(cfg)}
        try:
            model = artifact(opts, cfg, out / "artifacts", opts.source, labelled, reuse)
            spec = {"model": model, "device": opts.device, "imgsz": opts.imgsz, "paths": paths,
                    "batch": cfg.batch, "mode": cfg.mode, "workers": cfg.workers, **nms_settings(labelled),
                    "multi_label": labelled, "fast_decode": opts.fast_decode, "precision": run_precision(cfg)}
            runs = [_spawn(spec) for _ in range(opts.repeat)]
        except Exception as e:  # recorded; the bench goes on
            row["error"] = f"{type(e).__name__}: {first_line(e)}"
            rows.append(row)
            say(f"    failed: {row['error']}")
            continue
        for k in ("img_s", "steady_img_s", "p50_ms", "p95_ms", "startup_s", "raw_img_s", "peak_rss_mb"):
            vals = [float(r[k]) for r in runs]
            row[k] = statistics.median(vals)
            row[f"{k}_min"], row[f"{k}_max"] = min(vals), max(vals)
        row["gpu_peak_mb"] = runs[-1]["gpu_peak_mb"]
        row["shapes"] = runs[-1].get("shapes")
        row["first_calls_s"] = statistics.median(float(r.get("first_calls_s", 0.0)) for r in runs)
        row["plan"] = runs[-1]["plan"]
        if opts.ceiling and opts.device == "cpu":  # the machine's ceiling for this model, measured once
            key = (model, run_precision(cfg))
            try:
                if key not in ceilings:
                    say(f"    measuring the ceiling of {Path(model).name} ({key[1]})")
                    ceilings[key] = parts_in_fresh_process(model, paths, len(paths), key[1], opts.imgsz)
                    ceilings[key].startup = startup_seconds(model, 0)[0]
                row["ceiling_img_s"] = len(paths) / ceilings[key].ceiling_seconds(len(paths), save=False)
                row["ceiling_share"] = row["img_s"] / row["ceiling_img_s"]
            except Exception as e:  # the ceiling is extra: the row keeps its own measurements
                say(f"    no ceiling: {first_line(e)}")
        row["_dets"] = runs[-1]["detections"]
        rows.append(row)
        say(f"    {row['img_s']:.1f} img/s (steady {row['steady_img_s']:.1f}, raw model {row['raw_img_s']:.1f})")
    base = rows[0] if "error" not in rows[0] else None
    for row in rows:
        if "_dets" not in row:
            continue
        row["speedup"] = row["img_s"] / base["img_s"] if base else None
        if labelled:
            row["map50_95"] = map50_95(paths, row["_dets"])
        if base is not None:
            row.update({f"agree_{k}": v for k, v in agreement(base["_dets"], row["_dets"]).items()})
    for row in rows:
        row.pop("_dets", None)
    mark_pareto(rows)
    if labelled and base is not None:
        for row in rows:
            if row.get("map50_95") is not None:
                row["map_delta"] = row["map50_95"] - base["map50_95"]
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cores": os.cpu_count(), "python": platform.python_version(), "device": opts.device,
               "versions": versions()}
    result = {"out": str(out), "machine": machine, "options": asdict(opts), "images": len(paths), "left_out": left_out,
              "measured": measured(opts, labelled), "rows": rows, "charts": charts(rows, out, len(paths))}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    write_csv(out / "results.csv", rows)
    (out / "report.md").write_text(report(result))
    return result


def _named(out: Path) -> Path:
    """``out`` as a path that ends in a name, which the numbered folders beside it extend (``.`` is numbered as the
    current folder's name, not as ``.2``)."""
    return out if out.name not in ("", "..") else out.resolve()


def series(out: Path) -> list[Path]:
    """``out`` and the numbered folders beside it that benches given ``--out out`` made (``out2``, ``out3``...)."""
    out = _named(out)
    numbered = re.compile(re.escape(out.name) + r"[1-9][0-9]*")
    try:
        beside = sorted((p for p in out.parent.iterdir() if numbered.fullmatch(p.name)),
                        key=lambda p: int(p.name[len(out.name):]))
    except OSError:  # a parent that cannot be listed: no earlier benches found there
        beside = []
    return [out, *beside]


def claim_folder(out: Path, exist_ok: bool) -> Path:
    """The folder this bench writes into, created: ``out`` when it is new or empty (or ``exist_ok``), else the first
    of ``out2``, ``out3``... that is, as ``yolokit run`` numbers its run folders (a bench wrote over the results.csv
    and report.md there, a user's own or the last bench's, without a word). A folder is claimed by creating its
    ``artifacts`` folder exclusively, so two benches starting together never share one."""
    out, n = _named(out), 1
    while True:
        folder = out if n == 1 else out.with_name(f"{out.name}{n}")
        n += 1
        try:
            if not exist_ok and (folder.is_file() or (folder.is_dir() and any(folder.iterdir()))):
                continue
            (folder / "artifacts").mkdir(parents=True, exist_ok=exist_ok)
        except FileExistsError:
            continue  # another bench took it meanwhile: the next name
        except OSError as e:  # a file in the way, a read-only or virtual file system: a traceback before
            raise OutputError(f"{folder}: cannot write the bench's report there ({os_reason(e)}); choose another "
                              f"--out") from None
        return folder


def labelled_images(paths: list[str], data: str | None) -> bool:
    """Whether accuracy is mAP: some image has a label file. A missing one is a background image, with no objects,
    as YOLO datasets keep them (the first five images without one turned mAP off, with --data too). A --data whose
    images have none is refused, as ``yolokit val`` refuses it: there would be nothing to score."""
    from toolkit.jobs.valdata import label_path

    found = any(label_path(Path(p)).is_file() for p in paths)
    if data and not found:
        raise InputError(f"{data}: none of the {len(paths)} images benchmarked has a label file (labels/NAME.txt "
                         f"beside images/NAME.jpg, as YOLO datasets keep them), so there is nothing to score; check "
                         f"the dataset's layout, or leave --data out to compare with the baseline's boxes")
    return found


def _readable(paths: list[str], labelled: bool = False) -> tuple[list[str], list[dict[str, str]]]:
    """The images that decode (and, ``labelled``, whose label file val takes), and the others with their reasons:
    a bench times and scores what it can read (an undecodable image counted as processed, at no cost: 136 % of the
    machine's ceiling; one bad label file threw every measurement away after the whole grid had run)."""
    from toolkit.io.decode import read_image
    from toolkit.io.files import ImageReadError
    from toolkit.jobs.valdata import read_labels

    ok, bad = [], []
    for p in paths:
        try:
            read_image(p)
            if labelled:
                read_labels(Path(p))
        except ImageReadError as e:
            bad.append({"path": p, "reason": e.reason})
            continue
        except InputError as e:
            bad.append({"path": p, "reason": first_line(e)})
            continue
        ok.append(p)
    return ok, bad


def _spawn(spec: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, "-c", "import json,sys; from toolkit.jobs.bench.child import child; "
           "print('@@' + json.dumps(child(json.loads(sys.stdin.read()))))"]
    proc = subprocess.run(cmd, input=json.dumps(spec), capture_output=True, text=True, timeout=3600)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("@@")), None)
    if proc.returncode != 0 or line is None:
        err = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise RuntimeError(err[-1] if err else f"exit code {proc.returncode}")
    result: dict[str, Any] = json.loads(line[2:])
    return result


