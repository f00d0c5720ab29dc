"""Peak memory of a command and all its child processes (worker processes included), sampled from /proc.

``/usr/bin/time -v`` reports the largest single process; a run in process mode spreads over several. This sums
the resident set of the whole process tree every ``--interval`` seconds and prints both peaks (Linux only).

    python scripts/peak_memory.py -- yolokit run bench_out/seed/list2000.txt --weights yolov5n.onnx --nosave --save-txt
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss(root: int) -> tuple[int, int, int]:
    """(total RSS kB of ``root`` and its descendants, largest single RSS kB, number of processes)."""
    tree = _children()
    todo, seen = [root], []
    while todo:
        pid = todo.pop()
        seen.append(pid)
        todo.extend(tree.get(pid, []))
    sizes = [_rss_kb(p) for p in seen]
    return sum(sizes), max(sizes, default=0), len(seen)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    peak_total = peak_single = most = 0
    while proc.poll() is None:
        total, single, n = tree_rss(proc.pid)
        peak_total, peak_single, most = max(peak_total, total), max(peak_single, single), max(most, n)
        time.sleep(args.interval)
    print(json.dumps({"command": " ".join(cmd), "returncode": proc.returncode,
                      "wall_s": round(time.perf_counter() - t0, 2), "peak_tree_rss_mb": round(peak_total / 1024),
                      "peak_single_rss_mb": round(peak_single / 1024), "max_processes": most}))


if __name__ == "__main__":
    main()
