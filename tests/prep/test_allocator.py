"""glibc tuning for many large images: freed image-sized blocks are reused, not page-faulted in again."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from prep.allocator import reuse_large_buffers

# malloc, write and free a 64 MB block (an image buffer) through libc itself, counting page faults
PROBE = textwrap.dedent("""
    import ctypes, ctypes.util, resource, sys
    from prep.allocator import reuse_large_buffers
    tuned = sys.argv[1] == "tuned" and reuse_large_buffers()
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    def image_buffer():
        block = libc.malloc(64 << 20)
        ctypes.memset(block, 1, 64 << 20)
        libc.free(block)
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    image_buffer()  # the first block is always faulted in
    before = faults()
    for _ in range(5):
        image_buffer()
    print(tuned, (faults() - before) // 5)
""")


def faults_per_buffer(mode: str) -> tuple[bool, int]:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    tuned, faults = done.stdout.split()
    return tuned == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc tuning is Linux-only")
def test_freed_image_buffers_are_reused_instead_of_faulted_in_again():
    tuned, with_tuning = faults_per_buffer("tuned")
    if not tuned:
        pytest.skip("this libc is not glibc (mallopt unavailable): nothing to tune")
    _, without = faults_per_buffer("plain")
    assert without > 10 * with_tuning  # untuned, every 64 MB block is mapped and faulted in afresh
    assert with_tuning < 64


def test_tuning_twice_is_harmless():
    assert reuse_large_buffers() == reuse_large_buffers()
