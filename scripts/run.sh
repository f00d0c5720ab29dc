#!/usr/bin/env bash
# The README's first command: make the virtual environment if needed, install yolokit with the CPU runtimes, then
# run `yolokit run` with the arguments given (none: yolov5n over the sample photos shipped with yolokit).
# Installation is skipped when pyproject.toml has not changed since the last one.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${YOLOKIT_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
STAMP="$VENV/.yolokit-run-installed"
WANT="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  "$PY" -m pip install -q --upgrade pip
  # torch first, pinned: the local CPU wheel (an unpinned torch pulls gigabytes of CUDA packages)
  "$PY" -m pip install -q "torch==2.13.0"
  "$PY" -m pip install -q -e ".[torch,export,onnx,openvino]"
  echo "$WANT" > "$STAMP"
fi
exec "$VENV/bin/yolokit" run "$@"
