"""The HTTP face, a Starlette app (:func:`create_app`): KServe v2 REST with Triton's binary tensor extension,
``/v1/detect`` for curl, ``/metrics``, and the API key. Every answer that is not a success is the protocol's error
object, ``{"error": "one sentence"}``, with its status (and ``Retry-After`` on 503).

Routes (``{name}``: the model's name; ``/versions/1`` may follow it):

* ``GET /v2/health/live``, ``GET /v2/health/ready`` (503 until the model is loaded and warm, and while draining);
* ``GET /v2``, ``GET /v2/models/{name}``, ``GET /v2/models/{name}/ready``;
* ``POST /v2/models/{name}/infer``; ``POST /v1/detect`` (the raw image as the body, or a multipart ``image`` field;
  ``conf``, ``iou``, ``max_det``, ``classes`` in the query string);
* ``GET /metrics`` (Prometheus).

A body over ``--max-body`` gets 413 from its ``Content-Length`` before it is read, or as soon as what arrives passes
the limit; a request body compressed by the client (``Content-Encoding: gzip`` or ``deflate``, as tritonclient can
send) is limited after decompression too.
"""

from __future__ import annotations

import asyncio
import hmac
import sys
import zlib
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from toolkit.errors import first_line
from toolkit.meta import YOLOKIT_VERSION
from toolkit.serve import metrics as m
from toolkit.serve.model import ServedModel
from toolkit.serve.options import ServeOptions
from toolkit.serve.protocol import HEADER_LENGTH, ProtocolError, encode_http, header_length, parse_http
from toolkit.serve.service import DRAINING, ClientGone, Refusal, Service

OPEN_PATHS = ("/v2/health/live", "/v2/health/ready")  # never behind the API key: the probes
EXTENSIONS = ["binary_tensor_data"]
SERVER_NAME = "yolokit"


def create_app(model: Any = None, options: ServeOptions | None = None, *, service: Service | None = None,
               max_batch: int = 0) -> Starlette:
    """The ASGI app serving ``model`` (a :class:`~toolkit.engine.detector.Detector` or a :class:`ServedModel`),
    to run with any ASGI server or mount in a service of one's own: it is ready at once, and starts batching on
    its first request (``max_batch`` 0: :meth:`ServedModel.default_batch`). ``options``: the server's options
    (the API key, the limits; default: :class:`ServeOptions`'s defaults). ``yolokit serve`` passes its
    ``service`` instead, which it makes ready once the model is loaded and warm."""
    if service is None:
        if model is None:
            raise ValueError("create_app needs a model (a Detector or a ServedModel) or a service")
        served = model if isinstance(model, ServedModel) else ServedModel([model.routine])
        options = options or ServeOptions()
        service = Service(options, options.name or served.name)
        service.model = served
        lazy: tuple[ServedModel, int] | None = (served, max_batch or served.default_batch())
    else:
        lazy = None
    http = _Http(service, lazy)
    routes = [Route("/v2/health/live", http.live), Route("/v2/health/ready", http.ready), Route("/v2", http.server),
              Route("/v1/detect", http.detect, methods=["POST"]), Route("/metrics", http.metrics)]
    for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        routes += [Route(base, http.model_metadata), Route(base + "/ready", http.model_ready),
                   Route(base + "/infer", http.infer, methods=["POST"])]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    app.state.service = service
    key = service.options.api_key
    return _ApiKey(app, key) if key else app  # type: ignore[return-value]


class _ApiKey:
    """Every path but the probes needs ``Authorization: Bearer KEY``; the key is compared in constant time."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app, self.key = app, key.encode()
        self.state = getattr(app, "state", None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan (a server that runs it, as Ray Serve does), websockets (none here)
            await self.app(scope, receive, send)
            return
        path, root = scope["path"], scope.get("root_path", "")
        if root and path.startswith(root):  # mounted in an app of one's own: the path below the mount
            path = path[len(root):]
        if path not in OPEN_PATHS:
            given = b""
            for name, value in scope.get("headers", []):
                if name == b"authorization":
                    given = value
            scheme, _, token = given.partition(b" ")
            if not (scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)):
                why = "a wrong API key" if given else "no API key"
                response = JSONResponse({"error": f"{why}: send the header 'Authorization: Bearer KEY'"}, 401,
                                        headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such route, a method a route does not take) as the protocol's error object."""
    status = getattr(exc, "status_code", 500)
    what = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
    return JSONResponse({"error": what.get(status, str(getattr(exc, "detail", exc)))}, status,
                        headers=getattr(exc, "headers", None))


def _error(r: Refusal) -> Response:
    headers = {"Retry-After": str(r.retry_after)} if r.retry_after is not None else None
    return JSONResponse({"error": r.message}, r.status, headers=headers)


class _Http:
    def __init__(self, service: Service, lazy: tuple[ServedModel, int] | None) -> None:
        self.service, self.lazy = service, lazy

    def _started(self) -> Service:
        if self.lazy is not None:  # create_app's own service: start batching on the running loop
            model, batch = self.lazy
            self.lazy = None
            self.service.start(model, batch)
        return self.service

    # ------------------------------------------------------------------------------------------ health, metadata
    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        svc = self._started()
        return JSONResponse({"ready": svc.ready}, 200 if svc.ready else 503)

    async def server(self, request: Request) -> Response:
        return JSONResponse({"name": SERVER_NAME, "version": YOLOKIT_VERSION, "extensions": EXTENSIONS})

    async def model_metadata(self, request: Request) -> Response:
        try:
            model = self._started().check_model(request.path_params["name"], request.path_params.get("version", ""))
        except Refusal as r:
            return _error(r)
        return JSONResponse(model.metadata())

    async def model_ready(self, request: Request) -> Response:
        svc = self._started()
        try:
            svc.check_model(request.path_params["name"], request.path_params.get("version", ""))
        except Refusal as r:
            if r.status == 404:
                return _error(r)
        return JSONResponse({"name": svc.name, "ready": svc.ready}, 200 if svc.ready else 503)

    async def metrics(self, request: Request) -> Response:
        body, content_type = self.service.metrics.exposition()
        return Response(body, headers={"Content-Type": content_type})

    # ------------------------------------------------------------------------------------------ inference
    async def infer(self, request: Request) -> Response:
        svc = self._started()
        try:
            svc.check_model(request.path_params["name"], request.path_params.get("version", ""))
        except Refusal as r:
            return _error(r)

        async def answer(gone: asyncio.Future[Any], body: bytes, ticket: Any, arrived: float) -> Response:
            if request.query_params:  # ?conf=0.5 here would be ignored, and the answer would look like it took it
                raise ProtocolError(f"the KServe v2 infer route takes no query string (got "
                                    f"{request.url.query[:60]!r}); put settings in the request's 'parameters' "
                                    f"(tritonclient: parameters={{...}}), or use /v1/detect?conf=...")
            parsed = parse_http(body, header_length(request.headers.get(HEADER_LENGTH)))
            tensors = await svc.infer(ticket, parsed, arrived, gone)
            t0 = asyncio.get_running_loop().time()
            payload, json_length = encode_http(svc.name, "1", parsed.id, tensors,
                                               {t.name: parsed.binary(t.name) for t in tensors})
            svc.metrics.encoded(asyncio.get_running_loop().time() - t0)
            if json_length is None:
                return Response(payload, media_type="application/json")
            return Response(payload, media_type="application/octet-stream",
                            headers={"Inference-Header-Content-Length": str(json_length)})

        return await self._handle(request, answer)

    async def detect(self, request: Request) -> Response:
        svc = self._started()
        try:
            svc.check_model(svc.name)
        except Refusal as r:
            return _error(r)

        async def answer(gone: asyncio.Future[Any], body: bytes, ticket: Any, arrived: float) -> Response:
            data = await _multipart_image(request, body) if request.headers.get("content-type", "").startswith(
                "multipart/form-data") else body
            if not data:
                raise ProtocolError("the request has no image: send the image file as the body, or as a multipart "
                                    "field named 'image'")
            twice = sorted({k for k in request.query_params if len(request.query_params.getlist(k)) > 1})
            if twice:  # dict() kept the last one
                raise ProtocolError(f"parameter {twice[0]} is given more than once in the query string; give it once")
            params = dict(request.query_params)
            return JSONResponse(await svc.detect(ticket, data, params, arrived, gone))

        return await self._handle(request, answer)

    async def _handle(self, request: Request, answer: Any) -> Response:
        """Admission, the body (limited), the disconnect watch and the metrics around ``answer``."""
        svc = self.service
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        try:
            ticket = svc.admit()
        except Refusal as r:
            svc.failed(r.reason, arrived)
            return _error(r)
        gone: asyncio.Future[Any] | None = None
        try:
            try:  # a body that trickles in holds a place in the queue: it gets the request's deadline too
                body = await asyncio.wait_for(_read_body(request, svc.options.max_body), svc.options.timeout_s)
            except asyncio.TimeoutError:
                raise Refusal(408, f"the request body did not arrive within {svc.options.timeout_s:g} s (the "
                                   f"server's --timeout-s)", m.REJECTED) from None
            gone = asyncio.ensure_future(_disconnected(request))
            response: Response = await answer(gone, body, ticket, arrived)
            svc.succeeded(arrived)
            return response
        except Refusal as r:
            svc.failed(r.reason, arrived)
            return _error(r)
        except ProtocolError as e:
            svc.failed(m.OTHER, arrived)
            return _error(Refusal(e.status, str(e)))
        except (ClientGone, ClientDisconnect):
            svc.failed(m.CANCELED, arrived)
            return Response(status_code=499)  # nobody reads it
        except asyncio.CancelledError:
            svc.failed(m.CANCELED, arrived)
            if svc.state != DRAINING:
                raise
            # the server stops with this request still running (past --drain-timeout, or a second signal): the
            # protocol's error object with 503, not uvicorn's plain-text 500 and a traceback in the log
            return _error(Refusal(503, "the server stopped before this request finished (its drain ended: "
                                       "--drain-timeout passed, or a second signal came); send it again", m.REJECTED,
                                  retry_after=1))
        except Exception as e:  # a bug: one line to the client and the log, and the server goes on
            svc.failed(m.BACKEND, arrived)
            print(f"yolokit serve: internal error on {request.url.path}: {type(e).__name__}: {first_line(e)}",
                  file=sys.stderr)
            return _error(Refusal(500, f"internal error: {first_line(e)}", None))
        finally:
            svc.release(ticket)
            if gone is not None:
                gone.cancel()


async def _disconnected(request: Request) -> None:
    """Returns when the client closes its connection (the body already read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _too_large(limit: int) -> Refusal:
    return Refusal(413, f"the request body is over the server's limit of {limit} bytes (its --max-body)")


async def _read_body(request: Request, limit: int) -> bytes:
    """The request's body, refused (413) as soon as it is known to pass ``limit``: from its ``Content-Length``
    before reading anything, else while it arrives; a compressed body is limited after decompression too."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise ProtocolError(f"Content-Encoding {encoding!r} is not supported (gzip, deflate)", 415)
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 16 if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise ProtocolError(f"the request body is not valid {encoding} data") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise _too_large(limit)
    if not inflater.eof:  # the compressed stream stops before its end: the body was cut short
        raise ProtocolError(f"the request body is not valid {encoding} data (it ends before the compressed stream "
                            f"does)")
    return out


async def _multipart_image(request: Request, body: bytes) -> bytes:
    """The ``image`` field of a multipart body already read (parsed by Starlette's form parser)."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=4, max_fields=32)
    except Exception:  # the parser's own words ("Missing boundary in multipart.") name no fix
        raise ProtocolError("the multipart body cannot be read (no boundary, or its parts are malformed); send the "
                            "image as the raw body, or as a multipart/form-data file field named 'image'") from None
    fields = form.getlist("image")
    if len(fields) > 1:
        raise ProtocolError(f"the multipart body has {len(fields)} fields named 'image'; /v1/detect takes one image "
                            f"a request (several go in one /v2 infer request)")
    field = fields[0] if fields else None
    if isinstance(field, UploadFile):
        return await field.read()
    raise ProtocolError("the multipart body has no file field named 'image'")

