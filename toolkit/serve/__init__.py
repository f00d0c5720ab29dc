"""``yolokit serve``: a model behind a KServe v2 server (HTTP/REST with Triton's binary tensor extension, and gRPC),
with dynamic batching, so that ``tritonclient`` works unchanged and every answer is ``yolokit run``'s on the same
file. Needs the ``serve`` extra (``pip install 'yolokit[serve]'``). docs/guide/serving.md is the user's guide.

The modules, from the transports down (the ``serve`` contract in pyproject.toml):

* ``server``: the lifecycle (listen, load and warm, ready, drain on SIGTERM) -> :func:`serve`;
* ``http`` (Starlette: :func:`create_app`, the ASGI app a user can mount) and ``grpc`` (``grpc.aio``), the two
  transports; ``kserve``: the protocol's generated gRPC code;
* ``service``: what both transports share: state, admission, preparation off the event loop, deadlines, metrics;
* ``batcher`` (the asyncio dynamic batcher, over plain callables) and ``metrics`` (Prometheus);
* ``model``: :class:`ServedModel`, a loaded model's per-request work as plain synchronous calls (parameters, per-image
  preparation, one batch run, the output tensors); ``protocol``: the KServe v2 encoding as plain functions;
  ``options``: :class:`ServeOptions` and :class:`ServeSettings`, declared like every option.

Nothing here is imported with :mod:`toolkit`; the names below are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from toolkit.serve.batcher import Batcher
    from toolkit.serve.http import create_app
    from toolkit.serve.model import ServedModel
    from toolkit.serve.options import ServeOptions, ServeSettings
    from toolkit.serve.server import serve

_LAZY = {"create_app": "toolkit.serve.http", "serve": "toolkit.serve.server", "ServedModel": "toolkit.serve.model",
         "ServeOptions": "toolkit.serve.options", "ServeSettings": "toolkit.serve.options",
         "Batcher": "toolkit.serve.batcher"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'toolkit.serve' has no attribute {name!r}")


__all__ = ["Batcher", "ServeOptions", "ServeSettings", "ServedModel", "create_app", "serve"]
