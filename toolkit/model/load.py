"""Turn a checkpoint, an architecture yaml or a built-in model name into a ready PyTorch model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from toolkit.errors import ModelFileError, yaml_problem
from toolkit.io.files import os_reason
from toolkit.meta import ModelMeta
from toolkit.model.configs import is_builtin_config
from toolkit.model.yolov5 import YOLOv5, build_model


@dataclass
class LoadedModel:
    """A fused FP32 model on the CPU with its metadata (the source for every backend and export)."""

    model: YOLOv5
    meta: ModelMeta
    path: Path | None


def load_model(weights: str | Path, nc: int = 80) -> LoadedModel:
    """Load an official or custom YOLOv5 ``.pt`` checkpoint (through the allow-listed unpickler), an
    architecture ``.yaml`` file, or a built-in name like ``yolov5s.yaml`` (random weights, for benchmarks)."""
    text = str(weights)
    path = Path(text)
    if not path.exists() and is_builtin_config(path.name):
        model = build_model(path.name.removesuffix(".yaml"), nc=nc).fuse().eval()
        names = {i: f"class{i}" for i in range(nc)}
        meta = ModelMeta(names=names, stride=model.stride, extra={"arch": path.name, "random_init": True})
        return LoadedModel(model, meta, None)
    if path.suffix in (".yaml", ".yml"):
        return _load_yaml(path)
    from toolkit.model.checkpoint import read_checkpoint

    raw = read_checkpoint(path)
    try:
        model = YOLOv5(raw.arch)
    except ModelFileError as e:
        raise ModelFileError(f"{path}: {e}") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in raw.state_dict.items()
             if not _derived(k, model)}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        what = "; ".join(lines[1:3]) if len(lines) > 1 else (lines[0] if lines else "mismatch")
        raise ModelFileError(f"{path}: the weights do not fit the architecture the checkpoint describes "
                             f"({what[:300]}); the file may be corrupt or from an unsupported YOLOv5 variant") from None
    if raw.names and len(raw.names) != model.nc:
        raise ModelFileError(f"{path}: the checkpoint names {len(raw.names)} classes but its head has {model.nc}")
    modules = dict(model.named_modules())
    for name, eps in raw.bn_eps.items():  # eps is an attribute, not state: YOLOv5 trains with 1e-3
        bn = modules.get(name)
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.eps = eps
    model.set_strides(raw.stride or None)
    model.fuse().eval()
    names = raw.names or {i: f"class{i}" for i in range(model.nc)}
    meta = ModelMeta(names=names, stride=model.stride, source_sha256=raw.sha256,
                     extra={"checkpoint": path.name, "weights_from": raw.source_key})
    return LoadedModel(model, meta, path)


def _derived(key: str, model: YOLOv5) -> bool:
    """A saved tensor the model computes itself: the Detect head's ``anchor_grid`` buffer, which YOLOv5 before v6.0
    saved (it is the anchors times the strides; v6.0 and later rebuild it, as yolokit does)."""
    return key.endswith(".anchor_grid") and key not in model.state_dict()


def _load_yaml(path: Path) -> LoadedModel:
    import yaml

    try:
        arch: Any = yaml.safe_load(path.read_bytes())
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read the architecture yaml ({os_reason(e)})") from None
    except yaml.YAMLError as e:
        raise ModelFileError(f"{path}: the architecture yaml is not valid YAML ({yaml_problem(e)}); fix the "
                             f"file, or start from one of YOLOv5's models/*.yaml") from None
    if not isinstance(arch, dict):
        raise ModelFileError(f"{path}: not a YOLOv5 architecture yaml")
    try:
        model = build_model(arch).fuse().eval()
    except ModelFileError as e:
        raise ModelFileError(f"{path}: {e}") from None
    names_any = arch.get("names") or {}
    names = ({int(k): str(v) for k, v in names_any.items()} if isinstance(names_any, dict)
             else {i: str(v) for i, v in enumerate(names_any)}) or {i: f"class{i}" for i in range(model.nc)}
    meta = ModelMeta(names=names, stride=model.stride, extra={"arch": path.name, "random_init": True})
    return LoadedModel(model, meta, path)
