"""Snapshot and delta encode/apply of a 1M struct emp graph (~98 MB), beside
a memcpy of the same bytes measured in the same run.

Targets (issue): snapshot encode+apply >= 40% of memcpy throughput; a
1%-dirty delta >= 50x faster than a snapshot. The ratios are printed at
the end of the session (conftest.pytest_terminal_summary); they are not
asserted, since a shared VM varies 2x between runs.
"""

import pytest

pytestmark = pytest.mark.bench


def test_memcpy_baseline(benchmark, graph, rounds, record):
    benchmark.extra_info["bytes"] = graph.snap_size
    benchmark.pedantic(graph.memcpy, rounds=rounds, warmup_rounds=1)
    assert graph.cp_dst[:4096] == graph.cp_src[:4096]
    record("memcpy", benchmark)


def test_snapshot_encode(benchmark, graph, rounds, record):
    benchmark.extra_info["bytes"] = graph.snap_size
    frame = benchmark.pedantic(graph.snapshot, rounds=rounds, warmup_rounds=1)
    assert len(frame) == graph.snap_size
    record("snapshot_encode", benchmark)


def test_snapshot_encode_bytes(benchmark, graph, rounds, record):
    """The bytes-returning path: a fresh buffer (page faults) plus a copy."""
    frame = benchmark.pedantic(graph.heap.snapshot, rounds=max(3, rounds // 3))
    assert isinstance(frame, bytes) and len(frame) == graph.snap_size
    record("snapshot_bytes", benchmark)


def test_snapshot_apply(benchmark, graph, rounds, record):
    frame = bytes(graph.snapshot())  # a stable copy: snap_buf gets reused
    benchmark.extra_info["bytes"] = len(frame)
    benchmark.pedantic(graph.mirror.apply, args=(frame,), rounds=rounds, warmup_rounds=1)
    graph.check_mirror()
    record("snapshot_apply", benchmark)


def test_delta_encode(benchmark, graph, rounds, record):
    graph.sync()
    pending = []

    def setup():  # keep the mirror in step, then dirty 1% of the emps
        if pending:
            graph.mirror.apply(pending.pop())
        graph.touch_dirty()

    def encode():
        pending.append(graph.delta())

    benchmark.pedantic(encode, setup=setup, rounds=rounds, warmup_rounds=1)
    frame = pending.pop()
    benchmark.extra_info["bytes"] = len(frame)
    graph.mirror.apply(frame)
    graph.check_mirror()
    record("delta_encode", benchmark, objects=graph.n, dirty_pct=graph.dirty_pct,
           snapshot_bytes=graph.snap_size, delta_bytes=len(frame))


def test_delta_apply(benchmark, graph, rounds, record):
    graph.sync()

    def setup():  # a fresh delta for the next sequence number
        graph.touch_dirty()
        return (bytes(graph.delta()),), {}

    benchmark.pedantic(graph.mirror.apply, setup=setup, rounds=rounds, warmup_rounds=1)
    graph.check_mirror()
    record("delta_apply", benchmark)
