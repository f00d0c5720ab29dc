"""The OpenVINO backend: :class:`~backends.openvino.backend.OpenVinoBackend` (facts, export),
:mod:`~backends.openvino.runner` (compiled models, their precision and cache), :mod:`~backends.openvino.int8` (NNCF
quantization), :mod:`~backends.openvino.ir` (the IR on disk and its metadata)."""

from backends.openvino.backend import OpenVinoBackend

__all__ = ["OpenVinoBackend"]
