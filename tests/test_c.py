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


def test_c_under_valgrind():
    """Every C test and example under valgrind memcheck: no error, no
    definite leak (.ci/run installs valgrind; write-protect tracking is left
    to the ASan run, see csrc/Makefile)."""
    import shutil

    import pytest
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed (apt-get install valgrind)")
    _make("valgrind")
