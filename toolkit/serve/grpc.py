"""The gRPC face: KServe v2's ``inference.GRPCInferenceService`` on ``grpc.aio``, sharing the HTTP face's
:class:`~toolkit.serve.service.Service` (one batcher for both). Inputs come in ``raw_input_contents`` or typed
``contents``; outputs go in ``raw_output_contents``, as Triton sends them. An error is a gRPC status with one
sentence: INVALID_ARGUMENT (HTTP's 400), NOT_FOUND (404), UNAVAILABLE (503; ``retry-after`` in the trailing
metadata), DEADLINE_EXCEEDED (504), RESOURCE_EXHAUSTED (a message over ``--max-body``, refused by gRPC itself),
UNAUTHENTICATED (401), INTERNAL (500). With an API key, every call but ServerLive and ServerReady needs the metadata
``authorization: Bearer KEY``.
"""

from __future__ import annotations

import asyncio
import hmac
import sys
from typing import Any

import grpc

from toolkit.errors import first_line
from toolkit.meta import YOLOKIT_VERSION
from toolkit.serve import metrics as m
from toolkit.serve.kserve import kserve_v2_pb2, kserve_v2_pb2_grpc
from toolkit.serve.protocol import ProtocolError, fill_grpc, parse_grpc
from toolkit.serve.service import ClientGone, Refusal, Service

pb: Any = kserve_v2_pb2  # generated: its message classes are made at import
pb_grpc: Any = kserve_v2_pb2_grpc

STATUS = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
          404: grpc.StatusCode.NOT_FOUND, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
          415: grpc.StatusCode.INVALID_ARGUMENT, 500: grpc.StatusCode.INTERNAL, 503: grpc.StatusCode.UNAVAILABLE,
          504: grpc.StatusCode.DEADLINE_EXCEEDED}


class KServeServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The six calls of the protocol over one :class:`Service`."""

    def __init__(self, service: Service) -> None:
        self.service = service
        key = service.options.api_key
        self.key = key.encode() if key else None

    async def _refuse(self, context: Any, r: Refusal) -> None:
        trailing = (("retry-after", str(r.retry_after)),) if r.retry_after is not None else ()
        await context.abort(STATUS.get(r.status, grpc.StatusCode.UNKNOWN), r.message, trailing)

    async def _authorized(self, context: Any) -> None:
        if self.key is None:
            return
        given = dict(context.invocation_metadata() or ()).get("authorization", "")
        scheme, _, token = str(given).partition(" ")
        if not (scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.key)):
            why = "a wrong API key" if given else "no API key"
            await self._refuse(context, Refusal(401, f"{why}: send the metadata 'authorization: Bearer KEY'"))

    async def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802 (the protocol's names)
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        return pb.ServerReadyResponse(ready=self.service.ready)

    async def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        await self._authorized(context)
        try:
            self.service.check_model(request.name, request.version)
        except Refusal as r:
            if r.status == 404:
                await self._refuse(context, r)
        return pb.ModelReadyResponse(ready=self.service.ready)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        await self._authorized(context)
        return pb.ServerMetadataResponse(name="yolokit", version=YOLOKIT_VERSION, extensions=["binary_tensor_data"])

    async def ModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        await self._authorized(context)
        try:
            meta = self.service.check_model(request.name, request.version).metadata()
        except Refusal as r:
            await self._refuse(context, r)
        out = pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"])
        for kind in ("inputs", "outputs"):
            for t in meta[kind]:
                getattr(out, kind).add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        out.properties.update(meta["properties"])
        return out

    async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
        await self._authorized(context)
        svc = self.service
        arrived = asyncio.get_running_loop().time()
        try:
            svc.check_model(request.model_name, request.model_version)
            ticket = svc.admit()
        except Refusal as r:
            svc.failed(r.reason, arrived)
            await self._refuse(context, r)
        try:
            parsed = parse_grpc(request)
            tensors = await svc.infer(ticket, parsed, arrived)
            response = fill_grpc(pb.ModelInferResponse(), svc.name, "1", parsed.id, tensors)
            svc.succeeded(arrived)
            return response
        except Refusal as r:
            svc.failed(r.reason, arrived)
            await self._refuse(context, r)
        except ProtocolError as e:
            svc.failed(m.OTHER, arrived)
            await self._refuse(context, Refusal(e.status, str(e)))
        except (ClientGone, asyncio.CancelledError):
            svc.failed(m.CANCELED, arrived)
            raise
        except Exception as e:
            if isinstance(e, _AbortError):
                raise
            svc.failed(m.BACKEND, arrived)
            print(f"yolokit serve: internal error on ModelInfer: {type(e).__name__}: {first_line(e)}",
                  file=sys.stderr)
            await self._refuse(context, Refusal(500, f"internal error: {first_line(e)}", None))
        finally:
            svc.release(ticket)


_AbortError: type[BaseException] = getattr(grpc.aio, "AbortError", RuntimeError)

SERVICE = "inference.GRPCInferenceService"
CALLS = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer")


class _Undecodable:
    """A request whose bytes are not its call's protobuf message (gRPC itself answered those UNKNOWN, naming
    protobuf's DecodeError)."""


def _reader(message: Any) -> Any:
    def read(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except Exception:  # protobuf's DecodeError (its class differs between protobuf's implementations)
            return _Undecodable()
    return read


def _checked(call: str, method: Any) -> Any:
    async def run(request: Any, context: Any) -> Any:
        if isinstance(request, _Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"the request is not a KServe v2 {call}Request message (its protobuf bytes do not "
                                f"decode); send it with a KServe v2 client such as tritonclient")
        return await method(request, context)
    return run


def add_servicer(servicer: KServeServicer, server: Any) -> None:
    """The protocol's calls on ``server``, as the generated ``add_GRPCInferenceServiceServicer_to_server`` adds them,
    but a request whose bytes do not decode is refused INVALID_ARGUMENT in one sentence."""
    handlers = {call: grpc.unary_unary_rpc_method_handler(
        _checked(call, getattr(servicer, call)), request_deserializer=_reader(getattr(pb, f"{call}Request")),
        response_serializer=getattr(pb, f"{call}Response").SerializeToString) for call in CALLS}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    register = getattr(server, "add_registered_method_handlers", None)  # grpcio 1.62+
    if register is not None:
        register(SERVICE, handlers)


def grpc_server(service: Service, address: str) -> tuple[Any, int]:
    """A ``grpc.aio`` server for ``service`` bound to ``address`` (host:port), not started, and its port (0: it
    could not bind)."""
    limit = service.options.max_body
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                      ("grpc.max_send_message_length", -1), ("grpc.so_reuseport", 0)])
    add_servicer(KServeServicer(service), server)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    return server, port
