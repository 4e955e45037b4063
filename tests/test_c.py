"""The C test suite (ASan+UBSan) and the C examples, run through make."""
import os
import subprocess
from pathlib import Path

CSRC = Path(__file__).resolve().parents[1] / "csrc"


def _make(target):
    jobs = str(os.cpu_count() or 1)
    proc = subprocess.run(
        ["make", "-C", str(CSRC), "-j" + jobs, target],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, f"make {target} failed:\n{proc.stdout}"


def test_c_unit_tests():
    _make("test")


def test_c_examples():
    _make("examples")


def test_c_rbtree_bench_smoke():
    """csrc/bench/rbtree_bench.c at 3,000 nodes and 2 rounds (make
    bench-smoke): every mode runs and every mirror it walks matches, so the
    benchmark behind README's ratios cannot rot."""
    import pytest
    if not Path("/usr/include/bsd/sys/tree.h").exists():
        pytest.skip("no <bsd/sys/tree.h> (apt-get install libbsd-dev)")
    _make("bench-smoke")


def test_c_under_valgrind():
    """Every C test and example under valgrind memcheck: no error, no
    definite leak (.ci/run installs valgrind; write-protect tracking is left
    to the ASan run, see csrc/Makefile)."""
    import shutil

    import pytest
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed (apt-get install valgrind)")
    _make("valgrind")
