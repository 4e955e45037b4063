"""heap.leaks() over 1,000,000 separate allocations (THA_BENCH_OBJECTS),
beside a plain sweep of the same heap measured in the same run.

The graph (tha.bench.leaks.LeakGraph): N struct emp allocated one by one,
the live ones a 4-ary tree from one root, every 100th unreachable and
pointing into the tree; once in allocation order and once with the tree
shuffled over the addresses. Objects per second (N / time) are printed
at the end of the session (conftest.pytest_terminal_summary).
"""

import os

import pytest

from tha.bench.leaks import LeakGraph

pytestmark = pytest.mark.bench

N = int(os.environ.get("THA_BENCH_OBJECTS", 1_000_000))
LEAK_RESULTS = {}  # (layout, operation) -> best seconds


@pytest.fixture(scope="module", params=["ordered", "shuffled"])
def leak_graph(request):
    return LeakGraph(N, shuffled=request.param == "shuffled")


def _record(g, name, benchmark):
    layout = "shuffled" if g.shuffled else "ordered"
    best = min(benchmark.stats.stats.data)
    LEAK_RESULTS[(layout, name)] = best
    benchmark.extra_info["objects_per_s"] = g.n / best


def test_walk_baseline(benchmark, leak_graph, rounds):
    benchmark.pedantic(leak_graph.walk, rounds=rounds, warmup_rounds=1)
    _record(leak_graph, "walk", benchmark)


def test_leaks_c(benchmark, leak_graph, rounds):
    benchmark.pedantic(leak_graph.leaks_c, rounds=rounds, warmup_rounds=1)
    _record(leak_graph, "leaks_c", benchmark)


def test_heap_leaks(benchmark, leak_graph, rounds):
    leaks = benchmark.pedantic(leak_graph.heap.leaks, rounds=rounds, warmup_rounds=1)
    assert len(leaks) == leak_graph.garbage
    _record(leak_graph, "heap.leaks()", benchmark)
