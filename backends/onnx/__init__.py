"""The ONNX backend: :class:`~backends.onnx.backend.OnnxBackend` (facts, export), :mod:`~backends.onnx.runner`
(reading and running ``.onnx`` files with onnxruntime), :mod:`~backends.onnx.providers` (ONNX Runtime on CUDA)."""

from backends.onnx.backend import OnnxBackend

__all__ = ["OnnxBackend"]
