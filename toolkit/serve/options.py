"""What ``yolokit serve`` is given: the server's own options (:class:`ServeOptions`, declared once like every
option, :mod:`toolkit.options`) and the detector's, read from :class:`~toolkit.engine.core.DetectorConfig`'s
declarations: every detector option but those about files, URLs and videos (:data:`NOT_SERVED`), so one added there
later is served too. :class:`ServeSettings` composes the two, as ``RunOptions`` composes a run's groups.

A request's own ``parameters`` (:data:`REQUEST_PARAMETERS`) are checked against the same declarations
(:func:`request_nms`), and a model with NMS inside refuses what its baked NMS cannot give, as ``yolokit run`` does.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from toolkit.engine.core import DetectorConfig, resolve_nms
from toolkit.errors import InputError
from toolkit.meta import ModelMeta
from toolkit.ops import NMSOptions
from toolkit.options import RAY, SERVER, build, check, class_ids, declared, group, option

# DetectorConfig's options that a server has no use for (by flat name): it reads no files, URLs, videos or streams,
# and letterboxes on the host
NOT_SERVED = ("vid_stride", "stream_timeout", "download_timeout", "download_workers", "download_memory", "gpu_resize")

# the detector settings a request may set in its "parameters" (KServe v2) or query string (/v1/detect)
REQUEST_PARAMETERS = ("conf", "iou", "max_det", "classes")

API_KEY_ENV = "YOLOKIT_API_KEY"
ENGINES = ("local", "ray")  # where the model runs: this process, or Ray Serve replicas across a Ray cluster
DEFAULT_MAX_BODY = 64 << 20
DRAIN_MAX = 86400  # seconds: --drain-timeout's largest
# --max-batch's largest: the most images one request may carry (toolkit.serve.model.MAX_IMAGES), 8 times the GPU
# plan's batch; the warm-up runs a batch of this size at once (100000 asked 114 GiB for its images alone)
MAX_BATCH = 256


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a model in the routes (/v2/models/NAME/...), or None: a ``/`` made every route of
    the model unreachable over HTTP while gRPC took it; ``?``, ``#``, ``%``, a backslash, control characters and
    spaces at its ends do not travel in a URL path as themselves, and ``.`` and ``..`` are folded away by clients."""
    bad = sorted({c for c in name if c in "/\\?#%" or not c.isprintable()})
    if bad:
        return (f"a model's name goes in the URL path (/v2/models/NAME), and {', '.join(map(repr, bad))} cannot; "
                f"use letters, digits, '.', '_' and '-'")
    if name != name.strip() or name in (".", ".."):
        return "a model's name goes in the URL path (/v2/models/NAME); use letters, digits, '.', '_' and '-'"
    return None


@dataclass(frozen=True)
class ServeOptions:
    """The server's options: where it listens, how it batches, what it admits, how it stops."""

    name: str = option("", "The model's name in the routes (/v2/models/NAME); default: the model file's stem.",
                       panel=SERVER)
    host: str = option("127.0.0.1", "Address to listen on. Any address but loopback needs --api-key (or "
                       "--insecure).", panel=SERVER)
    port: int = option(8000, "HTTP port: KServe v2 REST, /v1/detect, /metrics.", panel=SERVER, lo=1, hi=65535)
    grpc_port: int = option(8001, "gRPC port: KServe v2 GRPCInferenceService; 0 turns gRPC off.", panel=SERVER, lo=0,
                            hi=65535)
    max_batch: int = option(0, "Most images in one model execution (requests are gathered into batches), at most "
                            "256. 0: 8 on a CPU, the GPU plan's batch on a CUDA device, within the model's own limit; "
                            "1 when the warm-up finds that this runtime's output for an image changes with the batch "
                            "it rides in (so that answers stay yolokit run's exactly).", panel=SERVER, lo=0,
                            hi=MAX_BATCH)
    max_delay_ms: float = option(5.0, "Most milliseconds a batch waits for more requests while others are still "
                                 "being decoded; it never waits when none are.", panel=SERVER, lo=0)
    instances: int = option(0, "Model instances: threads that run batches at once, each with its own copy of the "
                            "model, sharing the CPU's cores. 0: one, whose intra-op threads use every core (a lone "
                            "request is then as fast as in a plain one-model server, and batching gives the "
                            "throughput); 2 or more can serve more under sustained load on some runtimes, at the "
                            "cost of a lone request's latency and another copy's memory (docs/guide/serving.md).",
                            panel=SERVER, lo=0)
    max_queue: int = option(64, "Most requests admitted at once (decoding, waiting or running); past it a request "
                            "gets 503 with Retry-After at once (gRPC: UNAVAILABLE).", panel=SERVER, lo=1)
    max_wait_ms: float = option(500.0, "Most milliseconds of model work a new request may find ahead of it (the "
                                "images in the server times the time per image measured while serving); past it, "
                                "503 with Retry-After at once, so that what is admitted is answered quickly under "
                                "overload. 0: only --max-queue bounds the queue.", panel=SERVER, lo=0)
    timeout_s: float = option(30.0, "A request not answered this many seconds after it arrived gets 504 (gRPC: "
                              "DEADLINE_EXCEEDED), and its queued work is dropped; a request's own timeout parameter "
                              "may shorten this, not lengthen it.", panel=SERVER, lo=0, lo_open=True)
    max_body: int = option(DEFAULT_MAX_BODY, "Largest request body (bytes, or 64M); a larger one gets 413 before it "
                           "is read whole.", text="bytes", panel=SERVER, lo=1)
    api_key: str | None = option(None, "Require 'Authorization: Bearer KEY' on every route but /v2/health/live and "
                                 "/v2/health/ready (gRPC: the same metadata; all but ServerLive and ServerReady).",
                                 panel=SERVER, env=API_KEY_ENV)
    # at most a day: inf was a traceback (uvicorn takes whole seconds: int(inf) raised OverflowError), and a drain
    # longer than any orchestrator's grace period is cut short by its SIGKILL anyway
    drain_timeout: float = option(30.0, "On SIGTERM or SIGINT: seconds the requests in flight get to finish (readiness "
                                  "turns 503 and new requests are refused meanwhile), at most 86400 (a day); then the "
                                  "process exits 0.", panel=SERVER, lo=0, hi=DRAIN_MAX)
    insecure: bool = option(False, "Allow listening on an address other than loopback without --api-key.",
                            panel=SERVER)

    def __post_init__(self) -> None:
        check(self)
        problem = name_problem(self.name) if self.name else None
        if problem is not None:
            raise InputError(f"--name {self.name!r}: {problem}")
        if self.api_key is not None and not self.api_key.strip():
            raise InputError(f"--api-key (or ${API_KEY_ENV}) is empty; give a key, or leave it unset")

    def check_exposure(self) -> None:
        """Refuse (exit 2) to listen beyond this machine without a key, unless ``--insecure`` says so."""
        if self.api_key or self.insecure or is_loopback(self.host):
            return
        raise InputError(f"--host {self.host} listens beyond this machine, and no --api-key (or ${API_KEY_ENV}) is "
                         f"set, so anyone who reaches it could use the model; give --api-key KEY, or --insecure to "
                         f"serve without one")


@dataclass(frozen=True)
class ServeEngine:
    """Where the model runs (``name``: ``--engine``): in the server's process, or on Ray Serve, as ``--replicas``
    model replicas placed across a Ray cluster behind Ray's HTTP proxy (:mod:`toolkit.serve.ray`)."""

    name: str = option("local", "local (this process serves HTTP and gRPC and runs the model on --instances) or ray "
                       "(Ray Serve: --replicas model replicas across a Ray cluster, behind Ray's HTTP proxy on "
                       "--host/--port; HTTP only; pip install 'yolokit[ray]').", cli_name="engine", panel=RAY,
                       choices=ENGINES)
    replicas: int = option(1, "With --engine ray: model replicas, each one instance of the model batching with "
                           "@serve.batch, placed across the cluster's nodes.", panel=RAY, lo=1)
    address: str | None = option(None, "With --engine ray: the cluster to join (auto, or HOST:PORT of 'ray start "
                                 "--head'); default: start a local one.", panel=RAY)
    cpus_per_replica: float = option(1.0, "With --engine ray: CPUs each model replica takes (also its intra-op "
                                     "threads).", panel=RAY, lo=0, lo_open=True)
    gpus_per_replica: float = option(0.0, "With --engine ray: GPUs each model replica takes.", panel=RAY, lo=0)

    def __post_init__(self) -> None:
        check(self)

    @property
    def ray(self) -> bool:
        return self.name == "ray"


@dataclass(frozen=True)
class ServeSettings:
    """Everything ``yolokit serve`` is given: the detector (every :class:`DetectorConfig` option but
    :data:`NOT_SERVED`), the server, and where the model runs. :meth:`of` builds one from flat settings by their
    command-line names."""

    detector: DetectorConfig = group(DetectorConfig)
    server: ServeOptions = group(ServeOptions)
    engine: ServeEngine = group(ServeEngine)

    def __post_init__(self) -> None:
        e = self.engine
        if e.ray:
            if self.server.instances > 1:
                raise InputError(f"--instances {self.server.instances}: with --engine ray each replica is one model "
                                 f"instance; give --replicas {self.server.instances} instead")
            return
        ray_only = [flag for flag, given in (("--replicas", e.replicas != 1), ("--address", e.address is not None),
                                             ("--cpus-per-replica", e.cpus_per_replica != 1.0),
                                             ("--gpus-per-replica", e.gpus_per_replica != 0.0)) if given]
        if ray_only:
            raise InputError(f"{ray_only[0]} is for --engine ray; add --engine ray, or drop {ray_only[0]}")

    @classmethod
    def of(cls, **settings: Any) -> ServeSettings:
        unserved = [k for k in settings if k in NOT_SERVED]
        if unserved:
            raise InputError(f"yolokit serve has no setting {unserved[0]!r}: the server reads no files, URLs, videos "
                             f"or streams")
        return build(cls, settings, "yolokit serve")  # type: ignore[no-any-return]


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_port(host: str, port: int) -> str:
    """``host:port`` as a URL and gRPC write it: an IPv6 literal in brackets (``[::1]:8001``; gRPC read ``::1:8001``
    as a misformatted domain name, and the log printed ``http://::1:8000``)."""
    bare = host.strip("[]")
    return f"[{bare}]:{port}" if ":" in bare else f"{host}:{port}"


def request_nms(config: DetectorConfig, meta: ModelMeta, base: NMSOptions, values: dict[str, Any],
                model: str) -> NMSOptions:
    """The NMS settings of one request: ``base`` (the server's) with ``values`` (a request's conf, iou, max_det,
    classes) applied, each checked against its declaration; for a model with NMS inside, what its NMS cannot give is
    refused as ``yolokit run`` refuses it. :class:`InputError` in one line naming the parameter."""
    if not values:
        return base
    changes: dict[str, Any] = {}
    for name, value in values.items():
        if name not in REQUEST_PARAMETERS:
            raise InputError(f"parameter {name!r} is not one this server takes; it takes "
                             + ", ".join(REQUEST_PARAMETERS))
        value = _typed(name, value)
        decl = declared(DetectorConfig, name)
        if not decl.allows(value):
            raise InputError(f"parameter {name} must be {decl.limits()}, got {decl.refused(value)!r}")
        changes[name] = value
    asked = replace(config, **changes)
    # refusals as `yolokit run` gives them, naming the parameter: classes the model has not, and for a model with
    # NMS inside, what its NMS cannot give
    resolve_nms(asked, meta, Path(model), _parameter)
    return replace(base, **changes)


def _parameter(key: str) -> str:
    return f"parameter {key}"


def _typed(name: str, value: Any) -> Any:
    """A parameter's value as its option takes it: numbers from JSON numbers or strings, classes from ``0,2``, a list
    or one id."""
    kind = {"conf": float, "iou": float, "max_det": int}.get(name)
    try:
        if kind is not None:
            if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
                raise ValueError
            if isinstance(value, str) and (not value.isascii() or "_" in value):
                raise ValueError  # float() and int() take "1_0" as 10 and other digits than 0-9
            if kind is float and isinstance(value, int) and abs(value) > 10**300:
                return value  # refused by the option's limits, as the number it is (float() raised OverflowError)
            return kind(value)
    except (TypeError, ValueError):
        pass
    else:
        if isinstance(value, (str, int, list, tuple)):
            return class_ids(value, f"parameter {name}")  # the library's reading of --classes
    what = {"conf": "a number", "iou": "a number", "max_det": "a whole number"}.get(name, "class ids like 0,2")
    raise InputError(f"parameter {name} takes {what}, got {value!r}")
