"""``--precision``: how a runtime computes (DetectorConfig.precision, declared once). bf16 runs OpenVINO models on
CPUs that have it, never by default, and is refused in one line elsewhere: on a CPU without bf16 (the CPU probe
is injected, as no CPU here lacks it) and by backends that cannot compute in it. Its speed and accuracy are
measured in the bench and docs/guide/performance.md, not asserted here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from toolkit import Detector
from toolkit.errors import BackendUnavailableError, InputError
from toolkit.ops import match_greedy

REPO = Path(__file__).resolve().parents[1]


def _openvino(exported: dict[str, Path]) -> Path:
    if "openvino" not in exported:
        pytest.skip("OpenVINO not installed")
    return exported["openvino"]


def _has_bf16() -> bool:
    import openvino as ov

    from backends.openvino.runner import cpu_capabilities

    return "BF16" in cpu_capabilities(ov.Core())


def test_the_default_stays_fp32_and_bf16_is_asked_for(exported: dict[str, Path], coco128_images: Path) -> None:
    model = _openvino(exported)
    if not _has_bf16():
        pytest.skip("this CPU has no bf16 arithmetic (AVX512-BF16 or AMX)")
    images = sorted(coco128_images.glob("*.jpg"))[:16]
    with Detector(model) as fp32, Detector(model, precision="bf16") as bf16:
        assert fp32.meta.extra["inference_precision"] == "f32"
        assert bf16.meta.extra["inference_precision"] == "bf16"
        assert bf16.config.precision == "bf16" and fp32.config.precision == "auto"
        ref, got = fp32.predict([str(p) for p in images]), bf16.predict([str(p) for p in images])
    total = matched = moved = 0
    for r, g in zip(ref, got, strict=True):
        hits = match_greedy(g.xyxy, g.confidence, g.class_id, r.xyxy, r.class_id, 0.5)
        total += len(r)
        matched += int((hits >= 0).sum())
        moved += int(r.xyxy.shape != g.xyxy.shape or not np.array_equal(r.xyxy, g.xyxy))
    assert total >= 20 and matched >= 0.8 * total  # the same objects, found at bf16 precision
    assert moved >= 1  # bf16 does change boxes: that is why it is not the default


def test_bf16_is_refused_in_one_line_on_a_cpu_without_it(exported: dict[str, Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    model = _openvino(exported)
    import backends.openvino.runner as runner

    monkeypatch.setattr(runner, "cpu_capabilities", lambda core: ["FP32", "INT8", "BIN"])  # a CPU without bf16
    with pytest.raises(BackendUnavailableError) as e:
        Detector(model, precision="bf16")
    text = str(e.value)
    assert "\n" not in text and text.startswith("--precision bf16:") and "no bf16 arithmetic" in text
    with Detector(model, precision="fp32") as det:  # fp32 needs nothing
        assert det.meta.extra["inference_precision"] == "f32"


def test_a_backend_that_cannot_compute_bf16_refuses_it(exported: dict[str, Path]) -> None:
    if "onnx" not in exported:
        pytest.skip("onnxruntime not installed")
    with pytest.raises(InputError) as e:
        Detector(exported["onnx"], precision="bf16")
    assert "\n" not in str(e.value) and "the onnx backend computes in fp32 only" in str(e.value)
    with pytest.raises(InputError, match="--precision must be one of auto, fp32, bf16"):
        Detector(exported["onnx"], precision="fp16")


def test_the_cli_takes_precision_and_refuses_in_one_line(exported: dict[str, Path], coco128_images: Path,
                                                         tmp_path: Path) -> None:
    if "onnx" not in exported:
        pytest.skip("onnxruntime not installed")
    image = sorted(coco128_images.glob("*.jpg"))[0]
    r = subprocess.run([sys.executable, "-m", "toolkit.cli", "run", str(image), "--weights", str(exported["onnx"]),
                        "--precision", "bf16", "--nosave", "--project", str(tmp_path)], capture_output=True,
                       text=True, cwd=REPO)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "--precision bf16" in lines[0], r.stderr
    assert not (tmp_path / "exp").exists()  # nothing created for a refused command
