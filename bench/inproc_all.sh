#!/bin/sh
# every mode at f = 0.1%, 1%, 10%, with a memcmp of a 64 MB image in the same run
cd "$(dirname "$0")/.."
for f in 0.001 0.01 0.1; do for m in wp diff explicit; do .venv/bin/python bench/inproc.py $m $f ${ROUNDS:-7}; done; done
.venv/bin/python - <<'PY'
import ctypes, time, statistics
libc = ctypes.CDLL(None); n = 64 << 20
a = ctypes.create_string_buffer(n); b = ctypes.create_string_buffer(n)
ts = []
for _ in range(7):
    t = time.perf_counter(); libc.memcmp(a, b, ctypes.c_size_t(n)); ts.append(time.perf_counter() - t)
print(f"memcmp 64 MB: {statistics.median(ts)*1e3:.2f} ms")
PY
