"""The GPU pipeline: letterbox, inference and NMS on the device, only detections copied back.

* :mod:`~toolkit.engine.gpu.pipeline`: :class:`DevicePipeline` (the routine's device form, what ``yolokit run
  --device cuda`` runs) and :func:`background` (its driver in a thread of its own).
* :mod:`~toolkit.engine.gpu.memory`: streams and events, pinned host rings, device rings, the forward captured in a
  CUDA graph, and :func:`cuda_settings` (cuDNN autotuning on, TF32 off for FP32, for a run's duration).
* :mod:`~toolkit.engine.gpu.letterbox`: padding and normalising on the device, and the opt-in device resize.
* :mod:`~toolkit.engine.gpu.nms`: the batched fixed-K NMS and its exact sequential fallback.

The pipeline imports the other three; they do not import each other. Everything runs, and is tested, on the CPU
device too. The names above are imported on first use (PEP 562), so importing this package loads no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from toolkit.engine.gpu.memory import cuda_settings
    from toolkit.engine.gpu.pipeline import DevicePipeline, background

_LAZY = {"DevicePipeline": "toolkit.engine.gpu.pipeline", "background": "toolkit.engine.gpu.pipeline",
         "cuda_settings": "toolkit.engine.gpu.memory"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'toolkit.engine.gpu' has no attribute {name!r}")


__all__ = ["DevicePipeline", "background", "cuda_settings"]
