"""Keep large tensor buffers in the process heap instead of fresh ``mmap`` pages (glibc only).

PyTorch's CPU tensors come from ``malloc``. glibc serves blocks above ``M_MMAP_THRESHOLD``
(128 KiB at start, raised on the fly up to 32 MiB) with a fresh ``mmap`` and hands them
back to the system on ``free``; it also returns the top of the heap once more than
``M_TRIM_THRESHOLD`` of it is free. A perturbation metric allocates and frees
activations of a few MiB per model call thousands of times, and each fresh page costs a
page fault on first touch: measured on ``small_cnn3d`` with 8 volumes of 24x28x24 per
call, region perturbation ran at 1.65-1.77x its pass floor with glibc's defaults and at
1.10-1.14x with both thresholds raised (``benchmarks/bench_metrics.py --setting volume``),
the effect jemalloc or tcmalloc are usually preloaded for.

:func:`keep_heap` raises both thresholds with ``mallopt`` (the same as the environment
variables ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_``). Freed memory is then
reused by the process rather than returned, so the resident size stays near its peak
rather than falling between calls; peaks themselves do not grow. Set
``XAISCOPE_MALLOC=system`` to keep glibc's defaults. Elsewhere (macOS, Windows, musl) it
does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: blocks up to this size come from the heap (glibc caps the setting at 32 MiB on 64-bit
#: builds: ``HEAP_MAX_SIZE / 2``); larger ones are still mapped and unmapped
MMAP_THRESHOLD = 32 * 2**20
#: free memory kept at the top of the heap before it is returned to the system
TRIM_THRESHOLD = 1024 * 2**20

_done = False


def keep_heap() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True when they were set."""
    global _done
    if _done or os.environ.get("XAISCOPE_MALLOC", "").lower() == "system" or not sys.platform.startswith("linux"):
        return _done
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
