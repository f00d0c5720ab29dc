"""Settings of a process that yolokit owns: the ``yolokit`` command's (:func:`toolkit.cli.entry`), the worker
processes of a process-mode run, its Ray actors and Serve replicas (freed memory only: Ray starts them), and the
processes its benchmarks measure. A program that imports yolokit as a library keeps its own: nothing here runs on
import.

* **One OpenBLAS thread.** numpy's OpenBLAS starts a thread per core when numpy is imported; with nothing to do it
  spins on its core for about 0.1 s of each start (a 100-photo OpenVINO run used 3.60 core-s with it, 3.44 without).
  yolokit makes no BLAS call (letterbox, decode, NMS and box scaling are elementwise). OpenBLAS reads the setting
  when numpy is imported, so it is set only before that, and only where the environment does not set it.
* **Freed memory kept for the next image.** glibc returns large freed blocks to the kernel (each block over its
  moving mmap threshold is unmapped; the top of a heap is trimmed), so every decoded photo, letterboxed input and
  model output of a run was mapped afresh, and every page of it faulted in again, zeroed by the kernel: 414,000-541,000
  page faults and 1.2-1.8 s of kernel time in a 1,000-photo OpenVINO run. Kept below 32 MiB (the most glibc allows)
  and not trimmed: 65,000 faults and 0.5 s, at the same peak memory (383 MB; 24 photos of 13400x9528: 2.6 instead
  of 3.0 GB, since blocks this large are still unmapped when freed); whole runs 2-7 % faster at 100 photos, 2 % at
  1,000 (docs/benchmarks.md, run H). Only with glibc (other C libraries allocate otherwise), and not where
  ``GLIBC_TUNABLES`` sets these thresholds itself. A long-lived process (``yolokit serve``) so keeps the high-water
  mark of its blocks below 32 MiB until it ends, as most allocators keep theirs.

  The blocks kept are in 4 KiB pages, where a fresh mapping of numpy's was advised into 2 MiB pages: some more
  user time (more TLB misses) against much less kernel time. Only glibc can advise its own heaps, and only when told
  at the process's start (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``), which a process cannot do for itself: a user
  who sets it gets both (1,000 photos: 14.69 -> 13.93 s, docs/guide/performance.md).
"""

from __future__ import annotations

import os
import sys

BLAS_THREADS = "OPENBLAS_NUM_THREADS"
MMAP_THRESHOLD = 32 << 20  # blocks up to this size come from the heap, not their own mapping (glibc's maximum)
TRIM_THRESHOLD = 1 << 30  # free memory at the top of a heap kept up to this size
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)


def own_process() -> None:
    """Set up this process as yolokit's own (see the module's text): one OpenBLAS thread if numpy is not imported
    yet, and freed memory kept (:func:`keep_freed_memory`)."""
    if "numpy" not in sys.modules:
        os.environ.setdefault(BLAS_THREADS, "1")
    keep_freed_memory()


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed blocks below :data:`MMAP_THRESHOLD` for reuse instead of unmapping them or
    trimming its heaps; False where the C library is not glibc or ``GLIBC_TUNABLES`` sets these thresholds. Both
    settings go together: either one alone turns off glibc's moving threshold, and every block above the fixed
    default (128 KiB) is then mapped afresh (measured: 2.4-4x the page faults of neither)."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.mmap_threshold" in tunables or "glibc.malloc.trim_threshold" in tunables:
        return False  # the user's own thresholds (their other malloc settings, such as hugetlb, go with ours)
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError, AttributeError):  # not a GNU system
        return False
    if not libc.startswith("glibc"):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
