"""cffi builder for tha._tha (API mode, out-of-line).

Compiles every csrc/src/*.c into the extension, the same list csrc/Makefile
builds libtha from, so the two cannot drift. The cdef is tha/_cdef.h,
written by hand against csrc/include/tha.h.
"""
import os
from glob import glob

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))


def _rel(*parts):
    # setuptools wants source paths relative to the directory it runs in.
    return os.path.relpath(os.path.join(HERE, *parts))


with open(os.path.join(HERE, "tha", "_cdef.h"), encoding="utf-8") as f:
    CDEF = f.read()

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "tha._tha",
    '#include "tha.h"',
    sources=sorted(_rel(p) for p in glob(os.path.join(HERE, "csrc", "src", "*.c"))),
    include_dirs=[_rel("csrc", "include"), _rel("csrc", "src")],
    depends=[_rel("csrc", "include", "tha.h"), _rel("csrc", "src", "tha_internal.h")],
    extra_compile_args=["-std=c11", "-O2", "-D_GNU_SOURCE", "-fvisibility=hidden", "-pthread"],
    extra_link_args=["-pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
