"""``yolokit serve``'s lifecycle (:func:`serve`; with ``--engine ray``, :func:`toolkit.serve.ray.serve_on_ray`):
listen first (so that the probes answer: live 200, ready 503), load the model and warm it (choosing the batch size),
report ready; on SIGTERM or SIGINT, turn readiness off, refuse new requests, let the ones in flight finish within
``--drain-timeout``, stop both servers and return (the process exits 0). A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from toolkit.errors import InputError, MissingExtraError
from toolkit.serve.model import ServedModel, choose_batch
from toolkit.serve.options import ServeSettings, host_port, name_problem
from toolkit.serve.service import Service

Log = Callable[[str], None]


def require_extra(grpc: bool) -> None:
    """:class:`MissingExtraError` naming the ``serve`` extra when a package the server needs is missing."""
    needed = ["starlette", "uvicorn", "prometheus_client", "multipart"] + (["grpc", "google.protobuf"] if grpc else [])
    for module in needed:
        with contextlib.suppress(ModuleNotFoundError):
            if importlib.util.find_spec(module) is not None:
                continue
        raise MissingExtraError(f"yolokit serve needs {module.split('.')[0]}, which is not installed: pip install "
                                f"'yolokit[serve]'")


def serve(settings: ServeSettings, log: Log = print) -> None:
    """Run the server until SIGTERM or SIGINT (see the module's docstring). Bad options, a port in use or a model
    that cannot be loaded raise their :class:`~toolkit.errors.YolokitError`."""
    opts = settings.server
    opts.check_exposure()
    if settings.engine.ray:
        require_extra(False)
        listen(opts.host, opts.port, "HTTP").close()  # a clear message when the port is taken
        try:
            from toolkit.serve.ray import serve_on_ray
        except ImportError:
            raise MissingExtraError("yolokit serve --engine ray needs Ray Serve, which is not installed: pip install "
                                    "'yolokit[ray]'") from None
        serve_on_ray(settings, log)
        return
    require_extra(opts.grpc_port != 0)
    asyncio.run(_main(settings, log))


def listen(host: str, port: int, what: str) -> socket.socket:
    """A listening TCP socket on ``host:port``, or :class:`InputError` saying why not."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say so, and without it every answer on a
        # kept-alive connection waits 40 ms (Nagle's algorithm against the client's delayed ACK)
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)
        sock.setblocking(False)
    except OSError as e:
        raise InputError(f"cannot listen on {host_port(host, port)} ({what}): {e.strerror or e}; choose another "
                         f"{'--grpc-port' if what == 'gRPC' else '--port'} or --host") from None
    return sock


class _Signals:
    """SIGTERM and SIGINT on the running loop: the first asks to stop, a second to stop at once."""

    def __init__(self) -> None:
        self.stop, self.now = asyncio.Event(), asyncio.Event()
        self.name = ""

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._got, sig)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    def _got(self, sig: int) -> None:
        if self.stop.is_set():
            self.now.set()
        self.name = signal.Signals(sig).name
        self.stop.set()


async def _main(settings: ServeSettings, log: Log) -> None:
    import uvicorn

    from toolkit.serve.http import create_app

    opts = settings.server
    name = opts.name or Path(str(settings.detector.weights)).stem
    problem = name_problem(name)
    if problem is not None:  # the model file's stem
        raise InputError(f"{settings.detector.weights}: its name {name!r} cannot name the model: {problem}; give "
                         f"--name")
    service = Service(opts, name)
    http_sock = listen(opts.host, opts.port, "HTTP")
    grpc_server: Any = None
    if opts.grpc_port:
        from toolkit.serve.grpc import grpc_server as make_grpc

        listen(opts.host, opts.grpc_port, "gRPC").close()  # a clear message when the port is taken
        grpc_server, bound = make_grpc(service, host_port(opts.host, opts.grpc_port))
        if not bound:
            http_sock.close()
            raise InputError(f"cannot listen on {host_port(opts.host, opts.grpc_port)} (gRPC); choose another "
                             f"--grpc-port")

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # this module handles them (drain first)
            yield

    config = uvicorn.Config(create_app(service=service), log_level="warning", access_log=False, lifespan="off",
                            server_header=False, http=_json_refusals(),
                            timeout_graceful_shutdown=max(1, int(opts.drain_timeout)))
    http = Server(config)
    signals = _Signals()
    model: ServedModel | None = None
    with signals.installed():
        http_task = asyncio.create_task(http.serve(sockets=[http_sock]))
        if grpc_server is not None:
            await grpc_server.start()
        try:
            where = f"http://{host_port(opts.host, opts.port)}" + (
                f" and grpc {host_port(opts.host, opts.grpc_port)}" if opts.grpc_port else "")
            log(f"yolokit serve: listening on {where}; loading {settings.detector.weights} ...")
            cut = threading.Event()  # a load stopped by a signal says nothing after "stopped" (its warm-up's note)

            def load_log(message: str) -> None:
                if not cut.is_set():
                    log(message)

            loading = asyncio.ensure_future(asyncio.to_thread(_load, settings, name, load_log))
            stopping = asyncio.ensure_future(signals.stop.wait())
            await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if loading.done():
                stopping.cancel()
                model, batch = loading.result()
                with model.settings():
                    service.start(model, batch)
                    log(f"yolokit serve: {name} ready ({model.routine.config.backend} on "
                        f"{model.routine.config.device}, batches of up to {batch}, {len(model.routines)} "
                        f"instance(s)); Ctrl-C or SIGTERM drains and stops")
                    await signals.stop.wait()
                    service.drain()
                    admitted = service.admission.admitted if service.admission else 0
                    log(f"yolokit serve: {signals.name}: draining {admitted} request(s) in flight (up to "
                        f"{opts.drain_timeout:g} s) ...")
                    drained = asyncio.ensure_future(service.idle(opts.drain_timeout))
                    now = asyncio.ensure_future(signals.now.wait())
                    await asyncio.wait({drained, now}, return_when=asyncio.FIRST_COMPLETED)
                    now.cancel()
                    if not (drained.done() and drained.result()):
                        log("yolokit serve: stopping with requests still in flight")
            else:
                cut.set()
                log(f"yolokit serve: {signals.name} while loading; stopping")
        finally:
            service.drain()
            http.should_exit = True
            if signals.now.is_set():
                http.force_exit = True
            if grpc_server is not None:
                await grpc_server.stop(grace=1.0)
            await http_task
            running = service.batcher.running if service.batcher is not None else 0
            await service.close()
            if model is not None and not running:  # a batch still running keeps its model (the process is ending)
                model.close()
    log("yolokit serve: stopped")


# what a request that is not HTTP at all gets (uvicorn answered "Invalid HTTP request received." as plain text)
NOT_HTTP = ("the request is not valid HTTP/1.1 (a malformed request line, header or body framing, such as a "
            "Content-Length that is not a number); send it with an HTTP client")


def _json_refusals() -> type:
    """uvicorn's HTTP protocol (httptools where installed, else h11), answering a request it cannot parse with the
    protocol's error object, as every other refusal is, instead of a plain-text body."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    from toolkit.serve.protocol import error_body

    class JsonRefusals(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        def send_400_response(self, msg: str) -> None:
            body = error_body(NOT_HTTP)
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: "
                                 + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)
            self.transport.close()

    return JsonRefusals


def _load(settings: ServeSettings, name: str, log: Log) -> tuple[ServedModel, int]:
    """Load and warm the model (in a thread); the batch size to serve at (see ``--max-batch``)."""
    opts = settings.server
    model = ServedModel.load(settings.detector, name, opts.instances)
    try:
        batch = choose_batch(model, opts.max_batch, log)
    except BaseException:
        model.close()
        raise
    return model, batch
