"""The libFuzzer targets (csrc/fuzz/fuzz_*.c): built with clang and each run
for a few seconds on its seed corpus, so a regression in what apply, bulk
sync or load accept shows up in the ordinary test run. Longer runs:
``make -C csrc fuzz FUZZ_SECONDS=600``."""
import glob
import os
import shutil
import subprocess

import pytest

CSRC = os.path.join(os.path.dirname(__file__), "..", "csrc")
TARGETS = sorted(os.path.basename(p)[:-2]
                 for p in glob.glob(os.path.join(CSRC, "fuzz", "fuzz_*.c")))
SECONDS = int(os.environ.get("THA_FUZZ_SECONDS", "8"))
# A peer may declare a huge heap: the library must then fail cleanly with
# ENOMEM, which ASan's allocator would abort on instead (as make fuzz runs)
FUZZ_ASAN_OPTIONS = "detect_leaks=1:allocator_may_return_null=1"


def _clang_fuzzer() -> str | None:
    """Why libFuzzer binaries cannot be built here, or None."""
    if not shutil.which("clang"):
        return "clang is not installed (.ci/run installs it)"
    probe = subprocess.run(
        ["clang", "-fsanitize=fuzzer", "-x", "c", "-", "-o", os.devnull],
        input=b"#include <stdint.h>\n#include <stddef.h>\n"
              b"int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)"
              b"{return 0;}\n", capture_output=True)
    if probe.returncode:
        return "clang cannot link libFuzzer: " + probe.stderr.decode()[-300:]
    return None


@pytest.fixture(scope="module")
def built():
    why = _clang_fuzzer()
    if why:
        pytest.skip(why)
    r = subprocess.run(["make", "-C", CSRC, "fuzz-build"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


def test_every_target_has_a_seed_corpus():
    assert {"fuzz_frame", "fuzz_bulk", "fuzz_load", "fuzz_schema", "fuzz_session"} <= set(TARGETS)
    for t in TARGETS:
        assert glob.glob(os.path.join(CSRC, "fuzz", "corpus", t, "*")), t


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target_runs_clean(built, target, tmp_path):
    """Every seed (and every regression input) passes, then a short run
    finds nothing."""
    out = tmp_path / "corpus"
    out.mkdir()
    r = subprocess.run(
        [os.path.join(CSRC, "build", "fuzz", target), f"-max_total_time={SECONDS}",
         "-print_final_stats=1", f"-artifact_prefix={tmp_path}/", str(out),
         os.path.join(CSRC, "fuzz", "corpus", target)],
        capture_output=True, text=True, timeout=SECONDS + 120,
        env={**os.environ, "ASAN_OPTIONS": FUZZ_ASAN_OPTIONS})
    tail = r.stderr[-4000:]
    assert r.returncode == 0, tail
    assert "stat::number_of_executed_units" in r.stderr, tail
