"""Deltas of random writes at the sizes that take the fast paths (a
two-thread shadow compare, a two-thread encode, many scattered runs, long
runs), in every tracking mode, on one thread and two: each delta leaves a mirror
equal to the source (csrc/tests/test_track.c: a sync collects once)."""
import array
import os

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, example, given, settings

import tha
from tha._ffi import lib
from tha.bench import peers as bp
from tha.bench.peers_far import SCHEMA

N = 150_000  # 9.6 MB of emps: over the two-thread compare threshold
W = bp.EMP_WORDS


@pytest.fixture(scope="module", params=["explicit", "diff", "wp"])
def pair(request):
    schema = tha.Schema(SCHEMA)
    h, emps = bp.tha_heap(schema, N, request.param)
    m = tha.Heap.from_snapshot(h.snapshot())
    return request.param, h, emps, m


def _words(heap, p, n):
    """The n emps at p as words, pointer words (mgr, dept) as offsets."""
    ws = array.array("Q", bytes(heap.schema.ffi.buffer(p, n * bp.EMP_SIZE)))
    for col in (6, 7):
        ws[col::W] = array.array("Q", [v - heap.base if v else 0 for v in ws[col::W]])
    return ws


writes = st.lists(st.tuples(st.integers(0, N - 1), st.integers(0, 5000),
                            st.integers(0, N - 1)), max_size=30_000)
bursts = st.lists(st.tuples(st.integers(0, N - 1), st.integers(1, 20_000)), max_size=3)


@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large, HealthCheck.too_slow])
@given(writes=writes, bursts=bursts, threads=st.sampled_from([1, 2]))
# where the two threads' halves meet, in the middle of the image or of
# the pages written
@example(writes=[(i * 7919 % N, i, i * 31 % N) for i in range(20_000)],
         bursts=[(N // 2 - 10_000, 20_000)], threads=2)
@example(writes=[], bursts=[(0, 20_000), (N // 2 - 10_000, 20_000), (N - 20_000, 20_000)],
         threads=2)
def test_random_writes_mirror_equal(pair, writes, bursts, threads):
    mode, h, emps, m = pair
    lib.tha_set_threads(threads)
    try:
        idx = []
        for i, s, g in writes:
            emps[i].salary = float(s)
            emps[i].mgr = emps + g
            idx.append(i)
        for start, n in bursts:  # long runs of dirty blocks
            for i in range(start, min(N, start + n)):
                emps[i].salary += 1.0
                idx.append(i)
        if mode == "explicit" and idx:
            h.touch_many(emps, sorted(set(idx)))
        d = h.delta()
        m.apply(d)
        assert _words(m, m.roots["emps"], N) == _words(h, emps, N)
    finally:
        lib.tha_set_threads(2 if (os.cpu_count() or 1) > 1 else 1)  # the default
