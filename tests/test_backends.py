"""Contract tests for every backend in ``backends.REGISTRY``, run with the real runtimes (onnxruntime,
OpenVINO, NNCF) on the built-in ``yolov5n.yaml`` (random weights, no files needed).

TensorRT cannot run on this machine (no NVIDIA GPU, no TensorRT wheel), so its runner/export tests skip with
that reason; nothing fakes TensorRT. Its CPU-side logic (engine header pack/unpack, metadata, TensorRT
version and GPU compatibility checks, optimisation-profile planning, output shapes, precision plan) is made
of pure functions, tested here always.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import backends
from backends.base import Backend, ExportOptions, LoadOptions
from backends.tensorrt import engine_file, plan, runtime
from toolkit.errors import BackendUnavailableError, ExportError, InputError, ModelFileError
from toolkit.meta import ModelMeta
from toolkit.model.load import LoadedModel, load_model

NAMES = list(backends.REGISTRY)
REPO = Path(__file__).resolve().parents[1]


def _need(name: str) -> Any:
    module = backends.REGISTRY[name]
    if not module.is_available():
        if name == "trt":
            pytest.skip("TensorRT/CUDA not available: " + (module.unavailable_reason() or ""))
        pytest.skip(f"{name} runtime not installed (pip install 'yolokit[{module.EXTRA}]')")
    return module


@pytest.fixture(scope="session")
def source() -> LoadedModel:
    return load_model("yolov5n.yaml")


@pytest.fixture(scope="session")
def artifact(source: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``artifact(name, **ExportOptions fields)``: export once per session and option set."""
    cache: dict[tuple[str, tuple[tuple[str, Any], ...]], Path] = {}
    root = tmp_path_factory.mktemp("artifacts")

    def make(name: str, **kw: Any) -> Path:
        module = _need(name)
        if name == "torch":
            return Path("yolov5n.yaml")
        key = (name, tuple(sorted(kw.items())))
        if key not in cache:
            suffix = {"onnx": ".onnx", "openvino": "_openvino", "trt": ".engine"}[name]
            path = root / f"m{len(cache)}{suffix}"
            cache[key] = module.export(source, path, ExportOptions(**kw))
        return cache[key]

    return make


def _reference(source: LoadedModel, batch: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return source.model(torch.from_numpy(batch).float() / 255).numpy()


def _batch(b: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (b, 3, h, w), dtype=np.uint8)


def _close(got: np.ndarray, ref: np.ndarray, rel: float = 1e-3) -> None:
    scale = max(1.0, float(np.abs(ref).max()))
    assert got.dtype == np.float32
    assert np.abs(got - ref).max() <= rel * scale, float(np.abs(got - ref).max())


# ------------------------------------------------------------------------------------------------ contract


@pytest.mark.parametrize("name", NAMES)
def test_backend_contract(name: str) -> None:
    m = backends.REGISTRY[name]
    assert isinstance(m, Backend) and name == m.NAME
    assert isinstance(m.SUFFIXES, tuple) and m.SUFFIXES
    for fn in ("is_available", "claims", "load", "export"):
        assert callable(getattr(m, fn))
    assert isinstance(m.is_available(), bool)
    if name != "torch":
        assert name == m.EXTRA and callable(getattr(m, "read_meta", None))


def test_runtimes_are_not_imported_with_the_registry() -> None:
    code = ("import sys, backends; heavy = [m for m in ('onnx', 'onnxruntime', 'openvino', 'tensorrt', 'nncf') "
            "if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_backend_for_claims(tmp_path: Path) -> None:
    folder = tmp_path / "m_openvino"
    folder.mkdir()
    (folder / "m.xml").write_text("<net/>")
    assert backends.backend_for(tmp_path / "m.onnx") == "onnx"
    assert backends.backend_for(tmp_path / "m.xml") == "openvino"
    assert backends.backend_for(folder) == "openvino"
    assert backends.backend_for(tmp_path / "m.engine") == "trt"
    assert backends.backend_for(tmp_path / "m.plan") == "trt"
    (folder / "other.xml").write_text("<net/>")
    assert backends.backend_for(folder) == "openvino"  # two IRs: OpenVINO's, and loading it names both
    with pytest.raises(ModelFileError, match=r"holds 2 OpenVINO models \(m.xml, other.xml\); give the .xml"):
        backends.REGISTRY["openvino"].read_meta(folder)


@pytest.mark.parametrize("name", NAMES)
def test_dynamic_batch_and_size(name: str, source: LoadedModel, artifact: Callable[..., Path]) -> None:
    path = artifact(name, imgsz=(160, 160), dynamic=True)
    runner = backends.REGISTRY[name].load(path, LoadOptions(threads=2))
    try:
        meta = runner.meta
        assert meta.imgsz is None and meta.batch is None and meta.nc == 80 and meta.stride == 32
        for b, h, w in ((1, 160, 160), (3, 128, 192)):
            x = _batch(b, h, w, seed=b)
            y = runner.infer(x)
            assert y.shape == plan.output_shape(b, (h, w), source.model.detect.stride, 3, 80)
            _close(y, _reference(source, x))
        with pytest.raises(InputError, match="multiple of the model stride"):
            runner.infer(_batch(1, 160, 150))
        with pytest.raises(InputError, match="uint8"):
            runner.infer(_batch(1, 160, 160).astype(np.float64))
        x = _batch(1, 160, 160, seed=7)
        as_float = x.astype(np.float32)  # test-time augmentation's views: float32 on the 0-255 scale
        _close(runner.infer(as_float), runner.infer(x))
        assert np.array_equal(as_float, x.astype(np.float32))  # the runner left its input alone
    finally:
        runner.close()


@pytest.mark.parametrize("name", NAMES)
def test_static_batch_and_size(name: str, source: LoadedModel, artifact: Callable[..., Path]) -> None:
    if name == "torch":
        pytest.skip("PyTorch models take any batch and size")
    path = artifact(name, imgsz=(160, 224), batch=2, dynamic=False)
    runner = backends.REGISTRY[name].load(path, LoadOptions(threads=2))
    try:
        assert runner.meta.imgsz == (160, 224) and runner.meta.batch == 2
        x = _batch(2, 160, 224)
        _close(runner.infer(x), _reference(source, x))
        one = runner.infer(x[:1])  # a partial batch is padded by the runner
        assert one.shape[0] == 1
        _close(one, _reference(source, x[:1]))
        with pytest.raises(InputError, match="static batch of 2.*without --static"):
            runner.infer(_batch(3, 160, 224))
        with pytest.raises(InputError, match="exported for 160x224 input, got 224x160"):
            runner.infer(_batch(2, 224, 160))
    finally:
        runner.close()


@pytest.mark.parametrize("name", [n for n in NAMES if n != "torch"])
def test_read_meta_round_trip(name: str, source: LoadedModel, artifact: Callable[..., Path]) -> None:
    module: Any = backends.REGISTRY[name]
    path = artifact(name, imgsz=(160, 224), batch=2, dynamic=False)
    meta = module.read_meta(path)
    assert meta.format == {"onnx": "onnx", "openvino": "openvino", "trt": "tensorrt"}[name]
    assert meta.precision == "fp32"
    assert meta.imgsz == (160, 224) and meta.batch == 2 and meta.max_batch == 2
    assert meta.names == source.meta.names and list(meta.names)[:3] == [0, 1, 2]
    assert meta.stride == 32 and meta.source_sha256 == source.meta.source_sha256
    assert "torch" in meta.runtime_versions
    dyn = module.read_meta(artifact(name, imgsz=(160, 160), dynamic=True))
    assert dyn.imgsz is None and dyn.batch is None


def _concurrent(runner: Any, batches: list[np.ndarray]) -> dict[int, np.ndarray]:
    got: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        got[i] = runner.infer(batches[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return got


@pytest.mark.parametrize("name", ["onnx", "openvino"])
def test_runners_are_thread_safe(name: str, artifact: Callable[..., Path]) -> None:
    runner = backends.REGISTRY[name].load(artifact(name, imgsz=(160, 160), dynamic=True), LoadOptions())
    batches = [_batch(1, 160, 160, seed=s) for s in range(6)]
    serial = [runner.infer(b) for b in batches]
    got = _concurrent(runner, batches)
    for i, s in enumerate(serial):
        np.testing.assert_array_equal(got[i], s)
    runner.close()


# ------------------------------------------------------------------------------------------------ precisions


def test_onnx_fp16(source: LoadedModel, artifact: Callable[..., Path]) -> None:
    _need("onnx")
    import onnx

    path = artifact("onnx", imgsz=(160, 160), dynamic=True, half=True)
    proto = onnx.load(str(path))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    runner = backends.REGISTRY["onnx"].load(path, LoadOptions())
    assert runner.meta.precision == "fp16"
    x = _batch(2, 160, 160)
    _close(runner.infer(x), _reference(source, x), rel=5e-3)
    runner.close()


def test_openvino_fp16_ir(source: LoadedModel, artifact: Callable[..., Path]) -> None:
    _need("openvino")
    path = artifact("openvino", imgsz=(160, 160), dynamic=True, half=True)
    runner = backends.REGISTRY["openvino"].load(path, LoadOptions(options={"inference_precision": "f32"}))
    assert runner.meta.precision == "fp16" and runner.meta.extra["inference_precision"] == "f32"
    x = _batch(1, 160, 160)
    _close(runner.infer(x), _reference(source, x), rel=5e-3)  # FP16 weights, f32 math
    runner.close()
    default = backends.REGISTRY["openvino"].load(path, LoadOptions())
    assert default.meta.extra["inference_precision"] in ("f32", "bf16", "f16")  # the CPU plugin's choice
    default.close()


def test_openvino_pins_threads_only_when_the_model_has_every_core(artifact: Callable[..., Path]) -> None:
    """Two worker processes with one OpenVINO thread each were both pinned to the same core (half the speed):
    a model given fewer threads than cores is not pinned; one given them all keeps OpenVINO's default."""
    import os

    _need("openvino")
    path = artifact("openvino", imgsz=(160, 160), dynamic=True)
    module: Any = backends.REGISTRY["openvino"]
    cores = os.cpu_count() or 1
    shared = module.load(path, LoadOptions(threads=1))
    assert shared.compiled.get_property("ENABLE_CPU_PINNING") is (cores <= 1)
    shared.close()
    whole = module.load(path, LoadOptions(threads=cores))
    assert whole.compiled.get_property("ENABLE_CPU_PINNING") is True
    whole.close()
    forced = module.load(path, LoadOptions(threads=1, options={"cpu_pinning": True}))
    assert forced.compiled.get_property("ENABLE_CPU_PINNING") is True
    forced.close()


def test_openvino_compiled_model_cache(artifact: Callable[..., Path], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The second load comes from the cache and computes the same; a corrupt entry is recompiled; caching off
    or an unusable folder still loads."""
    _need("openvino")
    path = artifact("openvino", imgsz=(160, 160), dynamic=True)
    from backends.openvino.runner import ENV_CACHE, compile_cache_dir

    module: Any = backends.REGISTRY["openvino"]
    x = np.random.default_rng(0).integers(0, 255, (1, 3, 160, 160), dtype=np.uint8)
    cache = tmp_path / "cache"
    monkeypatch.setenv(ENV_CACHE, str(cache))
    first = module.load(path, LoadOptions(threads=1))
    ref = first.infer(x)
    first.close()
    blobs = list(cache.glob("*.blob"))
    assert len(blobs) == 1 and blobs[0].stat().st_size > 100_000
    cached = module.load(path, LoadOptions(threads=1))
    np.testing.assert_array_equal(cached.infer(x), ref)
    cached.close()
    blobs[0].chmod(0o644)  # OpenVINO stores its entries read-only
    blobs[0].write_bytes(blobs[0].read_bytes()[:50_000])  # truncated, as by a full disk or a killed process
    again = module.load(path, LoadOptions(threads=1))
    np.testing.assert_array_equal(again.infer(x), ref)
    again.close()
    assert blobs[0].stat().st_size > 100_000  # rewritten whole

    monkeypatch.setenv(ENV_CACHE, "off")
    assert compile_cache_dir({}) is None
    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder")
    assert compile_cache_dir({"cache_dir": str(blocked / "sub")}) is None
    off = module.load(path, LoadOptions(threads=1, options={"cache_dir": str(blocked / "sub")}))
    np.testing.assert_array_equal(off.infer(x), ref)
    off.close()
    monkeypatch.delenv(ENV_CACHE)
    assert compile_cache_dir({"cache_dir": str(tmp_path / "given")}) == tmp_path / "given"


def test_openvino_gives_a_frequent_input_shape_a_model_of_its_own_with_bit_identical_outputs(
        artifact: Callable[..., Path]) -> None:
    """An input shape met SHAPE_AFTER times, in at least 1/SHAPE_SHARE of the inferences, gets a model compiled for
    it alone (2-3 ms less per inference than the dynamic model); its outputs equal the dynamic model's bit for bit,
    also when several threads infer while one compiles; a rare shape and shapes past the cap keep the dynamic
    model."""
    _need("openvino")
    from backends.openvino.runner import SHAPE_AFTER, SHAPE_SHARE

    path = artifact("openvino", imgsz=(160, 160), dynamic=True)
    module: Any = backends.REGISTRY["openvino"]
    dynamic = module.load(path, LoadOptions(threads=1, options={"shape_models": 0}))
    runner = module.load(path, LoadOptions(threads=1, options={"shape_models": 1}))
    assert runner.meta.extra["inference_precision"] == "f32" and dynamic.shapes.most == 0
    wide, tall, rare = _batch(1, 128, 160, seed=1), _batch(1, 160, 128, seed=2), _batch(1, 96, 160, seed=3)
    refs = {x.shape: dynamic.infer(x) for x in (wide, tall, rare)}
    for i in range(SHAPE_AFTER - 1):
        np.testing.assert_array_equal(runner.infer(wide), refs[wide.shape])
        if i % SHAPE_SHARE == 0:
            np.testing.assert_array_equal(runner.infer(rare), refs[rare.shape])
    assert runner.shapes.count() == 0  # met SHAPE_AFTER - 1 times: still the dynamic model
    batches = [wide] * 8
    got = _concurrent(runner, batches)  # one thread compiles, the others infer meanwhile
    assert runner.shapes.count() == 1
    for i in range(len(batches)):
        np.testing.assert_array_equal(got[i], refs[wide.shape])
    for _ in range(SHAPE_AFTER):
        np.testing.assert_array_equal(runner.infer(wide), refs[wide.shape])  # on the shape's own model
    assert runner.shapes._seen[rare.shape] * SHAPE_SHARE < runner.shapes._total  # rare: never compiled
    for _ in range(2 * SHAPE_AFTER):
        np.testing.assert_array_equal(runner.infer(tall), refs[tall.shape])
    assert runner.shapes.count() == 1  # the cap: one shape model, the tall inputs keep the dynamic model
    runner.close()
    dynamic.close()


def test_openvino_compiles_a_shape_only_where_the_announced_work_pays_for_it(artifact: Callable[..., Path]) -> None:
    """A run that says how many inferences come (BaseRunner.expect) gets a shape's model only while SHAPE_AHEAD of
    them are still ahead at that shape's share: not at the SHAPE_AFTER-th of SHAPE_AFTER + SHAPE_AHEAD - 1, at once
    when more are announced; with nothing announced (None) as before. Outputs stay the dynamic model's."""
    _need("openvino")
    from backends.openvino.runner import SHAPE_AFTER, SHAPE_AHEAD

    path = artifact("openvino", imgsz=(160, 160), dynamic=True)
    module: Any = backends.REGISTRY["openvino"]
    x = _batch(1, 128, 160, seed=4)
    dynamic = module.load(path, LoadOptions(threads=1, options={"shape_models": 0}))
    ref = dynamic.infer(x)
    dynamic.close()
    runner = module.load(path, LoadOptions(threads=1, options={"shape_models": 1}))
    runner.expect(SHAPE_AFTER + SHAPE_AHEAD - 2)  # at the SHAPE_AFTER-th, SHAPE_AHEAD - 1 ahead (it included)
    for _ in range(SHAPE_AFTER + SHAPE_AHEAD - 2):
        np.testing.assert_array_equal(runner.infer(x), ref)
    assert runner.shapes.count() == 0  # met SHAPE_AFTER times and more, never with SHAPE_AHEAD ahead
    runner.expect(SHAPE_AHEAD)  # a run of SHAPE_AHEAD more, all at this shape: pays at once
    np.testing.assert_array_equal(runner.infer(x), ref)
    assert runner.shapes.count() == 1
    runner.close()
    again = module.load(path, LoadOptions(threads=1, options={"shape_models": 1}))
    again.expect(None)  # not known (a video, a stream): compiled at the SHAPE_AFTER-th as before
    for _ in range(SHAPE_AFTER):
        np.testing.assert_array_equal(again.infer(x), ref)
    assert again.shapes.count() == 1
    again.close()


def test_openvino_compiles_the_shape_a_run_says_most_inputs_take_instead_of_the_dynamic_model(
        artifact: Callable[..., Path]) -> None:
    """Told at load which input shapes come and how many inferences each (LoadOptions.expected), the runner
    compiles a model for a shape that meets the run's rule (SHAPE_AHEAD of them, 1/SHAPE_SHARE of all) and not the
    dynamic model, which it compiles when an input of another shape first comes: outputs bit-identical to the
    dynamic model's. A shape too rare or too few, a hint that fails, a precision other than f32 or shape_models 0
    compile the dynamic model at load, as without a hint."""
    _need("openvino")
    from backends.openvino.runner import SHAPE_AHEAD, SHAPE_SHARE, early_shapes

    path = artifact("openvino", imgsz=(160, 160), dynamic=True)
    module: Any = backends.REGISTRY["openvino"]
    wide, tall = _batch(1, 128, 160, seed=5), _batch(1, 160, 128, seed=6)
    dynamic = module.load(path, LoadOptions(threads=1, options={"shape_models": 0}))
    refs = {x.shape: dynamic.infer(x) for x in (wide, tall)}
    dynamic.close()
    seen: list[Any] = []

    def expected(meta: Any) -> dict[tuple[int, ...], int]:
        seen.append(meta)
        return {wide.shape: 4 * SHAPE_AHEAD, tall.shape: SHAPE_AHEAD}  # tall: under 1/SHAPE_SHARE of all
    runner = module.load(path, LoadOptions(threads=1, expected=expected))
    assert seen and seen[0].stride == runner.meta.stride  # asked with the model's own metadata
    assert runner.meta.extra["inference_precision"] == "f32"  # read from the shape's model
    assert runner._dynamic is None and runner.shapes.count() == 1
    for _ in range(2):
        np.testing.assert_array_equal(runner.infer(wide), refs[wide.shape])
    assert runner._dynamic is None and runner.shapes._seen.get(wide.shape) is None  # its own model from the first
    np.testing.assert_array_equal(runner.infer(tall), refs[tall.shape])  # another shape: the dynamic model now
    assert runner._dynamic is not None and runner.shapes.count() == 1
    runner.close()
    with pytest.raises(RuntimeError, match="closed"):
        _ = runner.compiled

    assert early_shapes({wide.shape: SHAPE_AHEAD - 1}, 4) == []  # too few to pay
    assert early_shapes({wide.shape: SHAPE_AHEAD, tall.shape: SHAPE_AHEAD * SHAPE_SHARE + 1}, 4) == [tall.shape]
    assert early_shapes({wide.shape: 2 * SHAPE_AHEAD, tall.shape: 2 * SHAPE_AHEAD}, 1) == [wide.shape]  # the cap

    def broken(meta: Any) -> dict[tuple[int, ...], int]:
        raise RuntimeError("a hint that fails")
    for options in (LoadOptions(threads=1, expected=broken),
                    LoadOptions(threads=1, expected=lambda meta: {wide.shape: SHAPE_AHEAD - 1}),
                    LoadOptions(threads=1, expected=expected, options={"inference_precision": "f16"}),
                    LoadOptions(threads=1, expected=expected, options={"shape_models": 0})):
        other = module.load(path, options)
        assert other._dynamic is not None and other.shapes.count() == 0  # as without a hint
        other.infer(wide)
        assert other.shapes.count() == 0
        other.close()


def test_openvino_shapes_compiled_together_keep_the_process_locale(artifact: Callable[..., Path]) -> None:
    """Two shapes reaching their turn at once compile one after the other: OpenVINO sets the C locale while it
    serializes a model and puts back what it found, and two at once left the process in the C locale (Python's
    default text encoding ASCII) in 2 of 3 tries."""
    _need("openvino")
    import locale
    import threading

    from backends.openvino.runner import SHAPE_AFTER

    path = artifact("openvino", imgsz=(160, 160), dynamic=True)
    module: Any = backends.REGISTRY["openvino"]
    before = locale.setlocale(locale.LC_ALL, None)
    try:
        for trial in range(3):
            runner = module.load(path, LoadOptions(threads=1, options={"shape_models": 2}))
            together = threading.Barrier(2)

            def infer(x: np.ndarray, runner: Any = runner, together: threading.Barrier = together) -> None:
                for i in range(SHAPE_AFTER):
                    if i == SHAPE_AFTER - 1:
                        together.wait()  # both shapes' turn at once
                    runner.infer(x)
            threads = [threading.Thread(target=infer, args=(x,))
                       for x in (_batch(1, 128, 160, seed=trial), _batch(1, 160, 128, seed=trial))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert runner.shapes.count() == 2
            assert locale.setlocale(locale.LC_ALL, None) == before, trial
            runner.close()
    finally:
        locale.setlocale(locale.LC_ALL, before)


def test_openvino_shape_models_only_where_they_change_no_output(tmp_path: Path) -> None:
    """f32 on the CPU only (bf16, f16 and INT8 outputs of a shape's model may differ from the dynamic model's), within
    the weights budget; the cache of shape models keeps its newest entries."""
    import os

    from backends.openvino.runner import SHAPE_MEMORY, SHAPE_MODELS, prune, shape_models

    assert shape_models("CPU", "f32", 7_600_000) == SHAPE_MODELS  # yolov5n
    assert shape_models("CPU", "f32", SHAPE_MEMORY // 2) == 2
    assert shape_models("CPU", "f32", 186_000_000) == 0  # yolov5l: the weights alone pass the budget
    assert shape_models("CPU", "bf16", 7_600_000) == 0
    assert shape_models("CPU", "f16", 7_600_000) == 0
    assert shape_models("GPU", "f32", 7_600_000) == 0
    for i in range(5):
        (tmp_path / f"{i}.blob").write_bytes(b"x" * 1000)
        os.utime(tmp_path / f"{i}.blob", (1_000_000 + i, 1_000_000 + i))
    prune(tmp_path, 2500)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["3.blob", "4.blob"]


def test_openvino_runs_a_model_without_importing_its_conversion_api(artifact: Callable[..., Path]) -> None:
    """Running an IR imports openvino without openvino.tools.ovc and the telemetry client it brings (about 70 of the
    import's 150 ms, in every process that runs a model); openvino.convert_model still converts a model in that
    process, and the API imports as usual afterwards."""
    _need("openvino")
    ir = artifact("openvino", imgsz=(160, 160), dynamic=True)
    onnx = artifact("onnx", imgsz=(160, 160), dynamic=True)  # an ONNX file for convert_model (skips without one)
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "import numpy as np\n"
        "import backends\n"
        "from backends.base import LoadOptions\n"
        "runner = backends.REGISTRY['openvino'].load(Path(sys.argv[1]), LoadOptions(threads=1))\n"
        "assert runner.infer(np.zeros((1, 3, 160, 160), np.uint8)).shape[0] == 1\n"
        "late = [m for m in ('openvino.tools.ovc', 'openvino_telemetry') if m in sys.modules]\n"
        "assert not late, late\n"
        "import openvino as ov\n"
        "model = ov.convert_model(sys.argv[2])\n"
        "assert model.inputs and 'openvino.tools.ovc' in sys.modules\n"
        "from openvino.tools.ovc import convert_model\n"
        "assert callable(convert_model)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(ir), str(onnx)], cwd=REPO, check=True)


def test_openvino_int8(source: LoadedModel, artifact: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
                       ) -> None:
    _need("openvino")
    pytest.importorskip("nncf", reason="NNCF not installed (pip install 'yolokit[int8]')")
    import cv2

    calib = tmp_path_factory.mktemp("calib")
    rng = np.random.default_rng(1)
    for i in range(6):
        cv2.imwrite(str(calib / f"{i}.png"), rng.integers(0, 256, (120 + 10 * i, 200, 3), dtype=np.uint8))
    from toolkit.jobs.calibration import int8_data

    opts = ExportOptions(imgsz=(160, 160), dynamic=True, int8=True, calib_data=str(calib))
    opts.int8_data = int8_data(opts, source.meta.stride, False)  # the export job chooses the images
    module: Any = backends.REGISTRY["openvino"]
    path = module.export(source, tmp_path_factory.mktemp("int8") / "q_openvino", opts)
    assert module.read_meta(path).extra["int8"]["calib_images"] == 6
    meta = module.read_meta(path)
    assert meta.precision == "int8" and "nncf" in meta.runtime_versions
    runner = backends.REGISTRY["openvino"].load(path, LoadOptions())
    x = _batch(2, 160, 160)
    y = runner.infer(x)
    assert y.shape == _reference(source, x).shape and np.isfinite(y).all()
    runner.close()
    # its float parts in f32 (--precision fp32): a frequent shape's own model, bit-identical to the dynamic one
    from backends.openvino.runner import SHAPE_AFTER

    one = backends.REGISTRY["openvino"].load(path, LoadOptions(precision="fp32", options={"shape_models": 1}))
    dynamic = backends.REGISTRY["openvino"].load(path, LoadOptions(precision="fp32", options={"shape_models": 0}))
    ref = dynamic.infer(x)
    for _ in range(SHAPE_AFTER + 1):
        np.testing.assert_array_equal(one.infer(x), ref)
    assert one.shapes.count() == 1
    one.close()
    dynamic.close()


def test_int8_needs_calibration_data(source: LoadedModel, tmp_path: Path) -> None:
    _need("openvino")
    pytest.importorskip("nncf")
    with pytest.raises(InputError, match="--data"):
        backends.REGISTRY["openvino"].export(source, tmp_path / "q_openvino", ExportOptions(imgsz=(160, 160),
                                                                                             int8=True))
    from toolkit.jobs.calibration import int8_data

    with pytest.raises(InputError, match="does not exist"):
        int8_data(ExportOptions(imgsz=(160, 160), int8=True, calib_data=str(tmp_path / "missing")), 32, False)


def test_onnx_refuses_int8(source: LoadedModel, tmp_path: Path) -> None:
    _need("onnx")
    with pytest.raises(ExportError, match="openvino --int8"):
        backends.REGISTRY["onnx"].export(source, tmp_path / "m.onnx", ExportOptions(int8=True))


# ------------------------------------------------------------------------------------------------ bad files


def test_onnx_bad_files(tmp_path: Path, artifact: Callable[..., Path]) -> None:
    module = _need("onnx")
    import onnx

    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n" * 50)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    good = artifact("onnx", imgsz=(160, 160), dynamic=True)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for bad in (text, empty, truncated, tmp_path / "missing.onnx"):
        with pytest.raises(ModelFileError, match=bad.name):
            module.read_meta(bad)
        with pytest.raises(ModelFileError):
            module.load(bad, LoadOptions())
    proto = onnx.load(str(good))
    del proto.metadata_props[:]
    plain = tmp_path / "plain.onnx"
    onnx.save(proto, str(plain))
    for fn in (module.read_meta, lambda p: module.load(p, LoadOptions())):
        with pytest.raises(ModelFileError, match=r"plain.onnx.*no yolokit metadata.*yolokit export"):
            fn(plain)


def test_openvino_bad_files(tmp_path: Path, artifact: Callable[..., Path]) -> None:
    module = _need("openvino")
    garbage = tmp_path / "garbage.xml"
    garbage.write_text("<<< definitely not an IR")
    garbage.with_suffix(".bin").write_bytes(b"\0" * 16)
    with pytest.raises(ModelFileError, match="garbage.xml.*not a readable OpenVINO IR"):
        module.read_meta(garbage)
    with pytest.raises(ModelFileError):
        module.load(garbage, LoadOptions())
    # an XML whose root is <net> without a version: refused before OpenVINO's other readers try it (TensorFlow's
    # logged its parse errors to stderr, three lines before yolokit's one)
    import subprocess
    import sys

    bare = tmp_path / "bare.xml"
    bare.write_text("<net>\n")
    bare.with_suffix(".bin").write_bytes(b"\0" * 16)
    done = subprocess.run([sys.executable, "-m", "toolkit.cli", "info", str(bare)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 3 and done.stderr.strip().count("\n") == 0, done.stderr
    assert "not a readable OpenVINO IR" in done.stderr
    good = artifact("openvino", imgsz=(160, 160), dynamic=True)
    xml = next(good.glob("*.xml"))
    nobin = tmp_path / "nobin.xml"
    nobin.write_bytes(xml.read_bytes())
    with pytest.raises(ModelFileError, match="nobin.bin.*missing"):
        module.read_meta(nobin)
    with pytest.raises(ModelFileError, match=r"the folder holds \d OpenVINO models \(.*garbage.xml.*nobin.xml"):
        module.read_meta(tmp_path)  # holds garbage.xml and nobin.xml (and bare.xml)
    from backends import backend_for  # and the run finds the backend by the folder (it said "holds no model")
    assert backend_for(tmp_path) == "openvino"


def test_openvino_refuses_cuda(artifact: Callable[..., Path]) -> None:
    module = _need("openvino")
    with pytest.raises(BackendUnavailableError, match="not CUDA"):
        module.load(artifact("openvino", imgsz=(160, 160), dynamic=True), LoadOptions(device="cuda"))


def test_openvino_names_the_devices_it_sees_for_one_it_lacks(artifact: Callable[..., Path]) -> None:
    """A device OpenVINO does not see is refused in one line naming the ones it does (the CPU is not looked up:
    its plugin ships in every wheel, and listing the devices probes every plugin)."""
    module = _need("openvino")
    from backends.openvino.ir import runtime

    path = artifact("openvino", imgsz=(160, 160), dynamic=True)
    seen = runtime().Core().available_devices
    assert "CPU" in seen
    lacking = next(d for d in ("NPU", "GPU", "HDDL") if d not in seen)
    with pytest.raises(BackendUnavailableError, match=f"device '{lacking.lower()}': OpenVINO sees {', '.join(seen)}$"):
        module.load(path, LoadOptions(device=lacking.lower()))
    module.load(path, LoadOptions(device="CPU", threads=1)).close()


# ------------------------------------------------------------------------------------------------ TensorRT


def _trt_meta(**kw: Any) -> ModelMeta:
    base: dict[str, Any] = {"names": {0: "person", 1: "bicycle"}, "imgsz": (640, 640), "batch": None,
                            "max_batch": 8, "precision": "fp16", "format": "tensorrt",
                            "runtime_versions": {"tensorrt": "10.3.0"},
                            "extra": {"gpu": {"name": "NVIDIA H100", "compute_capability": "9.0"}}}
    base.update(kw)
    return ModelMeta(**base)


def test_trt_header_round_trip(tmp_path: Path) -> None:
    meta = _trt_meta()
    data = engine_file.pack_engine(meta, b"ENGINEBYTES")
    assert data[:4] == b"YKTR"
    assert int.from_bytes(data[4:8], "little") == len(meta.to_json().encode())
    got, engine = engine_file.unpack_engine(data)
    assert engine == b"ENGINEBYTES" and got == meta
    f = tmp_path / "m.engine"
    f.write_bytes(data)
    assert backends.REGISTRY["trt"].read_meta(f) == meta


def test_trt_header_refusals(tmp_path: Path) -> None:
    data = engine_file.pack_engine(_trt_meta(), b"ENGINE")
    with pytest.raises(ModelFileError, match="no YKTR header"):
        engine_file.unpack_engine(b"\x00" * 64 + b"plain trtexec engine")
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        engine_file.unpack_engine(data[:20])
    with pytest.raises(ModelFileError, match="header only"):
        engine_file.unpack_engine(data[: -len(b"ENGINE")])
    with pytest.raises(ModelFileError, match="unreadable"):
        engine_file.unpack_engine(b"YKTR" + (5).to_bytes(4, "little") + b"{bad}ENGINE")
    plain = tmp_path / "plain.engine"
    plain.write_bytes(b"ftrt" + b"\x01" * 100)
    with pytest.raises(ModelFileError, match=r"plain.engine.*no YKTR header.*yolokit export"):
        backends.REGISTRY["trt"].read_meta(plain)
    with pytest.raises(ModelFileError, match="no such"):
        backends.REGISTRY["trt"].read_meta(tmp_path / "missing.engine")


def test_trt_compat_checks() -> None:
    meta = _trt_meta()
    h100 = engine_file.GpuInfo("NVIDIA H100", "9.0")
    engine_file.check_compat(meta, "10.3.0", h100)
    with pytest.raises(ModelFileError, match=r"TensorRT 10.3.0.*this machine has TensorRT 10.8.0.*rebuild"):
        engine_file.check_compat(meta, "10.8.0", h100)
    with pytest.raises(ModelFileError, match=r"built for NVIDIA H100 \(compute capability 9.0\).*L4.*rebuild"):
        engine_file.check_compat(meta, "10.3.0", engine_file.GpuInfo("NVIDIA L4", "8.9"))
    with pytest.raises(ModelFileError, match="does not name the GPU"):
        engine_file.check_compat(_trt_meta(extra={}), "10.3.0", h100)
    with pytest.raises(ModelFileError, match="not describe a TensorRT engine"):
        engine_file.check_compat(_trt_meta(runtime_versions={}), "10.3.0", h100)


def test_trt_profile_and_shapes(source: LoadedModel) -> None:
    p = plan.plan_profile((384, 640), batch=4, dynamic=True, max_batch=16)
    # every letterbox rectangle up to the long side fits; the kernels are tuned for the asked batch and shape
    assert p == plan.ProfilePlan((1, 3, 32, 32), (4, 3, 384, 640), (16, 3, 640, 640))
    assert plan.plan_profile((640, 640), batch=2, dynamic=False, max_batch=16) is None
    with pytest.raises(InputError, match="above --max-batch"):
        plan.plan_profile((640, 640), batch=32, dynamic=True, max_batch=8)
    with pytest.raises(InputError, match="multiples of the stride"):
        plan.plan_profile((630, 640), batch=1, dynamic=True, max_batch=8)
    assert plan.output_shape(1, (640, 640), [8, 16, 32]) == (1, 25200, 85)
    x = torch.zeros(2, 3, 160, 224)
    with torch.no_grad():
        real = tuple(source.model(x).shape)
    assert plan.output_shape(2, (160, 224), source.model.detect.stride, 3, 80) == real


def test_trt_precision_plan_and_flags() -> None:
    fp32 = plan.plan_precision(half=False, int8=False, has_fp16_flag=True)
    assert fp32.precision == "fp32" and not fp32.fp16_flag and fp32.clear_tf32 and not fp32.strongly_typed
    trt10 = plan.plan_precision(half=True, int8=False, has_fp16_flag=True)
    assert trt10.fp16_flag and not trt10.onnx_half and not trt10.strongly_typed
    trt11 = plan.plan_precision(half=True, int8=False, has_fp16_flag=False)
    assert trt11.strongly_typed and trt11.onnx_half and not trt11.fp16_flag
    with pytest.raises(ExportError, match="INT8"):
        plan.plan_precision(half=False, int8=True, has_fp16_flag=True)
    assert plan.network_flags(False, 1) == 0
    assert plan.network_flags(True, 1) == 2
    assert runtime.cuda_index("cuda") == 0 and runtime.cuda_index("cuda:1") == 1 and runtime.cuda_index("2") == 2
    with pytest.raises(BackendUnavailableError, match="NVIDIA GPU"):
        runtime.cuda_index("cpu")
    assert plan.timing_cache_path(Path("/x/m.engine")) == Path("/x/m.engine.timing.cache")


def test_trt_unavailable_is_a_clear_refusal(tmp_path: Path) -> None:
    trt = backends.REGISTRY["trt"]
    reason = trt.unavailable_reason()
    if reason is None:
        pytest.skip("TensorRT and a CUDA GPU are available here")
    assert "yolokit[trt]" in reason or "NVIDIA GPU" in reason
    f = tmp_path / "m.engine"
    f.write_bytes(engine_file.pack_engine(_trt_meta(), b"x"))
    with pytest.raises(BackendUnavailableError):
        trt.load(f, LoadOptions(device="cuda"))
    with pytest.raises(BackendUnavailableError):
        backends.require("trt")


def test_runtime_options_of_the_wrong_kind_are_one_line(exported: dict[str, Path]) -> None:
    """options={'providers': 5} was a TypeError ('int' object is not iterable), {'shape_models': 'x'} a ValueError,
    and {'inference_precision': 'f99'} a ModelFileError of many lines of OpenVINO's source blaming the model."""
    from toolkit import Detector
    from toolkit.errors import InputError

    cases = [("onnx", {"providers": 5}, "options\\['providers'\\] takes a list"),
             ("onnx", {"providers": "CPUExecutionProvider"}, "options\\['providers'\\] takes a list"),
             ("openvino", {"shape_models": "x"}, "options\\['shape_models'\\] takes a whole number"),
             ("openvino", {"inference_precision": "f99"}, "options\\['inference_precision'\\] takes f32, bf16")]
    for kind, options, reason in cases:
        with pytest.raises(InputError, match=reason) as e:
            Detector(exported[kind], options=options)
        assert "\n" not in str(e.value)
    Detector(exported["onnx"], options={"providers": ["CPUExecutionProvider"]}).close()
