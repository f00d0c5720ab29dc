"""The inference service that both transports share: the server's state (loading, ready, draining), admission,
preparation off the event loop, the batcher, deadlines, client disconnects and the metrics. HTTP
(:mod:`toolkit.serve.http`) and gRPC (:mod:`toolkit.serve.grpc`) only decode a request, call :meth:`Service.infer`
or :meth:`Service.detect`, and encode the answer or the :class:`Refusal`.

The service runs the model itself (:meth:`Service.start`: images prepared in a thread pool, batched by the
:class:`~toolkit.serve.batcher.Batcher` on the model's instances), or has each image's
:class:`~toolkit.serve.model.Work` done elsewhere (:meth:`Service.start_remote`: a Ray Serve ingress, whose model
replicas prepare and batch); the checks, refusals, deadlines and answers are the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from toolkit.detections import Detections
from toolkit.engine.plan import cpu_count
from toolkit.errors import InputError, YolokitError
from toolkit.options import ascii_digits, brief, whole_number
from toolkit.serve import metrics as m
from toolkit.serve.batcher import Admission, Batcher, Draining, Expired, QueueFull, Ticket
from toolkit.serve.metrics import ServerMetrics
from toolkit.serve.model import DETECT_PARAMETERS, ENCODED, ModelFacts, ModelFailure, ServedModel, Work, timed
from toolkit.serve.options import ServeOptions
from toolkit.serve.protocol import InferRequest, ProtocolError, Tensor

T = TypeVar("T")

LOADING, READY, DRAINING = "loading", "ready", "draining"
MAX_REASONS = 2000  # characters of the bad images' reasons in one refusal

# one image's work done elsewhere (a model replica): its detections
Remote = Callable[[Work], Awaitable[Detections]]


@dataclass
class Refusal(Exception):
    """A request answered with an error: the HTTP ``status``, one plain sentence, the metrics' failure ``reason``
    (None: not counted, such as an unknown model) and, for 503, when to retry."""

    status: int
    message: str
    reason: str | None = m.OTHER
    retry_after: int | None = None

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:  # pickles whole (a Ray Serve replica sends its refusals back)
        return (Refusal, (self.status, self.message, self.reason, self.retry_after))


@dataclass(frozen=True)
class Deadline:
    """When a request must be answered (loop time), and the seconds it was given."""

    at: float
    seconds: float


class ClientGone(Exception):
    """The client closed its connection while its request waited."""


class Service:
    """One served model's inference service (see the module's docstring). It starts :data:`LOADING`; the server
    calls :meth:`start` once the model is loaded and warm (:data:`READY`), :meth:`drain` on SIGTERM
    (:data:`DRAINING`) and :meth:`close` at the end."""

    def __init__(self, options: ServeOptions, name: str) -> None:
        self.options = options
        self.name = name
        self.state = LOADING
        self.model: ModelFacts | None = None
        self.served: ServedModel | None = None
        self.admission: Admission | None = None
        self.batcher: Batcher | None = None
        self.metrics = ServerMetrics(name)
        self._prepare: ThreadPoolExecutor | None = None
        self._remote: Remote | None = None

    # ------------------------------------------------------------------------------------------ lifecycle
    def start(self, model: ServedModel, max_batch: int) -> None:
        """Serve ``model`` (loaded and warmed), batching at most ``max_batch`` images; call on the event loop."""
        self.model = self.served = model
        opts = self.options
        runs = [lambda items, i=i: model.run(items, i) for i in range(len(model.routines))]
        self.admission = self.batcher = Batcher(runs, max_batch, opts.max_delay_ms / 1000, opts.max_queue,
                                                self.metrics, opts.max_wait_ms / 1000)
        self.batcher.start()
        self._prepare = ThreadPoolExecutor(min(8, cpu_count()), thread_name_prefix="yolokit-prepare")
        self.state = READY

    def start_remote(self, facts: ModelFacts, remote: Remote) -> None:
        """Serve the model ``facts`` describes, each image's work done by ``remote`` (which prepares, batches and
        runs it where the model is); call on the event loop."""
        self.model = facts
        self.admission = Admission(self.options.max_queue)
        self._remote = remote
        self.state = READY

    @property
    def ready(self) -> bool:
        return self.state == READY

    def drain(self) -> None:
        """Readiness off, new requests refused; the admitted ones go on."""
        self.state = DRAINING
        if self.admission is not None:
            self.admission.drain()

    async def idle(self, timeout: float) -> bool:
        return await self.admission.idle(timeout) if self.admission is not None else True

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()
        if self._prepare is not None:
            self._prepare.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------------------------------ requests
    def check_model(self, name: str, version: str = "") -> ModelFacts:
        """The served model if ``name`` (and ``version``, when given) names it; 404 otherwise, 503 while loading."""
        if name != self.name or version not in ("", "1"):
            what = f"model {name!r}" + (f" version {version!r}" if version else "")
            raise Refusal(404, f"unknown {what}; this server serves {self.name!r} (version 1)", None)
        if self.model is None:
            raise Refusal(503, f"model {self.name!r} is still loading", None, retry_after=1)
        return self.model

    def admit(self) -> Ticket:
        """Admit one request, or refuse it at once (503): shutting down, still loading, or the queue is full."""
        if self.admission is None or self.state == LOADING:
            raise Refusal(503, f"model {self.name!r} is still loading; retry when /v2/health/ready says so",
                          m.REJECTED, retry_after=1)
        try:
            ticket = self.admission.admit()
        except Draining:
            raise Refusal(503, "the server is shutting down and takes no new requests", m.REJECTED,
                          retry_after=1) from None
        except QueueFull as full:
            raise Refusal(503, f"the server is busy: {full}; retry shortly", m.REJECTED, retry_after=1) from None
        self.metrics.in_flight.inc()
        return ticket

    def release(self, ticket: Ticket) -> None:
        ticket.release()
        self.metrics.in_flight.dec()

    async def infer(self, ticket: Ticket, request: InferRequest, arrived: float,
                    gone: asyncio.Future[Any] | None = None) -> list[Tensor]:
        """A KServe v2 request's output tensors. ``arrived``: its loop time of arrival; ``gone``: done when the
        client disconnects."""
        model = self.check_model(self.name)
        deadline = self._deadline(arrived, request.parameters.get("timeout"))
        with self._refusals():
            nms = model.nms_for(request.parameters)
            names = model.check_outputs(request)
            preparations = model.preparations(request, nms)
            dets = await self._run(ticket, preparations, deadline, gone)
            t0 = asyncio.get_running_loop().time()
            tensors = model.outputs(dets, names)
            self.metrics.encoded(asyncio.get_running_loop().time() - t0)
            return tensors

    async def detect(self, ticket: Ticket, data: bytes, parameters: dict[str, Any], arrived: float,
                     gone: asyncio.Future[Any] | None = None) -> dict[str, Any]:
        """``/v1/detect``: one encoded image -> its JSON answer."""
        model = self.check_model(self.name)
        deadline = self._deadline(arrived, parameters.get("timeout"))  # the query string's, as the docs say
        with self._refusals():
            nms = model.nms_for(parameters, DETECT_PARAMETERS)
            dets = await self._run(ticket, [Work(ENCODED, data, "image", nms)], deadline, gone)
            return dets[0].to_detect_json()

    def succeeded(self, arrived: float) -> None:
        self.metrics.succeeded(asyncio.get_running_loop().time() - arrived)

    def failed(self, reason: str | None, arrived: float) -> None:
        if reason is not None:
            self.metrics.failed(reason, asyncio.get_running_loop().time() - arrived)

    def _deadline(self, arrived: float, timeout_us: Any) -> Deadline:
        seconds = self.options.timeout_s
        if timeout_us is not None:  # Triton's request timeout, in microseconds (a query string's text too)
            text = timeout_us.strip() if isinstance(timeout_us, str) else ""
            us = int(text) if ascii_digits(text) else timeout_us  # not "1_0", nor other digits
            if not whole_number(us) or us <= 0:
                raise Refusal(400, f"parameter timeout takes microseconds, a whole number above 0, got "
                                   f"{brief(timeout_us)}")
            # capped at --timeout-s, as the guide says: a client's generous timeout is no reason to refuse it
            seconds = min(seconds, us / 1e6) if us < 10**15 else seconds  # 400 digits: / 1e6 raised OverflowError
        return Deadline(arrived + seconds, seconds)

    async def _run(self, ticket: Ticket, works: list[Work], deadline: Deadline,
                   gone: asyncio.Future[Any] | None) -> list[Detections]:
        if self._remote is not None:
            ticket.prepared()
            remote = self._remote
            done = await self._wait(asyncio.gather(*(remote(w) for w in works), return_exceptions=True), deadline,
                                    gone)
            return settled(works, done)
        loop = asyncio.get_running_loop()
        model, pool = self.served, self._prepare
        if model is None or pool is None:
            raise Refusal(503, f"model {self.name!r} is still loading", m.REJECTED, retry_after=1)
        jobs = [loop.run_in_executor(pool, timed, functools.partial(model.prepare, w)) for w in works]
        # every image is prepared, so that one answer names each bad image (the first failure hid the others)
        prepared = settled(works, await self._wait(asyncio.gather(*jobs, return_exceptions=True), deadline, gone))
        self.metrics.decoded([s for _, s in prepared])
        items = [p for p, _ in prepared]
        futures = ticket.submit(items, [model.key(p) for p in items], deadline.at)
        return await self._wait(asyncio.gather(*futures), deadline, gone)

    async def _wait(self, work: Awaitable[T], deadline: Deadline, gone: asyncio.Future[Any] | None) -> T:
        """``work``'s result, or :class:`Refusal` 504 past the deadline, or :class:`ClientGone`; what is left of
        ``work`` is cancelled (its queued images leave the queue)."""
        task = asyncio.ensure_future(work)
        waiting: set[asyncio.Future[Any]] = {task} if gone is None else {task, gone}
        try:
            timeout = max(0.0, deadline.at - asyncio.get_running_loop().time())
            done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                return task.result()
            if gone is not None and gone in done:
                raise ClientGone()
            raise Refusal(504, f"the request was not answered within its {deadline.seconds:g} s (the server's "
                               f"--timeout-s, or the request's own timeout); its queued work was dropped",
                          m.REJECTED)
        finally:
            if not task.done():
                task.cancel()  # a gathering future cancels its parts at once: queued images leave the queue
                task.add_done_callback(_retrieve)  # its end, once cancelled, is nobody's to log
            elif not task.cancelled():
                task.exception()  # retrieved, whatever it is: this request is answered already

    @contextlib.contextmanager
    def _refusals(self) -> Any:
        """Errors of a request's own making or of the model -> :class:`Refusal` with their status."""
        try:
            yield
        except (Refusal, ClientGone, asyncio.CancelledError):
            raise
        except (Expired, YolokitError) as e:
            raise refusal_for(e) from None


def settled(works: list[Work], outcomes: list[T | BaseException]) -> list[T]:
    """Each image's outcome, or the one error its request gets: any failure that is not the image's own (the model
    failed, a replica was lost, a bug) as it is; else each bad image's reason, in one line (:func:`bad_images`)."""
    failures = [(w.name, o) for w, o in zip(works, outcomes, strict=True) if isinstance(o, BaseException)]
    if not failures:
        return outcomes  # type: ignore[return-value]
    other = next((e for _, e in failures if not _images_own(e)), None)
    if other is not None:
        raise other
    if len(failures) == 1:
        raise failures[0][1]
    text = bad_images([(name, str(e)) for name, e in failures])
    raise Refusal(400, text) if isinstance(failures[0][1], Refusal) else ProtocolError(text)


def _images_own(e: BaseException) -> bool:
    """Whether ``e`` is an image's own refusal (400: not an image, truncated, too large, ...), here or from a model
    replica."""
    return isinstance(e, InputError) or (isinstance(e, Refusal) and e.status == 400)


def bad_images(failures: list[tuple[str, str]]) -> str:
    """One line naming each bad image of a request with its reason (``images[1]: ...; images[2]: ...``), those with
    one reason together (``images[0], images[3]: ...``); past :data:`MAX_REASONS` characters (gRPC sends the line in
    its trailing metadata, 8 KiB at most) the rest are counted."""
    reasons: dict[str, list[str]] = {}
    for name, text in failures:
        reason = text[len(name) + 2:] if text.startswith(f"{name}: ") else text
        reasons.setdefault(reason, []).append(name)
    parts: list[str] = []
    shown = length = 0
    for reason, names in reasons.items():
        part = f"{', '.join(names)}: {reason}"
        if parts and length + len(part) > MAX_REASONS:
            break
        parts.append(part)
        shown, length = shown + len(names), length + len(part) + 2
    rest = len(failures) - shown
    return "; ".join(parts) + (f"; and {rest} more bad image(s)" if rest else "")


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Take a finished future's outcome, so that asyncio does not log it as never retrieved."""
    if not task.cancelled():
        with contextlib.suppress(BaseException):
            task.exception()


def refusal_for(e: Expired | YolokitError) -> Refusal:
    """The :class:`Refusal` an error of a request's own making (bad input, past its deadline) or of the model
    gets."""
    if isinstance(e, Expired):
        return Refusal(504, "the request waited past its deadline; its work was dropped", m.REJECTED)
    if isinstance(e, ProtocolError):
        return Refusal(e.status, str(e))
    if isinstance(e, ModelFailure):
        return Refusal(500, str(e), m.BACKEND)
    if isinstance(e, InputError):  # an image yolokit run would list as failed, a parameter out of its limits
        return Refusal(400, str(e))
    return Refusal(500, str(e), m.BACKEND)

