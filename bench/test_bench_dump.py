"""heap.dump() of N struct emp (THA_BENCH_DUMP_OBJECTS, default 200,000),
beside the cdata reading it replaced (every field through cffi, the path
dump() still takes for types it cannot unpack as bytes) in the same run:
objects per second of each and their ratio in extra_info.
"""

import os

import pytest

import tha
from tha import dump as D
from tha.bench.workload import SCHEMA
from tha._ffi import ffi as tha_ffi, lib as tha_lib

pytestmark = pytest.mark.bench

N = int(os.environ.get("THA_BENCH_DUMP_OBJECTS", 200_000))
BEST = {}


@pytest.fixture(scope="module")
def heap():
    h = tha.Heap(tha.Schema(SCHEMA), capacity=max(64 << 20, N * 256))
    d = h.new("struct dept", name=b"eng", id=1)
    es = []
    for i in range(N):
        e = h.new("struct emp", name=b"e%d" % i, id=i, salary=i * 1.5, dept=d)
        if es:
            e.mgr = es[i // 2]
        es.append(e)
    h.roots["boss"] = es[0]
    return h


def cdata_dump(h):
    schema, base, out = h.schema, h._base, []
    cursor, o = tha_ffi.new("uint64_t *"), tha_ffi.new("tha_obj_t *")
    while tha_lib.tha_heap_next(h._h, cursor, o):
        ctype = schema.ctype_of(o.type_id)
        p = schema.ffi.cast(schema.ffi.getctype(ctype, "*"), o.ptr)
        conv = D._converter(schema, ctype, base)
        out.append({"offset": o.offset, "type": schema.type_name(ctype),
                    "count": o.count, "value": [conv(p[i]) for i in range(o.count)]})
    return out


def test_dump_cdata_baseline(benchmark, heap):
    benchmark.pedantic(cdata_dump, args=(heap,), rounds=3, warmup_rounds=0)
    BEST["cdata"] = min(benchmark.stats.stats.data)
    benchmark.extra_info["objects_per_s"] = (N + 1) / BEST["cdata"]


def test_dump(benchmark, heap):
    out = benchmark.pedantic(heap.dump, rounds=3, warmup_rounds=0)
    assert out["objects"] == cdata_dump(heap)
    BEST["dump"] = min(benchmark.stats.stats.data)
    benchmark.extra_info["objects_per_s"] = (N + 1) / BEST["dump"]
    if "cdata" in BEST:
        benchmark.extra_info["x_faster_than_cdata"] = BEST["cdata"] / BEST["dump"]
