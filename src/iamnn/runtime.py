"""Process-level settings that decide CPU speed more than any model code does.

glibc serves every allocation above its mmap threshold (128 KiB at start, raised as large blocks
are freed) with a fresh ``mmap`` and returns it to the system on ``free``: each new activation
map of that size then costs one page fault per 4 KiB page. An IamNN iteration allocates maps of
many sizes (the active set shrinks), so the threshold never settles. Measured on 2 cores, folded
``iamnn_r34_fmnist`` in ``full`` mode at batch 64: 14 842 minor page faults and 33.1 ms per
forward with glibc's defaults, none and 14.6 ms after :func:`keep_freed_memory`. PyTorch's CPU
tuning guide gives the same advice in the form of jemalloc or tcmalloc; this needs no extra
library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD = -1  # <malloc.h>: keep this much freed memory at the top of the heap
_M_MMAP_THRESHOLD = -3  # <malloc.h>: allocations below this come from the heap, not mmap


@functools.cache
def keep_freed_memory(mmap_threshold: int = 32 * 2**20, trim_threshold: int = 2**30) -> bool:
    """Let glibc reuse freed tensor memory instead of unmapping it; True if it took effect.

    Allocations up to ``mmap_threshold`` bytes (32 MiB, glibc's maximum) come from the heap, and
    up to ``trim_threshold`` bytes of freed heap stay mapped for reuse. A no-op (False) on a C
    library without ``mallopt`` (macOS, musl, Windows). Call once, at the start of a process that
    runs many forwards; the cost is memory that the process keeps after its peak.
    """
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))


@functools.cache
def cpu_emulates_bf16() -> bool:
    """True where oneDNN has no bfloat16 path on this CPU (on x86: neither AVX-512 nor AMX).

    bf16 autocast still runs there, converting each operand, and is several times slower than
    float32: a training step of the shipped model at batch 128 took 1133 ms under bf16 autocast
    against 220 ms in float32 on a 2-core AVX2-only AMD EPYC. False where PyTorch cannot tell.
    """
    import torch

    try:
        return not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):
        return False
