"""Transparent tracking on a 256 MiB heap (tha/bench/tracking.py): writes
against untracked writes, delta() against a memcmp of the region, all in
the same run. Printed, not asserted (a shared VM varies 2x between runs):

    .venv/bin/python -m pytest bench/test_bench_tracking.py -q -s
"""
import os

import pytest

from tha.bench import tracking as bt

pytestmark = pytest.mark.bench


def test_tracking_table(capsys):
    repeat = int(os.environ.get("THA_BENCH_ROUNDS", 5))
    res = bt.run(repeat)
    with capsys.disabled():
        print()
        bt.report(res, repeat)
    assert res["rows"]
