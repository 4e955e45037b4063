"""Schema cost at 1,000 and 3,000 struct types (tha/bench/schema.py's
generated cdef): tha.Schema(cdef), and Schema.from_bytes, the path a
standby, a snapshot and a checkpoint load take (declarations rebuilt from
the C schema, laid out, checked). Printed, not asserted; the cost per type
should stay about the same from 1,000 to 3,000:

    .venv/bin/python -m pytest bench/test_bench_schema.py -q
    python -m tha.bench.schema 100 1000 3000 10000   every step, as a table
"""
import os

import pytest

import tha
from tha.bench import schema as bs

pytestmark = pytest.mark.bench

SIZES = (1000, 3000)


@pytest.fixture(scope="module")
def cdefs():
    return {n: bs.cdef(n) for n in SIZES}


@pytest.fixture(scope="module")
def blobs(cdefs):
    return {n: tha.Schema(text).to_bytes() for n, text in cdefs.items()}


def _rounds():
    return int(os.environ.get("THA_BENCH_ROUNDS", 3))


@pytest.mark.parametrize("n", SIZES)
def test_schema_build(benchmark, cdefs, n):
    benchmark.extra_info["types"] = n
    s = benchmark.pedantic(tha.Schema, args=(cdefs[n],), rounds=_rounds())
    assert len(s.type_names()) == n


@pytest.mark.parametrize("n", SIZES)
def test_schema_from_bytes(benchmark, blobs, n):
    benchmark.extra_info["types"] = n
    s = benchmark.pedantic(tha.Schema.from_bytes, args=(blobs[n],), rounds=_rounds())
    assert s.to_bytes() == blobs[n]
