"""``yolokit info``: what a model file is."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any


def model_info(model: str) -> dict[str, Any]:
    """Metadata of a checkpoint or artifact, plus what its backend adds (parameters and GFLOPs for a checkpoint):
    ``nms`` (the settings baked into a model with NMS inside) and ``int8`` (its calibration and measured drop) where
    they apply."""
    import backends
    from toolkit.model.configs import resolve_model

    path = resolve_model(model)
    name = backends.backend_for(path)
    module = backends.require(name)
    meta = module.read_meta(path)
    out: dict[str, Any] = {"file": str(path), "backend": name, **asdict(meta)}
    if meta.nms is None:
        out.pop("nms")  # the usual raw predictions: nothing to show
    if isinstance(meta.extra.get("int8"), dict):  # calibration images, FP32/INT8 mAP50-95 and the drop
        out["int8"] = dict(meta.extra["int8"])
    out.update(module.describe(path))
    return out
