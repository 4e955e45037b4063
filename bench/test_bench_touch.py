"""Explicit tracking from Python: 10,000 of 1,000,000 struct emp written
(the 1% round of issue 12), then marked by touch() per element, by one
touch_many(), and by one touch_many(field=) — beside the writes themselves,
in the same run. extra_info holds each one's ratio to the writes.
"""

import pytest

import tha

pytestmark = pytest.mark.bench

N, STEP = 1_000_000, 100
BEST = {}


@pytest.fixture(scope="module")
def emps():
    s = tha.Schema("struct emp { char name[32]; uint32_t id; double salary; "
                   "struct emp *mgr; };")
    h = tha.Heap(s, tracking="explicit", capacity=256 << 20)
    return h, h.new("struct emp", count=N), list(range(0, N, STEP))


def _run(benchmark, name, fn):
    benchmark.pedantic(fn, rounds=5, warmup_rounds=1)
    BEST[name] = min(benchmark.stats.stats.data)
    if "writes" in BEST and name != "writes":
        benchmark.extra_info["x_the_writes"] = BEST[name] / BEST["writes"]


def test_writes(benchmark, emps):
    h, es, idx = emps

    def writes():
        for i in idx:
            es[i].salary = 1.0
    _run(benchmark, "writes", writes)


def test_touch_each(benchmark, emps):
    h, es, idx = emps

    def each():
        for i in idx:
            h.touch(es + i)
    _run(benchmark, "touch", each)


def test_touch_many(benchmark, emps):
    h, es, idx = emps
    _run(benchmark, "touch_many", lambda: h.touch_many(es, idx))


def test_touch_many_field(benchmark, emps):
    h, es, idx = emps
    _run(benchmark, "touch_many_field", lambda: h.touch_many(es, idx, field="salary"))
