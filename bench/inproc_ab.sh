#!/bin/sh
# before/after in the same conditions: BASE is a tree of the old commit with
# its extension built in place (python setup.py build_ext --inplace); each
# (mode, f) runs old then new back to back, then a memcmp of 64 MB.
BASE=${BASE:?a tree of the old commit}
NEW=$(cd "$(dirname "$0")/.." && pwd)
PY=$NEW/.venv/bin/python
for f in 0.001 0.01 0.1; do for m in wp diff explicit; do
  for t in "$BASE" "$NEW"; do
    sed "s#^sys.path.insert(0, .*#sys.path.insert(0, '$t')#" "$NEW/bench/inproc.py" > /tmp/inproc_ab.py
    printf '%s ' "$(basename "$t")"; $PY /tmp/inproc_ab.py $m $f ${ROUNDS:-7}
  done
done; done
$PY - <<'PY'
import ctypes, time, statistics
libc = ctypes.CDLL(None); n = 64 << 20
a = ctypes.create_string_buffer(n); b = ctypes.create_string_buffer(n)
ts = []
for _ in range(7):
    t = time.perf_counter(); libc.memcmp(a, b, ctypes.c_size_t(n)); ts.append(time.perf_counter() - t)
print(f"memcmp 64 MB: {statistics.median(ts)*1e3:.2f} ms")
PY
