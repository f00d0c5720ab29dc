"""Pure pre/post-processing functions against brute-force or hand-computed expectations."""

from __future__ import annotations

import numpy as np
import pytest

from toolkit.ops import (
    NMSOptions,
    box_iou,
    iou_cut,
    letterbox,
    letterbox_shape,
    nms,
    postprocess,
    scale_boxes,
    xywh2xyxy,
    xyxy2xywh,
)


@pytest.mark.parametrize(("src", "auto", "expected"), [
    ((480, 640), True, (480, 640)),     # landscape: long side 640, short side already a multiple of 32
    ((640, 427), True, (640, 448)),     # portrait: 427 padded to the next multiple of 32
    ((1080, 1920), True, (384, 640)),   # 360 -> 384
    ((1080, 1920), False, (640, 640)),  # fixed square
    ((100, 50), True, (640, 320)),      # upscaled
])
def test_letterbox_shapes(src: tuple[int, int], auto: bool, expected: tuple[int, int]) -> None:
    img = np.full((*src, 3), 7, np.uint8)
    out, info = letterbox(img, 640, 32, auto=auto)
    assert out.shape[:2] == expected
    assert letterbox_shape(src, 640, 32, auto)[1] == expected
    # padding is grey 114 and split evenly (at most one pixel apart)
    if out.shape[1] > round(src[1] * info.ratio):
        assert out[0, 0, 0] == 114 and out[-1, -1, 0] == 114
    assert out[out.shape[0] // 2, out.shape[1] // 2, 0] == 7


def test_scale_boxes_inverts_letterbox() -> None:
    img = np.zeros((1080, 1920, 3), np.uint8)
    _, info = letterbox(img, 640, 32)
    boxes = np.array([[100.0, 200.0, 900.0, 1000.0]], np.float32)
    r, (dw, dh) = info.ratio, info.pad
    in_input = boxes * r + np.array([dw, dh, dw, dh], np.float32)
    np.testing.assert_allclose(scale_boxes(in_input, info), boxes, atol=1e-3)
    # clipped to the image
    out = scale_boxes(np.array([[-50.0, -50.0, 700.0, 700.0]], np.float32), info)
    assert out.min() >= 0 and out[0, 2] <= 1920 and out[0, 3] <= 1080


def test_box_conversions_round_trip() -> None:
    rng = np.random.default_rng(0)
    xywh = np.concatenate([rng.uniform(0, 500, (20, 2)), rng.uniform(1, 50, (20, 2))], 1).astype(np.float32)
    np.testing.assert_allclose(xyxy2xywh(xywh2xyxy(xywh)), xywh, rtol=1e-5, atol=1e-4)


def _brute_nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep: list[int] = []
    for i in order:
        if all(box_iou(boxes[i:i + 1], boxes[k:k + 1])[0, 0] <= thr for k in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("seed", range(5))
def test_nms_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, (60, 2))
    wh = rng.uniform(5, 40, (60, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    scores = rng.permutation(60).astype(np.float32) / 60  # distinct scores
    assert nms(boxes, scores, 0.45).tolist() == _brute_nms(boxes, scores, 0.45)
    assert nms(boxes, scores, 0.45, max_keep=3).tolist() == _brute_nms(boxes, scores, 0.45)[:3]


def _pred(rows: list[list[float]], nc: int = 3) -> np.ndarray:
    out = np.zeros((len(rows), 5 + nc), np.float32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def test_postprocess_semantics() -> None:
    # xc yc w h obj c0 c1 c2
    pred = _pred([
        [50, 50, 20, 20, 0.9, 0.1, 0.8, 0.3],    # class 1, score 0.72
        [51, 50, 20, 20, 0.8, 0.1, 0.7, 0.0],    # same place & class, lower: suppressed
        [51, 50, 20, 20, 0.8, 0.9, 0.0, 0.0],    # same place, class 0: kept (per-class NMS)
        [200, 200, 10, 10, 0.2, 1.0, 0.0, 0.0],  # objectness below conf: dropped
        [300, 300, 10, 10, 0.5, 0.4, 0.0, 0.0],  # score 0.2 below conf: dropped
    ])
    xyxy, conf, cls = postprocess(pred, NMSOptions(conf=0.25, iou=0.45))
    assert cls.tolist() == [1, 0]
    np.testing.assert_allclose(conf, [0.72, 0.72], rtol=1e-6)
    np.testing.assert_allclose(xyxy[0], [40, 40, 60, 60])
    # agnostic: the class-0 box overlaps the first, so only one survives
    _, _, cls = postprocess(pred, NMSOptions(conf=0.25, iou=0.45, agnostic=True))
    assert len(cls) == 1
    # class filter and max_det
    _, _, cls = postprocess(pred, NMSOptions(conf=0.25, iou=0.45, classes=(0,)))
    assert cls.tolist() == [0]
    _, conf, _ = postprocess(pred, NMSOptions(conf=0.25, iou=0.45, max_det=1))
    assert len(conf) == 1
    # multi-label: the first box also counts for class 2 (0.9 * 0.3 = 0.27 > 0.25)
    _, _, cls = postprocess(pred, NMSOptions(conf=0.25, iou=0.45, multi_label=True))
    assert sorted(cls.tolist()) == [0, 1, 2]


def test_postprocess_empty() -> None:
    xyxy, conf, cls = postprocess(np.zeros((10, 85), np.float32), NMSOptions())
    assert xyxy.shape == (0, 4) and conf.shape == (0,) and cls.shape == (0,)


def test_match_greedy_one_to_one_by_confidence_and_class() -> None:
    from toolkit.ops import match_greedy

    targets = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    boxes = np.array([
        [0, 0, 10, 10],    # exact match of target 0 (lower confidence)
        [1, 0, 11, 10],    # also overlaps target 0, higher confidence: takes it first
        [20, 20, 30, 30],  # target 1's place but another class: no match
        [50, 50, 60, 60],  # nothing there
    ], np.float32)
    conf = np.array([0.5, 0.9, 0.8, 0.7], np.float32)
    cls = np.array([0, 0, 1, 0])
    m = match_greedy(boxes, conf, cls, targets, np.array([0, 0]), 0.5)
    assert m.tolist() == [-1, 0, -1, -1]
    assert match_greedy(boxes[:0], conf[:0], cls[:0], targets, np.array([0, 0]), 0.5).shape == (0,)


@pytest.mark.parametrize("thres", [0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7])
def test_nms_compares_the_iou_with_the_threshold_in_double_as_torchvision(thres: float) -> None:
    """torchvision suppresses a box whose float IoU is above the double threshold; comparing in float32 (the
    threshold rounded to nearest: float32(0.6) > 0.6) kept a box at an IoU of exactly 60/100 with --iou 0.6."""
    for inter in range(1, 100):
        a = np.array([[0, 0, 100, 1]], np.float32)  # area 100; b overlaps a by ``inter`` of 100 + 100 - inter
        b = np.array([[100 - inter, 0, 200 - inter, 1]], np.float32)
        boxes = np.concatenate([a, b])
        iou32 = np.float32(inter) / np.float32(200 - inter)  # the float IoU (exact operands)
        suppressed = float(iou32) > thres  # compared in double
        kept = nms(boxes, np.array([0.9, 0.8], np.float32), thres)
        assert (len(kept) == 1) == suppressed, (inter, float(iou32), thres)
    assert float(np.float32(0.6)) > 0.6 and iou_cut(0.6) < 0.6 and iou_cut(0.5) == 0.5
