"""Keep large freed buffers inside the process instead of handing them back to the OS (glibc).

A 4000×3000 decode allocates ~48 MB of pixels, and libjpeg-turbo's lossless crop ~36 MB of DCT
coefficients. Once a process has loaded libraries such as OpenCV or onnxruntime, glibc serves
blocks that size with a fresh mmap and unmaps them on free, so every image page-faults its buffers
in again: measured ~11,700 page faults and ~28 ms of kernel time per 12-megapixel decode, as much as
the decode itself. Raising glibc's mmap and trim thresholds makes freed blocks reusable by the
next image; the cost is that the process keeps its peak heap until it exits, which suits a
command-line run over a folder.

`loraprep`'s entry point calls `reuse_large_buffers` once. Elsewhere (macOS, Windows, musl) it does
nothing and says so by returning False.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 512 << 20  # glibc ≥ 2.35 accepts any value
_MMAP_THRESHOLD_OLD_GLIBC = 32 << 20  # the most older glibc accepts (HEAP_MAX_SIZE / 2 on 64-bit)
_TRIM_THRESHOLD = 1 << 30


def reuse_large_buffers() -> bool:
    """Tell glibc's malloc to keep blocks up to 512 MB (32 MB on older glibc) on its heap and not to
    return freed memory below 1 GB to the OS. True when applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 — only glibc has it; musl's mallopt is a no-op
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if not (mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) or mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_OLD_GLIBC)):
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
