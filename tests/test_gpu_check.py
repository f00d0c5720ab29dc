"""scripts/gpu_check.py works end to end where it will run: with only torch, numpy, OpenCV, typer and pyyaml importable
(onnxruntime, openvino, pycocotools, rich, tensorrt, onnx, ... blocked in the script's process and the processes it
starts), and it refuses clearly without a GPU. The dry run uses the CPU and 4 small images: it checks the script, it
measures nothing."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.py"
BLOCKED = ("onnxruntime", "openvino", "pycocotools", "rich", "tensorrt", "onnx", "onnxslim", "nncf", "ray",
           "matplotlib", "PIL", "scipy", "pandas")

SITECUSTOMIZE = f'''
import os, sys
BLOCKED = {set(BLOCKED)!r}
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            with open(os.environ["YK_BLOCK_LOG"], "a") as f:
                f.write(name + "\\n")
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
        return None
sys.meta_path.insert(0, _Block())
'''


def _env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "blocked.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "YK_BLOCK_LOG": str(log)}
    return env, log


def test_the_blocker_blocks(tmp_path: Path) -> None:
    env, log = _env(tmp_path)
    proc = subprocess.run([sys.executable, "-c", "import rich"], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "blocked by the test" in proc.stderr and log.read_text() == "rich\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a CUDA GPU")
def test_gpu_check_refuses_without_a_gpu(tmp_path: Path, yolov5n_pt: Path, coco128_images: Path) -> None:
    env, _ = _env(tmp_path)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--weights", str(yolov5n_pt), "--coco", str(coco128_images),
                           "--out", str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "needs a CUDA GPU" in proc.stderr and "--dry-run" in proc.stderr
    assert not (tmp_path / "out").exists()  # nothing measured, nothing written


def test_gpu_check_dry_run_end_to_end(tmp_path: Path, yolov5n_pt: Path, coco128_images: Path) -> None:
    env, log = _env(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--weights", str(yolov5n_pt), "--coco",
                           str(coco128_images), "--out", str(out)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not log.exists(), log.read_text()  # none of the packages the GPU machine lacks was even tried
    rep = json.loads((out / "report.json").read_text())
    corr = rep["correctness"]
    # on the CPU: the device pipeline (its code on the CPU device) and the host path both equal the CPU reference
    for name in ("fp32_gpu_pipeline", "fp32_host_pipeline", "fp32_gpu_pipeline_conf0.001"):
        assert corr[name]["reference_boxes"] > 0 and corr[name]["share"] == 1.0 and corr[name]["extra"] == 0
    assert corr["unit"]["letterbox_1080p_to_640_exact"] is True
    same, total = corr["unit"]["batched_nms_images_identical_to_numpy"].split("/")
    assert same == total and int(total) > 0
    runs = {(r["model"], r["kind"]) for r in rep["throughput"] if "error" not in r}
    want = {(m, k) for m in ("yolov5s", "yolov5n") for k in ("seed", "nosave", "save")} | {("yolov5s", "gpuresize")}
    assert runs == want, rep["throughput"]
    for r in rep["throughput"]:
        assert r["images"] == 4 and r["whole_s"] > r["run_s"] > 0 and set(r["ms_per_image"]) >= {"read", "infer"}
    assert rep["verdicts"] == {"fp32_match": True}
    # the serving comparison ran both servers on the CPU and every request was answered (judged on a GPU only)
    serve = rep["serving"]
    assert "not_run" not in serve, serve
    assert [r["server"] for r in serve["rows"]] == ["yolokit serve", "per-request"]
    for r in serve["rows"]:
        assert r["requests"] > 0 and r["throughput"] > 0 and r["share_503"] == r["share_errors"] == 0, r
        assert r["connection_errors"] == 0 and r["p50_ms"] is not None, r
    md = (out / "report.md").read_text()
    assert "## Correctness" in md and "## Throughput" in md and "yolokit --nosave" in md and "## Serving" in md
    # the readers' work on this host, at 1 thread and at the CPU count
    dec = rep["decoding"]
    assert dec["images"] == 4 and [r["threads"] for r in dec["rows"]][0] == 1
    assert dec["rows"][-1]["threads"] == os.cpu_count()
    assert all(r["decode_img_s"] > 0 and r["decode_letterbox_ms_per_thread"] > 0 for r in dec["rows"])
    assert "## Host decoding" in md


def test_gpu_check_runs_the_parts_asked_for(tmp_path: Path, yolov5n_pt: Path, coco128_images: Path) -> None:
    """--parts decoding measures the host's decoding alone (the others reported as not run, and not judged);
    an unknown part is refused before anything is measured."""
    env, _ = _env(tmp_path)
    out = tmp_path / "out"
    base = [sys.executable, str(SCRIPT), "--dry-run", "--weights", str(yolov5n_pt), "--coco", str(coco128_images),
            "--out", str(out)]
    proc = subprocess.run([*base, "--parts", "decoding"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    assert rep["parts"] == ["decoding"] and rep["decoding"]["rows"] and rep["throughput"] == []
    assert rep["serving"] == {"not_run": "not in --parts"} and rep["verdicts"] == {}
    proc = subprocess.run([*base, "--parts", "decoding,speed"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--parts takes some of correctness, throughput, serving, decoding" in proc.stderr
    if not torch.cuda.is_available():  # the host's decoding needs no GPU: measured without --dry-run too
        proc = subprocess.run([*base[:2], *base[3:], "--parts", "decoding", "--images", "4", "--size", "320x180"],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        rep = json.loads((out / "report.json").read_text())
        assert rep["machine"]["device_name"].startswith("no CUDA GPU") and rep["decoding"]["rows"]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_verdict_fails_on_fp16_matching_too() -> None:
    """On a GPU the FP16 run (the default precision there) is judged like the FP32 one: a share under its target, or
    a missing FP16 run, fails the verdict (and so the exit code); the dry run on the CPU judges FP32 only."""
    gc = _script()
    fp32, fp16 = gc.TARGETS["fp32_match"], gc.TARGETS["fp16_match"]
    assert gc.CONF_TOL == {"fp32": 0.002, "fp16": 0.02} and gc.MIN_IOU == 0.9

    def corr(fp32_share: float, fp16_share: float | None) -> dict[str, dict[str, float]]:
        c = {"fp32_gpu_pipeline": {"share": fp32_share}}
        if fp16_share is not None:
            c["fp16_gpu_pipeline"] = {"share": fp16_share}
        return c

    assert gc.verdicts(corr(fp32, fp16), [], gpu=True) == {"fp32_match": True, "fp16_match": True}
    # the GPU pipeline's use is judged where the throughput runs ran (not where --parts left them out)
    runs = [{"model": "yolov5n", "kind": "nosave", "plan": "thread mode ... GPU pipeline"}]
    assert gc.verdicts(corr(fp32, fp16), runs, gpu=True)["gpu_pipeline_used"] is True
    assert gc.verdicts(corr(fp32, fp16), [{**runs[0], "plan": "thread mode"}], gpu=True)["gpu_pipeline_used"] is False
    assert gc.verdicts(corr(1.0, fp16 - 0.01), [], gpu=True)["fp16_match"] is False
    assert gc.verdicts(corr(1.0, None), [], gpu=True)["fp16_match"] is False
    assert gc.verdicts(corr(fp32 - 0.001, 1.0), [], gpu=True)["fp32_match"] is False
    assert gc.verdicts(corr(1.0, None), [], gpu=False) == {"fp32_match": True}


def test_the_serving_verdict_needs_2x_the_per_request_server_on_a_gpu() -> None:
    """On a GPU, yolokit serve must answer at least twice the per-request server's requests per second at
    concurrency 16; a comparison that did not run gets no verdict (the report says why), and a CPU run none."""
    gc = _script()
    ok = {"fp32_gpu_pipeline": {"share": 1.0}, "fp16_gpu_pipeline": {"share": 1.0}}

    def serve(yolokit: float, per_request: float) -> dict[str, object]:
        return {"rows": [{"server": "yolokit serve", "throughput": yolokit},
                         {"server": "per-request", "throughput": per_request}]}

    key = "serve_c16_at_least_2x_per_request"
    assert gc.verdicts(ok, [], gpu=True, serve=serve(200.0, 100.0))[key] is True
    assert gc.verdicts(ok, [], gpu=True, serve=serve(199.0, 100.0))[key] is False
    assert key not in gc.verdicts(ok, [], gpu=True, serve={"not_run": "starlette not installed"})
    assert key not in gc.verdicts(ok, [], gpu=False, serve=serve(10.0, 100.0))
