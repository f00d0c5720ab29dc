"""Fuzz the checkpoint loader and the image reader with hypothesis for a set time.

Mutated checkpoints (zip and legacy torch files, raw pickles) and mutated images (JPEG, PNG) must give
yolokit's own errors (ModelFileError, UnsafeCheckpointError, ImageReadError) or a result: never another
exception, a crash, or a hang (each example runs under a per-example deadline).

    python scripts/fuzz.py --seconds 300
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toolkit.checkpoint import read_pickled_object  # noqa: E402
from toolkit.errors import ModelFileError  # noqa: E402
from toolkit.sources import ImageReadError, decode_image  # noqa: E402


def seed_checkpoints() -> list[bytes]:
    import torch

    obj = {"epoch": 3, "model": None, "w": torch.arange(12, dtype=torch.float16).reshape(3, 4),
           "opt": {"lr": 0.01, "names": ["a", "b"]}}
    out = []
    for zipped in (True, False):
        buf = io.BytesIO()
        torch.save(obj, buf, _use_new_zipfile_serialization=zipped)
        out.append(buf.getvalue())
    return out


def seed_images() -> list[bytes]:
    img = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8), (3, 3), 0)
    return [cv2.imencode(ext, img)[1].tobytes() for ext in (".jpg", ".png")]


def mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    b = bytearray(data)
    for pos, val in edits:
        b[pos % len(b)] = val
    return bytes(b[: cut % len(b)] if cut is not None else b)


_edits = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=12)
_cut = st.none() | st.integers(0, 1 << 20)


def check_checkpoint(data: bytes, folder: Path) -> None:
    path = folder / "fuzz.pt"
    path.write_bytes(data)
    with contextlib.suppress(ModelFileError):  # UnsafeCheckpointError included
        read_pickled_object(path)


def check_image(data: bytes) -> None:
    try:
        img = decode_image(np.frombuffer(data, np.uint8), "fuzz")
    except ImageReadError:
        return
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3


def run(examples: int, seed: int | None = None) -> None:
    ckpts, images = seed_checkpoints(), seed_images()
    folder = Path(tempfile.mkdtemp(prefix="yolokit-fuzz-"))
    opts = settings(max_examples=examples, deadline=2000, derandomize=seed is None,
                    suppress_health_check=list(HealthCheck), database=None)

    @opts
    @given(st.sampled_from(ckpts), _edits, _cut)
    def fuzz_checkpoint(base: bytes, edits: list[tuple[int, int]], cut: int | None) -> None:
        check_checkpoint(mutate(base, edits, cut), folder)

    @opts
    @given(st.binary(max_size=4096))
    def fuzz_raw_pickle(data: bytes) -> None:
        check_checkpoint(b"\x80\x02" + data, folder)

    @opts
    @given(st.sampled_from(images), _edits, _cut)
    def fuzz_image(base: bytes, edits: list[tuple[int, int]], cut: int | None) -> None:
        check_image(mutate(base, edits, cut))

    fuzz_checkpoint()
    fuzz_raw_pickle()
    fuzz_image()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60)
    args = ap.parse_args()
    t0, rounds = time.monotonic(), 0
    while time.monotonic() - t0 < args.seconds:
        run(200, seed=rounds)
        rounds += 1
    print(f"fuzzed for {time.monotonic() - t0:.0f} s: {rounds} rounds x 3 targets x 200 examples, no crash")


if __name__ == "__main__":
    main()
