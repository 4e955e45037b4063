"""Collect (frame_size) vs encode time, 1 and 2 threads: MODE F [ROUNDS]."""
import ctypes, sys, time, statistics
sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])
from tha.bench import peers as bp
from tha.bench.peers_far import SCHEMA
from tha.schema import Schema
from tha._ffi import lib, ffi
mode = sys.argv[1]; f = float(sys.argv[2]); rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 7
n = 1_000_000
h, emps = bp.tha_heap(Schema(SCHEMA), n, mode)
buf = bytearray(h.frame_size("snapshot"))
h.delta(buf)
cbuf = ffi.from_buffer(buf); nout = ffi.new("size_t *")
libc = ctypes.CDLL(None)
img = ctypes.create_string_buffer(64 << 20); sh = ctypes.create_string_buffer(64 << 20)
ctypes.memset(img, 1, 64 << 20); ctypes.memset(sh, 1, 64 << 20)
for th in (1, 2):
    lib.tha_set_threads(th)
    tc, te, tm = [], [], []
    for r in range(rounds):
        m = bp.make_mutation(n, f, 100 + r + 1000 * th)
        for i, s, g in zip(m.idx, m.salary, m.mgr):
            e = emps[i]; e.salary = s; e.mgr = emps + g
        if mode == "explicit":
            h.touch_many(emps, m.idx)
        t0 = time.perf_counter(); size = h.frame_size("delta"); t1 = time.perf_counter()
        rc = lib.tha_heap_encode(h._h, lib.THA_FRAME_DELTA, cbuf, len(buf), nout)
        t2 = time.perf_counter()
        assert rc == 0, rc
        d = buf[: nout[0]]
        libc.memcmp(img, sh, ctypes.c_size_t(64 << 20)); t3 = time.perf_counter()
        tc.append(t1 - t0); te.append(t2 - t1); tm.append(t3 - t2)
    md = lambda x: statistics.median(x) * 1e3
    print(f"{mode} f={f} threads={th}: collect {md(tc):.2f} ms encode {md(te):.2f} ms frame {len(d)}; memcmp 64 MB {md(tm):.2f} ms")
