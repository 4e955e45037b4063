"""Active -> Standby over loopback TCP, beside raw-socket baselines measured
in the same run (tha/bench/replication.py says exactly what each measures).

The standby and the raw peers run in other processes (``python -m
tha.bench.replication peer ...``), so the GIL of this process serves only
the active side. Targets (issue 3): a large-delta sync(ack="applied") moves
>= 50% of raw TCP throughput; a one-object sync(ack="applied") round trip
is <= 3x a 64-byte ping-pong with another process. Ratios are printed at
the end of the session, not asserted (a shared VM varies 2x between runs).

THA_BENCH_REPL_OBJECTS sizes the large delta (default 1M emps, ~98 MB).
"""

import os

import pytest
from conftest import REPL_RESULTS

from tha.bench import replication as br

pytestmark = pytest.mark.bench

SMALL = 200  # calls per latency benchmark


@pytest.fixture(scope="module")
def repl():
    b = br.Bench(int(os.environ.get("THA_BENCH_REPL_OBJECTS", 1_000_000)))
    REPL_RESULTS["_bytes"] = (b.large_bytes, len(b.tx))
    REPL_RESULTS["_objects"] = b.g.n
    yield b
    b.close()


def _bench(benchmark, name, fn, rounds):
    benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1)
    REPL_RESULTS[name] = list(benchmark.stats.stats.data)


def test_tcp_stream_baseline(benchmark, repl, rounds):
    benchmark.extra_info["bytes"] = len(repl.tx)
    _bench(benchmark, "tcp_stream", repl.tcp_stream, max(3, rounds // 3))


def test_sync_large(benchmark, repl, rounds):
    benchmark.extra_info["bytes"] = repl.large_bytes
    _bench(benchmark, "sync_large", repl.sync_large, max(3, rounds // 3))


def test_ping_pong_process(benchmark, repl):
    _bench(benchmark, "ping_process", lambda: repl.ping_pong(1), SMALL)


def test_ping_pong_thread(benchmark, repl):
    _bench(benchmark, "ping_thread", lambda: repl.ping_pong_thread(1), SMALL)


def test_sync_small(benchmark, repl):
    _bench(benchmark, "sync_small", lambda: repl.sync_small(1), SMALL)


def test_sync_small_tiny_heap(benchmark, repl):
    _bench(benchmark, "sync_small_tiny", lambda: repl.sync_small(1, tiny=True), SMALL)

