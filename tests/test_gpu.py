"""toolkit.engine.gpu's device letterbox and sequential NMS on the CPU device (letterbox vs cv2, NMS vs numpy), and
the batched NMS on a model's outputs. The tests marked ``needs a CUDA GPU`` skip without one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from toolkit.engine.gpu.letterbox import letterbox_torch, pad_normalise
from toolkit.engine.gpu.nms import BatchedNMS, nms_torch
from toolkit.errors import InputError
from toolkit.model.yolov5 import build_model
from toolkit.ops import (
    NMSOptions,
    box_iou,
    letterbox,
    letterbox_info,
    letterbox_padding,
    letterbox_resize,
    nms,
    postprocess,
)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus noise, BGR uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 / w), (yy * 255 / h), ((xx + yy) % 97) * 2.6], -1)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ letterbox
@pytest.mark.parametrize("shape,imgsz,auto", [((1080, 1920), 640, True), ((1080, 1920), 512, True),
                                              ((480, 640), (320, 416), False),
                                              ((100, 150), 640, True), ((640, 640), 640, True),
                                              ((333, 517), 640, False)])
def test_letterbox_matches_cv2(shape: tuple[int, int], imgsz: int | tuple[int, int], auto: bool) -> None:
    img = _image(*shape)
    ref, ref_info = letterbox(img, imgsz, 32, auto=auto)
    out, info = letterbox_torch(torch.from_numpy(img), imgsz, 32, auto=auto)
    assert info == ref_info
    assert out.shape == (3, *ref.shape[:2]) and out.dtype == torch.float32
    ref_chw = torch.from_numpy(ref[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) / 255)
    diff = (out - ref_chw).abs()
    # measured: mean <= 0.27/255, max <= 0.81/255 (cv2 rounds to uint8 with fixed-point weights); exact 0 for
    # 1920x1080 -> 640 (a 3x downscale samples pixel centres)
    assert diff.mean().item() < 0.5 / 255
    assert diff.max().item() <= 1.5 / 255
    # padding identical: rows/columns that are exactly grey in cv2's output are exactly grey here
    pad = (ref == 114).all(-1)
    (nh, nw) = (round(shape[0] * info.ratio), round(shape[1] * info.ratio))
    top, left = round(info.pad[1] - 0.1), round(info.pad[0] - 0.1)
    mask = np.ones(ref.shape[:2], bool)
    mask[top:top + nh, left:left + nw] = False
    assert pad[mask].all()
    assert torch.equal(out[:, torch.from_numpy(mask)], torch.full_like(out[:, torch.from_numpy(mask)], 114 / 255))
    # quantized: within one grey level everywhere
    q, _ = letterbox_torch(torch.from_numpy(img), imgsz, 32, auto=auto, quantize=True)
    assert (q - ref_chw).abs().max().item() <= 1.0 / 255 + 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("shape", "imgsz"), [((1080, 1920), 640), ((480, 640), 416), ((333, 517), 640),
                                              ((640, 480), 640)])
def test_pad_normalise_is_the_cpu_letterbox_exactly(shape: tuple[int, int], imgsz: int, dtype: torch.dtype) -> None:
    """The GPU pipeline's default letterbox: OpenCV resizes (on the CPU), the device pads and normalises; the model
    input is the CPU path's ``x.to(dtype) / 255`` bit for bit."""
    img = _image(*shape)
    ref, ref_info = letterbox(img, imgsz, 32)
    info = letterbox_info(shape, imgsz, 32)
    assert info == ref_info
    small = letterbox_resize(img, info)
    top, _, left, _ = letterbox_padding(info)
    out = torch.zeros((3, *info.dst_shape), dtype=dtype)
    pad_normalise(torch.from_numpy(small), out, top, left)
    want = torch.from_numpy(np.ascontiguousarray(ref[:, :, ::-1].transpose(2, 0, 1))).to(dtype).div_(255)
    assert torch.equal(out, want)
    with pytest.raises(InputError):
        pad_normalise(torch.from_numpy(small), out[:, :10], top, left)


def test_letterbox_batch_and_dtype() -> None:
    imgs = np.stack([_image(270, 480, s) for s in range(3)])
    out, info = letterbox_torch(torch.from_numpy(imgs), 256, 32, dtype=torch.float16)
    assert out.shape == (3, 3, 160, 256) and out.dtype == torch.float16
    single, info1 = letterbox_torch(torch.from_numpy(imgs[1]), 256, 32, dtype=torch.float16)
    assert info == info1 and torch.equal(out[1], single)
    with pytest.raises(InputError):
        letterbox_torch(torch.zeros(10, 10, 3), 64)


# ------------------------------------------------------------------------------------------------------ NMS
def _random_boxes(n: int, seed: int, spread: float = 200.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, spread, (n, 2)).astype(np.float32)
    wh = rng.uniform(5, 80, (n, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + wh], 1)
    scores = rng.permutation(n).astype(np.float32) / n + 0.001  # distinct
    return boxes, scores


@pytest.mark.parametrize("n,seed,thr,max_keep", [(1, 0, 0.5, None), (50, 1, 0.45, None), (700, 2, 0.3, None),
                                                 (2000, 3, 0.6, None), (900, 4, 0.45, 17), (600, 5, 0.0, None)])
def test_nms_matches_numpy(n: int, seed: int, thr: float, max_keep: int | None) -> None:
    boxes, scores = _random_boxes(n, seed)
    ref = nms(boxes, scores, thr, max_keep)
    out = nms_torch(torch.from_numpy(boxes), torch.from_numpy(scores), thr, max_keep, block=64)
    assert out.dtype == torch.long
    np.testing.assert_array_equal(out.numpy(), ref)
    assert len(nms_torch(torch.zeros(0, 4), torch.zeros(0), 0.5)) == 0


def test_nms_ties_and_duplicates() -> None:
    boxes = np.array([[0, 0, 10, 10]] * 4 + [[100, 100, 110, 110]] * 3, np.float32)
    scores = np.array([0.5, 0.9, 0.9, 0.1, 0.3, 0.3, 0.3], np.float32)
    ref = nms(boxes, scores, 0.5)
    np.testing.assert_array_equal(nms_torch(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5).numpy(), ref)


@pytest.fixture(scope="module")
def model_outputs() -> np.ndarray:
    model = build_model("yolov5n").eval()
    det = model.detect
    with torch.no_grad():  # a fresh model's objectness prior is ~1e-3: lift it so that NMS has work to do
        for conv in det.m:
            bias = conv.bias
            assert isinstance(bias, torch.Tensor)
            bias.view(det.na, -1)[:, 4] += 6.0
            bias.view(det.na, -1)[:, 5:] += 3.0
    rng = np.random.default_rng(0)
    imgs = np.stack([letterbox(_image(360, 640, s), 320)[0][:, :, ::-1].transpose(2, 0, 1) for s in range(3)])
    imgs = imgs.astype(np.float32) / 255 + rng.normal(0, 0.05, imgs.shape).astype(np.float32)
    with torch.inference_mode():
        return model(torch.from_numpy(imgs)).numpy()


def _batched_rows(preds: np.ndarray, opts: NMSOptions) -> list[np.ndarray]:
    """The pipeline's batched NMS over one batch: each image's rows ``(n, 6)`` as the host reads them."""
    batched = BatchedNMS(opts)
    cand, out, info = batched(torch.from_numpy(preds))
    return [batched.rows(cand, out.numpy(), info.numpy(), i) for i in range(len(preds))]


@pytest.mark.parametrize("opts", [NMSOptions(conf=0.001, iou=0.6, max_det=300), NMSOptions(conf=0.01),
                                  NMSOptions(conf=0.001, multi_label=True, max_det=300)])
def test_batched_nms_matches_numpy_model(model_outputs: np.ndarray, opts: NMSOptions) -> None:
    outs = _batched_rows(model_outputs, opts)
    assert len(outs) == len(model_outputs)
    total = 0
    for rows, pred in zip(outs, model_outputs, strict=True):
        xyxy, conf, cls = postprocess(pred, opts)
        assert rows.shape == (len(xyxy), 6)
        np.testing.assert_array_equal(rows[:, :4], xyxy)
        np.testing.assert_array_equal(rows[:, 4], conf)
        np.testing.assert_array_equal(rows[:, 5].astype(np.int64), cls)
        total += len(xyxy)
    assert total > 0  # the comparison was not vacuous


def test_batched_nms_empty() -> None:
    outs = _batched_rows(np.zeros((2, 100, 7), np.float32), NMSOptions())
    assert [r.shape for r in outs] == [(0, 6), (0, 6)]


@cuda
def test_gpu_letterbox_and_nms_match_cpu_on_cuda() -> None:
    img = _image(1080, 1920)
    ref, _ = letterbox(img, 640)
    out, _ = letterbox_torch(torch.from_numpy(img).cuda(), 640)
    ref_chw = torch.from_numpy(ref[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) / 255)
    assert (out.cpu() - ref_chw).abs().mean().item() < 0.5 / 255
    boxes, scores = _random_boxes(3000, 7)
    keep = nms_torch(torch.from_numpy(boxes).cuda(), torch.from_numpy(scores).cuda(), 0.45)
    np.testing.assert_array_equal(keep.cpu().numpy(), nms(boxes, scores, 0.45))


@cuda
@pytest.mark.parametrize(("half", "tol", "share"), [(False, 0.002, 0.995), (True, 0.02, 0.95)])
def test_gpu_pipeline_matches_the_cpu_on_coco128(yolov5n_pt, coco128_images, half: bool, tol: float,  # type: ignore[no-untyped-def]
                                                 share: float) -> None:
    from toolkit import Detector

    paths = sorted(str(p) for p in coco128_images.glob("*.jpg"))
    with Detector(yolov5n_pt, device="cpu") as cpu_det:
        ref = list(cpu_det.predict_iter(paths, mode="auto"))
    with Detector(yolov5n_pt, device="cuda", half=half) as gpu_det:
        got = list(gpu_det.predict_iter(paths, mode="auto"))
        assert gpu_det.last_plan is not None and gpu_det.last_plan.pipeline == "device"
    matched = total = 0
    for a, b in zip(ref, got, strict=True):
        da, db = a.detections, b.detections
        total += len(da)
        if len(da) and len(db):
            iou = box_iou(da.xyxy, db.xyxy) * (da.class_id[:, None] == db.class_id[None, :])
            close = np.abs(da.confidence[:, None] - db.confidence[None, :]) <= tol
            matched += int(((iou >= 0.9) & close).any(1).sum())
    assert total > 500 and matched / total >= share
