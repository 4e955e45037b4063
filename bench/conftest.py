"""Fixtures for the codec benchmarks: one 1M-emp graph per session (built in
tha/bench/workload.py, ~2 s), and a summary of same-run ratios at the end.

Run apart from the tests:  .venv/bin/python -m pytest bench -q
THA_BENCH_OBJECTS / THA_BENCH_DIRTY / THA_BENCH_ROUNDS override the size,
the dirty percentage and the rounds per benchmark.
"""

import os

import pytest

from tha.bench import codec as bench

RESULTS = {}  # benchmark name -> list of seconds per round
REPL_RESULTS = {}  # replication benchmarks: name -> seconds per call
PEERS_RESULTS = {}  # test_bench_peers.py: "res" -> what `bench --peers` reports


@pytest.fixture(scope="session")
def graph():
    return bench.Graph(int(os.environ.get("THA_BENCH_OBJECTS", 1_000_000)),
                       float(os.environ.get("THA_BENCH_DIRTY", 1.0)))


@pytest.fixture(scope="session")
def rounds():
    return int(os.environ.get("THA_BENCH_ROUNDS", 15))


@pytest.fixture
def record(request):
    """Stores a finished benchmark's raw timings under `name` (and facts
    about the graph for the summary)."""
    def _record(name, benchmark, **graph_info):
        RESULTS[name] = list(benchmark.stats.stats.data)
        RESULTS.setdefault("_graph", {}).update(graph_info)
    return _record


def pytest_terminal_summary(terminalreporter):
    _peers_summary(terminalreporter)
    _replication_summary(terminalreporter)
    _leaks_summary(terminalreporter)
    need = ("memcpy", "snapshot_encode", "snapshot_apply", "delta_encode", "delta_apply")
    if not all(k in RESULTS for k in need):
        return
    g = RESULTS.get("_graph", {})
    summary = bench.summarize({k: v for k, v in RESULTS.items() if not k.startswith("_")},
                              g.get("snapshot_bytes", 1), g.get("delta_bytes", 1))
    info = {"objects": g.get("objects", 0), "dirty_pct": g.get("dirty_pct", 0),
            "repeat": len(RESULTS["memcpy"]), "snapshot_bytes": g.get("snapshot_bytes", 0),
            "delta_bytes": g.get("delta_bytes", 0), "machine": bench.machine()}

    class _Out:
        def write(self, s):
            terminalreporter.write(s)

    terminalreporter.section("tha codec: ratios against memcpy, same run")
    bench.report(summary, info, out=_Out())


def _peers_summary(terminalreporter):
    if "res" not in PEERS_RESULTS:
        return
    from tha.bench import peers as bp

    class _Out:
        def write(self, s):
            terminalreporter.write(s)

    terminalreporter.section("tha peers: against raw TCP, pickle and Redis "
                             "(contenders not alternating: see test_bench_peers.py)")
    bp.report(PEERS_RESULTS["res"], out=_Out())


def _replication_summary(terminalreporter):
    from tha.bench import replication as br
    need = ("tcp_stream", "sync_large", "ping_process", "ping_thread", "sync_small",
            "sync_small_tiny")
    if not all(k in REPL_RESULTS for k in need):
        return
    large, stream = REPL_RESULTS["_bytes"]
    summary = br.summarize({k: REPL_RESULTS[k] for k in need}, large, stream)
    info = {"objects": REPL_RESULTS["_objects"], "large_bytes": large,
            "repeat": len(REPL_RESULTS["sync_large"]), "machine": bench.machine()}

    class _Out:
        def write(self, s):
            terminalreporter.write(s)

    terminalreporter.section("tha replication: ratios against raw loopback TCP, same run")
    br.report(summary, info, out=_Out())


def _leaks_summary(terminalreporter):
    import test_bench_leaks as tbl
    res = tbl.LEAK_RESULTS
    if not res:
        return
    m = bench.machine()
    terminalreporter.section("tha leaks: objects/s over %s allocations, same run" % f"{tbl.N:,}")
    terminalreporter.write(f"machine: {m['cpu']}, {m['cores']} cores, {m['system']}\n")
    for layout in ("ordered", "shuffled"):
        walk = res.get((layout, "walk"))
        for op in ("walk", "leaks_c", "heap.leaks()"):
            t = res.get((layout, op))
            if t is None:
                continue
            rel = f"{walk / t:6.0%} of walk" if walk else ""
            terminalreporter.write(f"{layout:<9}{op:<14}{t * 1e3:9.1f} ms "
                                   f"{tbl.N / t / 1e6:8.1f} M objects/s  {rel}\n")
