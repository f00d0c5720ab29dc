"""``yolokit info``: what a model file is."""

from __future__ import annotations

from typing import Any


def model_info(model: str) -> dict[str, Any]:
    """Metadata of a checkpoint or artifact, plus what its backend adds (parameters and GFLOPs for a checkpoint)."""
    import backends
    from toolkit.model.configs import resolve_model

    path = resolve_model(model)
    name = backends.backend_for(path)
    module = backends.require(name)
    out: dict[str, Any] = {"file": str(path), "backend": name, **module.read_meta(path).__dict__}
    out.update(module.describe(path))
    return out
