"""Timing YOLOv5's own ``detect.py`` beside ``yolokit run`` (``scripts/ceiling.py --yolov5 DIR``): its command,
and a stand-in for torchvision on a Python whose torch has no matching torchvision wheel.

``detect.py`` needs torchvision for one call, ``torchvision.ops.nms``; YOLOv5's modules also import
``torchvision.datasets.ImageFolder`` (a class they subclass) and ``torchvision.transforms``, which ``detect.py``
never uses. Where no torchvision wheel fits the installed torch (this project's CPU machines: torch 2.13.0's only
torchvision, 0.28.0, is the CUDA build), :func:`write_torchvision_stand_in` writes a package that provides those
names, with ``nms`` in plain torch computing what torchvision's CPU kernel computes (boxes by descending score, a
stable sort; IoU in the boxes' dtype, areas without +1; a box suppressed when its IoU with a kept one is above the
threshold, compared in double). It exists for timing: put it on ``detect.py``'s ``PYTHONPATH``, never on yolokit's.
"""

from __future__ import annotations

from pathlib import Path

_INIT = '''"""A stand-in for torchvision, written by yolokit (toolkit/jobs/bench/detectpy.py) to time YOLOv5's detect.py
where no torchvision wheel matches the installed torch. detect.py calls torchvision.ops.nms only; the other names
are imported by YOLOv5's modules and never used by detect.py."""

__version__ = "0.0.0+yolokit.stand.in"

from . import datasets, ops, transforms  # noqa: F401
'''

_OPS = '''import torch


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS as torchvision's CPU kernel computes it; the kept indices, best first."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64)
    order = scores.sort(stable=True, dim=0, descending=True)[1]
    b = boxes[order]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.maximum(b[:, None, :2], b[None, :, :2])
    rb = torch.minimum(b[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    above = (inter / (area[:, None] + area[None, :] - inter)).double() > iou_threshold
    rows = above.tolist()
    suppressed = [False] * len(rows)
    keep = []
    for i, row in enumerate(rows):
        if suppressed[i]:
            continue
        keep.append(i)
        for j in range(i + 1, len(rows)):
            if row[j]:
                suppressed[j] = True
    return order[torch.tensor(keep, dtype=torch.int64)]
'''

_DATASETS = '''class ImageFolder:
    """YOLOv5's ClassificationDataset subclasses it; detect.py never builds one."""
'''

STAND_IN: dict[str, str] = {
    "torchvision/__init__.py": _INIT,
    "torchvision/ops.py": _OPS,
    "torchvision/datasets.py": _DATASETS,
    "torchvision/transforms/__init__.py": "from . import functional  # noqa: F401\n",
    "torchvision/transforms/functional.py": "",
}


def write_torchvision_stand_in(root: Path) -> Path:
    """Write the stand-in package under ``root`` (made if missing); returns ``root``, the directory to put on
    ``detect.py``'s ``PYTHONPATH``."""
    for name, text in STAND_IN.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def detect_py_env(stand_in: Path | None = None) -> dict[str, str]:
    """The environment YOLOv5 v7.0's detect.py runs in beside yolokit: its checkpoints are whole pickled models, which
    torch >= 2.6 refuses to load by default (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``); its requirement check must not
    try to pip-install anything (``YOLOv5_AUTOINSTALL``); ``stand_in``: the torchvision stand-in's directory, put
    first on its path."""
    env = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "YOLOv5_AUTOINSTALL": "false"}
    if stand_in is not None:
        env["PYTHONPATH"] = str(stand_in)
    return env


def detect_py_command(python: str, yolov5: Path, weights: str, source: Path, project: Path,
                      nosave: bool) -> list[str]:
    """YOLOv5's ``detect.py`` over ``source`` at its defaults (640, conf 0.25, IoU 0.45) on the CPU, its outputs in
    ``project``/r; ``nosave``: no annotated images, as ``yolokit run --nosave``."""
    return [python, str(yolov5 / "detect.py"), "--weights", weights, "--source", str(source), "--device", "cpu",
            *(["--nosave"] if nosave else []), "--project", str(project), "--name", "r", "--exist-ok"]
