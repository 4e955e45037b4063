"""In-process breakdown of a delta round (1M emp): writes, encode, apply ms.
Usage: python bench/inproc.py MODE F [ROUNDS]; THREADS=n sets tha_set_threads."""
import sys, time, os, statistics
sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])
from tha.bench import peers as bp
from tha.bench.peers_far import SCHEMA
from tha.schema import Schema
from tha.heap import Heap
mode = sys.argv[1]; f = float(sys.argv[2]); rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 10
n = 1_000_000
if os.environ.get("THREADS"):  # tha_set_threads for this run
    from tha._ffi import lib
    lib.tha_set_threads(int(os.environ["THREADS"]))
schema = Schema(SCHEMA)
h, emps = bp.tha_heap(schema, n, mode)
snap = h.snapshot()
m2 = Heap.from_snapshot(snap)
m2.apply(h.delta())
buf = bytearray(h.frame_size("snapshot"))
te, ta, tw = [], [], []
for r in range(rounds):
    m = bp.make_mutation(n, f, 100 + r)
    t0 = time.perf_counter()
    for i, s, g in zip(m.idx, m.salary, m.mgr):
        e = emps[i]; e.salary = s; e.mgr = emps + g
    if mode == "explicit":
        h.touch_many(emps, m.idx)
    t1 = time.perf_counter()
    d = h.delta(buf)
    t2 = time.perf_counter()
    m2.apply(d)
    t3 = time.perf_counter()
    tw.append(t1 - t0); te.append(t2 - t1); ta.append(t3 - t2)
md = lambda x: statistics.median(x) * 1e3
print(f"{mode} f={f}: writes {md(tw):.2f} ms encode {md(te):.2f} ms apply {md(ta):.2f} ms frame {len(d)}")
