"""The host process's memory allocator, tuned for training on a CPU.

glibc serves a large block (above its mmap threshold, at most 32 MB) with a fresh mmap and returns it
to the system at free; the next block of that size is page-faulted in again, a page at a time. A CPU
training step allocates and frees the same large activations, logits and gradients every step, so on a
2-core machine that refaulting cost 30-70% of a large matmul's time (and 3x of a log-softmax's). Served
from the heap and never trimmed, freed blocks are reused as they are: the process keeps its peak
resident size instead of returning memory between steps.
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Tell glibc to serve every block from the heap and never return freed heap memory. Linux with
    glibc only (True when applied); elsewhere, or if the C library refuses, nothing changes."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        applied = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except (OSError, AttributeError):  # not glibc (musl, ...): leave the allocator alone
        return False
    log.debug("glibc allocator: no mmap, no trim (freed memory is reused by the next step)")
    return applied
