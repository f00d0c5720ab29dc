"""Installed size of yolokit with each common set of extras: one fresh virtual environment per set, ``pip install
"yolokit[EXTRAS]"`` from this checkout (dependencies from the package index, as a user gets them), then the size of
its site-packages folder (pip's and setuptools' own files included, as a fresh venv has them) and its largest packages.

The run-only extras (``onnx``, ``openvino``) install what running an exported model needs; exporting needs the
``export`` extra (PyTorch, onnx, onnxslim).

PyTorch: an unpinned ``torch`` from PyPI is the CUDA build on Linux x86-64 (several GB with its nvidia-* packages);
``--torch-spec "torch==2.13.0"`` with ``--torch-index https://download.pytorch.org/whl/cpu`` measures the CPU build
instead (this machine's pip configuration may already point torch at a local CPU wheel: the report lists what was
installed).

    python scripts/install_sizes.py --out bench_out/install_sizes
    python scripts/install_sizes.py --sets onnx,openvino --out bench_out/install_sizes
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETS = {"base": "", "onnx": "onnx", "openvino": "openvino", "onnx+openvino": "onnx,openvino",
        "torch": "torch", "export": "export", "everything": "torch,export,onnx,openvino,int8,charts"}


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def site_packages(venv: Path) -> Path:
    return next(venv.glob("lib/python*/site-packages"))


def largest(venv: Path, n: int = 6) -> list[tuple[str, int]]:
    site = site_packages(venv)
    sizes = [(p.name, du(p)) for p in site.iterdir()
             if p.is_dir() and not p.name.endswith((".dist-info", "__pycache__"))]
    return sorted(sizes, key=lambda s: -s[1])[:n]


def sources(dest: Path) -> Path:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, dest / name)
    for pkg in ("toolkit", "backends"):
        shutil.copytree(REPO / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default=",".join(SETS), help=f"from {', '.join(SETS)}")
    ap.add_argument("--out", default="bench_out/install_sizes")
    ap.add_argument("--torch-spec", default=None, help='install this first, e.g. "torch==2.13.0"')
    ap.add_argument("--torch-index", default=None, help="extra index for --torch-spec")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    src = sources(out / "src" / "yolokit")
    rows = []
    for name in args.sets.split(","):
        venv = out / f"venv_{name}"
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        py = str(venv / "bin" / "python")
        if args.torch_spec and ("torch" in SETS[name] or "export" in SETS[name]):
            extra = ["--extra-index-url", args.torch_index] if args.torch_index else []
            subprocess.run([py, "-m", "pip", "install", "-q", args.torch_spec, *extra], check=True)
        spec = f"{src}[{SETS[name]}]" if SETS[name] else str(src)
        subprocess.run([py, "-m", "pip", "install", "-q", spec], check=True)
        listed = json.loads(subprocess.run([py, "-m", "pip", "list", "--format", "json"], capture_output=True,
                                           text=True, check=True).stdout)
        versions = {p["name"].lower(): p["version"] for p in listed}
        row = {"set": name, "extras": SETS[name], "bytes": du(site_packages(venv)), "torch": versions.get("torch"),
               "packages": len(listed), "largest": largest(venv)}
        rows.append(row)
        print(f"{name}: {row['bytes'] / 1e6:.0f} MB, {row['packages']} packages, torch {row['torch']}", flush=True)
    (out / "install_sizes.json").write_text(json.dumps(rows, indent=1))
    lines = ["| install | site-packages | packages | torch | largest |", "| --- | ---: | ---: | --- | --- |"]
    for r in rows:
        big = ", ".join(f"{n} {b / 1e6:.0f} MB" for n, b in r["largest"][:4])
        spec = f"yolokit[{r['extras']}]" if r["extras"] else "yolokit"
        lines.append(f"| `{spec}` | {r['bytes'] / 1e6:.0f} MB | {r['packages']} | {r['torch'] or '-'} | {big} |")
    (out / "install_sizes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
