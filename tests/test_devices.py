"""One reading of device strings everywhere (toolkit.devices), the GPU plan it selects, the backend's own default
device, export defaults for a GPU engine's profile, and the pure parts of the CUDA-facing backends (provider
options, TensorRT flags and buffer growth). Nothing here needs a GPU; TensorRT and ONNX Runtime's CUDA providers are
absent here, so their option building is tested as pure functions and the IOBinding path with CPU tensors."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import backends
from backends.base import ExportOptions, PlanningHints
from backends.onnx import providers as ort_providers
from backends.tensorrt import plan as trt_plan
from backends.tensorrt import runner as trt_runner
from backends.tensorrt import runtime as trt_runtime
from toolkit import Detector
from toolkit.devices import GPU_BATCH, Device, is_gpu, parse_device
from toolkit.engine.plan import make_plan, plan_for, tuned_batch
from toolkit.errors import BackendUnavailableError, InputError
from toolkit.jobs.export import export_defaults
from toolkit.meta import ModelMeta

HINTS = PlanningHints(releases_gil=False, thread_batch=1, process_inputs_per_core=250)


@pytest.mark.parametrize(("text", "kind", "index"), [
    ("cpu", "cpu", 0), ("CPU", "cpu", 0), (None, "cpu", 0), ("", "cpu", 0), ("cuda", "cuda", 0), ("cuda:1", "cuda", 1),
    ("gpu", "cuda", 0), ("GPU:2", "cuda", 2), ("0", "cuda", 0), ("3", "cuda", 3), (" cuda:0 ", "cuda", 0),
    ("NPU", "other", 0), ("GPU.1", "other", 0), ("AUTO", "other", 0)])
def test_parse_device(text: str | None, kind: str, index: int) -> None:
    d = parse_device(text)
    assert (d.kind, d.index) == (kind, index)
    assert d.is_gpu == (kind == "cuda") == is_gpu(text)
    if kind == "cuda":
        assert d.torch == f"cuda:{index}" and str(d) == d.torch
    if kind == "other":
        assert d.torch == text  # a runtime's own name passes through untouched


def test_malformed_cuda_names_are_refused() -> None:
    for bad in ("cuda:x", "gpu:", "cuda:-1"):
        with pytest.raises(InputError, match="cuda:N"):
            parse_device(bad)
        assert not is_gpu(bad)
    assert parse_device(None, default="cuda") == Device("cuda", 0, "cuda")


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "gpu", "0"])
def test_every_gpu_spelling_gets_the_gpu_plan(device: str) -> None:
    plan = plan_for(ModelMeta(names={0: "a"}), HINTS, device, None, 1000, cores=8)
    assert plan.gpu and (plan.mode, plan.workers, plan.threads, plan.readers) == ("thread", 2, 1, 8)
    assert plan.batch == GPU_BATCH
    cpu = plan_for(ModelMeta(names={0: "a"}), HINTS, "cpu", None, 10000, cores=8)
    assert not cpu.gpu and cpu.mode == "process"


def test_gpu_batch_follows_the_artifact() -> None:
    names = {0: "a"}
    static = ModelMeta(names=names, batch=4, max_batch=4, imgsz=(384, 640))
    assert plan_for(static, HINTS, "cuda", None, 100, cores=8).batch == 4
    assert plan_for(static, HINTS, "cuda", None, 100, batch=16, cores=8).batch == 4
    capped = ModelMeta(names=names, max_batch=8)  # an engine exported with --max-batch 8
    p = plan_for(capped, HINTS, "cuda", None, 100, cores=8)
    assert p.batch == 8 and "capped" in p.reason
    assert plan_for(capped, HINTS, "cuda", None, 100, batch=20, cores=8).batch == 8
    assert plan_for(capped, HINTS, "cpu", None, 100, batch=20, cores=8).batch == 8
    tuned = ModelMeta(names=names, max_batch=32, extra={"opt_batch": 12})
    assert tuned_batch(tuned) == 12 and plan_for(tuned, HINTS, "cuda", None, 100, cores=8).batch == 12
    old_engine = ModelMeta(names=names, max_batch=32, extra={"profile": {"opt": [6, 3, 640, 640]}})
    assert tuned_batch(old_engine) == 6 and plan_for(old_engine, HINTS, "gpu", None, 100, cores=8).batch == 6
    assert tuned_batch(ModelMeta(names=names, extra={"profile": None, "opt_batch": "x"})) is None
    assert plan_for(tuned, HINTS, "cuda", None, 100, batch=3, cores=8).batch == 3  # an explicit batch is kept


def test_make_plan_uses_the_backends_cuda_fact() -> None:
    det = Detector("yolov5n.yaml", imgsz=64)
    assert det.config.device == "cpu"  # not chosen: the torch backend's own default
    planned = SimpleNamespace(meta=det.meta, config=SimpleNamespace(device="gpu", threads=None, backend="torch"))
    assert make_plan(planned, 100, cores=4).gpu  # type: ignore[arg-type]
    planned.config.backend = "openvino"  # OpenVINO's "gpu" is an Intel GPU: the CPU rules
    assert not make_plan(planned, 100, cores=4).gpu  # type: ignore[arg-type]


class _FakeRunner:
    def __init__(self, device: str) -> None:
        self.device = device
        self.meta = ModelMeta(names={0: "a"})

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return np.zeros((len(batch), 10, 6), np.float32)

    def close(self) -> None:
        pass


def test_unchosen_device_is_the_backends_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A backend whose files run on a GPU (TensorRT's DEFAULT_DEVICE is "cuda") gets it when no device is chosen;
    a chosen one is kept; the CPU backends keep the CPU. (A stand-in backend: no TensorRT or GPU here.)"""
    assert backends.REGISTRY["trt"].DEFAULT_DEVICE == "cuda"
    loaded: list[str] = []

    def load(path: Path, options: backends.LoadOptions) -> _FakeRunner:
        loaded.append(options.device)
        return _FakeRunner(options.device)

    fake = SimpleNamespace(NAME="fake", DEFAULT_DEVICE="cuda", PRECISIONS={"cuda": ("fp16",)},
                           PLANNING=HINTS, unavailable_reason=lambda: None, load=load,
                           check_precision=lambda *args: None, sniff=lambda head: False,
                           claims=lambda path: False)
    monkeypatch.setitem(backends.REGISTRY, "fake", fake)
    model = tmp_path / "m.bin"
    model.write_bytes(b"x")
    det = Detector(model, backend="fake")
    assert det.config.device == "cuda" and loaded == ["cuda"]
    assert make_plan(det, 100, cores=4).gpu
    assert Detector(model, backend="fake", device="cpu").config.device == "cpu" and loaded[-1] == "cpu"
    assert Detector("yolov5n.yaml", imgsz=64).config.device == "cpu"
    from toolkit.jobs.records import RunOptions

    assert RunOptions().detector.device is None and RunOptions().detector_config().device is None


def test_export_defaults_tune_a_gpu_profile_for_the_plans_batch() -> None:
    o = export_defaults(ExportOptions(batch=0), "cuda")
    assert (o.device, o.batch) == ("cuda", GPU_BATCH)
    assert export_defaults(ExportOptions(batch=0, max_batch=8), "cuda").batch == 8
    assert export_defaults(ExportOptions(batch=0, dynamic=False), "cuda").batch == 1
    assert export_defaults(ExportOptions(batch=0), "cpu").batch == 1
    assert export_defaults(ExportOptions(batch=5, device="cpu"), "cuda") == ExportOptions(batch=5, device="cuda")
    prof = trt_plan.plan_profile((384, 640), GPU_BATCH, True, 32)
    assert prof is not None and prof.opt == (GPU_BATCH, 3, 384, 640) and prof.max == (32, 3, 640, 640)


def test_tensorrt_flags_and_devices_read_defensively() -> None:
    trt10 = SimpleNamespace(NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=1))
    trt11 = SimpleNamespace(NetworkDefinitionCreationFlag=SimpleNamespace())  # flag gone: always strongly typed
    assert trt_plan.strongly_typed_bit(trt10) == 1 and trt_plan.strongly_typed_bit(trt11) is None
    assert trt_plan.strongly_typed_bit(SimpleNamespace()) is None
    assert trt_plan.network_flags(True, trt_plan.strongly_typed_bit(trt10)) == 2
    assert trt_plan.network_flags(True, None) == 0 and trt_plan.network_flags(False, 1) == 0
    assert [trt_runtime.cuda_index(d) for d in ("cuda", "gpu", "0", "cuda:2", "gpu:1", None)] == [0, 0, 0, 2, 1, 0]
    for bad in ("cpu", "npu", "cuda:x"):
        with pytest.raises(BackendUnavailableError, match="NVIDIA GPU"):
            trt_runtime.cuda_index(bad)


def test_buffer_growth_is_amortised() -> None:
    assert trt_runner.grown(100, 50) == 100 and trt_runner.grown(100, 100) == 100
    assert trt_runner.grown(100, 150) == 200 and trt_runner.grown(100, 1000) == 1000 and trt_runner.grown(0, 7) == 7
    cap, allocations = 0, 0
    for need in range(1, 5000, 7):
        new = trt_runner.grown(cap, need)
        allocations += new != cap
        cap = new
        assert cap >= need
    assert allocations <= 14


def _meta(**kw: object) -> ModelMeta:
    return ModelMeta(names={0: "a"}, stride=32, **kw)  # type: ignore[arg-type]


def test_ort_tensorrt_profile_options() -> None:
    opts = ort_providers.trt_profile_options(_meta(), (384, 640), batch=16, max_batch=32)
    assert opts == {"trt_profile_min_shapes": "images:1x3x32x32", "trt_profile_opt_shapes": "images:16x3x384x640",
                    "trt_profile_max_shapes": "images:32x3x640x640"}
    odd = ort_providers.trt_profile_options(_meta(), (370, 630), batch=64, max_batch=8)
    assert odd["trt_profile_opt_shapes"] == "images:8x3x384x640" and odd["trt_profile_max_shapes"].endswith("640x640")
    static_hw = ort_providers.trt_profile_options(_meta(imgsz=(384, 640)), None)
    assert static_hw["trt_profile_min_shapes"] == "images:1x3x384x640"
    assert static_hw["trt_profile_max_shapes"] == f"images:{GPU_BATCH}x3x384x640"
    assert ort_providers.trt_profile_options(_meta(imgsz=(640, 640), batch=4), None) == {}


def test_ort_provider_list(tmp_path: Path) -> None:
    gpu_ort = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert ort_providers.provider_list("cpu", gpu_ort, _meta(), {}) == ["CPUExecutionProvider"]
    got = ort_providers.provider_list("gpu:1", gpu_ort, _meta(precision="fp16"), {}, imgsz=(640, 640),
                                      cache_dir=tmp_path)
    trt_name, trt = got[0]
    assert trt_name == "TensorrtExecutionProvider" and trt["device_id"] == 1 and trt["trt_fp16_enable"] is True
    assert trt["trt_engine_cache_enable"] and trt["trt_timing_cache_enable"]
    assert trt["trt_engine_cache_path"].startswith(str(tmp_path)) and "trt_profile_opt_shapes" in trt
    assert got[1] == ("CUDAExecutionProvider", {"device_id": 1}) and got[2] == "CPUExecutionProvider"
    fp32 = ort_providers.provider_list("0", gpu_ort, _meta(), {}, half=None)[0][1]
    assert fp32["trt_fp16_enable"] is False and "trt_engine_cache_path" not in fp32  # no cache folder given
    assert ort_providers.provider_list("cuda", gpu_ort, _meta(), {}, half=True)[0][1]["trt_fp16_enable"] is True
    no_trt = ort_providers.provider_list("cuda", gpu_ort, _meta(), {"tensorrt": False})
    assert [p if isinstance(p, str) else p[0] for p in no_trt] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(BackendUnavailableError, match="CUDA provider"):
        ort_providers.provider_list("cuda", ["CPUExecutionProvider"], _meta(), {})
    with pytest.raises(InputError):
        ort_providers.provider_list("npu", gpu_ort, _meta(), {})
    assert ort_providers.provider_list("cuda", [], _meta(), {"providers": ["X"]}) == ["X"]


def test_ort_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert ort_providers.ort_cache_dir({"cache_dir": str(tmp_path / "c")}) == tmp_path / "c"
    assert (tmp_path / "c").is_dir()
    assert ort_providers.ort_cache_dir({"cache_dir": "off"}) is None
    monkeypatch.setenv(ort_providers.ENV_CACHE, str(tmp_path / "env"))
    assert ort_providers.ort_cache_dir({}) == tmp_path / "env"
    monkeypatch.setenv(ort_providers.ENV_CACHE, "off")
    assert ort_providers.ort_cache_dir({}) is None


def test_ort_iobinding_device_runner_matches_session_run(tmp_path: Path) -> None:
    """The IOBinding path (what runs on CUDA), here with CPU tensors: the same output as InferenceSession.run."""
    import torch

    module = backends.REGISTRY["onnx"]
    if not module.is_available():
        pytest.skip("onnxruntime not installed (pip install 'yolokit[onnx]')")
    from toolkit.model.load import load_model

    path = module.export(load_model("yolov5n.yaml"), tmp_path / "m.onnx", ExportOptions(imgsz=(96, 128)))
    runner = module.load(path, backends.LoadOptions(device="cpu"))
    dev = runner.device_runner()
    assert dev is runner.device_runner() and dev.device.type == "cpu" and not dev.graphable
    rng = np.random.default_rng(0)
    for shape in ((2, 3, 96, 128), (1, 3, 64, 96), (2, 3, 96, 128), (3, 3, 64, 96)):
        batch = rng.integers(0, 256, shape, dtype=np.uint8)
        want = runner.infer(batch)
        got = dev.forward(torch.from_numpy(batch).float().div_(255)).numpy()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
