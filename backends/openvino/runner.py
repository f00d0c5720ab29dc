"""Running an OpenVINO IR: :class:`OpenVinoRunner`, a compiled model with one infer request per thread.

Precision that actually executes on the CPU: the CPU plugin's default ``INFERENCE_PRECISION_HINT`` is bf16
on CPUs with AVX512-BF16/AMX (this includes AMD Zen 4 EPYC), f16 on CPUs with native FP16 arithmetic, else
f32. yolokit pins ``f32`` for an FP32 IR (bf16 would move boxes by several pixels), and leaves the plugin
default for FP16 and INT8 IRs (an FP16 IR's weights are decompressed and run at that default precision;
INT8 IRs run quantized convolutions in int8 and the rest at that default). ``--precision``
(``LoadOptions.precision``) asks for ``bf16`` (refused in one line on a CPU without it: :func:`require_bf16`) or
``fp32`` (f32 for every IR); the precision used is recorded in the runner's ``meta.extra["inference_precision"]``;
``LoadOptions.options["inference_precision"]`` ("f32", "bf16", "f16") overrides the default one.

Compiled models are cached (OpenVINO's ``CACHE_DIR``): compiling yolov5n INT8 takes about 0.35 s on a 2-core
CPU, loading it from the cache 0.08 s, in every process that loads it. OpenVINO keys the cache by model,
configuration, device and its own version, and recompiles over a corrupt or truncated entry. The folder is
``LoadOptions.options["cache_dir"]``, else ``$YOLOKIT_OPENVINO_CACHE`` (``off`` disables it), else
``~/.cache/yolokit/openvino``; one that cannot be written is not used, and a compile that fails with the cache
is retried without it.

Models compiled for one input shape (:class:`ShapeModels`): the IR's input is dynamic (any letterbox rectangle),
and OpenVINO's CPU plugin spends 2-3 ms of every inference on a dynamic input (measured on a 2-core AMD EPYC:
yolov5n at 384x640 on one thread, 19.8 ms dynamic, 17.7 ms compiled for that shape; in a run's plan, four threads
on two streams, 111 and 127 images/s; yolov5s 55.3 and 52.3 ms; yolov5l 330 and 327 ms). An input shape met
:data:`SHAPE_AFTER` times, and in at least 1/:data:`SHAPE_SHARE` of the inferences so far, gets a model compiled
for it alone, by the inference thread that meets it then (the others keep to the dynamic model meanwhile); at most
:data:`SHAPE_MODELS` of them, fewer for a large model (each holds its own copy of the weights: :data:`SHAPE_MEMORY`
bytes in all), none after a compile fails. Only where the CPU computes in f32: there the shape's model gives
bit-identical outputs (tests/test_backends.py checks it, for an INT8 IR computing its float parts in f32 too); in
bf16 or f16 it need not, so those keep the dynamic model alone. Where the caller said how many inferences come
(:meth:`~backends.base.BaseRunner.expect`: a run over a list of images), a shape is compiled only while at least
:data:`SHAPE_AHEAD` of them are still ahead at its share: 100 photos of one size compile at their 16th
inference (85 ahead), while a 100-image run of many shapes, or one whose shape comes late, compiles none it cannot
pay back. Where the caller says at load which shapes come and how many inferences each
(:attr:`~backends.base.LoadOptions.expected`: a run that read its first images' headers), a shape that meets that
rule in advance (:func:`early_shapes`) is compiled at load *instead of* the dynamic model, which is compiled only
when an input of another shape first comes: a run of one-size photos then never compiles the dynamic model nor
warms it up (one compile at load, not two, and never two at once: see :data:`COMPILING`).
``LoadOptions.options["shape_models"]`` sets the number (0: none).
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from backends.base import E2E_OUTPUTS, RAW_OUTPUT, BaseRunner, LoadOptions, cache_dir, pack_detections
from backends.openvino.ir import REEXPORT_HINT, meta_of, read_model, runtime
from backends.shared.onnx_nms import RAW_NAME
from toolkit.errors import BackendUnavailableError, InputError, ModelFileError
from toolkit.meta import ModelMeta

ENV_CACHE = "YOLOKIT_OPENVINO_CACHE"
# inferences at one input shape before it gets a model compiled for it alone: 16, not 64, since the run says how
# many come (SHAPE_AHEAD): 100 one-size photos ran 4 % faster with 6 % less CPU (12 pairs; docs/benchmarks.md)
SHAPE_AFTER = 16
SHAPE_MODELS = 4  # such models at most
SHAPE_MEMORY = 128 << 20  # bytes of weights they may hold together (yolov5n and s: 4; m: 1; l and x: none)
SHAPE_SHARE = 4  # ... and only a shape that had at least 1/SHAPE_SHARE of the inferences so far
SHAPE_CACHE = 256 << 20  # bytes the shape models' compile cache keeps (the newest entries)
SHAPE_AHEAD = 64  # ... and, where the run said how many inferences come (BaseRunner.expect), this many of them
# are still ahead at that shape (a compile costs what 20-80 inferences save)


# OpenVINO sets the C locale while it reads an IR or serializes a model (a compile's cache key) and then puts back
# what it found; two threads at once leave the process in the C locale (measured: two shapes compiled together ended
# 2 of 3 runs with Python's default text encoding ASCII). Every read and compile of this module takes this lock.
COMPILING = threading.Lock()


def cpu_count() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def compile_cache_dir(options: dict[str, Any]) -> Path | None:
    """The folder for OpenVINO's compiled-model cache (see the module docstring), created if needed; None when
    caching is off or the folder cannot be written."""
    return cache_dir(options, ENV_CACHE, "openvino")


def cpu_capabilities(core: Any) -> list[str]:
    """What OpenVINO's CPU plugin finds this CPU computes in (``OPTIMIZATION_CAPABILITIES``: FP32, BF16 with
    AVX512-BF16 or AMX, INT8, ...)."""
    return [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def require_bf16(core: Any) -> None:
    """Refuse ``--precision bf16``, in one line, on a CPU that has no bf16 arithmetic (emulating it would be slower
    than FP32 and still move boxes)."""
    if "BF16" not in cpu_capabilities(core):
        try:
            name = str(core.get_property("CPU", "FULL_DEVICE_NAME"))
        except Exception:
            name = "this CPU"
        raise BackendUnavailableError(f"--precision bf16: {name} has no bf16 arithmetic (AVX512-BF16 or AMX), so "
                                      f"OpenVINO cannot compute in it here; run without --precision (FP32)")


class OpenVinoRunner(BaseRunner):
    """A compiled model with one infer request per thread (``CompiledModel`` is thread-safe, requests are not)."""

    def __init__(self, path: Path, options: LoadOptions) -> None:
        ov = runtime()
        with COMPILING:
            model, xml = read_model(path)
        meta = meta_of(model, xml)
        raw = bool(options.options.get(RAW_OUTPUT)) and meta.nms is not None
        if raw:
            model.add_outputs(RAW_NAME)  # the NMS part is then left unused
        self._outs = [RAW_NAME] if raw else list(E2E_OUTPUTS) if meta.nms is not None else None
        if meta.nms is not None and not raw and not set(E2E_OUTPUTS) <= {n for o in model.outputs for n in o.names}:
            raise ModelFileError(f"{xml}: its metadata says NMS is inside, but it lacks the outputs "
                                 f"{', '.join(E2E_OUTPUTS)}; {REEXPORT_HINT} --nms")
        core = ov.Core()
        device = {"cpu": "CPU", "gpu": "GPU", "npu": "NPU", "auto": "AUTO"}.get(options.device.lower(), options.device)
        if device.startswith("cuda"):
            raise BackendUnavailableError(f"device {options.device!r}: OpenVINO runs on Intel/AMD CPUs and Intel "
                                          f"GPUs/NPUs, not CUDA; use --device cpu or the onnx/trt backend")
        # the CPU plugin ships in every OpenVINO wheel; listing the devices loads and probes every plugin (GPU, NPU:
        # 10-15 ms of each process's start-up, measured on a machine with neither), so only another device asks
        if device != "CPU":
            seen = list(core.available_devices)
            if device not in {*seen, *(d.split(".")[0] for d in seen), "AUTO"}:
                raise BackendUnavailableError(f"device {options.device!r}: OpenVINO sees {', '.join(seen)}")
        extra = options.options
        hint = str(extra.get("hint", extra.get("performance_hint", "LATENCY"))).upper()
        if hint not in ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT"):
            raise InputError(f"OpenVINO performance hint {hint!r}: choose LATENCY or THROUGHPUT")
        config: dict[str, Any] = {"PERFORMANCE_HINT": hint}
        if options.threads:
            # one stream per inference the cores can run at once: requests of one stream run one after another
            # (measured: two threads on a one-stream model ran at one thread's rate, 48 img/s; two streams, 94)
            streams = max(1, cpu_count() // int(options.threads))
            config["INFERENCE_NUM_THREADS"] = streams * int(options.threads)
            config["NUM_STREAMS"] = streams
        if device == "CPU":
            # OpenVINO pins its threads to cores by default; two worker processes with one thread each were both
            # pinned to the same core (measured: 26 instead of 51 img/s each). Pin only a model that has the cores.
            pin = extra.get("cpu_pinning")
            if pin is None:
                pin = not options.threads or int(options.threads) >= cpu_count()
            config["ENABLE_CPU_PINNING"] = bool(pin)
        if options.precision == "bf16":  # asked for: on a CPU that computes it, never by default
            if device == "CPU":
                require_bf16(core)
            precision: str | None = "bf16"
        elif options.precision == "fp32":
            precision = "f32"
        else:
            precision = extra.get("inference_precision") or ("f32" if meta.precision == "fp32" else None)
            if precision not in (None, "f32", "bf16", "f16"):  # OpenVINO's own refusal is many lines of its source
                raise InputError(f"options['inference_precision'] takes f32, bf16 or f16, got {precision!r}")
        shapes_given = extra.get("shape_models")
        if shapes_given is not None and (isinstance(shapes_given, bool) or not isinstance(shapes_given, int)
                                         or shapes_given < 0):
            raise InputError(f"options['shape_models'] takes a whole number, at least 0, got {shapes_given!r}")
        if precision and device == "CPU":
            config["INFERENCE_PRECISION_HINT"] = str(precision)
        cache = compile_cache_dir(extra)
        if cache is not None:
            core.set_property({"CACHE_DIR": str(cache)})
        self._core, self._model, self._device, self._config, self._xml = core, model, device, config, xml
        self._cached = cache is not None
        self._dynamic: Any = None  # the model for any input shape, compiled at load or when first needed
        self._loading = threading.Lock()
        weight_bytes = xml.with_suffix(".bin").stat().st_size
        early: dict[tuple[int, ...], Any] = {}
        if options.expected is not None and device == "CPU" and precision == "f32":
            # the shapes the caller says most inferences take get their own models now, and the dynamic model waits
            # until an input of another shape comes (measured: docs/benchmarks.md)
            try:
                most_early = int(extra.get("shape_models", shape_models(device, "f32", weight_bytes)))
                wanted = early_shapes(options.expected(meta), most_early)
            except Exception:  # a hint never stops a load
                wanted = []
            for shape in wanted:
                compiled = compile_shape(model, shape, device, config, cache)
                if compiled is not None:
                    early[shape] = compiled
        any_model = next(iter(early.values())) if early else self.compiled  # the dynamic one compiled now
        first_tensor_access()
        try:
            hint_type = any_model.get_property("INFERENCE_PRECISION_HINT")
            executes = str(hint_type.get_type_name() if hasattr(hint_type, "get_type_name") else hint_type)
        except Exception:  # not every device reports it
            executes = "unknown"
        self.meta = ModelMeta(**{**meta.__dict__, "nms": None if raw else meta.nms,
                                 "extra": {**meta.extra, "inference_precision": executes, "device": device,
                                           "hint": hint}})
        self._local = threading.local()
        self._requests: list[Any] = []
        self._lock = threading.Lock()
        most = shape_models(device, executes, weight_bytes)
        self.shapes = ShapeModels(model, device, config, int(extra.get("shape_models", most)), cache)
        for shape, compiled in early.items():
            self.shapes.add(shape, compiled)

    @property
    def compiled(self) -> Any:
        """The model compiled for any input shape (compiled on first use where the load compiled only the shapes
        the caller announced; :class:`~toolkit.errors.ModelFileError` where OpenVINO cannot)."""
        with self._loading:
            if self._dynamic is None:
                if self._model is None:
                    raise RuntimeError("the OpenVINO runner is closed")
                self._dynamic = compile_dynamic(self._core, self._model, self._device, self._config, self._xml,
                                                self._cached)
            return self._dynamic

    def _request(self) -> Any:
        req = getattr(self._local, "request", None)
        if req is None:
            req = self.compiled.create_infer_request()
            self._local.request = req
            with self._lock:
                self._requests.append(req)
        return req

    def _request_at(self, shape: tuple[int, ...]) -> Any:
        """This thread's infer request for an input of ``shape``: on the model compiled for that shape when there
        is one, else on the dynamic model."""
        compiled = self.shapes.model_for(shape)
        if compiled is None:
            return self._request()
        own: dict[tuple[int, ...], Any] | None = getattr(self._local, "at_shape", None)
        if own is None:
            own = self._local.at_shape = {}
        req = own.get(shape)
        if req is None:
            req = own[shape] = compiled.create_infer_request()
        return req

    def _run(self, batch: np.ndarray) -> np.ndarray:
        x = batch.astype(np.float32)
        x /= 255
        req = self._request_at(x.shape)
        # the request reads ``x`` in place and its result is read below: without sharing, infer() copies the input
        # in and every output out to a dict dropped unread (3 and 5 MB at 384x640; about 0.5 core-ms an inference)
        req.infer({0: x}, share_inputs=True, share_outputs=True)
        return outputs_of(req, self._outs)

    def expect(self, inferences: int | None) -> None:
        self.shapes.expect(inferences)

    def close(self) -> None:
        with self._lock:
            self._requests.clear()
        self._local = threading.local()
        with self._loading:
            self._dynamic = self._model = None
        self.shapes.close()


def compile_dynamic(core: Any, model: Any, device: str, config: dict[str, Any], xml: Path, cached: bool) -> Any:
    """``model`` compiled for any input shape, through the compile cache ``core`` was given where ``cached``
    (retried without it: a cache problem such as a full disk must not stop a run); where OpenVINO cannot, a
    :class:`~toolkit.errors.ModelFileError` of one line."""
    try:
        with COMPILING:
            try:
                return core.compile_model(model, device, config)
            except Exception:
                if not cached:
                    raise
                core.set_property({"CACHE_DIR": ""})
                return core.compile_model(model, device, config)
    except Exception as e:
        raise ModelFileError(f"{xml}: OpenVINO cannot compile this model for {device} ({e})") from None


def first_tensor_access() -> None:
    """Read one tensor's data on this thread before any inference thread does. OpenVINO's Python binding sets up
    its tensor-to-array conversion on the first ``Tensor.data`` access of a process; two threads making that first
    access at once deadlocked both (OpenVINO 2026.4: 7 of 60 fresh processes whose two or four threads each made
    their first inference at once hung for good; 0 of 90 after this call). Every element type a runner reads."""
    ov = runtime()
    for dtype in (np.float32, np.int64, np.int32):
        _ = ov.Tensor(np.zeros((1,), dtype)).data


def outputs_of(request: Any, names: list[str] | None) -> np.ndarray:
    """A finished infer request's result in the runner format: its first output, the output ``names[0]`` (the raw
    output of a model with NMS inside), or the four end-to-end outputs packed (:func:`pack_detections`)."""
    if names is None:
        return np.array(request.get_output_tensor(0).data, dtype=np.float32)
    if len(names) == 1:
        return np.array(request.get_tensor(names[0]).data, dtype=np.float32)
    return pack_detections(*(np.array(request.get_tensor(n).data) for n in names))


def shape_models(device: str, executes: str, weight_bytes: int) -> int:
    """How many models compiled for one input shape a runner may hold: on the CPU computing in f32 (bit-identical
    to the dynamic model), within :data:`SHAPE_MEMORY` bytes of weights; none otherwise."""
    if device != "CPU" or executes != "f32":
        return 0
    return min(SHAPE_MODELS, SHAPE_MEMORY // max(1, weight_bytes))


class ShapeModels:
    """Models compiled for one input shape each (see the module docstring): :meth:`model_for` counts the
    inferences at each shape and compiles one for a shape on the calling thread once it was met
    :data:`SHAPE_AFTER` times and had at least 1/:data:`SHAPE_SHARE` of the inferences so far (a folder of
    photos of a few sizes, not every rectangle of a dataset: each compile costs 0.1-0.2 core-seconds for yolov5n,
    0.05 from the cache, against 2-3 ms saved per inference), up to ``most`` of them; None means the dynamic
    model. The other threads keep to the dynamic model while one compiles. Their compile cache is a folder of its
    own, ``<cache>/shapes``, kept to its newest :data:`SHAPE_CACHE` bytes (each letterbox rectangle and batch is
    an entry)."""

    def __init__(self, model: Any, device: str, config: dict[str, Any], most: int, cache: Path | None = None
                 ) -> None:
        self.model = model if most > 0 else None
        self.device, self.config, self.most = device, dict(config), max(0, most)
        self.cache = cache
        self._lock = threading.Lock()
        self._ready: dict[tuple[int, ...], Any] = {}
        self._seen: dict[tuple[int, ...], int] = {}
        self._total = 0
        self._busy: set[tuple[int, ...]] = set()
        self._until: int | None = None  # the inference count (_total) the caller's announced work ends at

    def expect(self, inferences: int | None) -> None:
        """The caller's hint (:meth:`~backends.base.BaseRunner.expect`): ``inferences`` come next (None: not known)."""
        with self._lock:
            self._until = None if inferences is None else self._total + max(0, inferences)

    def _pays(self, seen: int) -> bool:
        """Whether a compile for a shape met ``seen`` times of ``self._total`` has :data:`SHAPE_AHEAD` inferences
        of the announced work ahead (this one included) at that shape's share (always, when none was announced)."""
        if self._until is None:
            return True
        return (self._until - self._total + 1) * seen >= SHAPE_AHEAD * self._total  # this inference counted

    def model_for(self, shape: tuple[int, ...]) -> Any:
        if self.model is None:
            return None
        with self._lock:
            self._total += 1
            got = self._ready.get(shape)
            if got is not None:
                return got
            seen = self._seen[shape] = self._seen.get(shape, 0) + 1
            if seen < SHAPE_AFTER or seen * SHAPE_SHARE < self._total or shape in self._busy \
                    or len(self._ready) + len(self._busy) >= self.most or not self._pays(seen):
                return None
            self._busy.add(shape)
        compiled = self._compile(shape)
        with self._lock:
            self._busy.discard(shape)
            if compiled is None:
                self.most = 0  # a shape OpenVINO cannot specialise: the dynamic model serves every shape
            elif self.model is not None:
                self._ready[shape] = compiled
        return compiled

    def _compile(self, shape: tuple[int, ...]) -> Any:
        source = self.model
        if source is None:  # closed meanwhile
            return None
        return compile_shape(source, shape, self.device, self.config, self.cache)

    def add(self, shape: tuple[int, ...], compiled: Any) -> None:
        """A model for ``shape`` compiled already (at load, for a shape the caller said most inferences take);
        it counts towards the ``most`` this holds."""
        with self._lock:
            if self.model is not None and len(self._ready) + len(self._busy) < self.most:
                self._ready[shape] = compiled

    def count(self) -> int:
        """Shapes with a model of their own."""
        with self._lock:
            return len(self._ready)

    def close(self) -> None:
        with self._lock:
            self._ready.clear()
            self.model = None


def compile_shape(source: Any, shape: tuple[int, ...], device: str, config: dict[str, Any], cache: Path | None
                  ) -> Any:
    """A copy of ``source`` (the IR) compiled for ``shape`` alone, through the shapes' compile cache (kept to
    :data:`SHAPE_CACHE` bytes); None where OpenVINO cannot (the dynamic model serves that shape)."""
    ov = runtime()
    try:
        with COMPILING:  # one at a time (two shapes may reach their turn together)
            model = source.clone()
            model.reshape(list(shape))
            core = ov.Core()
            folder = shape_cache(cache)
            if folder is not None:
                try:
                    core.set_property({"CACHE_DIR": str(folder)})
                    compiled = core.compile_model(model, device, config)
                    prune(folder, SHAPE_CACHE)
                    return compiled
                except Exception:  # a cache problem (full disk, ...): compiled without it
                    core.set_property({"CACHE_DIR": ""})
            return core.compile_model(model, device, config)
    except Exception:
        return None


def early_shapes(counts: dict[tuple[int, ...], int], most: int) -> list[tuple[int, ...]]:
    """The shapes worth a model of their own before the first inference, from the caller's expected inferences at
    each: at least :data:`SHAPE_AHEAD` of them and 1/:data:`SHAPE_SHARE` of all (the rule a shape meets during a
    run, here known in advance), the commonest first, at most ``most``."""
    total = sum(counts.values())
    fit = [shape for shape, n in counts.items() if n >= SHAPE_AHEAD and n * SHAPE_SHARE >= total]
    return sorted(fit, key=lambda shape: -counts[shape])[:most]


def shape_cache(cache: Path | None) -> Path | None:
    """``<cache>/shapes``, created if needed (:func:`backends.base.cache_dir`); None without a cache or when it
    cannot be written."""
    return None if cache is None else cache_dir({"cache_dir": str(cache / "shapes")}, ENV_CACHE, "openvino")


def prune(folder: Path, keep: int) -> None:
    """Delete the oldest files of ``folder`` until the rest take at most ``keep`` bytes (other processes may prune
    it at the same time)."""
    files = []
    for entry in os.scandir(folder):
        try:
            if entry.is_file(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                files.append((st.st_mtime, st.st_size, entry.path))
        except OSError:
            continue
    total = sum(size for _, size, _ in files)
    for _, size, path in sorted(files):
        if total <= keep:
            break
        with contextlib.suppress(OSError):
            os.unlink(path)
        total -= size
