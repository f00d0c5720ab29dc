"""Names of the built-in model configs (no torch import: used to route files to backends)."""

from __future__ import annotations

SCALES: dict[str, tuple[float, float]] = {
    "n": (0.33, 0.25), "s": (0.33, 0.50), "m": (0.67, 0.75), "l": (1.0, 1.0), "x": (1.33, 1.25),
}
BUILTIN_CONFIGS: tuple[str, ...] = tuple(f"yolov5{s}" for s in SCALES) + tuple(f"yolov5{s}6" for s in SCALES)


def is_builtin_config(name: str) -> bool:
    """True for built-in model configs like ``yolov5s.yaml`` (random weights). The ``.yaml`` suffix is
    required: a bare ``yolov5s`` names the official checkpoint in the weights manifest."""
    return name.endswith(".yaml") and name[:-5] in BUILTIN_CONFIGS
