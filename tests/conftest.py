"""Shared fixtures: where the shared data is, and skips with a stated reason where it is absent."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    env = os.environ.get("YOLOKIT_SHARED")
    return Path(env) if env else REPO.parent / "shared"


@pytest.fixture(scope="session", autouse=True)
def _openvino_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """OpenVINO caches compiled models under ~/.cache by default: tests (and the processes they start) use a
    temporary folder instead."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("YOLOKIT_OPENVINO_CACHE", str(tmp_path_factory.mktemp("openvino_cache")))
        yield


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (set YOLOKIT_SHARED to the shared data folder)")
    return path


@pytest.fixture(scope="session")
def shared() -> Path:
    return _need(shared_dir(), "shared data folder")


@pytest.fixture(scope="session")
def yolov5n_pt() -> Path:
    return _need(shared_dir() / "weights" / "yolov5n.pt", "official yolov5n.pt")


@pytest.fixture(scope="session")
def coco128() -> Path:
    return _need(shared_dir() / "datasets" / "coco128", "coco128 dataset")


@pytest.fixture(scope="session")
def coco128_images(coco128: Path) -> Path:
    return _need(coco128 / "images" / "train2017", "coco128 images")


@pytest.fixture(scope="session")
def reference(shared: Path) -> Path:
    return _need(shared / "reference" / "coco128_yolov5n", "official YOLOv5 reference outputs")


@pytest.fixture(scope="session")
def coco128_large(shared: Path) -> Path:
    return _need(shared / "datasets" / "coco128-large" / "images", "coco128-large images")


@pytest.fixture(scope="session")
def reference_large(shared: Path) -> Path:
    return _need(shared / "reference" / "coco128-large_yolov5n", "official YOLOv5 reference outputs on coco128-large")


@pytest.fixture(scope="session")
def exported(yolov5n_pt: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """yolov5n.pt exported once per session with the default options (ONNX and OpenVINO FP32: dynamic batch, height
    and width), each passing its own parity check."""
    import backends
    from backends.base import ExportOptions
    from toolkit.jobs.export import export

    root = tmp_path_factory.mktemp("exported")
    out: dict[str, Path] = {}
    for to, name in (("onnx", "yolov5n.onnx"), ("openvino", "yolov5n_openvino")):
        if not backends.REGISTRY[to].is_available():
            continue
        report = export(yolov5n_pt, to, root / name, ExportOptions())
        assert report.parity.passed and report.parity.reference_detections >= 50
        assert report.meta.imgsz is None and report.meta.batch is None
        out[to] = report.artifact
    return out


@pytest.fixture(scope="session")
def coco128_local_run(coco128_images: Path, yolov5n_pt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """yolov5n over coco128 by the local engine into a local run folder (labels and predictions.csv, no images):
    what the Ray engine and the object-storage runs are compared with."""
    from toolkit.jobs.run import RunOptions, run

    out = tmp_path_factory.mktemp("coco128_local")
    s = run(RunOptions.of(source=str(coco128_images), weights=str(yolov5n_pt), save_txt=True, save_csv=True,
                          nosave=True, project=str(out), name="local"))
    assert s.processed == 128 and not s.failed
    return Path(s.out_dir)


@pytest.fixture(scope="session")
def s3_store(yolov5n_pt: Path, coco128_images: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real S3-compatible server on loopback (moto's server mode, tests/helpers/s3.py) with the buckets ``data``
    (coco128's images below ``coco128/``), ``models`` (yolov5n.pt), ``runs``, ``odd`` and ``seam``; this process
    (and every process it starts from now on: the Ray nodes too) reaches it through AWS_ENDPOINT_URL. Weights
    downloaded from it go to a temporary cache, not the checkout's."""
    from tests.helpers import s3

    with s3.moto_server() as env, pytest.MonkeyPatch.context() as mp:
        env = {**env, "YOLOKIT_CACHE_DIR": str(tmp_path_factory.mktemp("weights_cache"))}
        for k, v in env.items():
            mp.setenv(k, v)
        s3.fresh_clients()
        fs = s3.filesystem()
        for bucket in ("data", "models", "runs", "odd", "seam"):
            fs.mkdir(bucket)
        s3.upload(fs, coco128_images, "data/coco128", "*.jpg")
        fs.put_file(str(yolov5n_pt), "models/yolov5n.pt")
        try:
            yield env
        finally:
            s3.fresh_clients()
