"""A tiny C library that writes into memory, for the tracking tests and the
tracking benchmark: writes made by compiled code (not by cffi), with the
GIL released, exactly as a native application would make them.

Built once per process with the system C compiler into a temporary
directory and loaded with ``cffi.FFI().dlopen``. Not part of the API.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import cffi

CDEF = """
void tw_write_words(unsigned char *base, const uint64_t *offs, size_t n, uint64_t v);
void tw_copy(void *dst, const void *src, size_t n);
int tw_memcmp(const void *a, const void *b, size_t n);
void tw_spin(uint64_t *p, size_t n, size_t stride, uint64_t rounds, uint64_t tag);
"""

SOURCE = r"""
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* One 8-byte store at base + offs[i] for each i (offsets 8-aligned). */
void tw_write_words(unsigned char *base, const uint64_t *offs, size_t n, uint64_t v) {
    for (size_t i = 0; i < n; i++) *(volatile uint64_t *)(base + offs[i]) = v + i;
}
void tw_copy(void *dst, const void *src, size_t n) { memcpy(dst, src, n); }
int tw_memcmp(const void *a, const void *b, size_t n) { return memcmp(a, b, n); }
/* rounds passes over p[0], p[stride], ..., p[(n-1)*stride], each storing
 * tag << 32 | round: the last pass leaves tag << 32 | (rounds - 1). */
void tw_spin(uint64_t *p, size_t n, size_t stride, uint64_t rounds, uint64_t tag) {
    for (uint64_t r = 0; r < rounds; r++)
        for (size_t i = 0; i < n; i++)
            *(volatile uint64_t *)(p + i * stride) = tag << 32 | r;
}
"""

_lib = None
ffi = cffi.FFI()
ffi.cdef(CDEF)


def load():
    """The compiled library (built on first use)."""
    global _lib
    if _lib is None:
        cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if not cc:
            raise RuntimeError("no C compiler (cc) to build the test writer")
        d = tempfile.mkdtemp(prefix="tha-writer-")
        src, so = os.path.join(d, "writer.c"), os.path.join(d, "writer.so")
        with open(src, "w", encoding="utf-8") as f:
            f.write(SOURCE)
        subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", so, src], check=True)
        _lib = ffi.dlopen(so)
    return _lib



def ptr(address: int, ctype: str = "unsigned char *"):
    """A pointer of this library's FFI at an integer address."""
    return ffi.cast(ctype, address)
