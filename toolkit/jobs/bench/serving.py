"""What the serving benchmarks share (``scripts/serve_bench.py``, ``scripts/gpu_check.py``): the servers to compare
``yolokit serve`` with, each started as its own process; a load generator (a closed loop at a concurrency, an open
loop at a fixed rate); and the CPU time and memory of a server's process tree.

* **The per-request server** (:func:`per_request_app`): what YOLOv5's Flask example does (one model call per
  request, nothing batched), done properly: Starlette on uvicorn (not Flask's development server), the model loaded
  once (a :class:`~toolkit.Detector` at its defaults), the image decoded in the request's own thread (OpenCV, as
  ``yolokit run`` decodes), the model called under a lock (a model object shared across request threads is the
  classic bug), JSON detections back. ``python -m toolkit.jobs.bench.serving per-request WEIGHTS --port N``.
* **LitServe** with its batching on the same Detector (:mod:`toolkit.jobs.bench.litserve_api`):
  ``python -m toolkit.jobs.bench.serving litserve WEIGHTS --port N --max-batch 8 --batch-timeout 0.005``.

The load generator (:func:`closed_loop`, :func:`open_loop`: threads in the caller's process, each with its own
keep-alive connection through the standard library's ``http.client``, so that nothing needs installing) sends prepared
request bodies round robin and records each request's start, latency and status; an open loop's latency counts from
the moment the request was due, so a client that falls behind does not hide the server's queue. :func:`summary`
turns the records into throughput, latency percentiles and error and 503 shares. :class:`ProcessWatch` samples a
process tree's CPU seconds and resident memory (``/proc``; Linux).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import resource
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.errors import YolokitError

PER_REQUEST = "per-request"
LITSERVE = "litserve"


# ----------------------------------------------------------------------------------------------- the baselines
def per_request_app(weights: str, **detector: Any) -> Any:
    """The per-request server (see the module's docstring): ``POST /detect`` with the image as the body."""
    import cv2
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from toolkit import Detector

    det = Detector(weights, **detector)
    det.predict(np.zeros((64, 64, 3), np.uint8))  # warm: the first call builds what the runtime caches
    lock = threading.Lock()

    def infer(data: bytes) -> Any:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            return None
        with lock:
            return det.predict(image)[0]

    async def detect(request: Request) -> JSONResponse:
        from starlette.concurrency import run_in_threadpool

        found = await run_in_threadpool(infer, await request.body())  # decode and model off the event loop
        if found is None:
            return JSONResponse({"error": "not an image"}, 400)
        return JSONResponse(found.to_detect_json())

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ready": True})

    return Starlette(routes=[Route("/detect", detect, methods=["POST"]), Route("/health", health)])


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server the benchmark is about to start)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_command(kind: str, weights: str, port: int, *args: str) -> list[str]:
    """The command that starts baseline server ``kind`` (:data:`PER_REQUEST` or :data:`LITSERVE`) on
    127.0.0.1:``port``."""
    return [sys.executable, "-m", "toolkit.jobs.bench.serving", kind, weights, "--port", str(port), *args]


def _main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="a baseline server for the serving benchmarks")
    ap.add_argument("kind", choices=(PER_REQUEST, LITSERVE))
    ap.add_argument("weights")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--device", default=None)
    ap.add_argument("--imgsz", type=int, default=None)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--batch-timeout", type=float, default=0.005)
    args = ap.parse_args(argv)
    detector = {k: v for k, v in (("device", args.device), ("imgsz", args.imgsz)) if v is not None}
    if args.kind == PER_REQUEST:
        import uvicorn

        uvicorn.run(per_request_app(args.weights, **detector), host="127.0.0.1", port=args.port,
                    log_level="warning", access_log=False)
        return 0
    from toolkit.jobs.bench.litserve_api import run_litserve

    run_litserve(args.weights, args.port, args.max_batch, args.batch_timeout, **detector)
    return 0


# ----------------------------------------------------------------------------------------------- processes
@dataclass
class Started:
    """A server process started for a benchmark (``url``: its base URL), and the seconds it took to be ready."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    ready_s: float = 0.0

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (then SIGKILL past ``timeout``) the server and whatever it started; its exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(30)


def start_server(cmd: list[str], url: str, health: str, log: Path, timeout: float = 300,
                 env: dict[str, str] | None = None) -> Started:
    """Start ``cmd`` in a process group of its own (output to ``log``) and wait until ``url + health`` answers
    200."""
    log.parent.mkdir(parents=True, exist_ok=True)
    out = log.open("wb")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **(env or {})})
    out.close()
    started = Started(proc, url, log)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise YolokitError(f"{' '.join(cmd)} exited with {proc.returncode}: "
                               f"{log.read_text(errors='replace')[-1500:]}")
        if get(url + health)[0] == 200:
            started.ready_s = time.perf_counter() - t0
            return started
        time.sleep(0.2)
    started.stop()
    raise YolokitError(f"{' '.join(cmd)} was not ready within {timeout:g} s: "
                       f"{log.read_text(errors='replace')[-1500:]}")


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it now (from ``/proc``; Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def tree_usage(pid: int, tree: Sequence[int] | None = None) -> tuple[float, int]:
    """CPU seconds (user + system) and resident bytes of ``pid``'s process tree, now (``tree``: its processes,
    when known: walking all of ``/proc`` takes the client's time)."""
    tick, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    cpu, rss = 0.0, 0
    for p in tree if tree is not None else process_tree(pid):
        try:
            fields = (Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1]).split()
            statm = Path(f"/proc/{p}/statm").read_text().split()
        except (OSError, IndexError):
            continue
        cpu += (int(fields[11]) + int(fields[12])) / tick
        rss += int(statm[1]) * page
    return cpu, rss


def own_cpu() -> float:
    """CPU seconds of this process (the client, when the load generator runs here)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass
class ProcessWatch:
    """A server's process tree watched over one phase: its CPU seconds, its resident memory at the start, at the end
    and at its highest (sampled every ``every`` seconds), and this process's own CPU seconds (the client's). The tree
    is read from ``/proc`` at the start and the end, and the samples read only its processes, so that watching takes
    little of the client's time (a walk of ``/proc`` four times a second delayed the load generator's requests)."""

    pid: int
    every: float = 0.25
    cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    rss_start: int = 0
    rss_end: int = 0
    rss_max: int = 0
    seconds: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> ProcessWatch:
        self._cpu0, self.rss_start = tree_usage(self.pid)
        self._client0, self._t0 = own_cpu(), time.perf_counter()
        self.rss_max = self.rss_start
        tree = process_tree(self.pid)

        def sample() -> None:
            while not self._stop.wait(self.every):
                self.rss_max = max(self.rss_max, tree_usage(self.pid, tree)[1])

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        cpu, self.rss_end = tree_usage(self.pid)
        self.rss_max = max(self.rss_max, self.rss_end)
        self.cpu_s = cpu - self._cpu0
        self.client_cpu_s = own_cpu() - self._client0
        self.seconds = time.perf_counter() - self._t0

    def report(self) -> dict[str, float]:
        s = max(self.seconds, 1e-9)
        return {"server_cpu_cores": round(self.cpu_s / s, 2), "client_cpu_cores": round(self.client_cpu_s / s, 2),
                "server_rss_mib_start": round(self.rss_start / 2**20, 1),
                "server_rss_mib_end": round(self.rss_end / 2**20, 1),
                "server_rss_mib_max": round(self.rss_max / 2**20, 1)}


# ----------------------------------------------------------------------------------------------- the load
@dataclass(frozen=True)
class Body:
    """One prepared request: its body and headers."""

    content: bytes
    headers: dict[str, str]


def raw_body(data: bytes) -> Body:
    return Body(data, {"Content-Type": "application/octet-stream"})


def multipart_body(data: bytes, field_name: str = "image", filename: str = "image.jpg") -> Body:
    """A multipart/form-data body with one file field, built once (so the client's work per request is the same as
    for a raw body)."""
    boundary = "yolokitbench" + os.urandom(8).hex()
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field_name}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode()
    return Body(head + data + f"\r\n--{boundary}--\r\n".encode(),
                {"Content-Type": f"multipart/form-data; boundary={boundary}"})


@dataclass(frozen=True)
class Sample:
    """One request: when it was due or sent (seconds from the phase's start), its latency, its status (0: the
    connection failed)."""

    start: float
    latency: float
    status: int


class _Connections(threading.local):
    """One keep-alive HTTP connection per client thread (``http.client``: the standard library's client, so that the
    benchmarks need nothing installed on the client's side)."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host, self.port, self.path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
        self.conn: http.client.HTTPConnection | None = None
        self.retry_after = 0.0  # the last answer's Retry-After, in seconds (0: none)

    def post(self, body: Body) -> int:
        """The status of one POST of ``body`` (0: the connection failed); a kept-alive connection the server has
        closed meanwhile is opened again once, as any HTTP client does."""
        for attempt in range(2):
            fresh, conn = self.conn is None, self.conn
            if conn is None:
                conn = self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
            try:
                conn.request("POST", self.path, body=body.content, headers=body.headers)
                r = conn.getresponse()
                r.read()
                try:
                    self.retry_after = float(r.getheader("Retry-After") or 0)
                except ValueError:
                    self.retry_after = 0.0
                if r.will_close:
                    conn.close()
                    self.conn = None
                return r.status
            except (OSError, http.client.HTTPException):
                conn.close()
                self.conn = None
                if fresh or attempt:
                    return 0
        return 0


def get(url: str, timeout: float = 30) -> tuple[int, str]:
    """Status and text of ``GET url`` (0 and the reason when it cannot be had)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status), r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return int(e.code), ""
    except (OSError, http.client.HTTPException) as e:
        return 0, str(e)


def closed_loop(url: str, bodies: Sequence[Body], concurrency: int, seconds: float) -> list[Sample]:
    """``concurrency`` clients (threads, each with its own connection), each sending its next request as soon as
    its last is answered, for ``seconds``; a client refused with a ``Retry-After`` waits that long first, as a
    well-behaved client does (without it, a refused client would ask again at once, all the time)."""
    out: list[Sample] = []
    counter = iter(range(1 << 62))
    lock = threading.Lock()
    t0 = time.perf_counter()
    end = t0 + seconds

    def client() -> None:
        conns = _Connections(url)
        while time.perf_counter() < end:
            with lock:
                i = next(counter)
            sent = time.perf_counter()
            status = conns.post(bodies[i % len(bodies)])
            with lock:
                out.append(Sample(sent - t0, time.perf_counter() - sent, status))
            if status == 503 and conns.retry_after:
                time.sleep(max(0.0, min(conns.retry_after, end - time.perf_counter())))
        if conns.conn is not None:
            conns.conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def open_loop(url: str, bodies: Sequence[Body], rate: float, seconds: float, connections: int = 512) -> list[Sample]:
    """Requests sent at a fixed ``rate`` for ``seconds``, whether or not earlier ones were answered (up to
    ``connections`` at once); a request's latency counts from when it was due, so a client that falls behind does
    not hide the server's queue."""
    local = _Connections(url)
    t0 = time.perf_counter()

    def one(i: int, due: float) -> Sample:
        status = local.post(bodies[i % len(bodies)])
        return Sample(due - t0, time.perf_counter() - due, status)

    with ThreadPoolExecutor(max_workers=connections) as pool:
        futures = []
        for i in range(max(1, int(rate * seconds))):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(one, i, due))
        return [f.result() for f in futures]


def summary(samples: Sequence[Sample], seconds: float) -> dict[str, Any]:
    """Throughput (answers 200 per second, from the phase's start to its last answer, at least ``seconds``: an open
    loop past capacity is still answering after its last request went out), latency percentiles of the answers 200
    (ms), the shares of 503 answers, of other errors and of failed connections, and how fast the 503 came (p99,
    ms)."""
    elapsed = max([seconds, *(s.start + s.latency for s in samples)])
    ok = np.array([s.latency for s in samples if s.status == 200]) * 1000
    busy = np.array([s.latency for s in samples if s.status == 503]) * 1000
    n = max(len(samples), 1)

    def pct(a: np.ndarray, q: float) -> float | None:
        return round(float(np.percentile(a, q)), 1) if a.size else None

    return {"requests": len(samples), "throughput": round(len(ok) / elapsed, 2), "elapsed_s": round(elapsed, 2),
            "p50_ms": pct(ok, 50),
            "p90_ms": pct(ok, 90), "p99_ms": pct(ok, 99), "share_503": round(len(busy) / n, 4),
            "p99_503_ms": pct(busy, 99),
            "share_errors": round(sum(1 for s in samples if s.status not in (200, 503, 0)) / n, 4),
            "connection_errors": sum(1 for s in samples if s.status == 0)}


if __name__ == "__main__":
    sys.exit(_main())
