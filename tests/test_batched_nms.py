"""The batched fixed-K NMS (toolkit.engine.gpu.nms) gives exactly toolkit.ops.postprocess's detections, on the
CPU device: random predictions, a real model's outputs, every NMS option, and the paths where the fixed K overflows
or the fixed-point iteration has not settled (answered exactly by the sequential fallback)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from toolkit.engine.gpu.nms import BatchedNMS, candidates, exact_rows, select
from toolkit.errors import InputError
from toolkit.model.yolov5 import build_model
from toolkit.ops import NMSOptions, letterbox, postprocess


def _random_preds(b: int, n: int, nc: int, seed: int, spread: float = 640.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, spread, (b, n, 2))
    wh = rng.uniform(4, 200, (b, n, 2))
    obj = rng.uniform(0, 1, (b, n, 1))
    cls = rng.uniform(0, 1, (b, n, nc))
    return np.concatenate([xy, wh, obj, cls], -1).astype(np.float32)


def _host_rows(nms: BatchedNMS, preds: np.ndarray) -> list[np.ndarray]:
    """What the GPU pipeline does with a batch: one call, one copy back, rows per image (fallbacks included)."""
    cand, out, info = nms(torch.from_numpy(preds))
    out_h, info_h = out.numpy(), info.numpy()
    nms.observe(info_h)
    return [nms.rows(cand, out_h, info_h, i) for i in range(len(preds))]


def _assert_exact(rows: np.ndarray, ref: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    xyxy, conf, cls = ref
    assert rows.shape == (len(xyxy), 6)
    np.testing.assert_array_equal(rows[:, :4], xyxy)
    np.testing.assert_array_equal(rows[:, 4], conf)
    np.testing.assert_array_equal(rows[:, 5].astype(np.int64), cls)


OPTIONS = [NMSOptions(), NMSOptions(conf=0.05, iou=0.6, max_det=300), NMSOptions(conf=0.1, multi_label=True),
           NMSOptions(conf=0.2, agnostic=True), NMSOptions(conf=0.1, classes=(0, 3, 5, 99)),
           NMSOptions(conf=0.01, max_nms=500), NMSOptions(conf=0.3, max_det=7), NMSOptions(conf=0.99)]


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: repr(o)[10:70])
def test_batched_nms_equals_numpy_on_random_predictions(opts: NMSOptions) -> None:
    preds = _random_preds(4, 1500, 8, seed=1)
    rows = _host_rows(BatchedNMS(opts, k=256), preds)
    for r, p in zip(rows, preds, strict=True):
        _assert_exact(r, postprocess(p, opts))


@pytest.fixture(scope="module")
def model_outputs() -> np.ndarray:
    """A fresh yolov5n's outputs with lifted objectness: a dense lattice of near-equal, overlapping boxes, the worst
    case for the fixed-point iteration (long suppression chains): every image overflows K or does not settle."""
    model = build_model("yolov5n").eval()
    det = model.detect
    with torch.no_grad():
        for conv in det.m:
            bias = conv.bias
            assert isinstance(bias, torch.Tensor)
            bias.view(det.na, -1)[:, 4] += 8.0
            bias.view(det.na, -1)[:, 5:] += 5.0
    rng = np.random.default_rng(0)
    imgs = []
    for _ in range(4):
        base = rng.integers(0, 255, (90, 160, 3), dtype=np.uint8)
        img = np.ascontiguousarray(np.repeat(np.repeat(base, 4, 0), 4, 1))
        imgs.append(letterbox(img, 320)[0][:, :, ::-1].transpose(2, 0, 1))
    x = np.stack(imgs).astype(np.float32) / 255
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def real_outputs(yolov5n_pt: Path, coco128_images: Path) -> np.ndarray:
    """The official yolov5n on 12 coco128 photos (480x640): real clusters of boxes."""
    import cv2

    from toolkit.model.load import load_model

    model = load_model(yolov5n_pt).model.eval()
    paths = sorted(coco128_images.glob("*.jpg"))[:12]
    x = np.stack([letterbox(cv2.imread(str(p)), (480, 640), 32, auto=False)[0][:, :, ::-1].transpose(2, 0, 1)
                  for p in paths])
    with torch.inference_mode():
        return model(torch.from_numpy(np.ascontiguousarray(x)).float() / 255).numpy()


@pytest.mark.parametrize("opts", [NMSOptions(conf=0.25), NMSOptions(conf=0.1, iou=0.6),
                                  NMSOptions(conf=0.001, iou=0.6, max_det=300),
                                  NMSOptions(conf=0.01, multi_label=True, max_det=300)],
                         ids=["default", "conf0.1", "lowconf", "multilabel"])
def test_batched_nms_equals_numpy_on_yolov5n_outputs(real_outputs: np.ndarray, opts: NMSOptions) -> None:
    nms = BatchedNMS(opts)
    cand, _, info = nms(torch.from_numpy(real_outputs))
    rows = _host_rows(BatchedNMS(opts), real_outputs)
    total = 0
    for r, p in zip(rows, real_outputs, strict=True):
        ref = postprocess(p, opts)
        _assert_exact(r, ref)
        total += len(ref[0])
    assert total > 20  # the comparison was not vacuous
    if opts.conf >= 0.1:  # at run thresholds the fixed-K path answers every image itself (12 rounds suffice)
        assert not info[:, 2].any() and int(cand.count.max()) <= nms.k


def test_overflow_and_unsettled_images_are_flagged_and_answered_exactly(model_outputs: np.ndarray) -> None:
    opts = NMSOptions(conf=0.001, iou=0.45, max_det=300)
    model_outputs = np.ascontiguousarray(model_outputs[:, ::5])  # every level, fewer anchors: a small K x K
    cand = candidates(torch.from_numpy(model_outputs), opts)
    count = cand.count.numpy()
    assert (count > 64).all()  # the fixed K below overflows on every image
    _, info = select(cand, opts, k=64, rounds=12)
    assert info[:, 2].numpy().all() and (info[:, 1].numpy() == count).all()
    # K large enough, but one round does not settle a lattice of overlapping boxes: flagged too
    _, info1 = select(cand, opts, k=int(count.max()), rounds=1)
    assert info1[:, 2].numpy().all()
    for i, p in enumerate(model_outputs):  # the fallback is the sequential greedy NMS: exact
        _assert_exact(exact_rows(cand, i, opts).numpy(), postprocess(p, opts))
    nms = BatchedNMS(opts, k=64, k_max=4096)  # the fixed K grows after a batch that overflowed it
    rows = _host_rows(nms, model_outputs)
    assert nms.k >= int(count.max()) and nms.k & (nms.k - 1) == 0
    for r, p in zip(rows, model_outputs, strict=True):
        _assert_exact(r, postprocess(p, opts))


def test_max_det_cut_needs_no_fallback() -> None:
    """More candidates than K, but max_det kept among the first K: complete and exact without the fallback."""
    opts = NMSOptions(conf=0.1, iou=0.5, max_det=5)
    preds = _random_preds(2, 400, 3, seed=3, spread=5000.0)  # far apart: little suppression
    cand = candidates(torch.from_numpy(preds), opts)
    out, info = select(cand, opts, k=32)
    assert (info[:, 1] > 32).all() and (info[:, 0] == 5).all() and not info[:, 2].any()
    for i, p in enumerate(preds):
        _assert_exact(out[i, :5].numpy(), postprocess(p, opts))


def test_ties_keep_numpys_order() -> None:
    """Equal scores are ordered by anchor (NumPy's stable argsort); duplicates suppress the later ones."""
    pred = np.zeros((1, 6, 5 + 2), np.float32)
    pred[0, :, :4] = [[50, 50, 20, 20]] * 3 + [[300, 300, 40, 40]] * 3
    pred[0, :, 4] = 0.9
    pred[0, :, 5] = [0.5, 0.5, 0.5, 0.2, 0.7, 0.7]
    opts = NMSOptions(conf=0.1)
    rows = _host_rows(BatchedNMS(opts), pred)
    _assert_exact(rows[0], postprocess(pred[0], opts))


def test_whole_batches_and_refusals(model_outputs: np.ndarray) -> None:
    opts = NMSOptions(conf=0.01)
    for r, p in zip(_host_rows(BatchedNMS(opts), model_outputs), model_outputs, strict=True):
        _assert_exact(r, postprocess(p, opts))
    empty = _host_rows(BatchedNMS(opts), np.zeros((2, 50, 7), np.float32))
    assert [r.shape for r in empty] == [(0, 6), (0, 6)]
    with pytest.raises(InputError):
        candidates(torch.zeros(10, 7), opts)
    with pytest.raises(InputError):
        BatchedNMS(opts, k=0)
