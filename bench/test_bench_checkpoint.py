"""Checkpoint write and load throughput against a plain sequential
write+fsync / cold read of the same bytes to the same disk, same run
(tha/bench/checkpoint.py). The write baseline replaces a file durably the
way a user would (temp file, fsync, rename over, directory fsync), as
checkpoint() does. Printed, not asserted (a shared VM varies 2x):

    .venv/bin/python -m pytest bench/test_bench_checkpoint.py -q -s
    THA_BENCH_CKPT_SIZE=1G for the issue's 1 GiB heap (default 256M)
"""
import os

import pytest

from tha.bench import checkpoint as bc

pytestmark = pytest.mark.bench


def test_checkpoint_throughput(capsys):
    size = bc.parse_size(os.environ.get("THA_BENCH_CKPT_SIZE", "256M"))
    res = bc.run(size, int(os.environ.get("THA_BENCH_ROUNDS", 3)),
                 os.environ.get("THA_BENCH_DIR"))
    with capsys.disabled():
        print()
        bc.report(res)
    assert res["file_bytes"] > size
