"""The KServe v2 gRPC protocol, as generated code: ``kserve_v2_pb2`` (the messages) and ``kserve_v2_pb2_grpc`` (the
service base class ``GRPCInferenceServiceServicer`` and its registration), from ``kserve_v2.proto`` in this folder.
NOTICE says where the interface comes from.

The messages live in a descriptor pool of their own, not protobuf's default one: a process that also imports another
copy of the protocol (``tritonclient.grpc``, a test that starts a server in-process) would otherwise find every name
of package ``inference`` defined twice.

Regenerate (only when the .proto changes) with grpcio-tools 1.75.1 (protoc 31.1: the code then needs protobuf 6.31.1
or newer at run time, and grpcio 1.75.1), in a virtual environment of its own, so that grpcio-tools never becomes a
dependency::

    python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. kserve_v2.proto
    sed -i "s/_descriptor_pool.Default().AddSerializedFile(/_descriptor_pool.DescriptorPool().AddSerializedFile(/; \\
            s/'kserve_v2_pb2', _globals/'toolkit.serve.kserve.kserve_v2_pb2', _globals/" kserve_v2_pb2.py
    sed -i "s/^import kserve_v2_pb2 as/from toolkit.serve.kserve import kserve_v2_pb2 as/" kserve_v2_pb2_grpc.py
"""
