"""The TensorRT backend: engines built from the traced ONNX graph, run on an NVIDIA GPU through torch.cuda buffers.

Written against the documented TensorRT 10 Python API (and TensorRT 11, where every network is strongly typed and
the FP16/INT8 builder flags are gone). TensorRT is imported only in :mod:`~backends.tensorrt.runtime`, and only when a
function needs it; everything that can be decided without it is a pure function, tested without TensorRT. None of it
has run on TensorRT here. INT8 is not offered (TensorRT 10 deprecates implicit calibration; explicit Q/DQ export is
future work). The modules, each importing only those below it:

* :mod:`~backends.tensorrt.backend`: :class:`TensorRTBackend`, the facts and the contract's methods;
* :mod:`~backends.tensorrt.export` (building an engine) | :mod:`~backends.tensorrt.runner` (running one: per-thread
  execution contexts, streams and preallocated I/O, and its device side for the GPU pipeline);
* :mod:`~backends.tensorrt.runtime` (importing TensorRT, its logger, the GPU) | :mod:`~backends.tensorrt.plan`
  (optimisation profile, output shape, precision plan, NMS settings);
* :mod:`~backends.tensorrt.engine_file` (the file format: header, metadata, version and GPU compatibility).
"""

from backends.tensorrt.backend import TensorRTBackend

__all__ = ["TensorRTBackend"]
