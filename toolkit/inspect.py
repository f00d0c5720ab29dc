"""``yolokit info``: what a model file is."""

from __future__ import annotations

from typing import Any


def model_info(model: str) -> dict[str, Any]:
    """Metadata of a checkpoint or artifact; for PyTorch models also parameters and GFLOPs at 640."""
    import backends
    from toolkit.configs import resolve_model
    from toolkit.loader import load_model

    path = resolve_model(model)
    name = backends.backend_for(path)
    if name == "torch":
        from toolkit.model import count_gflops, count_parameters

        loaded = load_model(path)
        meta = loaded.meta
        out: dict[str, Any] = {"file": str(path), "format": "pt", "backend": name}
        out.update({k: v for k, v in meta.__dict__.items() if k not in ("format",)})
        out["parameters"] = count_parameters(loaded.model)
        out["gflops_640"] = round(count_gflops(loaded.model), 2)
        return out
    module = backends.require(name)
    meta_fn = getattr(module, "read_meta", None)
    if meta_fn is None:
        raise RuntimeError(f"backend {name} cannot read metadata")
    meta = meta_fn(path)
    return {"file": str(path), "backend": name, **meta.__dict__}
