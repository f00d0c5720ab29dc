"""A process of yolokit's own (toolkit.host): glibc's malloc keeps freed blocks for the next image."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.host import keep_freed_memory

REPO = Path(__file__).resolve().parents[1]

# what a run's workers do to each photo: decode it (6 MB), letterbox it, make the model's float input (3 MB); four
# threads at once. Prints the page faults per photo after the first.
IMAGES = """
import resource, sys
from concurrent.futures import ThreadPoolExecutor
import numpy as np
if sys.argv[1] == "kept":
    from toolkit.host import keep_freed_memory
    assert keep_freed_memory()
from toolkit.io.decode import decode_image
from toolkit.ops import letterbox
photos = [np.fromfile(p, np.uint8) for p in sys.argv[2:]]
def one(i):
    img = decode_image(photos[i % len(photos)], f"{i}.jpg")
    x = letterbox(img, 640)[0].transpose(2, 0, 1).astype(np.float32) / 255
    return float(x[0, 0, 0])
one(0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
with ThreadPoolExecutor(4) as pool:
    list(pool.map(one, range(32)))
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 32)
"""


def _glibc() -> bool:
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError, AttributeError):
        return False


def _faults_per_image(mode: str, photos: list[Path]) -> float:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    proc = subprocess.run([sys.executable, "-c", IMAGES, mode, *map(str, photos)], capture_output=True, text=True,
                          timeout=120,
                          env={**env, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    return float(proc.stdout.split()[-1])


@pytest.mark.skipif(not _glibc(), reason="the setting is glibc's malloc's; this C library is not glibc")
def test_kept_memory_spares_the_page_faults_of_each_image(coco128_large: Path) -> None:
    """Without the setting, glibc unmapped each photo's blocks when freed and the next photo faulted fresh pages in
    (measured on these photos: 2,730 faults per photo, 11 MB; with it 360-370). Real photos: the decoder's own
    buffers differ with the JPEG's layout."""
    photos = sorted(coco128_large.glob("*_1920x1080.jpg"))[:8]
    plain, kept = _faults_per_image("plain", photos), _faults_per_image("kept", photos)
    assert kept < plain / 3, (plain, kept)


@pytest.mark.parametrize("tunables", ["glibc.malloc.mmap_threshold=65536", "glibc.malloc.trim_threshold=0",
                                      "glibc.malloc.hugetlb=1:glibc.malloc.trim_threshold=131072"])
def test_the_users_own_thresholds_are_kept(tunables: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIBC_TUNABLES", tunables)
    assert keep_freed_memory() is False


@pytest.mark.skipif(not _glibc(), reason="the setting is glibc's malloc's; this C library is not glibc")
def test_other_malloc_settings_of_the_user_go_with_the_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    """GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (2 MiB pages for malloc's heaps, which only the environment can ask
    for) leaves the thresholds to yolokit."""
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
    assert keep_freed_memory() is True
