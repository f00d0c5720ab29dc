"""What several runtimes share beyond the contract: the traced ONNX graph and artifact metadata
(:mod:`~backends.shared.onnx_graph`) and the NMS appended to that graph (:mod:`~backends.shared.onnx_nms`). The ONNX,
OpenVINO and TensorRT exporters all build from them, so that each runtime stays independent of the others."""
