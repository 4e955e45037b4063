"""`python -m tha verify` and `inspect` (the summary) of a checkpoint beside
`Heap.load` of the same file, in the same run (issue 10: verify within 3x
of load). The file:
THA_BENCH_VERIFY_OBJECTS struct emp allocated one by one (default
2,000,000, each pointing at its manager) and a char blob that brings the
image to THA_BENCH_VERIFY_MB (default 1024). extra_info: verify / load.

    .venv/bin/python -m pytest bench/test_bench_verify.py -q -s
"""

import contextlib
import io
import os
import time

import pytest

import tha
from tha.bench.workload import SCHEMA
from tha.cli import main

pytestmark = pytest.mark.bench

OBJECTS = int(os.environ.get("THA_BENCH_VERIFY_OBJECTS", 2_000_000))
MB = int(os.environ.get("THA_BENCH_VERIFY_MB", 1024))
BEST = {}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("verify") / "big.tha"
    h = tha.Heap(tha.Schema(SCHEMA), capacity=(MB + 512) << 20, tracking="explicit")
    d = h.new("struct dept", name=b"eng", id=1)
    prev = h.new("struct emp", id=0, dept=d)
    h.roots["boss"] = prev
    for i in range(1, OBJECTS):
        prev = h.new("struct emp", id=i, dept=d, mgr=prev)
    left = (MB << 20) - h.stats()["top"]
    if left > 0:
        h.roots["blob"] = h.new("char", count=left)
    t = time.perf_counter()
    h.checkpoint(path)
    print(f"\ncheckpoint: {os.path.getsize(path) / 2**20:,.0f} MiB, {OBJECTS + 1:,} "
          f"objects, written in {time.perf_counter() - t:.2f}s")
    return str(path)


def test_load(benchmark, checkpoint):
    benchmark.pedantic(tha.Heap.load, args=(checkpoint,), rounds=3, warmup_rounds=1)
    BEST["load"] = min(benchmark.stats.stats.data)


def _command(benchmark, checkpoint, command):
    """`python -m tha <command> FILE` (in process, output swallowed), beside load."""
    def run():
        with contextlib.redirect_stdout(io.StringIO()) as out:
            rc = main([command, checkpoint])
        assert rc == 0, out.getvalue()
    benchmark.pedantic(run, rounds=3, warmup_rounds=0)
    BEST[command] = best = min(benchmark.stats.stats.data)
    if "load" in BEST:
        benchmark.extra_info["x_load"] = best / BEST["load"]
        print(f"\n{command} {best:.2f}s = {best / BEST['load']:.2f}x load {BEST['load']:.2f}s")


def test_verify(benchmark, checkpoint):
    _command(benchmark, checkpoint, "verify")


def test_inspect(benchmark, checkpoint):
    _command(benchmark, checkpoint, "inspect")
