#!/usr/bin/env bash
# The README's test command: make a virtual environment, install yolokit with the CPU runtimes and the
# test tools, then run ruff, mypy and pytest. Shared data is found via $YOLOKIT_SHARED or ../shared.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${YOLOKIT_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
# torch first, pinned: the local CPU wheel (an unpinned torch pulls gigabytes of CUDA packages)
"$PY" -m pip install -q "torch==2.13.0"
"$PY" -m pip install -q -e ".[torch,export,onnx,openvino,int8,charts,ray,serve,cloud,pandas,supervision,dev]"
# ffmpeg serves the live streams the stream tests read (HTTP and RTMP on 127.0.0.1); without it they skip
if ! command -v ffmpeg >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg; } >/dev/null 2>&1 \
      || echo "test.sh: ffmpeg could not be installed; the live-stream tests will skip" >&2
  else
    echo "test.sh: ffmpeg is missing and apt-get is not usable here; the live-stream tests will skip" >&2
  fi
fi
"$PY" -m ruff check toolkit backends tests scripts
"$PY" -m mypy
"$PY" -m mypy scripts  # the benchmark and check scripts (not a package: checked as files)
"$VENV/bin/lint-imports"
"$PY" -m pytest -q "$@"
