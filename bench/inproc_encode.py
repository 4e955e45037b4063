"""Encode alone, repeated on one dirty set (explicit touch_many): F [ROUNDS]
[MODE]; for perf. MODE diff/wp re-dirties with the writes of the mutation."""
import sys, time, statistics
sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])
from tha.bench import peers as bp
from tha.bench.peers_far import SCHEMA
from tha.schema import Schema
from tha._ffi import lib, ffi
f = float(sys.argv[1]); rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 50
n = 1_000_000
h, emps = bp.tha_heap(Schema(SCHEMA), n, "explicit")
buf = bytearray(h.frame_size("snapshot"))
h.delta(buf)
cbuf = ffi.from_buffer(buf); nout = ffi.new("size_t *"); size = ffi.new("size_t *")
m = bp.make_mutation(n, f, 100)
ts = []
for r in range(rounds):
    h.touch_many(emps, m.idx)
    t0 = time.perf_counter()
    assert lib.tha_heap_frame_size(h._h, lib.THA_FRAME_DELTA, size) == 0
    assert lib.tha_heap_encode(h._h, lib.THA_FRAME_DELTA, cbuf, len(buf), nout) == 0
    ts.append(time.perf_counter() - t0)
print(f"explicit f={f}: size+encode {statistics.median(ts)*1e3:.2f} ms frame {nout[0]} runs")
