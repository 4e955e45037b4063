"""The libFuzzer targets (csrc/fuzz/fuzz_*.c) run briefly from their seed
corpora through `make -C csrc fuzz`: each must build and run FUZZ_SECONDS
(default here 5; set FUZZ_SECONDS to fuzz longer) without a crash, leak,
timeout or OOM. Skipped without a clang that links -fsanitize=fuzzer."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[1] / "csrc"


def _libfuzzer_ok(tmp_path):
    if not shutil.which("clang"):
        return False
    src = tmp_path / "t.c"
    src.write_text("#include <stdint.h>\n#include <stddef.h>\n"
                   "int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)"
                   "{(void)d;(void)n;return 0;}\n")
    r = subprocess.run(["clang", "-fsanitize=fuzzer,address,undefined", str(src),
                        "-o", str(tmp_path / "t")], capture_output=True)
    return r.returncode == 0


def test_fuzzers_run_clean(tmp_path):
    if not _libfuzzer_ok(tmp_path):
        pytest.skip("clang with libFuzzer is not installed")
    seconds = os.environ.get("FUZZ_SECONDS", "5")
    proc = subprocess.run(
        ["make", "-C", str(CSRC), "-j" + str(os.cpu_count() or 1), "fuzz",
         f"FUZZ_SECONDS={seconds}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1800)
    assert proc.returncode == 0, f"make fuzz failed:\n{proc.stdout[-6000:]}"
    targets = sorted(p.stem for p in (CSRC / "fuzz").glob("fuzz_*.c"))
    assert targets and all(f"== {t}" in proc.stdout for t in targets), proc.stdout
