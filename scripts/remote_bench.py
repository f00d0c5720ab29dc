"""Remote inputs under load, against the hostile server of ``tests/helpers/hostile_http.py`` on 127.0.0.1.

1. **Memory.** Peak RSS of one download at a size limit (``--limit``, default 512M), each in a fresh process: an
   endless body (no Content-Length) cut at the limit, and a body just under the limit with its Content-Length. The
   same cases through the download code of ``--before`` (a git revision, default ``main``), loaded beside this one.
2. **Many slow URLs.** ``--urls`` (200) image URLs that each answer after ``--delay`` (1 s): the download pool at
   1 worker (one at a time, as before this change; measured on the first 20 and scaled), at the default 8 and at
   32 workers; the server's peak of concurrent requests. Then a whole ``yolokit run`` of the list.
3. **A trickle first.** ``yolokit run`` over a list (a URL trickling one byte every 0.1 s, 5 good URLs, 20 local
   images) with ``--download-timeout 10``, and over the same list without the trickle.

Writes ``OUT/results.json`` and ``OUT/report.md``. Run from the repository root:

    python scripts/remote_bench.py --out runs/remote_bench
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from tests.helpers.hostile_http import HostileServer  # noqa: E402
from toolkit.io.downloads import DownloadSettings, expand_inputs  # noqa: E402
from toolkit.io.sources import InputRef  # noqa: E402

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
kind, url, limit = sys.argv[2], sys.argv[3], int(sys.argv[4])
if kind == "before":
    sys.path.insert(0, sys.argv[5])
    from old_remote import fetch_image_bytes
else:
    from toolkit.io.remote import fetch_image_bytes
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
base = hwm()
t0 = time.perf_counter()
try:
    data = fetch_image_bytes(url, limit, 30.0)
    outcome = f"{data.nbytes} bytes"
except Exception as e:
    outcome = str(e).split(": ", 1)[-1]
print(json.dumps({"peak": hwm(), "base": base, "seconds": time.perf_counter() - t0, "outcome": outcome}))
"""


def _amount(text: str) -> int:
    t = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    return int(float(t[:-1] if scale > 1 else t) * scale)


def _jpeg(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return cv2.imencode(".jpg", cv2.GaussianBlur(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8), (5, 5), 0))[1] \
        .tobytes()


def memory(server: HostileServer, limit: int, before: str | None, work: Path) -> list[dict[str, Any]]:
    old_dir = None
    if before:
        old_dir = work / "before"
        old_dir.mkdir()
        src = subprocess.run(["git", "-C", str(REPO), "show", f"{before}:toolkit/io/remote.py"], check=True,
                             capture_output=True, text=True).stdout
        (old_dir / "old_remote.py").write_text(src)
    rows = []
    cases = [("endless body, cut at the limit", server.url("/endless/e.jpg")),
             ("body just under the limit, with its length", server.url(f"/sized/{limit - (1 << 20)}/s.jpg"))]
    for code in (["before"] if old_dir else []) + ["after"]:
        for what, url in cases:
            args = [sys.executable, "-c", CHILD, str(REPO), code, url, str(limit)] + ([str(old_dir)] if old_dir
                                                                                       else [])
            out = subprocess.run(args, check=True, capture_output=True, text=True, env={**os.environ,
                                                                                           "PYTHONPATH": str(REPO)})
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"code": f"{code} ({before})" if code == "before" else "after", "case": what, **r})
            print(f"memory: {rows[-1]}", flush=True)
    return rows


def pool(server: HostileServer, urls: int, delay: float) -> list[dict[str, Any]]:
    rows = []
    for workers, n in ((1, min(20, urls)), (8, urls), (32, urls)):
        server.most.clear()
        refs = [InputRef(server.url(f"/slow/w{workers}_{i}.jpg"), f"u{i}") for i in range(n)]
        t0 = time.perf_counter()
        items = list(expand_inputs(refs, settings=DownloadSettings(workers=workers)))
        took = time.perf_counter() - t0
        ok = sum(1 for _, _, p in items if not isinstance(p, str))
        for _, _, p in items:
            close = getattr(p, "close", None)
            if close:
                close()
        rows.append({"workers": workers, "urls": n, "ok": ok, "seconds": took, "per_url": took / n,
                     f"seconds_for_{urls}": took / n * urls, "peak_concurrent": server.peak("slow")})
        print(f"pool: {rows[-1]}", flush=True)
    return rows


def _run(listing: Path, out: Path, name: str, extra: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "toolkit.cli", "run", str(listing), "--weights", "yolov5n.yaml", "--imgsz", "64",
           "--nosave", "--save-txt", "--project", str(out), "--name", name, "--json", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    took = time.perf_counter() - t0
    summary = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {}
    return {"run": name, "exit": proc.returncode, "seconds": took, "processed": summary.get("processed"),
            "failed": [f["reason"] for f in summary.get("failed", [])][:3], "command": " ".join(cmd[1:])}


def runs(server: HostileServer, urls: int, work: Path) -> list[dict[str, Any]]:
    local = work / "local"
    local.mkdir()
    for i in range(20):
        (local / f"img{i:02d}.jpg").write_bytes(_jpeg(i + 1))
    good = [server.url(f"/image/good{i}.jpg") for i in range(5)] + [str(p) for p in sorted(local.iterdir())]
    rows = []
    for name, entries in (("without the trickle", good), ("trickle first", [server.url("/trickle/t.jpg"), *good])):
        listing = work / f"{name.replace(' ', '_')}.txt"
        listing.write_text("\n".join(entries) + "\n")
        rows.append(_run(listing, work / "runs", name.replace(" ", "_"), ["--download-timeout", "10"]))
        print(f"run: {rows[-1]}", flush=True)
    listing = work / "slow_urls.txt"
    listing.write_text("\n".join(server.url(f"/slow/r{i}.jpg") for i in range(urls)) + "\n")
    server.most.clear()
    rows.append({**_run(listing, work / "runs", "slow_urls", []), "peak_concurrent": server.peak("slow")})
    print(f"run: {rows[-1]}", flush=True)
    return rows


def report(res: dict[str, Any]) -> str:
    mb = 1 << 20
    lines = [f"# Remote inputs benchmark\n\nCommand: `{res['command']}`\n", "## Peak memory of one download\n",
             f"Limit {res['limit'] / mb:.0f} MB; RSS of a fresh process before the download: about "
             f"{min(r['base'] for r in res['memory']) / mb:.0f} MB.\n",
             "| code | case | peak RSS | outcome |", "| --- | --- | ---: | --- |"]
    for r in res["memory"]:
        lines.append(f"| {r['code']} | {r['case']} | {r['peak'] / mb:.0f} MB | {r['outcome']} |")
    lines += ["", f"## {res['urls']} URLs answering after {res['delay']:g} s each\n",
              "| download workers | URLs timed | downloaded | time | per URL | for all URLs | server's peak "
              "concurrency |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    every = f"seconds_for_{res['urls']}"
    for r in res["pool"]:
        lines.append(f"| {r['workers']} | {r['urls']} | {r['ok']} | {r['seconds']:.1f} s | {r['per_url']:.3f} s | "
                     f"{r[every]:.1f} s | {r['peak_concurrent']} |")
    lines += ["", "## Whole runs\n", "| run | exit | processed | time | failed |", "| --- | ---: | ---: | ---: | --- |"]
    for r in res["runs"]:
        lines.append(f"| {r['run']} | {r['exit']} | {r['processed']} | {r['seconds']:.1f} s | "
                     f"{'; '.join(r['failed'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/remote_bench")
    ap.add_argument("--limit", default="512M", help="size limit for the memory cases (the run default is 1G)")
    ap.add_argument("--before", default="main", help="git revision to compare the memory cases with ('' : none)")
    ap.add_argument("--urls", type=int, default=200)
    ap.add_argument("--delay", type=float, default=1.0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"command": "python " + " ".join(sys.argv), "limit": _amount(args.limit),
                              "urls": args.urls, "delay": args.delay}
    with tempfile.TemporaryDirectory(prefix="yolokit-remote-bench-") as tmp, \
            HostileServer(_jpeg(), interval=0.1, slow_delay=args.delay, max_seconds=600) as server:
        work = Path(tmp)
        res["memory"] = memory(server, _amount(args.limit), args.before or None, work)
        res["pool"] = pool(server, args.urls, args.delay)
        res["runs"] = runs(server, args.urls, work)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    (out / "report.md").write_text(report(res))
    print(report(res))


if __name__ == "__main__":
    main()
