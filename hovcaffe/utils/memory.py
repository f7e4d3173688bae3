"""Keep freed tensor memory in the process between training iterations (glibc malloc).

PyTorch's CPU allocator takes every tensor from `malloc`. With glibc's defaults, a freed block
above the mmap threshold goes straight back to the kernel, and so does the top of the heap once
more than the trim threshold is free. A training iteration frees all of its activations and
gradients at its end and allocates them again in the next one, so every iteration page-faults
its whole working set back in: on LeNet (batch 64, 1 thread) that is ~5 ms of a ~30 ms
iteration (benchmarks/solver_step.py). Raising both thresholds keeps the memory in the heap,
where the next iteration reuses it; the process's resident size stays at its peak, which a
training process reaches anyway.

Set ``HOVCAFFE_MALLOC_TUNING=0`` to leave malloc as it is (e.g. when preloading jemalloc or
tcmalloc, which have their own policy).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

# mallopt() parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: Blocks below this size come from the heap instead of their own mapping. glibc caps it at
#: half its maximal heap size on some versions, in which case mallopt refuses and we keep going.
MMAP_THRESHOLD = 1 << 30
#: Free memory at the top of the heap kept instead of being returned to the kernel (the largest
#: value mallopt's int takes).
TRIM_THRESHOLD = 2**31 - 1

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Raise glibc's trim and mmap thresholds once per process; True when they were raised.

    A no-op (False) off Linux/glibc, when ``HOVCAFFE_MALLOC_TUNING=0``, or when mallopt refuses.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("HOVCAFFE_MALLOC_TUNING", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs without mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok_trim = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    ok_mmap = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    _applied = ok_trim and ok_mmap
    log.debug("malloc thresholds raised: trim %s, mmap %s", ok_trim, ok_mmap)
    return _applied
