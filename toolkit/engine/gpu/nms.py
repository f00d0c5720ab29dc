"""Batched, fixed-K non-maximum suppression on the device, with the results of :func:`toolkit.ops.postprocess`.

A whole batch ``(B, N, 5 + nc)`` is post-processed by a fixed sequence of tensor operations, with no host
synchronisation and no Python loop over images:

No step creates a tensor from host data, so nothing waits for the device until the results are read.

1. :func:`candidates`: objectness and score filters, best class (or every class with ``multi_label``), class filter;
   every image's candidates sorted by score (descending, stable: ties in anchor order, as NumPy's stable argsort),
   the ``max_nms`` best kept: ``rows (B, Kc, 6)`` = x1 y1 x2 y2 conf cls, and ``count (B,)``.
2. :func:`select`: greedy NMS over each image's first ``K`` candidates (``K`` fixed per call). Boxes are offset by
   class exactly as :func:`toolkit.ops.postprocess` does and compared with the same float32 IoU arithmetic. Greedy
   NMS keeps ``j`` when no kept ``i < j`` overlaps it; that equation has one solution, which ``rounds`` iterations
   of ``keep = valid & ~any(S & keep)`` reach when the chains of "i would suppress j" are at most ``rounds`` long (a
   batched matrix product per round). The kept rows are packed into ``(B, max_det, 6)``.
3. Per image, ``info = (kept, count, flag)``. ``flag`` says that this image's answer may be incomplete: the
   iteration had not settled, or more than ``K`` candidates were above the thresholds and fewer than ``max_det``
   were kept. The host reads ``info`` with the detections (one copy, one synchronisation per batch) and answers a
   flagged image with :func:`exact_rows`, the sequential greedy NMS over all its candidates (:func:`nms_torch`,
   :func:`toolkit.ops.nms` in blocked tensor operations, still on the device). :class:`BatchedNMS` raises ``K`` for
   later batches when candidates overflowed.

So every image gets exactly :func:`toolkit.ops.postprocess`'s detections (``tests/test_batched_nms.py`` checks it,
bit for bit, on the CPU device). One caveat: when more than ``max_nms`` (30,000) candidates pass the thresholds,
which one of two candidates with bit-identical scores at the cut is kept may differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from toolkit.errors import InputError
from toolkit.ops import NMSOptions, iou_cut

__all__ = ["BatchedNMS", "Candidates", "candidates", "exact_rows", "nms_torch", "select"]

ROUNDS = 12  # fixed-point rounds; chains longer than this are rare and are answered exactly by exact_rows
K_START = 512  # candidates per image compared at once (a (B, K, K) IoU matrix)
K_MAX = 2048
MAX_ELEMS = 1 << 24  # a (chunk, K, K) IoU matrix holds at most this many elements; larger batches go in chunks


@dataclass
class Candidates:
    """Each image's candidates, best first: ``rows (B, Kc, 6)`` float32 (x1, y1, x2, y2, conf, cls), valid for the
    first ``count[b]`` rows (the rest are padding with conf -inf)."""

    rows: torch.Tensor
    count: torch.Tensor


def _xywh2xyxy(x: torch.Tensor) -> torch.Tensor:
    y = torch.empty_like(x)
    y[..., 0] = x[..., 0] - x[..., 2] / 2
    y[..., 1] = x[..., 1] - x[..., 3] / 2
    y[..., 2] = x[..., 0] + x[..., 2] / 2
    y[..., 3] = x[..., 1] + x[..., 3] / 2
    return y


def candidates(preds: torch.Tensor, opts: NMSOptions, allowed: torch.Tensor | None = None) -> Candidates:
    """Step 1 for a batch of raw predictions ``(B, N, 5 + nc)`` (any float dtype; computed in float32).

    ``allowed`` is an optional ``(nc,)`` bool mask of the classes to keep (see :func:`class_mask`)."""
    if preds.ndim != 3 or preds.shape[-1] < 6:
        raise InputError(f"batched NMS takes (B, N, 5 + nc) predictions, got {tuple(preds.shape)}")
    p = preds.float()
    b, n, c = p.shape
    nc = c - 5
    if opts.classes is not None and allowed is None:
        allowed = class_mask(opts.classes, nc, p.device)
    scores = p[..., 5:] * p[..., 4:5]  # objectness x class score, as toolkit.ops.postprocess computes it
    obj_ok = p[..., 4] > opts.conf
    if opts.multi_label:
        valid = obj_ok[..., None] & (scores > opts.conf)
        if allowed is not None:
            valid &= allowed
        flat = scores.masked_fill(~valid, float("-inf")).reshape(b, n * nc)
        count = valid.reshape(b, -1).sum(1)
        best_cls = None
    else:
        best, best_cls = scores.max(-1)  # the first of equal maxima, as NumPy's argmax
        valid = obj_ok & (best > opts.conf)
        if allowed is not None:
            valid &= allowed[best_cls]
        flat = best.masked_fill(~valid, float("-inf"))
        count = valid.sum(1)
    width = flat.shape[1]
    kc = max(1, min(width, opts.max_nms))
    if kc == width:
        order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    else:  # the max_nms best, then ordered by (score descending, index ascending) like a stable sort
        top = torch.topk(flat, kc, dim=1, sorted=False).indices.sort(dim=1).values
        order = top.gather(1, torch.sort(flat.gather(1, top), dim=1, descending=True, stable=True).indices)
    conf = flat.gather(1, order)
    if best_cls is None:
        anchor, cls = order // nc, order % nc
    else:
        anchor, cls = order, best_cls.gather(1, order)
    xyxy = _xywh2xyxy(p[..., :4].gather(1, anchor.unsqueeze(-1).expand(-1, -1, 4)))
    rows = torch.cat([xyxy, conf.unsqueeze(-1), cls.to(torch.float32).unsqueeze(-1)], -1)
    return Candidates(rows, count.clamp(max=kc))


def class_mask(classes: tuple[int, ...], nc: int, device: torch.device) -> torch.Tensor:
    """``(nc,)`` bool: the classes ``--classes`` keeps (ids outside ``[0, nc)`` match nothing, as with NumPy)."""
    mask = torch.zeros(nc, dtype=torch.bool)
    for k in classes:
        if 0 <= int(k) < nc:
            mask[int(k)] = True
    return mask.to(device)


def _offset_boxes(rows: torch.Tensor, opts: NMSOptions) -> torch.Tensor:
    box = rows[..., :4]
    if opts.agnostic:
        return box
    return box + rows[..., 5:6] * opts.max_wh  # box + cls x max_wh, in float32 as toolkit.ops.postprocess


def _pair_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every box of ``a`` ``(..., n, 4)`` with every box of ``b`` ``(..., m, 4)``: ``(..., n, m)``, in the
    float32 arithmetic of :func:`toolkit.ops.nms` (so that every comparison with the threshold comes out the same)."""
    ax1, ay1, ax2, ay2 = (t.unsqueeze(-1) for t in a.unbind(-1))
    bx1, by1, bx2, by2 = (t.unsqueeze(-2) for t in b.unbind(-1))
    inter = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp_(min=0) \
        * (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp_(min=0)
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return torch.where(union > 0, inter / union, torch.zeros_like(inter))


def _suppression(off: torch.Tensor, iou_thres: float, upper: torch.Tensor) -> torch.Tensor:
    """``(b, K, K)`` bool: ``S[i, j]`` = i ranks above j and their IoU is > ``iou_thres``."""
    return (_pair_iou(off, off) > iou_cut(iou_thres)) & upper


def _fixed_point(sup: torch.Tensor, valid: torch.Tensor, rounds: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Iterate ``keep = valid & ~any_i(keep[i] & sup[i, j])``; returns (keep, settled)."""
    k = sup.shape[-1]
    # 0/1 sums up to K are exact in float16 for K <= 2048 (tensor cores on a GPU); float32 otherwise and on the CPU
    dtype = torch.float16 if sup.device.type == "cuda" and k <= 2048 else torch.float32
    s = sup.to(dtype)

    def step(keep: torch.Tensor) -> torch.Tensor:
        hit = torch.bmm(keep.to(dtype).unsqueeze(1), s).squeeze(1) > 0
        return valid & ~hit

    keep = valid
    for _ in range(rounds):
        keep = step(keep)
    return keep, (step(keep) == keep).all(1)


def select(cand: Candidates, opts: NMSOptions, k: int = K_START, rounds: int = ROUNDS,
           max_elems: int = MAX_ELEMS) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 2: ``(out (B, max_det, 6), info (B, 3) int32 = kept, count, flag)``; see the module docstring."""
    rows, count = cand.rows, cand.count
    b, kc, _ = rows.shape
    k = max(1, min(int(k), kc))
    device = rows.device
    out = rows.new_zeros((b, opts.max_det + 1, 6))  # the last row takes what is not kept
    info = torch.zeros((b, 3), dtype=torch.int32, device=device)
    upper = torch.ones((k, k), device=device).triu_(1).bool()  # float triu: every backend has it
    arange = torch.arange(k, device=device)
    step = max(1, max_elems // (k * k))
    for s in range(0, b, step):
        e = min(b, s + step)
        r, cnt = rows[s:e, :k], count[s:e]
        valid = arange[None, :] < cnt[:, None]
        keep, settled = _fixed_point(_suppression(_offset_boxes(r, opts), opts.iou, upper), valid, rounds)
        pos = keep.cumsum(1) - 1
        take = keep & (pos < opts.max_det)
        idx = torch.where(take, pos, torch.full_like(pos, opts.max_det))
        out[s:e].scatter_(1, idx.unsqueeze(-1).expand(-1, -1, 6), r)
        kept = take.sum(1)
        overflow = (cnt > k) & (kept < opts.max_det)
        info[s:e, 0] = kept.to(torch.int32)
        info[s:e, 1] = cnt.to(torch.int32)
        info[s:e, 2] = (overflow | ~settled).to(torch.int32)
    return out[:, : opts.max_det], info


def nms_torch(boxes: torch.Tensor, scores: torch.Tensor, iou_thres: float, max_keep: int | None = None,
              block: int = 256) -> torch.Tensor:
    """Greedy NMS, same rule and result as :func:`toolkit.ops.nms`: indices (int64, on ``boxes``' device) of
    the kept boxes, highest score first; a box is suppressed when its IoU with a kept box is > ``iou_thres``.

    Blocked so that memory stays ``O(block x N)`` and the work is a few large tensor ops: the sorted
    candidates go in blocks of ``block``; inside a block the greedy result is the unique fixed point of
    ``keep[j] = alive[j] and no kept i < j overlaps j``, reached by iterating that equation (at most
    ``block`` rounds, usually a handful); the block's kept boxes then suppress every later candidate.
    """
    n = int(boxes.shape[0])
    device = boxes.device
    if n == 0 or (max_keep is not None and max_keep <= 0):
        return torch.zeros(0, dtype=torch.long, device=device)
    order = torch.sort(scores, descending=True, stable=True).indices
    b = boxes.float()[order]
    alive = torch.ones(n, dtype=torch.bool, device=device)
    limit = n if max_keep is None else max_keep
    kept: list[torch.Tensor] = []
    n_kept = 0
    for s in range(0, n, block):
        e = min(s + block, n)
        idx = torch.arange(s, e, device=device)[alive[s:e]]
        if idx.numel() == 0:
            continue
        sup = (_pair_iou(b[idx], b[idx]) > iou_thres).triu_(1)  # sup[i, j]: i (higher score) would drop j
        keep = torch.ones(idx.numel(), dtype=torch.bool, device=device)
        for _ in range(idx.numel()):
            new = ~(sup & keep[:, None]).any(0)
            if torch.equal(new, keep):
                break
            keep = new
        k = idx[keep]
        if n_kept + k.numel() >= limit:
            kept.append(k[: limit - n_kept])
            n_kept = limit
            break
        kept.append(k)
        n_kept += k.numel()
        if e < n:
            rest = torch.arange(e, n, device=device)
            for c in range(0, rest.numel(), 8192):  # bound the (kept x rest) matrix
                cols = rest[c:c + 8192]
                hit = (_pair_iou(b[k], b[cols]) > iou_cut(iou_thres)).any(0)
                alive[cols] &= ~hit
    if not kept:
        return torch.zeros(0, dtype=torch.long, device=device)
    return order[torch.cat(kept)]


def exact_rows(cand: Candidates, i: int, opts: NMSOptions, count: int | None = None) -> torch.Tensor:
    """Image ``i``'s kept rows ``(n, 6)`` by the sequential greedy NMS over all its candidates (the answer for a
    flagged image; it synchronises with the host)."""
    n = int(cand.count[i]) if count is None else int(count)
    r = cand.rows[i, :n]
    keep = nms_torch(_offset_boxes(r, opts), r[:, 4], opts.iou, opts.max_det)
    return r[keep]


class BatchedNMS:
    """:func:`candidates` then :func:`select` for batches of one detector, raising ``K`` (up to ``k_max``) after a
    batch whose candidates overflowed it. Use one instance per thread."""

    def __init__(self, opts: NMSOptions, k: int = K_START, k_max: int = K_MAX, rounds: int = ROUNDS) -> None:
        if k < 1 or k_max < k or rounds < 1:
            raise InputError(f"batched NMS needs 1 <= k <= k_max and rounds >= 1, got k={k} k_max={k_max} "
                             f"rounds={rounds}")
        self.opts, self.k, self.k_max, self.rounds = opts, k, k_max, rounds
        self._allowed: dict[tuple[int, str], torch.Tensor] = {}

    def __call__(self, preds: torch.Tensor) -> tuple[Candidates, torch.Tensor, torch.Tensor]:
        allowed = None
        if self.opts.classes is not None:
            key = (int(preds.shape[-1]) - 5, str(preds.device))
            if key not in self._allowed:
                self._allowed[key] = class_mask(self.opts.classes, key[0], preds.device)
            allowed = self._allowed[key]
        cand = candidates(preds, self.opts, allowed)
        out, info = select(cand, self.opts, self.k, self.rounds)
        return cand, out, info

    def observe(self, info: np.ndarray) -> None:
        """Raise ``K`` for the next batches when this batch's candidate counts (``info[:, 1]``) exceeded it."""
        if len(info):
            most = int(np.max(info[:, 1]))
            if most > self.k and self.k < self.k_max:
                self.k = min(self.k_max, 1 << (most - 1).bit_length())

    def rows(self, cand: Candidates, out_host: np.ndarray, info_host: np.ndarray, i: int) -> np.ndarray:
        """Image ``i``'s detections ``(n, 6)`` float32 from the copied-back batch, exact for a flagged image too."""
        kept, count, flag = (int(v) for v in info_host[i])
        if flag:
            return exact_rows(cand, i, self.opts, count).cpu().numpy()
        return np.array(out_host[i, :kept], dtype=np.float32)
