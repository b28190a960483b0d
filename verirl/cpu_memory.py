"""Keeping freed memory in a CPU training process (glibc's allocator settings).

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves a block of
more than its mmap threshold (128 KiB to start) with a fresh ``mmap`` and gives it back
to the operating system when the tensor is freed; the next step's tensor of that size
is fresh memory again, and the first write into each 4 KiB page faults. A training
step allocates activations of about the same sizes every time, so on a CPU the faults
recur at every step: about 14,000 per update of the tiny model, 7 % of its update time
(``benchmarks/page_faults.py``).

:func:`keep_freed_memory` sets glibc's thresholds (``mallopt``) so that blocks up to
``MMAP_THRESHOLD`` come from the heap and up to ``TRIM_THRESHOLD`` of freed memory at
the heap's top stays mapped: the next step reuses pages it has touched before. What
it costs: the process keeps what it freed (up to the trim threshold at the top, and
freed blocks below it), so its resident memory stays near its peak between steps
instead of falling; in the tiny model's benchmark the peak itself did not grow. The
setting is process-wide and outlives the trainer that made it. It is what PyTorch's
CPU tuning guide gets from swapping in jemalloc or tcmalloc, without preloading a
library.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from typing import Any

log = logging.getLogger("verirl.cpu_memory")

#: glibc's ``mallopt`` parameter numbers (``malloc.h``)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
#: blocks up to this size come from the heap (32 MiB: glibc's largest allowed on 64-bit)
MMAP_THRESHOLD = 32 << 20
#: freed memory at the top of the heap up to this much stays mapped
TRIM_THRESHOLD = 512 << 20
#: each time the heap grows, it grows by this much more (fewer ``brk`` calls)
TOP_PAD = 64 << 20


def glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (Linux), else ``None`` (musl, macOS,
    Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the symbols the process has loaded: its C library's
        libc.gnu_get_libc_version  # glibc only
        libc.mallopt
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory(device: Any = "cpu") -> bool:
    """Set glibc's allocator to keep freed memory for reuse (see the module's doc), for
    a process whose tensors live on ``device`` (a ``torch.device`` or its type): only
    a CPU's, since on an accelerator the framework's caching allocator reuses memory
    already. Process-wide, and it stays set; calling it again changes nothing. Returns
    whether every setting was taken: ``False`` for another device or under a C library
    other than glibc, where nothing is changed. (Under a preloaded allocator such as
    jemalloc, glibc's settings are taken but govern nothing.)"""
    if getattr(device, "type", device) != "cpu":
        return False
    libc = glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    taken = [mallopt(param, value) == 1 for param, value in
             ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD))]
    if not all(taken):
        log.info("glibc refused a mallopt setting; freed memory may still go back to the OS")
    return all(taken)
