"""Shared declarations, fixtures and frame-editing helpers for the tests."""
import struct

import cffi
import pytest

import tha
from tha._ffi import ffi as _cffi, lib

# The contract's example schema.
SMALL_CDEF = """
struct dept { char name[32]; uint32_t id; };
struct emp { char name[32]; uint32_t id; double salary;
             struct emp *mgr; struct dept *dept; struct emp *reports[4]; };
"""

# Every field kind tha mirrors: arrays, arrays of pointers, char and void
# pointers, nested structs by value (holding pointers), multi-dim arrays,
# a union without pointers, bitfields and a function pointer.
RICH_CDEF = """
struct dept { char name[32]; uint32_t id; };
struct addr { char street[24]; uint32_t zip; struct dept *office; };
union val { int32_t i; float f; uint8_t raw[8]; };
struct emp {
    char name[32]; uint32_t id; double salary;
    struct emp *mgr; struct dept *dept; struct emp *reports[4];
    char *note; void *any;
    struct addr home; struct addr past[2];
    int16_t grid[2][3];
    union val v;
    unsigned int level : 3; int delta : 5; unsigned int flag : 1;
    void (*hook)(void);
};
"""

# Callbacks live for the whole session so their addresses stay valid.
_cb_ffi = cffi.FFI()
HOOKS = {
    "ping": _cb_ffi.callback("void(void)", lambda: None),
    "pong": _cb_ffi.callback("void(void)", lambda: None),
}


@pytest.fixture
def small_schema():
    return tha.Schema(SMALL_CDEF)


@pytest.fixture
def rich_schema():
    return tha.Schema(RICH_CDEF, functions=HOOKS)


# ---- frame editing ----------------------------------------------------------

# tha__frame_hdr_t (csrc/src/frame.h), little-endian.
HDR = struct.Struct("<IHHII QQQQQQQQ IIII")
HDR_FIELDS = ("magic", "version", "kind", "header_size", "nruns", "fingerprint",
              "lineage", "epoch", "seq", "capacity", "top", "length", "nblocks",
              "schema_len", "body_crc", "reserved", "header_crc")
assert HDR.size == 96


def crc32c(data) -> int:
    buf = _cffi.from_buffer(bytes(data))
    return lib.tha_crc32c(0, buf, len(buf))


def header(frame) -> dict:
    return dict(zip(HDR_FIELDS, HDR.unpack_from(frame, 0)))


def reseal(frame) -> bytes:
    """frame with both CRCs recomputed (after an edit)."""
    f = bytearray(frame)
    struct.pack_into("<I", f, 84, crc32c(f[96:]))
    struct.pack_into("<I", f, 92, crc32c(f[:92]))
    return bytes(f)


def edit_header(frame, **fields) -> bytes:
    h = header(frame)
    h.update(fields)
    f = bytearray(frame)
    HDR.pack_into(f, 0, *(h[k] for k in HDR_FIELDS))
    return reseal(f)


def runs(frame):
    """[(pos of the run record, offset, nblocks, mask pos, data pos)]."""
    h = header(frame)
    pos = 96 + (h["schema_len"] + 7) // 8 * 8
    out = []
    for _ in range(h["nruns"]):
        off, nb = struct.unpack_from("<QQ", frame, pos)
        mask = pos + 16
        data = mask + (nb + 7) // 8 * 8
        out.append((pos, off, nb, mask, data))
        pos = data + nb * 64
    return out


def pointer_words(frame):
    """[(frame position, region offset, value)] of every nonzero pointer word."""
    out = []
    for _pos, off, nb, mask, data in runs(frame):
        for b in range(nb):
            m = frame[mask + b]
            for w in range(8):
                if m >> w & 1:
                    p = data + b * 64 + w * 8
                    (v,) = struct.unpack_from("<Q", frame, p)
                    if v:
                        out.append((p, off + b * 64 + w * 8, v))
    return out


def state(heap):
    """What must not change when a bad frame is refused."""
    st = heap.stats()
    return heap.dump(), st["seq"], st["epoch"], st["lineage"]
