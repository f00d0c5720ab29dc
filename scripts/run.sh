#!/usr/bin/env bash
# The README's first command: make the virtual environment if needed, install yolokit with the CPU runtimes, then
# run `yolokit run` with the arguments given (none: yolov5n over the sample photos shipped with yolokit).
# Installation is skipped when pyproject.toml has not changed since the last one.
# The arguments are read where the command was started (photos/ is the caller's folder), not in the checkout.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
VENV=${YOLOKIT_VENV:-$REPO/.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
STAMP="$VENV/.yolokit-run-installed"
WANT="$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  "$PY" -m pip install -q --upgrade pip
  # torch first, pinned: the local CPU wheel (an unpinned torch pulls gigabytes of CUDA packages)
  "$PY" -m pip install -q "torch==2.13.0"
  "$PY" -m pip install -q -e "$REPO[torch,export,onnx,openvino]"
  echo "$WANT" > "$STAMP"
fi
exec "$VENV/bin/yolokit" run "$@"
