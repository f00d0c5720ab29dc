"""Read official YOLOv5 ``.pt`` checkpoints without executing any code from their pickle.

A YOLOv5 training checkpoint is a pickled ``dict`` holding a whole ``models.yolo.Model`` object
(plus EMA, optimizer and options). ``torch.load`` would import the yolov5 repo and run whatever
the pickle names. This module instead unpickles with an allow-list: every module class becomes an
inert :class:`ModuleRecord` that only stores its pickled ``__dict__``, tensors are rebuilt by our
own code straight from the raw storage bytes, and any other global (``os.system``,
``builtins.eval`` ...) raises :class:`~toolkit.errors.UnsafeCheckpointError` before anything runs.

Supported containers: the zip format (torch >= 1.6), the legacy stream format (torch < 1.6) and a
plain pickle file; all of them go through the same restricted unpickler.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np
import torch

from toolkit.errors import ModelFileError
from toolkit.model.torchfile import read_file, read_pickled_object, unpickle_bytes
from toolkit.model.unpickler import (
    ALLOWED_GLOBALS,
    ARCHIVE_HINT,
    MAX_MODULE_DEPTH,
    MODEL_CLASSES,
    SUPPORTED_MODULE_CLASSES,
    ArrayRecord,
    ModuleRecord,
)

# the unpickler's allow-list and record type, and the container reader, are part of this module's interface
__all__ = ["ALLOWED_GLOBALS", "ModuleRecord", "RawCheckpoint", "read_checkpoint", "read_pickled_object"]

# --------------------------------------------------------------------------- record tree -> RawCheckpoint


@dataclass
class RawCheckpoint:
    """What yolokit needs from a YOLOv5 checkpoint, read without running any of its code."""

    path: str
    sha256: str
    arch: dict[str, Any]  # the model's ``yaml`` dict: nc, depth_multiple, width_multiple, anchors, ...
    names: dict[int, str]
    state_dict: dict[str, torch.Tensor]  # same keys as ``nn.Module.state_dict()``, saved dtype kept
    stride: list[float]
    source_key: str  # 'ema' or 'model'; '' when the file's top level is the model itself
    info: dict[str, Any] = field(default_factory=dict)  # JSON-able extras
    bn_eps: dict[str, float] = field(default_factory=dict)  # BatchNorm module name -> eps (not in state_dict)


def _is_tensor_dict(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _state_dict_error(path: str) -> NoReturn:
    raise ModelFileError(
        f"{path}: holds only a state_dict (tensors without the model architecture); yolokit needs a full "
        "YOLOv5 checkpoint with its architecture, as saved by YOLOv5's train.py (e.g. the official "
        "yolov5n.pt)."
    )


def _select_model(obj: Any, path: str) -> tuple[ModuleRecord, str]:
    if isinstance(obj, ModuleRecord):
        return obj, ""
    if isinstance(obj, dict):
        ema, model = obj.get("ema"), obj.get("model")
        if isinstance(ema, ModuleRecord):
            return ema, "ema"
        if isinstance(model, ModuleRecord):
            return model, "model"
        if any(_is_tensor_dict(v) for v in (obj, model, ema, obj.get("state_dict"))):
            _state_dict_error(path)
    raise ModelFileError(
        f"{path}: does not contain a YOLOv5 model under 'model' or 'ema' (found {type(obj).__name__}); "
        "pass a YOLOv5 checkpoint saved by train.py, such as the official yolov5n.pt."
    )


MAX_NAME = 256  # characters of one module's name in its parent (YOLOv5's are "model", "24", "cv1", "act" ...)


def _iter_modules(
    record: ModuleRecord, prefix: str, path: str, above: set[int], seen: set[int], depth: int = 0
) -> Iterator[tuple[str, ModuleRecord]]:
    """Each module of the tree below ``record`` with its state-dict prefix. A module without submodules, parameters
    or buffers may appear at several places (YOLOv5 v7.0 gives every ``Conv`` one shared ``SiLU``,
    ``Conv.default_act``: every checkpoint trained with it holds one object under all of them); any other module
    once, and never inside itself (``above``: the modules on the way down). So the walk is as long as the pickle:
    a small file of modules shared two ways at each of 16 levels made 131,071 paths (830 MB of names)."""
    if id(record) in seen and not _bare(record):
        what = "cyclic" if id(record) in above else "shares a module that holds weights"
        raise ModelFileError(f"{path}: is corrupt: its module tree is {what}; {ARCHIVE_HINT}.")
    if depth > MAX_MODULE_DEPTH:
        raise ModelFileError(f"{path}: is corrupt: its module tree is cyclic or too deep; {ARCHIVE_HINT}.")
    seen.add(id(record))
    yield prefix, record
    children = record.state.get("_modules", {})
    if not isinstance(children, dict):
        raise ModelFileError(f"{path}: is corrupt: {record.cls_name} has no module table; {ARCHIVE_HINT}.")
    above.add(id(record))
    for name, child in children.items():
        if child is None:
            continue
        if not isinstance(name, str) or not isinstance(child, ModuleRecord) or len(name) > MAX_NAME:
            raise ModelFileError(
                f"{path}: is corrupt: {record.cls_name} has a submodule that is not a module; "
                f"{ARCHIVE_HINT}."
            )
        yield from _iter_modules(child, f"{prefix}{name}.", path, above, seen, depth + 1)
    above.discard(id(record))


def _bare(record: ModuleRecord) -> bool:
    """A module with no submodules, parameters or buffers (an activation): sharing it costs nothing."""
    return not any(record.state.get(k) for k in ("_modules", "_parameters", "_buffers"))


def _module_state_dict(
    model: ModuleRecord, path: str
) -> tuple[dict[str, torch.Tensor], list[ModuleRecord], dict[str, float]]:
    state_dict: dict[str, torch.Tensor] = {}
    modules: list[ModuleRecord] = []
    bn_eps: dict[str, float] = {}
    for prefix, record in _iter_modules(model, "", path, set(), set()):
        modules.append(record)
        eps = record.state.get("eps")
        if record.cls_name.endswith("BatchNorm2d") and isinstance(eps, float):
            bn_eps[prefix.rstrip(".")] = eps
        params = record.state.get("_parameters", {})
        buffers = record.state.get("_buffers", {})
        skip = record.state.get("_non_persistent_buffers_set", set())
        if (
            not isinstance(params, dict)
            or not isinstance(buffers, dict)
            or not isinstance(skip, (set, frozenset))
        ):
            raise ModelFileError(
                f"{path}: is corrupt: {record.cls_name} has a malformed state; {ARCHIVE_HINT}."
            )
        entries = list(params.items()) + [(k, v) for k, v in buffers.items() if k not in skip]
        for name, tensor in entries:
            if tensor is None:
                continue
            if not isinstance(tensor, torch.Tensor):
                raise ModelFileError(f"{path}: is corrupt: {prefix}{name} is not a tensor; {ARCHIVE_HINT}.")
            state_dict[f"{prefix}{name}"] = tensor
    return state_dict, modules, bn_eps


def _as_float_list(value: Any) -> list[float] | None:
    if isinstance(value, torch.Tensor):
        return [float(v) for v in value.detach().flatten().double().tolist()]
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
        return [float(v) for v in value]
    return None


def _jsonable_scalar(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, ArrayRecord):  # train.py's best_fitness before strip_optimizer: an array of one
        value = value.array.reshape(-1)[0] if value.array.size == 1 and value.array.dtype.kind in "biuf" else None
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.item()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return None


_ACTIVATION_SPECS = {
    "torch.nn.modules.activation.SiLU": "nn.SiLU()",
    "torch.nn.modules.activation.Hardswish": "nn.Hardswish()",
    "torch.nn.modules.activation.ReLU": "nn.ReLU()",
    "torch.nn.modules.activation.Mish": "nn.Mish()",
}


def _with_saved_activation(arch: dict[str, Any], modules: list[ModuleRecord], path: str) -> dict[str, Any]:
    """``arch`` naming the activation its ``Conv`` layers were saved with. The model is built from the architecture
    dict, whose ``activation`` key (SiLU when absent) can disagree with the modules saved: YOLOv5 v3's Conv was
    Hardswish with no such key, and an edited ``Conv.default_act`` is saved only in the modules. detect.py runs the
    saved modules, so their activation is the one used (it was SiLU whatever was saved: other boxes, no word)."""
    convs = _saved_activation(modules, ("models.common.Conv", "models.common.DWConv"), "Conv", path)
    csps = _saved_activation(modules, ("models.common.BottleneckCSP",), "BottleneckCSP", path)
    out = arch
    named = str(arch.get("activation") or "nn.SiLU()").replace(" ", "")
    if convs is not None and not (convs == named or (convs.startswith("nn.LeakyReLU(")
                                                     and named.startswith("nn.LeakyReLU(")
                                                     and _slope(convs) == _slope(named))):
        out = {**out, "activation": convs}
    if csps is not None:  # BottleneckCSP's own, after its BatchNorm: LeakyReLU(0.1) before v6.0
        out = {**out, "csp_activation": csps}
    return out


def _saved_activation(modules: list[ModuleRecord], kinds: tuple[str, ...], what: str, path: str) -> str | None:
    """The activation the ``kinds`` modules of a checkpoint hold as their ``act`` (an architecture dict's spelling:
    ``nn.LeakyReLU(0.1)``), None where none does (or each is an Identity)."""
    specs = set()
    for m in modules:
        if m.cls_name not in kinds:
            continue
        act = (m.state.get("_modules") or {}).get("act")
        if not isinstance(act, ModuleRecord) or act.cls_name == "torch.nn.modules.linear.Identity":
            continue
        if act.cls_name == "torch.nn.modules.activation.LeakyReLU":
            slope = act.state.get("negative_slope", 0.01)
            try:
                value = float(slope)
            except (TypeError, ValueError, OverflowError):
                value = float("nan")
            if not math.isfinite(value):
                raise ModelFileError(f"{path}: is corrupt: a LeakyReLU's slope is {str(slope)[:40]!r}, not a number; "
                                     f"{ARCHIVE_HINT}")
            specs.add(f"nn.LeakyReLU({value!r})")
        elif act.cls_name in _ACTIVATION_SPECS:
            specs.add(_ACTIVATION_SPECS[act.cls_name])
        else:
            raise ModelFileError(f"{path}: unsupported architecture: its {what} layers use {act.cls_name}; yolokit "
                                 f"runs SiLU, ReLU, LeakyReLU, Hardswish and Mish")
    if len(specs) > 1:
        raise ModelFileError(f"{path}: unsupported architecture: its {what} layers use several activations "
                             f"({', '.join(sorted(specs))}); yolokit runs models with one")
    return next(iter(specs), None)


def _slope(spec: str) -> float:
    inner = spec[len("nn.LeakyReLU("):-1]
    try:
        return float(inner) if inner else 0.01
    except ValueError:
        return float("nan")


def _names(
    model: ModuleRecord, arch: dict[str, Any], detect: ModuleRecord | None, path: str
) -> dict[int, str]:
    raw = model.state.get("names")
    if isinstance(raw, (list, tuple)):
        return {i: str(n) for i, n in enumerate(raw)}
    if isinstance(raw, dict):
        try:
            return {int(k): str(v) for k, v in raw.items()}
        except (TypeError, ValueError) as exc:
            raise ModelFileError(f"{path}: has malformed class names; re-save the checkpoint.") from exc
    nc = arch.get("nc", detect.state.get("nc") if detect is not None else None)
    if not isinstance(nc, int) or isinstance(nc, bool) or nc < 1:
        raise ModelFileError(
            f"{path}: records neither class names nor a class count; re-save the checkpoint."
        )
    return {i: f"class{i}" for i in range(nc)}


def read_checkpoint(path: str | os.PathLike[str]) -> RawCheckpoint:
    """Read a YOLOv5 ``.pt`` checkpoint without executing any code from it.

    Raises ``UnsafeCheckpointError`` if the pickle names anything off :data:`ALLOWED_GLOBALS` and
    ``ModelFileError`` (one line, naming the file and the fix) for every other problem.
    """
    p, data = read_file(path)
    where = str(p)
    sha256 = hashlib.sha256(data).hexdigest()
    obj, fmt, n_storages = unpickle_bytes(data, where)
    model, source_key = _select_model(obj, where)

    if model.cls_name not in MODEL_CLASSES:
        kind = {"models.yolo.SegmentationModel": "a YOLOv5 segmentation model",
                "models.yolo.ClassificationModel": "a YOLOv5 classification model"}.get(
            model.cls_name, f"a {model.cls_name}")
        raise ModelFileError(
            f"{where}: unsupported architecture: the model is {kind}; yolokit runs YOLOv5 detection models "
            "(models.yolo.Model / DetectionModel, such as yolov5s.pt)."
        )
    arch = model.state.get("yaml")
    if not isinstance(arch, dict):
        raise ModelFileError(
            f"{where}: the model has no architecture dict (its 'yaml' attribute is missing); "
            "use a checkpoint saved by YOLOv5's train.py."
        )
    state_dict, modules, bn_eps = _module_state_dict(model, where)
    classes = sorted({m.cls_name for m in modules})
    unsupported = [c for c in classes if c not in SUPPORTED_MODULE_CLASSES]
    if unsupported:
        raise ModelFileError(
            f"{where}: unsupported architecture: it uses {', '.join(unsupported)}; yolokit runs YOLOv5 "
            "detection models built from Conv/C3/SPPF/Detect layers."
        )
    arch = _with_saved_activation(arch, modules, where)
    detect = next((m for m in reversed(modules) if m.cls_name == "models.yolo.Detect"), None)
    stride = _as_float_list(model.state.get("stride"))
    if stride is None and detect is not None:
        stride = _as_float_list(detect.state.get("stride"))
    if not stride:
        raise ModelFileError(
            f"{where}: the model records no stride; use a checkpoint saved by YOLOv5's train.py."
        )
    names = _names(model, arch, detect, where)

    top = obj if isinstance(obj, dict) else {}
    info: dict[str, Any] = {
        "format": fmt,
        "epoch": _jsonable_scalar(top.get("epoch")),
        "date": top.get("date") if isinstance(top.get("date"), str) else None,
        "best_fitness": _jsonable_scalar(top.get("best_fitness")),
        "model_class": model.cls_name,
        "module_classes": classes,
        "storages": n_storages,
    }
    return RawCheckpoint(
        path=where,
        sha256=sha256,
        arch=arch,
        names=names,
        state_dict=state_dict,
        stride=stride,
        source_key=source_key,
        info=info,
        bn_eps=bn_eps,
    )
