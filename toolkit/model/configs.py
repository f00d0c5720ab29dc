"""Names of the built-in model configs (no torch import: used to route files to backends)."""

from __future__ import annotations

from pathlib import Path

SCALES: dict[str, tuple[float, float]] = {
    "n": (0.33, 0.25), "s": (0.33, 0.50), "m": (0.67, 0.75), "l": (1.0, 1.0), "x": (1.33, 1.25),
}
BUILTIN_CONFIGS: tuple[str, ...] = tuple(f"yolov5{s}" for s in SCALES) + tuple(f"yolov5{s}6" for s in SCALES)


def is_builtin_config(name: str) -> bool:
    """True for built-in model configs like ``yolov5s.yaml`` (random weights). The ``.yaml`` suffix is
    required: a bare ``yolov5s`` names the official checkpoint in the weights manifest."""
    return name.endswith(".yaml") and name[:-5] in BUILTIN_CONFIGS


def resolve_model(weights: str | Path | None) -> Path:
    """The model file to load: a built-in config name as given (no file needed), anything else through the
    weights lookup order (:func:`toolkit.model.weights.resolve_weights`; None: ``$YOLOKIT_WEIGHTS``, else
    yolov5n)."""
    import os

    from toolkit.errors import InputError, ModelFileError
    from toolkit.io.files import special_kind
    from toolkit.model.weights import resolve_weights

    if weights is not None and not str(weights).strip():  # an empty --weights took the default model, unsaid
        raise InputError("the model is empty (''); give a model file, a name like yolov5n, or leave it out for "
                         "the default")

    if (weights is not None and is_builtin_config(Path(weights).name) and "://" not in str(weights)
            and not Path(weights).exists()):
        return Path(weights)
    found = resolve_weights(None if weights is None else str(weights))
    kind = special_kind(os.stat(found).st_mode)
    if kind is not None and kind != "a folder":  # a named pipe or a device would block or never end
        raise ModelFileError(f"{found}: is {kind}, not a model file; give the path of the model file itself")
    return found
