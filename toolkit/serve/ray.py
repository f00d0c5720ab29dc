"""``yolokit serve --engine ray``: the same server on Ray Serve, its model in ``--replicas`` replicas placed across a
Ray cluster, behind Ray's HTTP proxy. Needs the ``ray`` extra (Ray Serve) and the ``serve`` extra.

Two deployments, both thin:

* **the model** (:class:`ModelReplica`, ``--replicas`` of them, ``--cpus-per-replica`` / ``--gpus-per-replica``
  each, spread over the nodes by Ray Serve's scheduler): one :class:`~toolkit.serve.model.ServedModel` (one
  instance), loaded and warmed as ``yolokit serve`` does (the batch size settled by
  :func:`~toolkit.serve.model.choose_batch`). Each call prepares one image (:meth:`ServedModel.prepare
  <toolkit.serve.model.ServedModel.prepare>`: decoded and letterboxed as ``yolokit run`` does) and hands it to a
  ``@serve.batch`` method that runs the images gathered in a batch as :meth:`ServedModel.run
  <toolkit.serve.model.ServedModel.run>` (one execution per letterbox shape). Decoding runs where the model is, so
  it scales with the replicas.
* **the ingress** (:class:`Ingress`, one replica on the head node, next to Ray's HTTP proxy): the very app of the
  single-process server (:func:`~toolkit.serve.http.create_app` over a :class:`~toolkit.serve.service.Service`):
  the same routes, API key, admission (``--max-queue``), deadlines, refusals and encodings; it has each image's
  :class:`~toolkit.serve.model.Work` done by a model replica (:meth:`Service.start_remote
  <toolkit.serve.service.Service.start_remote>`) and needs only the model's
  :class:`~toolkit.serve.model.ModelFacts`, which it asks a replica for.

A replica lost with its node (or its process) fails the images it held: the ingress answers their requests **503
with Retry-After** ("retry"), not Ray's own 500, and Ray Serve's router sends new work to the replicas still alive.
:func:`serve_on_ray` is the command's lifecycle: connect to (or start) the cluster, deploy, wait until ready, and on
SIGTERM or SIGINT drain the ingress (readiness 503, new requests 503, those in flight finish within
``--drain-timeout``), then remove the application.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ray import serve

from toolkit.detections import Detections
from toolkit.engine.core import Prepared
from toolkit.errors import BackendUnavailableError, InputError, YolokitError, first_line, last_line
from toolkit.serve import metrics as m
from toolkit.serve.batcher import Expired
from toolkit.serve.http import create_app
from toolkit.serve.model import CPU_BATCH, ModelFacts, ServedModel, Work, choose_batch, timed
from toolkit.serve.options import ServeOptions, ServeSettings, host_port
from toolkit.serve.service import Refusal, Service, refusal_for

HEAD = "node:__internal_head__"  # the resource only the head node has: the ingress stays next to the HTTP proxy
LOST = ("the model replica working on this request was lost (its node or process died); retry: the replicas still "
        "up take new requests")
READY_WAIT_S = 300.0  # how long the command waits for the application to answer ready once deployed


@dataclass(frozen=True)
class Execution:
    """One model execution of a replica: images, seconds, each image's wait in the batch queue, the node."""

    size: int
    seconds: float
    waits: list[float]
    node: str


@dataclass(frozen=True)
class Done:
    """One image's answer from a replica: its detections, its decode time, and (for the first image of each batch)
    the batch's :class:`Execution`."""

    detections: Detections
    decode_seconds: float
    execution: Execution | None


class ModelReplica:
    """A model replica (see the module's docstring): loads and warms the model, then prepares and batch-runs images
    for the ingress."""

    def __init__(self, settings: ServeSettings, name: str) -> None:
        import ray

        from toolkit.host import keep_freed_memory
        from toolkit.io.decode import quiet_decoders

        quiet_decoders()  # a replica's process is yolokit's own: unreadable images are answered 400
        keep_freed_memory()  # and its freed memory is kept for the next image (toolkit.host)
        e = settings.engine
        config = settings.detector
        threads = max(1, int(e.cpus_per_replica))
        if config.threads is None:
            config = replace(config, threads=threads)
        self.notes: list[str] = []
        self.model = ServedModel.load(config, name, instances=1)
        self._settings = self.model.settings()
        self._settings.__enter__()
        self.batch = choose_batch(self.model, settings.server.max_batch, self.notes.append)
        batched: Any = self._batched  # Ray Serve's batch queue: sized once the warm-up has settled the batch
        batched.set_max_batch_size(self.batch)
        batched.set_batch_wait_timeout_s(settings.server.max_delay_ms / 1000)
        self._prepare = ThreadPoolExecutor(threads, thread_name_prefix="yolokit-prepare")
        self._run = ThreadPoolExecutor(1, thread_name_prefix="yolokit-run")
        self.node = ray.get_runtime_context().get_node_id()

    def facts(self) -> ModelFacts:
        """What the ingress needs to check requests and encode answers."""
        return self.model.facts()

    def describe(self) -> dict[str, Any]:
        """Where and how this replica runs (the command logs it)."""
        c = self.model.routine.config
        return {"backend": c.backend, "device": c.device, "batch": self.batch, "node": self.node,
                "notes": self.notes}

    async def detect(self, work: Work) -> Done:
        """One image: prepared here, then run in a batch; a refusal comes back as the :class:`Refusal` the
        single-process server gives."""
        loop = asyncio.get_running_loop()
        try:
            prepared, seconds = await loop.run_in_executor(self._prepare, timed,
                                                           functools.partial(self.model.prepare, work))
            dets, execution = await self._batched((prepared, time.monotonic()))
        except (Expired, YolokitError) as err:
            raise refusal_for(err) from None
        return Done(dets, seconds, execution)

    @serve.batch(max_batch_size=CPU_BATCH, batch_wait_timeout_s=0.005)
    async def _batched(self, items: list[tuple[Prepared, float]]) -> list[tuple[Detections, Execution | None]]:
        start = time.monotonic()
        out, seconds = await asyncio.get_running_loop().run_in_executor(
            self._run, timed, functools.partial(self.model.run, [p for p, _ in items]))
        execution = Execution(len(items), seconds, [start - queued for _, queued in items], self.node)
        return [(d, execution if i == 0 else None) for i, d in enumerate(out)]


class Ingress:
    """The ingress (see the module's docstring): the single-process server's app, its images' work done by the
    model replicas behind ``model`` (a deployment handle)."""

    def __init__(self, model: Any, options: ServeOptions, name: str) -> None:
        self.handle = model
        self.service = Service(options, name)
        # ready once a replica has told what the model is (live at once, ready 503 until then)
        self._connecting = asyncio.get_running_loop().create_task(self._connect())

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(service=self.service)

    async def _connect(self) -> None:
        while True:
            try:
                facts = await self.handle.facts.remote()
                break
            except Exception:  # noqa: BLE001 - no replica up yet, or one died while loading: ask again
                await asyncio.sleep(0.5)
        self.service.start_remote(facts, self._detect)

    async def _detect(self, work: Work) -> Detections:
        from ray.exceptions import RayActorError, RayTaskError

        try:
            done: Done = await self.handle.detect.remote(work.portable())
        except RayActorError:
            raise Refusal(503, LOST, m.BACKEND, retry_after=1) from None
        except RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, Refusal):
                raise cause from None
            if isinstance(cause, RayActorError):
                raise Refusal(503, LOST, m.BACKEND, retry_after=1) from None
            raise
        metrics = self.service.metrics
        metrics.decoded([done.decode_seconds])
        if done.execution is not None:
            x = done.execution
            metrics.executed(x.size, x.seconds, x.waits, x.node)
        return done.detections

    async def drain(self, timeout: float) -> bool:
        """Readiness off and new requests refused; whether those in flight finished within ``timeout`` seconds."""
        self.service.drain()
        return await self.service.idle(timeout)


# ----------------------------------------------------------------------------------------------- the command
def serve_on_ray(settings: ServeSettings, log: Any = print) -> None:
    """``yolokit serve --engine ray`` until SIGTERM or SIGINT (see the module's docstring)."""
    import ray

    opts, e = settings.server, settings.engine
    name = opts.name or Path(str(settings.detector.weights)).stem
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    connected = not ray.is_initialized()  # (a library caller may have connected already)
    started = connected and e.address is None  # a local cluster of our own, stopped at the end
    if connected and e.address not in (None, "auto"):
        _check_reachable(e.address)
    if connected:
        try:
            ray.init(address=e.address or "local", include_dashboard=False, logging_level=logging.ERROR,
                     log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as err:
            where = e.address or "a new local cluster"
            raise BackendUnavailableError(f"cannot start or reach Ray at {where}: {first_line(err)}; start one with "
                                          f"'ray start --head' or drop --address") from None
    stop = _Stop()
    deployed = False
    try:
        _check_resources(ray.cluster_resources(), e.replicas, e.cpus_per_replica, e.gpus_per_replica)
        where = f"http://{host_port(opts.host, opts.port)}"
        log(f"yolokit serve: starting Ray Serve on {where} (Ray's HTTP proxy; gRPC is not served with --engine "
            f"ray); {e.replicas} replica(s) of {settings.detector.weights} ...")
        serve.start(http_options={"host": opts.host, "port": opts.port}, proxy_location="HeadOnly")
        app = _application(settings, name)
        with stop.installed():
            try:
                handle = serve.run(app, name=name, route_prefix="/", logging_config={"log_level": "WARNING",
                                                                                    "enable_access_log": False})
            except RuntimeError as err:
                raise BackendUnavailableError(_deploy_failure(name, err)) from None
            deployed = True
            _wait_ready(opts, stop)
            about = serve.get_deployment_handle("model", app_name=name).describe.remote().result(timeout_s=60)
            for note in about["notes"]:
                log(note)
            log(f"yolokit serve: {name} ready on Ray Serve ({e.replicas} replica(s), {about['backend']} on "
                f"{about['device']}, batches of up to {about['batch']}); Ctrl-C or SIGTERM drains and stops")
            stop.wait()
            if stop.name:
                log(f"yolokit serve: {stop.name}: draining the requests in flight (up to {opts.drain_timeout:g} s) "
                    f"...")
                with contextlib.suppress(Exception):
                    if not handle.drain.remote(opts.drain_timeout).result(timeout_s=opts.drain_timeout + 30):
                        log("yolokit serve: stopping with requests still in flight")
    finally:
        if deployed:
            with contextlib.suppress(Exception):
                serve.delete(name)
        if started:
            with contextlib.suppress(Exception):
                serve.shutdown()
        if connected:
            ray.shutdown()
    log("yolokit serve: stopped")


def _application(settings: ServeSettings, name: str) -> Any:
    opts, e = settings.server, settings.engine
    batch_hint = opts.max_batch or (32 if e.gpus_per_replica else CPU_BATCH)
    deployment: Any = serve.deployment
    model = deployment(ModelReplica, name="model", num_replicas=e.replicas,
                             ray_actor_options={"num_cpus": e.cpus_per_replica, "num_gpus": e.gpus_per_replica},
                             max_ongoing_requests=max(16, 2 * batch_hint),
                             graceful_shutdown_timeout_s=opts.drain_timeout)
    # the ingress holds --max-queue requests (and answers 503 past it, and the probes, metadata and metrics beside)
    ingress = deployment(serve.ingress()(Ingress), name="ingress", num_replicas=1,
                               ray_actor_options={"num_cpus": 0, "resources": {HEAD: 0.001}},
                               max_ongoing_requests=2 * opts.max_queue + 32,
                               graceful_shutdown_timeout_s=opts.drain_timeout)
    return ingress.bind(model.bind(settings, name), opts, name)


def _check_reachable(address: str) -> None:
    """Refuse, in one line, a cluster address nothing answers on (``ray.init`` would retry it for minutes)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise InputError(f"--address {address}: give HOST:PORT of the cluster's head ('ray start --head' prints it), "
                         f"or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as err:
        raise BackendUnavailableError(f"cannot reach Ray at {address}: {err.strerror or err}; start the cluster "
                                      f"('ray start --head') or fix --address") from None


def _check_resources(resources: dict[str, float], replicas: int, cpus: float, gpus: float) -> None:
    """Refuse replicas the cluster cannot place (Ray Serve would wait for them for ever)."""
    have_cpu, have_gpu = float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0))
    if replicas * cpus > have_cpu:
        raise InputError(f"--replicas {replicas} x --cpus-per-replica {cpus:g} need {replicas * cpus:g} CPUs; the "
                         f"Ray cluster has {have_cpu:g}; give fewer replicas or CPUs per replica")
    if replicas * gpus > have_gpu:
        raise InputError(f"--replicas {replicas} x --gpus-per-replica {gpus:g} need {replicas * gpus:g} GPUs; the "
                         f"Ray cluster has {have_gpu:g}")


def _deploy_failure(name: str, err: Exception) -> str:
    """One line for an application that did not deploy: the model replicas' own error, when they gave one."""
    with contextlib.suppress(Exception):
        for deployment, status in serve.status().applications[name].deployments.items():
            if status.message and "Traceback" in status.message:
                return f"the {deployment} replicas did not start: {last_line(Exception(status.message))}"
    return f"the Ray Serve application did not deploy: {last_line(err)}"


def _wait_ready(opts: ServeOptions, stop: _Stop) -> None:
    """Until the app answers ready through Ray's proxy (the ingress has asked a replica what the model is)."""
    host = "127.0.0.1" if opts.host in ("0.0.0.0", "::", "") else opts.host.strip("[]")
    url = f"http://{host_port(host, opts.port)}/v2/health/ready"
    end = time.monotonic() + READY_WAIT_S
    while time.monotonic() < end and not stop.is_set():
        with contextlib.suppress(urllib.error.URLError, OSError, ValueError), \
                urllib.request.urlopen(url, timeout=5) as r:
            if json.loads(r.read()).get("ready"):
                return
        time.sleep(0.2)
    if not stop.is_set():
        raise BackendUnavailableError(f"the Ray Serve application did not answer ready at {url} within "
                                      f"{READY_WAIT_S:g} s")


class _Stop:
    """SIGTERM and SIGINT while serving: the first asks to drain and stop, a second stops at once."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.name = ""

    def is_set(self) -> bool:
        return self.event.is_set()

    def wait(self) -> None:
        while not self.event.wait(0.5):
            pass

    @contextlib.contextmanager
    def installed(self) -> Any:
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        for sig in previous:
            signal.signal(sig, self._got)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _got(self, sig: int, frame: Any) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt  # a second signal: stop at once
        self.name = signal.Signals(sig).name
        self.event.set()
